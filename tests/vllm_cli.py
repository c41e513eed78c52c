"""What ``vllm serve`` accepts, as documented for vLLM 0.12.0: the fixture nsed's argv is
checked against (``tests/test_launch.py``) and the stand-in server parses with
(``tests/fake_vllm.py``), so an argv vLLM would refuse fails here first.

Sources: the ``vllm serve`` CLI reference of vLLM 0.12.0 (docs.vllm.ai/en/v0.12.0/cli/serve/)
for the flags, and the reasoning-outputs page (docs.vllm.ai/en/v0.11.2/features/
reasoning_outputs/, unchanged in 0.12.0) plus ``vllm/reasoning/__init__.py`` (``openai_gptoss``,
registered since 0.10.1) for the reasoning parser names. The API key is read from the
``VLLM_API_KEY`` environment variable when ``--api-key`` is not given.
"""

from __future__ import annotations

VLLM_VERSION = "0.12.0"

# flag -> whether it takes a value (False: a switch). Only flags nsed writes or documents.
SERVE_FLAGS: dict[str, bool] = {
    "--host": True,
    "--port": True,
    "--served-model-name": True,
    "--gpu-memory-utilization": True,
    "--max-model-len": True,
    "--tensor-parallel-size": True,
    "--reasoning-parser": True,
    "--enable-prefix-caching": False,
    "--no-enable-prefix-caching": False,
    "--api-key": True,
    "--dtype": True,
    "--kv-cache-dtype": True,
    "--max-num-seqs": True,
    "--enforce-eager": False,
    "--trust-remote-code": False,
    "--generation-config": True,
    "--quantization": True,
    "--chat-template": True,
    "--uvicorn-log-level": True,
}

REASONING_PARSERS: frozenset[str] = frozenset(
    {
        "deepseek_r1",
        "deepseek_v3",
        "ernie45",
        "glm45",
        "granite",
        "hunyuan_a13b",
        "minimax_m2_append_think",
        "openai_gptoss",
        "qwen3",
    }
)


def parse_serve(argv: list[str]) -> tuple[str, dict[str, str | bool]]:
    """(model, {flag: value or True}) of ``serve MODEL FLAGS...``; ValueError as vLLM would."""
    if len(argv) < 2 or argv[0] != "serve" or argv[1].startswith("-"):
        raise ValueError(f"usage: vllm serve MODEL [options], got {argv}")
    model, rest = argv[1], argv[2:]
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(rest):
        flag, _, inline = rest[i].partition("=")
        if flag not in SERVE_FLAGS:
            raise ValueError(f"unrecognized arguments: {rest[i]}")
        if flag in flags:
            raise ValueError(f"{flag} given twice")
        if SERVE_FLAGS[flag]:
            if inline:
                flags[flag] = inline
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                flags[flag] = rest[i + 1]
                i += 1
            else:
                raise ValueError(f"{flag}: expected one argument")
        elif inline:
            raise ValueError(f"{flag} takes no value")
        else:
            flags[flag] = True
        i += 1
    parser = flags.get("--reasoning-parser")
    if parser is not None and parser not in REASONING_PARSERS:
        raise ValueError(f"--reasoning-parser: invalid choice: {parser!r}")
    utilization = flags.get("--gpu-memory-utilization")
    if isinstance(utilization, str) and not 0 < float(utilization) <= 1:
        raise ValueError(f"--gpu-memory-utilization {utilization} is outside (0, 1]")
    return model, flags
