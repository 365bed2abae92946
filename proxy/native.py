"""The statement hot path compiled to C with mypyc, used only when built from these very sources.

Why: a statement costs Baton's Python ~25 us of user CPU against ~5 us for the least a Python
proxy can do (two callbacks, two writes; perf/README "Hot path"). mypyc turns the typed modules
below into C extensions whose classes keep their attributes in C structs and whose calls
between compiled functions skip the interpreter; measured with ``perf/hotpath.py --compare``
(see perf/README). The source stays the one truth: the same ``.py`` files run interpreted when
no build matches, when the machine has no C compiler, or with ``BATON_NATIVE=0``.

Builds live outside the package, in ``<checkout>/.native/<python tag>-<digest>/``, where the
digest covers every ``.py`` file of ``proxy/``. A build is used only if its digest is that of
the sources being imported, so an edited file can never run as its stale compiled self (the
import system would otherwise prefer a ``.so`` beside the ``.py``). ``baton build-native`` (run
by ``./run setup``) makes the build for the current sources.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The modules a statement passes through (intake -> routing -> backend -> response tracking),
# the state they touch on the way (the topology: master, fencing, readable replicas), and the
# packet codecs the monitor parses its samples with (its CPU is per second, on every process).
# Only these are compiled; the rest is not hot.
HOT_MODULES: tuple[str, ...] = (
    "proxy.session.context",
    "proxy.session.intake",
    "proxy.session.effects",
    "proxy.session.execute",
    "proxy.session.prepared",
    "proxy.session.commands",
    "proxy.session.client",
    "proxy.session.state",
    "proxy.session.idle_holders",
    "proxy.backend",
    "proxy.protocol.response",
    "proxy.protocol.framing",
    "proxy.routing.router",
    "proxy.routing.session_routing",
    "proxy.routing.balancer",
    "proxy.routing.session_state",
    "proxy.routing.classifier",
    "proxy.stats",
    "proxy.health.topology",
    "proxy.health.states",
    "proxy.protocol.wire",
    "proxy.protocol.packets",
)
GROUP = "baton_native"  # the shared library: <GROUP>__mypyc.<abi>.so
_COMPLETE = "COMPLETE"  # written last: a build without it is unfinished

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent  # the directory holding proxy/


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 of every .py file of the package (path and content), in a stable order."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        h.update(str(path.relative_to(package_dir)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def builds_dir() -> Path:
    """Where builds are kept: $BATON_NATIVE_DIR, else .native/ beside the package."""
    configured = os.environ.get("BATON_NATIVE_DIR")
    return Path(configured) if configured else SOURCE_ROOT / ".native"


def build_dir(digest: str | None = None) -> Path:
    """The build for these sources and this interpreter (it may not exist)."""
    tag = sys.implementation.cache_tag  # e.g. cpython-311: the C API the .so files are for
    return builds_dir() / f"{tag}-{(digest or source_digest())[:20]}"


def module_file(directory: Path, name: str) -> Path:
    """The extension file of module ``name`` in a build (``proxy/stats.<abi>.so``)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return directory.joinpath(*name.split(".")).with_name(name.rsplit(".", 1)[-1] + suffix)


class NativeFinder(importlib.abc.MetaPathFinder):
    """Imports the hot modules (and mypyc's shared library) from one build's .so files."""

    def __init__(self, directory: Path, modules: Sequence[str]) -> None:
        self.directory = directory
        self.files = {name: module_file(directory, name) for name in (*modules, f"{GROUP}__mypyc")}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


# What install() decided, for the startup log and `baton build-native --status`.
status = "not installed"


def install() -> str:
    """Puts a matching build in front of the sources, if there is one. Returns (and keeps in
    ``status``) what the process runs: "compiled (...)" or "interpreted (reason)"."""
    global status
    if os.environ.get("BATON_NATIVE", "1") == "0":
        status = "interpreted (BATON_NATIVE=0)"
        return status
    if any(isinstance(finder, NativeFinder) for finder in sys.meta_path):
        return status  # (proxy/__init__ ran again, e.g. a reload: the finder is in place)
    directory = build_dir()
    if not (directory / _COMPLETE).is_file():
        status = f"interpreted (no build for these sources in {directory.parent}; ./run setup makes one)"
        return status
    sys.meta_path.insert(0, NativeFinder(directory, HOT_MODULES))
    status = f"compiled ({len(HOT_MODULES)} modules, mypyc, {directory.name})"
    return status


def build(jobs: int | None = None) -> Path:
    """Compiles HOT_MODULES for the current sources (nothing if that build exists already) and
    removes the builds of other sources. Needs mypy (mypyc) and a C compiler."""
    digest = source_digest()
    target = build_dir(digest)
    if (target / _COMPLETE).is_file():
        return target
    from mypyc.build import mypycify  # only here: running Baton needs neither mypy nor gcc
    from setuptools import Distribution  # type: ignore[import-untyped]

    root = builds_dir()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="building-", dir=root))
    cwd = Path.cwd()
    try:
        # mypyc names modules by their paths relative to the working directory.
        os.chdir(SOURCE_ROOT)
        paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in HOT_MODULES]
        extensions = mypycify(paths, opt_level="3", target_dir=str(work / "c"), group_name=GROUP)
        dist = Distribution({"name": "baton-native", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "tmp")
        command.parallel = jobs or os.cpu_count() or 1
        dist.run_command("build_ext")
        (work / "lib" / _COMPLETE).write_text(digest + "\n")
        if target.exists():  # an unfinished build of the same sources
            shutil.rmtree(target)
        (work / "lib").rename(target)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    for other in root.iterdir():  # builds of other sources are never used again
        if other != target and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    return target
