"""Real MariaDB replication topologies and Redis servers on loopback, for tests and demos.

Used by the integration tests, by `baton sandbox` and by the perf scripts. Everything runs as
child processes on free 127.0.0.1 ports under a directory the caller owns; nothing here needs
asyncio. One module per concern: processes (ports, spawning, cleanup at exit), mariadb (one
server), topology (ReplicationSandbox), redis_server, config_writer (TOML), run (`baton
sandbox`), demo (`baton sandbox --kill-master`), baton_process (Baton as a subprocess).
"""

from proxy.sandbox.config_writer import toml_dumps
from proxy.sandbox.mariadb import (
    MARIADB_INSTALL_DB,
    MARIADBD,
    MariaDBInstance,
    PortInUseError,
    ServerStartError,
    mariadb_template,
    mariadb_version,
)
from proxy.sandbox.processes import free_port, free_ports, spawn, terminate
from proxy.sandbox.redis_server import REDIS_SERVER, RedisInstance
from proxy.sandbox.run import CONFIG_FILE, run_sandbox, sandbox_down, sandbox_sections
from proxy.sandbox.topology import STATE_FILE, ReplicationSandbox

__all__ = [
    "CONFIG_FILE",
    "MARIADBD",
    "MARIADB_INSTALL_DB",
    "REDIS_SERVER",
    "STATE_FILE",
    "MariaDBInstance",
    "PortInUseError",
    "RedisInstance",
    "ReplicationSandbox",
    "ServerStartError",
    "free_port",
    "free_ports",
    "mariadb_template",
    "mariadb_version",
    "run_sandbox",
    "sandbox_down",
    "sandbox_sections",
    "spawn",
    "terminate",
    "toml_dumps",
]
