"""The package's shape, checked from its own imports: data flows one way, no module imports a layer above it.

Every ``import``/``from ... import`` under harness/ is read with ``ast`` (those inside functions too: a
lazy import is still a dependency), so a new circle or an upward import fails here, not in review.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "harness"

# (module prefix, rank): a module may import its own rank or lower ones. The longest prefix decides.
LAYERS = [
    ("harness.errors", 0), ("harness.files", 0), ("harness.world", 0),
    ("harness.flops", 0),          # counting only (no harness imports): runs and measure/ both count with it
    ("harness.peaks", 0),          # devices' peaks and MFU (no harness imports, no torch): records rate with it
    ("harness.report.noise", 0),   # statistics only (no harness imports): estimate --resolve sizes seeds with it
    ("harness.protocol", 1),       # tasks, data, diffusion, trainer, evaluation, FID, reference, registry
    ("harness.run", 2),            # one process's run: Run, checkpoints, locks, records, the run folder
    ("harness.measure", 3),        # profile, bench, estimate: protocol pieces and runs timed (run/ never imports it)
    ("harness.launch", 4),         # run(): one process, DDP on this machine, Ray actors over nodes
    ("harness.cluster", 5),        # the Ray pool, resources, node checks
    ("harness.studies", 6), ("harness.search", 6),  # studies over the pool: sweep, and what sweep and search share
    ("harness.report", 7),
    ("harness.cli", 8), ("harness.__main__", 8),
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The harness modules ``path`` imports (``from harness.x import y`` counts as harness.x.y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("harness")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def rank(module: str) -> int:
    matches = [(len(prefix), r) for prefix, r in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return max(matches)[1]


def test_every_module_has_a_layer():
    for name in modules():
        if name != "harness":
            rank(name)


def test_no_module_imports_a_layer_above_it():
    upward = [f"{m} (layer {rank(m)}) imports {d} (layer {rank(d)})" for m, deps in graph().items() if m != "harness"
              for d in deps if d != "harness" and rank(d) > rank(m)]
    assert upward == []


def test_no_import_circle():
    edges, state, circles = graph(), {}, []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                circles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert circles == []


@pytest.mark.parametrize("a, b", [("harness.search", "harness.studies.sweep"),
                                  ("harness.studies.sweep", "harness.search")])
def test_sweep_and_search_are_peers(a, b):
    assert [m for m, deps in graph().items() if m.startswith(a) and any(d.startswith(b) for d in deps)] == []


def test_measure_reads_runs_and_run_never_imports_measure():
    """One way, whatever LAYERS says of single modules: what a run and a measurement both need (MAC counts,
    peaks) is a leaf below both."""
    assert [m for m, deps in graph().items() if m.startswith("harness.run")
            and any(d.startswith("harness.measure") for d in deps)] == []


def test_report_renderers_read_the_model_not_each_other():
    renderers = {"harness.report.markdown", "harness.report.html", "harness.report.plots"}
    edges = graph()
    assert {m: edges[m] & renderers for m in renderers if edges[m] & renderers} == {}
    assert not edges["harness.report.model"] & (renderers | {"harness.report.write"})


def test_trainer_and_evaluator_do_not_know_their_launcher():
    edges = graph()
    for name in ("harness.protocol.trainer", "harness.protocol.evaluation", "harness.run.runner"):
        assert not {d for d in edges[name] if d.startswith(("harness.launch", "harness.cluster"))}, name


def test_modules_fit_on_a_few_screens():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_sees_lazy_imports(tmp_path):
    """A check that cannot fail is no check: an import inside a function is found, and an upward one ranks above."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from harness.launch import run\n    import harness.report.model\n")
    found = imports_of(source, set(modules()))
    assert found == {"harness.launch", "harness.report.model"}
    assert rank("harness.report.model") > rank("harness.run.runner") > rank("harness.protocol.trainer")
