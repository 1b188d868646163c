"""The dependency direction the README states, read off the code's own imports: entry points ->
job -> stages -> artifact / farm -> base, no cycles, `pipeline` never importing `rpc`."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"pipeline.tune", "pipeline.build", "pipeline.rebuild", "pipeline.deploy",
                "pipeline.inspect", "pipeline.nightly", "rpc.farm", "rpc.emulated"}
RANK = {"pipeline.base": 0, "pipeline.artifact": 1, "pipeline.farm": 1,
        "pipeline.frontend": 2, "pipeline.quantization": 2, "pipeline.compile": 2,
        "pipeline.verify": 2, "pipeline.job": 3, "pipeline.cli": 4}
BOARD_SCRIPTS = {"rpc.board_server", "rpc.board_smoke"}  # run on boards: stdlib + TVM only


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("pipeline", "rpc"):
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports (`from pkg import mod` names the module)."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = {t for t in targets if t and t.split(".")[0] in ("pipeline", "rpc")} - {name}
    return graph


def _rank(module: str) -> int:
    if module in ENTRY_POINTS:
        return 5
    return next(rank for prefix, rank in RANK.items()
                if module == prefix or module.startswith(prefix + "."))


def test_every_module_has_a_layer():
    for name in _modules():
        if name not in ("pipeline", "rpc") and name not in BOARD_SCRIPTS:
            _rank(name)  # raises StopIteration for a module outside the layers


def test_imports_point_down_only():
    graph = _imports(_modules())
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if a not in BOARD_SCRIPTS and a not in ("pipeline", "rpc")
              and b not in ("pipeline", "rpc") and _rank(b) > _rank(a)]
    assert upward == []
    assert not [a for a, targets in graph.items() if targets & ENTRY_POINTS]
    assert not [a for a, targets in graph.items() if a.startswith("pipeline")
                and any(t.startswith("rpc") for t in targets)]
    assert not [a for a in BOARD_SCRIPTS if graph[a]]


def test_no_import_cycles():
    graph = _imports(_modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_modules_stay_small():
    big = {name: n for name, path in _modules().items()
           if (n := path.read_text().count("\n")) > 400}
    assert big == {}
