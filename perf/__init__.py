"""Benchmarks and drills. Run them as modules from the repository root (``./run perf NAME``
or ``.venv/bin/python -m perf.NAME``), so that ``proxy``, ``perf`` and the tests' support
code import as packages without editing ``sys.path``."""
