"""HAProxy in TCP mode in front of one MySQL server: the benchmark's "cheapest possible proxy".

HAProxy does not speak MySQL; it only splices bytes between client and server, so its overhead
is the floor any layer-7 proxy is measured against (see /work/shared/ANCHORS.md).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from proxy.sandbox import free_port, spawn, terminate

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


def haproxy_version() -> str:
    out = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].removeprefix("HAProxy version ").split()[0] if out else "?"


def tcp_config(listen_port: int, backend_address: str, threads: int | None = None) -> str:
    """A minimal TCP-mode config: one frontend on 127.0.0.1:listen_port, one server.

    No health check: a TCP check opens and drops connections, which MariaDB counts as aborted
    connects (enough of them block the host, error 1129), and with a single server there is
    nothing to fail over to anyway. Long client/server timeouts: sysbench connections idle
    only between its runs, never for an hour.
    """
    nbthread = f"    nbthread {threads}\n" if threads else ""
    return (
        "global\n"
        "    maxconn 4096\n"
        f"{nbthread}"
        "\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 1h\n"
        "    timeout server 1h\n"
        "\n"
        "frontend mysql\n"
        f"    bind 127.0.0.1:{listen_port}\n"
        "    default_backend master\n"
        "\n"
        "backend master\n"
        f"    server master {backend_address}\n"
    )


def is_listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc/net/tcp.

    Probing by connecting would make HAProxy open (and abort) a connection to the server.
    """
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(
        (cols := line.split())[1] == wanted and cols[3] == _LISTEN_STATE for line in lines
    )


class HAProxy:
    """One foreground HAProxy process (`-db`: no daemon, no master-worker, so its pid is the
    process doing the work) with its config and log in workdir."""

    def __init__(
        self,
        backend_address: str,
        workdir: Path | None = None,
        port: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="haproxy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.workdir / "haproxy.cfg"
        self.log_path = self.workdir / "haproxy.log"
        self.config_path.write_text(tcp_config(self.port, backend_address, threads))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("HAProxy is not started")
        return self.process.pid

    def start(self, timeout: float = 10) -> HAProxy:
        """Check the config, start HAProxy and wait until it listens."""
        check = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"HAProxy rejects its config:\n{check.stdout}{check.stderr}")
        self.process = spawn(
            [HAPROXY, "-db", "-f", str(self.config_path)], log_path=self.log_path
        )
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"HAProxy exited with {self.process.returncode}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"HAProxy not listening on {self.port} after {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (HAProxy's hard stop), SIGKILL after timeout; the exit code."""
        if self.process is None:
            return None
        return terminate(self.process, timeout=timeout)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
