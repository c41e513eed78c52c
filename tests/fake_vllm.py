"""A stand-in for ``vllm serve``: the same command line, an OpenAI-compatible server behind it.

``nsed up --vllm-cmd "python tests/fake_vllm.py"`` runs the whole launcher here, where there is
no GPU. The argv is parsed against vLLM's documented flags (``tests/vllm_cli.py``): anything
vLLM would refuse makes this exit 2 with the error in the log, as vLLM does. Then it serves
``/health``, ``/v1/models`` and ``/v1/chat/completions`` (scripted agents that answer 391) on
``--host``/``--port`` under ``--served-model-name``, requiring ``VLLM_API_KEY`` as a bearer key
when it is set, as vLLM does.

Test hooks (environment): ``NSED_FAKE_VLLM_RECORD`` a directory where it writes
``<served name>.json`` (argv, pid, CUDA_VISIBLE_DEVICES, the key it got); ``NSED_FAKE_VLLM_DELAY_S``
seconds of "loading" before it listens; ``NSED_FAKE_VLLM_FAIL`` a served name that exits 1
while loading; ``NSED_FAKE_VLLM_CHILD=1`` starts a child process in its group (like vLLM's
engine core) and leaves it running on SIGTERM, so only a group kill stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.council_scripts import agent, judge_by_answer
from tests.scripted_server import Reply, ScriptedServer
from tests.vllm_cli import parse_serve


def main(argv: list[str]) -> int:
    try:
        model, flags = parse_serve(argv)
    except ValueError as exc:
        print(f"vllm serve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    served = str(flags.get("--served-model-name") or model)
    host, port = str(flags.get("--host", "127.0.0.1")), int(flags.get("--port", 8000))
    print(f"INFO fake vllm {model} as {served} on {host}:{port}", flush=True)
    child = None
    if os.environ.get("NSED_FAKE_VLLM_CHILD"):
        child = subprocess.Popen(["sleep", "600"])  # stays in our process group
    record = os.environ.get("NSED_FAKE_VLLM_RECORD")
    if record:
        Path(record, f"{served}.json").write_text(json.dumps({
            "argv": argv,
            "pid": os.getpid(),
            "child_pid": child.pid if child else None,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "api_key": os.environ.get("VLLM_API_KEY"),
        }))
    time.sleep(float(os.environ.get("NSED_FAKE_VLLM_DELAY_S", "0")))
    if os.environ.get("NSED_FAKE_VLLM_FAIL") == served:
        print("ERROR CUDA out of memory while loading the weights", flush=True)
        return 1
    key = os.environ.get("VLLM_API_KEY")
    answer = agent("391", judge=judge_by_answer("391"))

    def handler(request):
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return Reply(status=401, error_body={"error": {"message": "Unauthorized"}})
        return answer(request)

    server = ScriptedServer(host, port)
    server.route(served, handler)
    server.set_models([served])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with server:
        print("INFO Application startup complete.", flush=True)
        while not stopping:
            time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
