"""Real MariaDB replication topologies and Redis servers on loopback, for tests and demos."""

from proxy.sandbox.mariadb import *  # noqa: F403  (split by concern in the next commit)
