"""Where each self-hosted model runs: GPUs, memory fraction, port and the ``vllm serve`` argv.

A model is launched when its ``vram_gb`` (its whole need: weights plus KV cache, as the broker's
VRAM budget counts it) is above 0. Each one gets one ``vllm serve``:

* on one GPU when it fits there, several models sharing a GPU by ``--gpu-memory-utilization``
  fractions (vLLM's per-instance limit) that sum to at most 0.95 of it;
* over 2, 4 or 8 GPUs with ``--tensor-parallel-size`` when it does not fit on one;
* with ``--served-model-name`` (the ``model`` id clients send), ``--enable-prefix-caching``
  (every agent's system prompt is static, so its prefix is reused), the
  ``--reasoning-parser`` of its family (``nsed.agents.reasoning``) and ``--max-model-len``.

Placement is an exact search (models largest first, each on the smallest tensor-parallel group
that fits, backtracking when a later model does not fit: splitting a model over more GPUs can
make room), so "infeasible" means no placement exists; the error names the model that cannot
be placed and the GPUs' free memory. The plan is pure data: ``nsed up --dry-run --json``
prints it, ``nsed up`` runs it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from nsed.agents.reasoning import is_reasoning_model, reasoning_parser_for
from nsed.agents.vllm import vllm_serve_command
from nsed.config import ModelSpec
from nsed.errors import ConfigError, InfeasiblePlacement
from nsed.launch.gpus import Gpu

USABLE_FRACTION = 0.95  # of each GPU; the rest is CUDA context and fragmentation headroom
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
DEFAULT_MAX_MODEL_LEN = 32_768
# Reasoning models: room for Qwen3's recommended 32,768 output tokens plus an 8K prompt (its
# native context; nsed lowers a larger max_tokens to what fits, see backend.cap_that_fits).
REASONING_MAX_MODEL_LEN = 40_960
SEARCH_LIMIT = 20_000  # placement nodes tried before giving up


class PlannedModel(BaseModel):
    """One ``vllm serve`` process of the plan."""

    name: str
    serves: list[str] = Field(
        description="the team's models it serves: entries that differ only in sampling or "
        "request options (Qwen3 thinking on and off) share one server"
    )
    hf_model: str = Field(description="what vllm serve loads")
    served_model_name: str = Field(description="the model id clients send")
    vram_gb: float
    gpus: list[int]
    tensor_parallel_size: int
    gpu_memory_utilization: float = Field(description="per GPU, of its total memory")
    max_model_len: int
    reasoning_parser: str | None
    port: int
    base_url: str
    argv: list[str]
    env_keys: list[str] = Field(description="variables set for it (values never shown)")
    api_key_env: str | None = Field(default=None, description="holds the key it requires")


class GpuUse(BaseModel):
    """One GPU of the plan and what it carries."""

    index: int
    device: str
    memory_gb: float
    fraction: float = Field(description="summed --gpu-memory-utilization, at most 0.95")
    models: list[str]


class LaunchPlan(BaseModel):
    models: list[PlannedModel]
    gpus: list[GpuUse]


def launched(models: Sequence[ModelSpec]) -> list[list[ModelSpec]]:
    """The servers ``nsed up`` starts, as the ``vram_gb > 0`` models each one serves.

    Models that load the same weights under the same id with the same server options share
    one server (ConfigError when there is nothing to launch).
    """
    servers: dict[tuple[object, ...], list[ModelSpec]] = {}
    for m in models:
        if m.vram_gb > 0:
            key = (m.hf_model or m.model, m.model, m.max_model_len, tuple(m.vllm_args))
            servers.setdefault(key, []).append(m)
    if not servers:
        raise ConfigError(
            "no model to launch: give the self-hosted models vram_gb (their GPU need in GB) "
            "and hf_model (what vllm serve loads; default: their model id)"
        )
    return list(servers.values())


def _fraction(need_gb: float, memory_gb: float) -> float:
    """The memory fraction that gives ``need_gb``, rounded up to 0.001."""
    return math.ceil(need_gb / memory_gb * 1000 - 1e-9) / 1000


class _Search:
    """Backtracking placement of (name, vram) needs on GPUs (see the module docstring)."""

    def __init__(self, needs: list[tuple[str, float]], gpus: list[Gpu]) -> None:
        self.needs = sorted(needs, key=lambda n: (-n[1], n[0]))
        self.gpus = gpus
        self.free = {g.index: USABLE_FRACTION for g in gpus}
        self.memory = {g.index: g.memory_gb for g in gpus}
        self.chosen: dict[str, tuple[tuple[int, ...], float]] = {}
        self.nodes = 0
        self.deepest = -1
        self.stuck_free: dict[int, float] = dict(self.free)

    def _options(self, vram: float) -> list[tuple[tuple[int, ...], float]]:
        options = []
        seen: set[tuple[tuple[float, float], ...]] = set()
        for size in TENSOR_PARALLEL_SIZES:
            if size > len(self.gpus):
                break
            for group in itertools.combinations(self.free, size):
                share = max(_fraction(vram / size, self.memory[g]) for g in group)
                if any(self.free[g] + 1e-9 < share for g in group):
                    continue
                # GPUs alike in memory and free room are interchangeable: try one of them.
                shape = tuple(sorted((round(self.free[g], 4), self.memory[g]) for g in group))
                if shape in seen:
                    continue
                seen.add(shape)
                options.append((group, share))
        # The smallest group first (tensor parallelism only when it helps), and within a size
        # the best fit: the group left with the least room, to keep large gaps for later.
        options.sort(key=lambda o: (len(o[0]), sum(self.free[g] - o[1] for g in o[0])))
        return options

    def run(self, i: int = 0) -> bool:
        self.nodes += 1
        if self.nodes > SEARCH_LIMIT:
            return False
        if i == len(self.needs):
            return True
        # Bound: what is left to place must fit in the memory left, summed over the GPUs.
        room = sum(self.free[g] * self.memory[g] for g in self.free)
        if sum(v for _, v in self.needs[i:]) > room + 1e-6:
            if i > self.deepest:
                self.deepest, self.stuck_free = i, dict(self.free)
            return False
        name, vram = self.needs[i]
        for group, share in self._options(vram):
            for g in group:
                self.free[g] -= share
            self.chosen[name] = (group, share)
            if self.run(i + 1):
                return True
            del self.chosen[name]
            for g in group:
                self.free[g] += share
        if i > self.deepest:
            self.deepest, self.stuck_free = i, dict(self.free)
        return False


    def first_misfit(self) -> tuple[int, dict[int, float]] | None:
        """Where placing greedily (each model on its best option, no backtracking) gets stuck:
        the model a user should hear about, with the memory free then."""
        free, self.free = self.free, {g.index: USABLE_FRACTION for g in self.gpus}
        try:
            for i, (_, vram) in enumerate(self.needs):
                options = self._options(vram)
                if not options:
                    return i, dict(self.free)
                group, share = options[0]
                for g in group:
                    self.free[g] -= share
            return None
        finally:
            self.free = free


def place(needs: list[tuple[str, float]], gpus: list[Gpu]) -> dict[str, tuple[list[int], float]]:
    """name -> (GPU indices, per-GPU memory fraction); InfeasiblePlacement when none exists."""
    if not gpus:
        raise ConfigError("no GPUs to place models on: pass --gpus")
    search = _Search(needs, gpus)
    if search.run():
        return {name: (list(group), share) for name, (group, share) in search.chosen.items()}
    stuck = search.first_misfit()
    at, stuck_free = stuck if stuck is not None else (max(search.deepest, 0), search.stuck_free)
    name, vram = search.needs[at]
    indices = [g.index for g in gpus]
    listing = ", ".join(f"GPU {g.index} {g.memory_gb:g} GB" for g in gpus)
    total = sum(USABLE_FRACTION * g.memory_gb for g in gpus)
    if search.nodes > SEARCH_LIMIT:
        why = f"no placement found within {SEARCH_LIMIT} tries"
    elif vram > total:
        why = f"it needs more than all of them give ({total:g} GB at {USABLE_FRACTION:.0%})"
    else:
        free = ", ".join(f"GPU {g} {stuck_free[g] * search.memory[g]:.1f} GB" for g in stuck_free)
        placed = [n for n, _ in search.needs[:at]]
        after = f"after {', '.join(placed)}, " if placed else ""
        why = f"{after}free: {free}"
    raise InfeasiblePlacement(
        f"cannot place model {name!r} ({vram:g} GB) on {listing}: {why}. Give more GPUs "
        "(--gpus), lower its vram_gb (a shorter max_model_len needs less KV cache) or launch "
        "fewer models",
        model=name,
        gpus=indices,
    )


def _has_flag(args: Sequence[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def max_model_len_of(spec: ModelSpec) -> int:
    """``max_model_len``, else a catalog's ``context_window``, else a default by kind."""
    if spec.max_model_len is not None:
        return spec.max_model_len
    window = getattr(spec, "context_window", None)
    if window:
        return int(window)
    return REASONING_MAX_MODEL_LEN if is_reasoning_model(spec) else DEFAULT_MAX_MODEL_LEN


