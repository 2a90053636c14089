"""The architecture as a test: every import goes down the layers, and no module imports itself in a circle.

Layers, lowest first (the README's architecture section draws the same):

    harness.shared                     errors and crash-safe files; imports nothing of the project
    backends, qsl                      the model side and the data side; neither imports the other
    harness.settings                   config, flags, user.conf, LoadGen's TestSettings
    harness.sut                        the System Under Test
    harness.accuracy                   the accuracy script
    harness.results                    what a run leaves on disk, and the result types
    harness.compliance                 TEST01/TEST04 and the submission copy
    harness.report                     what people read
    harness.run                        one benchmark invocation
    harness.demo                       the embedded default

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [("harness.shared",), ("backends", "qsl"), ("harness.settings",), ("harness.sut",),
          ("harness.accuracy",), ("harness.results",), ("harness.compliance",), ("harness.report",),
          ("harness.run",), ("harness.demo",)]
PACKAGES = ("harness", "backends", "qsl")


def _room(module: str) -> tuple[int, str] | None:
    for rank, rooms in enumerate(LAYERS):
        for room in rooms:
            if module == room or module.startswith(room + "."):
                return rank, room
    return None


def _modules() -> dict[str, Path]:
    out = {}
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
    return {m for m in found if m.split(".")[0] in PACKAGES}


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
