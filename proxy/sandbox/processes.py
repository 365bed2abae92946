"""Child processes and ports: servers started so that no test run can leave them behind.

Servers are started in their own session (a terminal's Ctrl-C reaches only Baton) and, when
spawned from the main thread, with a parent-death signal; whatever is still running at exit
is stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """count distinct free ports (free_port alone may hand out the same one twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def root_options() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


# --- child processes -------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Any = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)

_LIVE: set[subprocess.Popen[bytes]] = set()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when the spawning thread exits.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process with stdout and stderr appended to log_path.

    The parent-death signal is only armed from the main thread: Linux sends it when the
    spawning *thread* exits, which would kill a server restarted from a short-lived worker.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if on_main_thread else None,
        )
    _LIVE.add(proc)
    return proc


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (waking it first if stopped), wait, SIGKILL if it will not go; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _LIVE.discard(proc)
    return int(proc.returncode)


def kill_now(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()
    _LIVE.discard(proc)


@atexit.register
def _stop_leftovers() -> None:
    leftovers = [p for p in _LIVE if p.poll() is None]
    for proc in leftovers:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    for proc in leftovers:
        terminate(proc, timeout=20)