def plan_launch(
    models: Sequence[ModelSpec],
    gpus: list[Gpu],
    *,
    vllm_cmd: Sequence[str] = ("vllm",),
    host: str = "127.0.0.1",
    ports: Callable[[int], list[int]],
    api_key_env: str | None = None,
) -> LaunchPlan:
    """The plan for the self-hosted ``models`` on ``gpus``; ``ports(n)`` gives n ports."""
    servers = launched(models)
    needs = [(group[0].name, max(m.vram_gb for m in group)) for group in servers]
    placement = place(needs, gpus)
    by_index = {g.index: g for g in gpus}
    planned = []
    for members, (_, need), port in zip(servers, needs, ports(len(servers)), strict=True):
        spec = members[0]
        group, share = placement[spec.name]
        size = len(group)
        parser = reasoning_parser_for(spec)
        has_parser = _has_flag(spec.vllm_args, "--reasoning-parser")
        caching = not _has_flag(
            spec.vllm_args, "--enable-prefix-caching", "--no-enable-prefix-caching"
        )
        length = max_model_len_of(spec)
        key_env = next((m.api_key_env for m in members if m.api_key_env), api_key_env)
        argv = vllm_serve_command(
            spec.hf_model or spec.model,
            port=port,
            served_name=spec.model,
            gpu_memory_utilization=share,
            max_model_len=None if _has_flag(spec.vllm_args, "--max-model-len") else length,
            tensor_parallel_size=size if size > 1 else None,
            host=host,
            reasoning_parser=None if has_parser else parser,
            enable_prefix_caching=caching,
            extra_args=spec.vllm_args,
            executable=vllm_cmd,
        )
        planned.append(
            PlannedModel(
                name=spec.name,
                serves=[m.name for m in members],
                hf_model=spec.hf_model or spec.model,
                served_model_name=spec.model,
                vram_gb=need,
                gpus=group,
                tensor_parallel_size=size,
                gpu_memory_utilization=share,
                max_model_len=length,
                reasoning_parser=None if has_parser else parser,
                port=port,
                base_url=f"http://{host}:{port}/v1",
                argv=argv,
                env_keys=["CUDA_VISIBLE_DEVICES", *(["VLLM_API_KEY"] if key_env else [])],
                api_key_env=key_env,
            )
        )
    uses = []
    for index in sorted(by_index):
        on = [p for p in planned if index in p.gpus]
        uses.append(
            GpuUse(
                index=index,
                device=by_index[index].device,
                memory_gb=by_index[index].memory_gb,
                fraction=round(sum(p.gpu_memory_utilization for p in on), 3),
                models=[p.name for p in on],
            )
        )
    return LaunchPlan(models=planned, gpus=uses)


__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "REASONING_MAX_MODEL_LEN",
    "USABLE_FRACTION",
    "GpuUse",
    "LaunchPlan",
    "PlannedModel",
    "launched",
    "max_model_len_of",
    "place",
    "plan_launch",
]
