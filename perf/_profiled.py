"""``python -m perf._profiled run --config PATH``: Baton with cProfile toggled by SIGUSR2.

The first SIGUSR2 switches the profiler on, the next one off and writes the statistics
gathered so far to $BATON_PROFILE_OUT (pstats format); and so on. Used by perf/hotpath.py to
profile only the measured runs, not the start-up or the warm-up.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType

from proxy.cli import main

_profile = cProfile.Profile()
_on = False


def _toggle(signum: int, frame: FrameType | None) -> None:
    global _on
    if _on:
        _profile.disable()
        _profile.dump_stats(os.environ.get("BATON_PROFILE_OUT", "baton.prof"))
    else:
        _profile.enable()
    _on = not _on


signal.signal(signal.SIGUSR2, _toggle)
sys.argv[0] = "baton"
main()
