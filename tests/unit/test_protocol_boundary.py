"""proxy/protocol is sans-I/O: it imports no event loop, no sockets, and nothing else of Baton.

Checked twice: statically on every file's import statements (so even an import inside a function
is caught), and by importing the package in a fresh interpreter and listing what got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "proxy" / "protocol"
FORBIDDEN = {"asyncio", "socket", "selectors", "uvloop"}
FILES = sorted(PROTOCOL_DIR.glob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, relative level) for every import statement in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", node.level))
    return out


def test_the_protocol_package_has_its_files() -> None:
    names = {p.name for p in FILES}
    assert {"wire.py", "framing.py", "packets.py", "auth.py", "handshake.py", "response.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_io_imports(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {module}"
        for line, module, level in imported_modules(path)
        if level == 0 and module.split(".")[0] in FORBIDDEN
    ]
    assert not bad, bad


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_imports_from_the_rest_of_baton(path: Path) -> None:
    # Relative imports must stay inside the package (level 1); absolute ones must not reach
    # back into proxy.* outside proxy.protocol, whose modules use asyncio.
    bad = [
        f"{path.name}:{line} imports {'.' * level}{module}"
        for line, module, level in imported_modules(path)
        if level > 1
        or (level == 0 and module.split(".")[0] == "proxy" and not module.startswith("proxy.protocol"))
    ]
    assert not bad, bad


def test_importing_the_package_loads_no_io_module() -> None:
    code = (
        "import sys\n"
        "import proxy.protocol.auth, proxy.protocol.constants, proxy.protocol.framing\n"
        "import proxy.protocol.handshake, proxy.protocol.packets, proxy.protocol.response\n"
        "import proxy.protocol.wire\n"
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROTOCOL_DIR.parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def later():\n    import asyncio.events\n    from socket import socket\n")
    assert [(m, lvl) for _, m, lvl in imported_modules(sample)] == [
        ("asyncio.events", 0),
        ("socket", 0),
    ]
