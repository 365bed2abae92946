"""Baton: a failover-aware MySQL wire-protocol proxy."""

__version__ = "0.1.0"
