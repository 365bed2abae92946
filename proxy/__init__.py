"""Baton: a failover-aware MySQL wire-protocol proxy."""

__version__ = "0.1.0"

# Before any hot module is imported: their compiled build, if one matches these sources.
from . import native as _native  # noqa: E402

_native.install()
