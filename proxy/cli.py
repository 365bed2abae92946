"""The ``baton`` command line."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__

if TYPE_CHECKING:
    from .config import Config

CONFIG_OPTION = click.option(
    "--config", "-c", "config_path", default="config.toml", show_default=True,
    type=click.Path(dir_okay=False), help="Path to config.toml.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="baton")
def main() -> None:
    """Baton: a failover-aware MySQL/MariaDB proxy.

    \b
    Examples:
      baton run --config config.toml
      baton check-config --config config.toml
      baton sandbox              # a local 3-server topology with Baton in front
      baton status               # backends and pools, from the admin port
      baton reload               # re-read config.toml (SIGHUP or admin RELOAD)
    """


@main.command()
@CONFIG_OPTION
def run(config_path: str) -> None:
    """Run the proxy in the foreground (SIGTERM/SIGINT stop it gracefully, SIGHUP reloads).

    \b
    Example:
      baton run --config /etc/baton/config.toml
    """
    from .config import ConfigError
    from .workers import run as run_app

    try:
        run_app(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from None


@main.command("build-native")
@click.option("--status", "only_status", is_flag=True,
              help="Only say whether Baton runs compiled or interpreted here.")
def build_native(only_status: bool) -> None:
    """Compile the statement hot path with mypyc for these sources (needs mypy and a C
    compiler; ./run setup does it). Baton runs the same code interpreted without it.
    """
    from . import native

    if only_status:
        click.echo(f"baton here runs: {native.status}")
        return
    try:
        click.echo(f"built (Baton processes started from now on run it): {native.build()}")
    except Exception as exc:  # a compiler error, no mypy...: Baton still runs interpreted
        raise click.ClickException(f"native build failed: {exc}") from None


@main.command("check-config")
@CONFIG_OPTION
@click.option("--probe", is_flag=True,
              help="Also log in to every backend as the monitor account and read SHOW GRANTS: "
              "say which operations (monitor, promote, repoint, fence, switchover) it allows.")
def check_config(config_path: str, probe: bool) -> None:
    """Validate a config file; print what is wrong or what it would run.

    With --probe, exits 1 when a backend's grants cannot be read or the configured
    failover mode cannot work with them.

    \b
    Examples:
      baton check-config --config config.toml && systemctl reload baton
      baton check-config --config config.toml --probe
    """
    from .config import ConfigError, describe, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(describe(config))
    if probe and not _probe_privileges(config):
        sys.exit(1)


def _probe_privileges(config: Config) -> bool:
    """Print what the monitor account may do per backend; False if something is wrong."""
    import asyncio

    from .health.privileges import Capabilities, PrivilegeReport

    report = PrivilegeReport()
    master = next((b.name for b in config.backends if b.role == "master"), None)
    verdict = asyncio.run(
        report.refresh(config.backends, config.monitor, config.failover, master)
    )
    click.echo(f"\nprivileges of monitor account {config.monitor.user!r} (SHOW GRANTS):")
    for line in report.text(config.failover.mode):
        click.echo(line)
    unread = any(not isinstance(c, Capabilities) for c in report.probed.values())
    return not unread and (verdict.auto or config.failover.mode != "auto")


@main.command()
@click.option("--dir", "state_dir", type=click.Path(file_okay=False), default=None,
              help="State directory (default: ~/.baton-sandbox).")
@click.option("--down", is_flag=True, help="Stop the sandbox's servers and delete its directory.")
@click.option("--port", default=6033, show_default=True, help="Port Baton listens on.")
@click.option("--admin-port", default=6032, show_default=True, help="Admin port.")
@click.option("--metrics-port", default=6070, show_default=True, help="Metrics port.")
@click.option("--failover-mode", type=click.Choice(["auto", "follow", "manual"]), default="auto",
              show_default=True, help="Baton's [failover] mode.")
@click.option("--kill-master", is_flag=True,
              help="Demo: kill the master (SIGKILL) under a write load through Baton and print "
              "what the clients saw and the failover timeline.")
def sandbox(state_dir: str | None, down: bool, port: int, admin_port: int, metrics_port: int,
            failover_mode: str, kill_master: bool) -> None:
    """Start a local MariaDB GTID topology (1 master, 2 replicas) with Baton in front.

    \b
    Examples:
      baton sandbox                 # then: mariadb -h127.0.0.1 -P6033 -uapp -papp
      baton sandbox --kill-master   # watch a failover: clients' view and Baton's timeline
      baton sandbox --failover-mode manual   # then kill the master and run: baton failover
      baton sandbox --down          # stop and delete it
    """
    from .sandbox import run_sandbox, sandbox_down

    path = Path(state_dir) if state_dir else Path.home() / ".baton-sandbox"
    if down:
        sandbox_down(path)
        click.echo(f"sandbox in {path} stopped and removed")
        return
    run_sandbox(path, proxy_port=port, admin_port=admin_port, metrics_port=metrics_port,
                echo=click.echo, failover_mode=failover_mode, kill_master=kill_master)



# --- operations: commands that talk to a running Baton ---------------------------------------
#
# They reach Baton through its admin port (the same console as `mariadb -P6032 -uadmin`), or
# by signal through its pid file. The admin address and credentials default to the [admin]
# section of --config; a command that fails prints one line on stderr and exits 1.


class OpsError(click.ClickException):
    """One clear line, exit status 1."""


@dataclass(frozen=True, slots=True)
class AdminTarget:
    host: str
    port: int
    user: str
    password: str

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _ops_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--config", "-c", "config_path", default=None, type=click.Path(dir_okay=False),
            help="config.toml to take the admin address and credentials from "
            "(default: ./config.toml when it exists).",
        ),
        click.option("--admin", "admin_addr", metavar="HOST:PORT", default=None,
                     help="Admin port address (default: [admin] listen, else 127.0.0.1:6032)."),
        click.option("--admin-user", default=None, help="Admin user (default: [admin] user, else admin)."),
        click.option("--admin-password", default=None, envvar="BATON_ADMIN_PASSWORD",
                     help="Admin password (default: [admin] password, else admin; "
                     "env BATON_ADMIN_PASSWORD)."),
        click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
                     help="Seconds to wait for Baton's answer."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load_ops_config(config_path: str | None, required: bool = False) -> Config | None:
    """The config named by --config, or ./config.toml if present; None when there is none."""
    from .config import ConfigError, load_config

    path = config_path
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    if path is None:
        if required:
            raise OpsError("no config file: pass --config PATH (it maps addresses to backend names)")
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        more = f" (and {len(exc.errors) - 1} more; see baton check-config)" if len(exc.errors) > 1 else ""
        raise OpsError(f"{exc.errors[0]}{more}") from None


def _admin_target(config: Config | None, admin_addr: str | None, user: str | None, password: str | None) -> AdminTarget:
    from .config import AdminConfig, ConfigError, parse_address

    admin = config.admin if config is not None else AdminConfig()
    if admin_addr is not None:
        try:
            host, port = parse_address(admin_addr, "--admin")
        except ConfigError as exc:
            raise OpsError(exc.errors[0]) from None
    elif not admin.enabled:
        raise OpsError(f"the admin port is disabled in {config.source if config else 'the config'} "
                       "([admin] listen = \"\"); pass --admin HOST:PORT")
    else:
        host, port = admin.host, admin.port
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return AdminTarget(host, port, user if user is not None else admin.user,
                       password if password is not None else admin.password)


class AdminClient:
    """A short-lived admin-port connection (PyMySQL: the admin port speaks MySQL)."""

    def __init__(self, target: AdminTarget, timeout: float) -> None:
        import pymysql

        self.target = target
        try:
            self.conn = pymysql.connect(
                host=target.host, port=target.port, user=target.user, password=target.password,
                connect_timeout=min(timeout, 10), read_timeout=timeout, write_timeout=timeout,
                autocommit=None, charset="utf8mb4",
            )
        except pymysql.err.OperationalError as exc:
            code, message = _error_parts(exc)
            if code == 1045:
                raise OpsError(f"admin login refused at {target.address}: {message}") from None
            raise OpsError(f"cannot reach Baton's admin port at {target.address}: {message}") from None

    def query(self, command: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        import pymysql

        try:
            with self.conn.cursor() as cursor:
                cursor.execute(command)
                columns = [d[0] for d in cursor.description or ()]
                return columns, list(cursor.fetchall())
        except pymysql.err.MySQLError as exc:
            _code, message = _error_parts(exc)
            raise OpsError(message) from None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_parts(exc: Exception) -> tuple[int | None, str]:
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        message = str(args[1])
        if isinstance(args[1], str) and "(" in message and args[0] in (2003, 2013):
            message = message.split("(", 1)[-1].rstrip(")") or message
        return args[0], message
    return None, str(exc)


def _connect(config_path: str | None, admin_addr: str | None, admin_user: str | None,
             admin_password: str | None, timeout: float, config: Config | None = None) -> AdminClient:
    if config is None and (admin_addr is None or admin_user is None or admin_password is None):
        config = _load_ops_config(config_path)
    return AdminClient(_admin_target(config, admin_addr, admin_user, admin_password), timeout)


def _quote_name(name: str) -> str:
    if "'" in name or "\\" in name:
        raise OpsError(f"invalid backend name {name!r}")
    return f"'{name}'"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned text columns; NULL shows as '-'."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


@main.command()
@_ops_options
def status(config_path: str | None, admin_addr: str | None, admin_user: str | None,
           admin_password: str | None, timeout: float) -> None:
    """Show backends and pools of a running Baton (from its admin port).

    \b
    Examples:
      baton status --config /etc/baton/config.toml
      baton status --admin 127.0.0.1:6032 --admin-user admin --admin-password admin
    """
    with _connect(config_path, admin_addr, admin_user, admin_password, timeout) as admin:
        _, stat_rows = admin.query("SHOW STATS")
        stats = {str(k): v for k, v in stat_rows}
        _, version = admin.query("SHOW VERSION")
        backends = admin.query("SHOW BACKENDS")
        pools = admin.query("SHOW POOLS")
    flags = " PAUSED" if str(stats.get("paused")) == "1" else ""
    click.echo(
        f"Baton {version[0][0]} at {admin.target.address}: master {stats.get('master') or '(none)'}, "
        f"epoch {stats.get('epoch')}, {stats.get('clients_connected')} clients, "
        f"up {stats.get('uptime_s')}s{flags}"
    )
    click.echo("\nBACKENDS")
    click.echo(format_table(*backends))
    click.echo("\nPOOLS")
    click.echo(format_table(*pools))


@main.command()
@click.argument("name")
@_ops_options
def promote(name: str, config_path: str | None, admin_addr: str | None, admin_user: str | None,
            admin_password: str | None, timeout: float) -> None:
    """Tell Baton that backend NAME is the master now (after a promotion done elsewhere).

    Baton checks NAME is reachable, writable and no longer replicating, sends writes to it from
    a new epoch on, and fences the master it replaces.

    \b
    Examples:
      baton promote db2 --config /etc/baton/config.toml
      baton promote db2 --admin 127.0.0.1:6032
    """
    with _connect(config_path, admin_addr, admin_user, admin_password, timeout) as admin:
        columns, rows = admin.query(f"PROMOTE {_quote_name(name)}")
    click.echo(format_table(columns, rows))


@main.command()
@click.option("--to", "target", required=True, metavar="NAME", help="Backend to become the master.")
@_ops_options
def switchover(target: str, config_path: str | None, admin_addr: str | None, admin_user: str | None,
               admin_password: str | None, timeout: float) -> None:
    """Planned change of master to a replica, without losing a transaction.

    The current master goes read-only, NAME applies everything, becomes writable and the other
    servers are repointed to it. If NAME does not catch up in time, nothing changes.

    \b
    Examples:
      baton switchover --to db2 --config /etc/baton/config.toml
      baton switchover --to db2 --timeout 120
    """
    with _connect(config_path, admin_addr, admin_user, admin_password, timeout) as admin:
        columns, rows = admin.query(f"SWITCHOVER TO {_quote_name(target)}")
    click.echo(format_table(columns, rows))


@main.command()
@click.option("--to", "target", default=None, metavar="NAME",
              help="Backend to promote (default: the one the election picks).")
@_ops_options
def failover(target: str | None, config_path: str | None, admin_addr: str | None,
             admin_user: str | None, admin_password: str | None, timeout: float) -> None:
    """Fail over a dead master now, whatever [failover] mode says.

    The same steps as automatic failover: the replica that has received the most (or NAME,
    if it has) applies its relay log, takes the writes, the others are repointed to it and
    the old master is fenced. Refused while the master answers: use switchover then.

    \b
    Examples:
      baton failover --config /etc/baton/config.toml
      baton failover --to db3
    """
    command = "FAILOVER" + (f" TO {_quote_name(target)}" if target else "")
    with _connect(config_path, admin_addr, admin_user, admin_password, timeout) as admin:
        columns, rows = admin.query(command)
    click.echo(format_table(columns, rows))


@main.command()
@click.option("--pid-file", default=None, type=click.Path(dir_okay=False),
              help="Send SIGHUP to the pid in this file (default: [proxy] pid_file of --config). "
              "Without a pid file, RELOAD is sent through the admin port.")
@_ops_options
def reload(pid_file: str | None, config_path: str | None, admin_addr: str | None,
           admin_user: str | None, admin_password: str | None, timeout: float) -> None:
    """Make a running Baton re-read its config file.

    An invalid file changes nothing: Baton keeps the running config and says which key is
    wrong and why (here, in its log and in the admin port's SHOW CONFIG).

    \b
    Examples:
      baton reload --config /etc/baton/config.toml        # SIGHUP if [proxy] pid_file is set
      baton reload --pid-file /run/baton/baton.pid
      baton reload --admin 127.0.0.1:6032                 # RELOAD through the admin port
    """
    config = None
    if pid_file is None or admin_addr is None:
        config = _load_ops_config(config_path)
    if pid_file is None and config is not None and config.proxy.pid_file:
        pid_file = config.proxy.pid_file

    def admin(seconds: float) -> AdminClient:
        return _connect(config_path, admin_addr, admin_user, admin_password, seconds, config)

    if pid_file is None:
        with admin(timeout) as client:
            columns, rows = client.query("RELOAD")
        click.echo(format_table(columns, rows))
    else:
        _reload_by_signal(pid_file, admin, timeout)


def _reload_by_signal(pid_file: str, admin: Callable[[float], AdminClient], timeout: float) -> None:
    """SIGHUP, then (when the admin port answers) wait for Baton's verdict and report it."""
    pid = _read_pid(pid_file)
    client: AdminClient | None
    try:
        client = admin(min(timeout, 5))
        before = _reload_count(client)
    except OpsError:
        client, before = None, 0  # signal anyway; only the outcome cannot be shown
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise OpsError(f"no process {pid} (from {pid_file}); is Baton running?") from None
    except PermissionError:
        raise OpsError(f"not allowed to signal process {pid} (from {pid_file})") from None
    if client is None:
        click.echo(f"sent SIGHUP to Baton (pid {pid}); its log says whether the reload was applied")
        return
    with client:
        deadline = time.monotonic() + timeout
        while _reload_count(client) == before:
            if time.monotonic() > deadline:
                raise OpsError(f"sent SIGHUP to pid {pid}, but Baton reported no reload within {timeout:g}s")
            time.sleep(0.1)
        _, rows = client.query("SHOW CONFIG")
    outcome = {str(k): v for k, v in rows if str(k).startswith("reload.")}
    errors = [str(v) for k, v in rows if str(k).startswith("reload.errors[")]
    if str(outcome.get("reload.ok")) != "1":
        reason = "; ".join(errors) or outcome.get("reload.summary")
        raise OpsError(f"reload rejected, Baton keeps its previous config: {reason}")
    click.echo(f"reloaded (pid {pid}): {outcome.get('reload.summary')}")


def _read_pid(pid_file: str) -> int:
    try:
        text = Path(pid_file).read_text().strip()
    except OSError as exc:
        raise OpsError(f"cannot read pid file {pid_file}: {exc.strerror or exc}") from None
    if not text.isdigit():
        raise OpsError(f"pid file {pid_file} does not hold a process id: {text[:40]!r}")
    return int(text)


def _reload_count(admin: AdminClient) -> int:
    _, rows = admin.query("SELECT SUM(value) FROM stats WHERE variable IN ('reloads.ok', 'reloads.failed')")
    return int(rows[0][0] or 0)


def _addresses(host: str, port: int) -> set[tuple[str, int]]:
    """(ip, port) pairs a host name stands for; empty if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(str(info[4][0]), port) for info in infos}


def backend_for_address(config: Config, address: str, option: str) -> str:
    """The name of the configured backend at HOST:PORT (by name first, then by resolved IP)."""
    from .config import ConfigError, parse_address

    try:
        host, port = parse_address(address, option)
    except ConfigError as exc:
        raise OpsError(exc.errors[0]) from None
    for b in config.backends:
        if b.host.lower() == host.lower() and b.port == port:
            return b.name
    wanted = _addresses(host, port)
    matches = [b.name for b in config.backends if b.port == port and wanted & _addresses(b.host, b.port)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{b.name}={b.address}" for b in config.backends)
    raise OpsError(f"{option} {address} is not a backend in {config.source} ({known})")


@main.command("notify-promotion")
@click.option("--new-master", required=True, metavar="HOST:PORT", help="The server just promoted.")
@click.option("--old-master", default=None, metavar="HOST:PORT", help="The master it replaces, if known.")
@_ops_options
def notify_promotion(new_master: str, old_master: str | None, config_path: str | None,
                     admin_addr: str | None, admin_user: str | None, admin_password: str | None,
                     timeout: float) -> None:
    """Hook for failover managers: tell Baton which server was promoted.

    HOST:PORT is mapped to a backend name through the config's [[backends]] addresses, then
    PROMOTE is sent through the admin port. Exits non-zero if Baton refuses (for example, the
    server is still read-only).

    \b
    Orchestrator (orchestrator.conf.json):
      "PostFailoverProcesses": ["baton notify-promotion -c /etc/baton/config.toml
          --new-master {successorHost}:{successorPort} --old-master {failedHost}:{failedPort}"]
    MHA (master_ip_failover script, "start" step):
      baton notify-promotion -c /etc/baton/config.toml --new-master $new_master_ip:$new_master_port
    """
    config = _load_ops_config(config_path, required=True)
    assert config is not None
    name = backend_for_address(config, new_master, "--new-master")
    command = f"PROMOTE {_quote_name(name)}"
    if old_master is not None:
        try:
            command += f" REPLACING {_quote_name(backend_for_address(config, old_master, '--old-master'))}"
        except OpsError as exc:
            click.echo(f"warning: {exc.message}; promoting {name} anyway", err=True)
    with _connect(config_path, admin_addr, admin_user, admin_password, timeout, config) as admin:
        columns, rows = admin.query(command + " SOURCE 'hook'")
    click.echo(format_table(columns, rows))


if __name__ == "__main__":
    main()
