"""proxy/ imports go one way: no module reaches back up, and no set of modules imports each
other in a cycle.

Every import statement counts as an edge, wherever it sits: at the top, inside a function, or
under ``if TYPE_CHECKING:``. A cycle hidden behind TYPE_CHECKING still means none of its
modules can be understood, built or typed without the others.

Layers, lowest first (a module may import its own layer and the ones below):
protocol -> config/errors/stats/logs -> net (sockets, TLS, compression, listeners, server
login, login throttling) -> routing/backend/pools/user limits/health -> session ->
admin/metrics -> app -> workers -> cli/sandbox.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

# The repository root, wherever in tests/ this file sits.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
PACKAGE = ROOT / "proxy"

# Layer of each module, by the longest matching name prefix.
LAYERS: dict[str, int] = {
    "proxy.protocol": 0,
    "proxy": 1,  # the package itself (__version__)
    "proxy.config": 1,
    "proxy.errors": 1,
    "proxy.stats": 1,
    "proxy.logs": 1,
    "proxy.net": 2,
    "proxy.tls": 2,
    "proxy.compressed": 2,
    "proxy.listener": 2,
    "proxy.listeners": 2,
    "proxy.throttle": 2,
    "proxy.server_login": 2,
    "proxy.backend": 3,
    "proxy.pool": 3,
    "proxy.pools": 3,
    "proxy.user_limits": 3,
    "proxy.routing": 3,
    "proxy.health": 3,
    "proxy.session": 4,
    "proxy.admin": 5,
    "proxy.metrics": 5,
    "proxy.app": 6,
    "proxy.workers": 7,
    "proxy.cli": 8,
    "proxy.__main__": 8,
    "proxy.sandbox": 8,
}
# Within the middle layer, the router may use the health core's pure parts only: not the
# monitor and its probing modules, nor the failover coordinator and its runbooks.
_HEALTH_IO = (
    "proxy.health.monitor", "proxy.health.watch", "proxy.health.liveness",
    "proxy.health.replication_state", "proxy.health.failover", "proxy.health.runbooks",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
FORBIDDEN = {
    ("proxy.routing", m)
    for m in MODULES
    for io in _HEALTH_IO
    if m == io or m.startswith(io + ".")
}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join([*base, *(node.module.split(".") if node.module else [])])
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def imports_of(name: str) -> set[str]:
    """Every proxy module ``name`` imports, at any depth of its code."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(name, is_package, node))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_the_graph_sees_type_checking_and_function_level_imports() -> None:
    # admin/view.py imports the pool only under TYPE_CHECKING; cli.py imports workers in a
    # function, and workers imports app in one.
    assert "proxy.pool" in GRAPH["proxy.admin.view"]
    assert "proxy.workers" in GRAPH["proxy.cli"]
    assert "proxy.app" in GRAPH["proxy.workers"]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        assert layer(name) >= 0


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name: str) -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
        for dep in sorted(GRAPH[name])
        if layer(dep) > layer(name)
    ]
    forbidden = [
        f"{name} imports {dep}"
        for dep in sorted(GRAPH[name])
        for low, high in FORBIDDEN
        if (name == low or name.startswith(low + ".")) and dep == high
    ]
    assert not upward + forbidden, upward + forbidden
