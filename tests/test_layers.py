"""The architecture as a test: every import goes down the layers, and no module imports itself in a circle.

Layers, lowest first (the README's architecture section draws the same). A module belongs to the room
with the longest matching name, so ``backends.ssd`` is a room below ``backends.pytorch``:

    ground                             errors, crash-safe files, progress; imports nothing of the project
    backends.base, backends.model_config   the backend interface and the model's configuration
    backends.ssd                       the network, default boxes, box maths, NMS, checkpoints
    backends (null, simulated, pytorch)    the backends themselves
    backends.ray                       a backend made of remote ones
    qsl.cache.reader                   the cache's layout and errors, and opening it
    qsl.coco_layout                    where a COCO folder keeps its files; the annotation's image list
    qsl.cache, qsl.synthetic           the image cache; the synthetic data set
    qsl                                the Query Sample Libraries (coco_qsl, memory_qsl)
    harness.settings                   config, flags, user.conf, LoadGen's TestSettings
    harness.sut                        the System Under Test
    harness.accuracy                   the accuracy script
    harness.results                    what a run leaves on disk, and the result types
    harness.compliance                 the audits and the submission tree
    harness.report                     what people read
    harness.run                        one benchmark invocation
    harness.demo                       the embedded default
    run, tools, benchmarks             entry points: they may import anything; nothing imports them

backends and qsl never import each other, and neither imports harness: a Ray worker needs only
``ground`` and ``backends``.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [("ground",),
          ("backends.base", "backends.model_config"), ("backends.ssd",), ("backends",), ("backends.ray",),
          ("qsl.cache.reader",), ("qsl.coco_layout",), ("qsl.cache", "qsl.synthetic"), ("qsl",),
          ("harness.settings",), ("harness.sut",), ("harness.accuracy",), ("harness.results",),
          ("harness.compliance",), ("harness.report",), ("harness.run",), ("harness.demo",),
          ("run", "tools", "benchmarks")]

PACKAGES = ("ground", "backends", "qsl", "harness", "tools", "benchmarks")


def _room(module: str) -> tuple[int, str] | None:
    """(rank, room) of the room with the longest name that ``module`` is in or under."""
    best = None
    for rank, rooms in enumerate(LAYERS):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and (best is None or len(room) > len(best[1])):
                best = rank, room
    return best


def _modules() -> dict[str, Path]:
    out = {"run": ROOT / "run.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES or m == "run"}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(m, p) if i in modules and i != m} for m, p in modules.items()}


def test_every_module_has_a_room():
    assert [m for m in _modules() if m not in PACKAGES and _room(m) is None] == []


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        here = _room(module)
        for target in targets:
            there = _room(target)
            if here is None or there is None or there[1] == here[1]:
                continue
            if there[0] >= here[0]:
                wrong.append(f"{module} ({here[1]}) imports {target} ({there[1]})")
    assert wrong == []


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_check_sees_a_wrong_import(tmp_path):
    """The checker itself: an import of a higher room from a lower one is found."""
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from harness.run.benchmark import run_benchmark\n")
    assert "harness.run.benchmark" in _imports("harness.sut.x", path)
    assert _room("harness.run.benchmark")[0] > _room("harness.sut.x")[0]


def test_the_model_side_and_the_data_side_never_meet():
    """backends never imports qsl and qsl never imports backends (a Ray worker ships only ground + backends)."""
    wrong = [f"{m} imports {t}" for m, targets in _graph().items() for t in targets
             if m.split(".")[0] in ("backends", "qsl") and t.split(".")[0] in ("backends", "qsl")
             and t.split(".")[0] != m.split(".")[0]]
    assert wrong == []


def test_every_top_level_package_is_covered():
    """A new top-level Python package must get a room: none is left out of the check."""
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {p.stem for p in ROOT.glob("*.py")}
    assert found - {"tests"} <= set(PACKAGES) | {"run"}
