"""The compiled hot path (proxy/native.py): used only when built from the very sources being
imported, and really in use where ./run setup could build it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import native

REPO_ROOT = Path(__file__).resolve().parents[2]


def _status(env: dict[str, str]) -> str:
    """What a fresh interpreter decides, and where its session module comes from."""
    code = (
        "import proxy, proxy.native as n, proxy.session.client as c, proxy.backend as b;"
        "print(n.status); print(c.__file__); print(b.__file__)"
    )
    inherited = {k: v for k, v in os.environ.items() if k not in ("BATON_NATIVE", "BATON_NATIVE_DIR")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env={**inherited, **env},
        capture_output=True, text=True, check=True, timeout=60,
    )
    return out.stdout


def test_digest_changes_with_any_source_file(tmp_path: Path) -> None:
    package = tmp_path / "proxy"
    (package / "session").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "session" / "intake.py").write_text("X = 1\n")
    first = native.source_digest(package)
    assert native.source_digest(package) == first
    (package / "session" / "intake.py").write_text("X = 2\n")
    assert native.source_digest(package) != first
    (package / "session" / "intake.py").write_text("X = 1\n")
    (package / "new.py").write_text("")
    assert native.source_digest(package) != first


def test_a_build_of_other_sources_is_never_used(tmp_path: Path) -> None:
    """A complete build whose digest is not these sources' (an edit since the build) is
    ignored: the process runs the .py files."""
    here = native.build_dir()
    stale = tmp_path / f"{sys.implementation.cache_tag}-{'0' * 20}"  # not these sources' digest
    if here.is_dir():
        shutil.copytree(here, stale)
    else:
        (stale / "proxy").mkdir(parents=True)
    (stale / "COMPLETE").write_text("other sources\n")
    out = _status({"BATON_NATIVE_DIR": str(tmp_path)}).splitlines()
    assert out[0].startswith("interpreted (no build for these sources"), out
    assert out[1].endswith("proxy/session/client.py") and out[2].endswith("proxy/backend.py")


def test_baton_native_0_runs_interpreted() -> None:
    out = _status({"BATON_NATIVE": "0"}).splitlines()
    assert out[0] == "interpreted (BATON_NATIVE=0)"
    assert out[1].endswith(".py")


def test_the_suite_runs_the_compiled_hot_path() -> None:
    """./run setup builds the hot path wherever mypy and a C compiler are present, so the
    suite tests what production runs. Fails after an edit until ./run setup rebuilds."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: Baton runs interpreted (./run setup said so)")
    if os.environ.get("BATON_NATIVE") == "0":
        pytest.skip("BATON_NATIVE=0: this run tests the interpreted hot path on purpose")
    out = _status({}).splitlines()
    assert out[0].startswith("compiled ("), (
        f"{out[0]}: run ./run setup (baton build-native) to compile these sources"
    )
    for path in out[1:]:
        assert Path(path).suffix == ".so" and native.build_dir().name in path


def test_finder_serves_every_hot_module_from_the_build() -> None:
    finder = native.NativeFinder(Path("/b"), native.HOT_MODULES)
    for name in native.HOT_MODULES:
        spec = finder.find_spec(name)
        assert spec is not None and spec.origin is not None
        assert spec.origin.startswith("/b/proxy/") and ".so" in spec.origin
    assert finder.find_spec(f"{native.GROUP}__mypyc") is not None
    assert finder.find_spec("proxy.app") is None  # not hot: always the .py


def test_no_compiled_function_gives_one_except_name_two_types() -> None:
    """mypyc gives a local name one type: ``except A as exc`` then ``except B as exc`` in one
    function fails at run time with "A object expected; got B" (seen: a held write's 9101
    became a dropped connection). Each handler of a compiled module names its own type."""
    import ast

    clashes = []
    for name in native.HOT_MODULES:
        path = REPO_ROOT.joinpath(*name.split(".")).with_suffix(".py")
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                    types.setdefault(node.name, set()).add(ast.unparse(node.type))
            clashes += [f"{path.name}:{fn.lineno} {fn.name}: {n} {sorted(t)}"
                        for n, t in types.items() if len(t) > 1]
    assert not clashes, clashes


def test_no_interpreted_class_subclasses_a_compiled_one() -> None:
    """A compiled class cannot be subclassed by interpreted code ("BackendError object
    expected; got PoolExhausted" at run time) unless it says so
    (``@mypyc_attr(allow_interpreted_subclasses=True)``)."""
    import ast

    compiled: dict[str, str] = {}
    for name in native.HOT_MODULES:
        tree = ast.parse(REPO_ROOT.joinpath(*name.split(".")).with_suffix(".py").read_text())
        compiled |= {
            node.name: name
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and "allow_interpreted_subclasses=True" not in " ".join(map(ast.unparse, node.decorator_list))
        }
    offenders = []
    for path in sorted(REPO_ROOT.joinpath("proxy").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if module in native.HOT_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    base_name = ast.unparse(base).rsplit(".", 1)[-1]
                    if base_name in compiled:
                        offenders.append(f"{module}.{node.name}({compiled[base_name]}.{base_name})")
    assert not offenders, offenders
