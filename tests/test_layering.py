"""The import direction between layers: a module imports its own layer and the ones below.

Every module under ``nsed/`` is parsed with ``ast``; every import of an nsed module counts,
at module level, inside functions (lazy imports) and under ``TYPE_CHECKING``. Layers, lowest
first (the README's "Layout" section is the map):

ground        errors, results, config, store, migrations, problems, serving, logs, links,
              steps, processes
agents        nsed.agents.*: talking to models
orchestrator  nsed.orchestrator.*: one deliberation
broker        nsed.broker.*: choosing the team
council       nsed.council: the public entry points
front ends    nsed.server, nsed.benchmarks, nsed.simulation, nsed.launch, nsed.scale: each
              its own package; an import from one front end into another must be listed in
              FRONT_END_EDGES
root          nsed.cli (registers every command group), nsed/__init__ and __main__

A module that no layer names fails the test: place it on purpose.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nsed"

GROUND = (
    "errors", "results", "config", "store", "migrations", "problems", "serving", "logs", "links",
    "steps", "processes",
)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", tuple(f"nsed.{name}" for name in GROUND)),
    ("agents", ("nsed.agents",)),
    ("orchestrator", ("nsed.orchestrator",)),
    ("broker", ("nsed.broker",)),
    ("council", ("nsed.council",)),
    ("front ends", (
        "nsed.server", "nsed.benchmarks", "nsed.simulation", "nsed.launch", "nsed.scale",
    )),
    ("root", ("nsed.cli", "nsed.__main__", "nsed")),
)
FRONT_ENDS = dict(LAYERS)["front ends"]
# The documented edges between front ends: (importer, imported) -> why.
FRONT_END_EDGES = {
    ("nsed.simulation", "nsed.benchmarks"): (
        "nsed simulate reuses the benchmark's vote baseline (methods) and math grading"
    ),
    ("nsed.scale", "nsed.benchmarks"): (
        "Ray actors run the benchmark runner's own code on their batches (run_problems)"
    ),
    ("nsed.benchmarks", "nsed.scale"): (
        "nsed bench --ray hands the run to the Ray driver (imported only with --ray)"
    ),
    ("nsed.scale", "nsed.server"): "nsed serve --ray serves the server's ASGI app on Ray Serve",
    ("nsed.server", "nsed.scale"): (
        "nsed serve --ray hands the app to Ray Serve (imported only with --ray)"
    ),
    ("nsed.server", "nsed.benchmarks"): (
        "the web page shows benchmark runs with the statistics of the reports (nsed runs show)"
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def owner(module: str) -> tuple[int, str, str]:
    """(layer index, layer name, the prefix that placed it) for an nsed module."""
    for index, (layer, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "nsed" and module != "nsed":
                continue  # the root package itself, not everything under it
            if module == prefix or module.startswith(prefix + "."):
                return index, layer, prefix
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def resolve(node: ast.ImportFrom | ast.Import, importer: str) -> list[str]:
    """The nsed modules an import statement loads (``from pkg import mod`` -> ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "nsed"]
    base = node.module or ""
    if node.level:  # relative: resolve against the importer's package
        package = importer.split(".")
        if MODULES[importer].name != "__init__.py":
            package.pop()
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    if base.split(".")[0] != "nsed":
        return []
    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return list(dict.fromkeys(targets))


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        path = MODULES[self.importer].relative_to(PACKAGE.parent)
        (_, low, _), (_, high, _) = owner(self.importer), owner(self.imported)
        return f"{path}:{self.line}: {self.importer} ({low}) imports {self.imported} ({high})"


def edges() -> list[Edge]:
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [Edge(module, target, node.lineno) for target in resolve(node, module)]
    return found


def violations() -> list[str]:
    bad = []
    for edge in edges():
        (low, _, low_prefix), (high, _, high_prefix) = owner(edge.importer), owner(edge.imported)
        if high > low:
            bad.append(f"{edge}: upwards")
        elif (
            low == high
            and low_prefix in FRONT_ENDS
            and low_prefix != high_prefix
            and (low_prefix, high_prefix) not in FRONT_END_EDGES
        ):
            bad.append(f"{edge}: between front ends, not in FRONT_END_EDGES")
    return bad


def test_every_module_has_a_layer():
    for module in MODULES:
        owner(module)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    assert violations() == []


def test_the_checker_sees_lazy_and_upward_imports(tmp_path):
    """The parser finds imports inside functions and resolves ``from pkg import module``."""
    code = "def f():\n    from nsed.benchmarks import loaders\n    import nsed.cli\n"
    tree = ast.parse(code)
    found = [
        target
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target in resolve(node, "nsed.agents.simulated")
    ]
    assert found == ["nsed.benchmarks.loaders", "nsed.cli"]
    assert owner("nsed.agents.simulated")[0] < owner("nsed.benchmarks.loaders")[0]


def test_front_end_edges_are_real():
    """Every documented edge between front ends is still used (or it should be removed)."""
    used = {(owner(e.importer)[2], owner(e.imported)[2]) for e in edges()}
    assert set(FRONT_END_EDGES) <= used


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("nsed.simulation.server", "nsed.server"),
        ("nsed.serving", "uvicorn"),
        ("nsed.agents.simulated", "nsed.benchmarks"),
        ("nsed.cli", "nsed.server"),
    ],
)
def test_importing_a_module_does_not_load_the_packages_above_it(module, absent):
    """At run time too: e.g. the simulated endpoint does not drag in the council's server."""
    code = (
        f"import sys, {module}\n"
        f"loaded = [m for m in sys.modules if m == {absent!r} or m.startswith({absent!r} + '.')]\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"importing {module} loads {done.stdout.strip()}{done.stderr}"
