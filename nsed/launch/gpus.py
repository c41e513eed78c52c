"""Which GPUs ``nsed up`` may use, and how much memory each has.

GPUs are named by their CUDA ordinal as nsed sees them (``--gpus 0,1``; default: all visible).
When ``CUDA_VISIBLE_DEVICES`` is set, ordinal *i* is its *i*-th entry, and that entry (not *i*)
is what a child server gets in its own ``CUDA_VISIBLE_DEVICES``. Memory comes from
``nvidia-smi`` where it is installed, else from ``--gpu-memory-gb`` (which also overrides
it), so ``--dry-run`` can plan on a machine without GPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from pydantic import BaseModel, Field

from nsed.errors import ConfigError

MIB_PER_GB = 1024  # nvidia-smi reports MiB; an "80 GB" card reports 81920 MiB


class Gpu(BaseModel):
    """One GPU ``nsed up`` may place models on."""

    index: int = Field(ge=0, description="CUDA ordinal as nsed sees it (--gpus)")
    device: str = Field(description="what a child's CUDA_VISIBLE_DEVICES names it by")
    memory_gb: float = Field(gt=0)


class SmiGpu(BaseModel):
    index: int
    uuid: str
    memory_gb: float


def query_nvidia_smi(timeout_s: float = 15.0) -> list[SmiGpu] | None:
    """Every GPU ``nvidia-smi`` lists (None when it is not installed or fails)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> list[SmiGpu]:
    """``0, GPU-8a1f..., 81559`` lines as GPUs (lines that do not parse are skipped)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        try:
            memory = float(parts[2]) / MIB_PER_GB
        except ValueError:
            continue
        gpus.append(SmiGpu(index=int(parts[0]), uuid=parts[1], memory_gb=memory))
    return gpus


def parse_gpu_list(text: str) -> list[int]:
    """``"0,1,3"`` -> [0, 1, 3]; ConfigError saying what to write otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(t.isdigit() for t in items):
        raise ConfigError(f"--gpus {text!r}: list GPU numbers separated by commas, e.g. 0,1")
    indices = [int(t) for t in items]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"--gpus {text!r} names a GPU twice")
    return indices


def resolve_gpus(
    selection: str | None,
    memory_gb: float | None,
    *,
    smi: Callable[[], list[SmiGpu] | None] = query_nvidia_smi,
    environ: dict[str, str] | None = None,
) -> list[Gpu]:
    """The GPUs to plan on, with their memory (see the module docstring)."""
    env = os.environ if environ is None else environ
    if memory_gb is not None and memory_gb <= 0:
        raise ConfigError(f"--gpu-memory-gb {memory_gb:g} must be > 0")
    visible_env = env.get("CUDA_VISIBLE_DEVICES")
    visible = [v.strip() for v in visible_env.split(",") if v.strip()] if visible_env else None
    listed = smi()
    if selection is not None:
        indices = parse_gpu_list(selection)
    elif visible is not None:
        indices = list(range(len(visible)))
    elif listed:
        indices = [g.index for g in listed]
    else:
        raise ConfigError(
            "no GPUs are visible (nvidia-smi not found, CUDA_VISIBLE_DEVICES unset): pass "
            "--gpus 0,1 and --gpu-memory-gb 80 to plan for GPUs this machine does not have"
        )
    gpus = []
    for index in indices:
        if visible is not None and index >= len(visible):
            raise ConfigError(
                f"GPU {index} is not visible: CUDA_VISIBLE_DEVICES={visible_env} shows "
                f"{len(visible)} GPU(s), numbered 0..{len(visible) - 1}"
            )
        device = visible[index] if visible is not None else str(index)
        memory = memory_gb
        if memory is None:
            match = next((g for g in listed or [] if device in (str(g.index), g.uuid)), None)
            if match is None:
                why = "nvidia-smi is not installed" if listed is None else "nvidia-smi lacks it"
                raise ConfigError(
                    f"cannot tell the memory of GPU {index} ({why}): pass --gpu-memory-gb"
                )
            memory = match.memory_gb
        gpus.append(Gpu(index=index, device=device, memory_gb=memory))
    return gpus


__all__ = [
    "Gpu",
    "SmiGpu",
    "parse_gpu_list",
    "parse_nvidia_smi",
    "query_nvidia_smi",
    "resolve_gpus",
]
