"""Reading SHOW GRANTS into what Baton can do: monitor, promote, repoint, fence, switchover.

The grant lines are captured from MariaDB 10.11.19 (SHOW GRANTS as the account itself, so
an active default role's lines are included) and written as MySQL 8.0 prints them. The
statement-to-privilege table itself is checked against a live server in
test_privilege_probe.py.
"""

from __future__ import annotations

import pytest

from proxy.config import BackendConfig, FailoverConfig
from proxy.health.privileges import (
    OPERATIONS,
    capabilities_from_grants,
    global_privileges,
    judge,
    parse_version,
)

MARIADB = "10.11.19-MariaDB-0+deb12u1-log"
MARIADB_10_6 = "10.6.18-MariaDB-log"
MYSQL = "8.0.36"

PASSWORD = " IDENTIFIED BY PASSWORD '*B69027D44F6E5EDC07F1AEAD1477967B16F28227'"
ALL = ["GRANT ALL PRIVILEGES ON *.* TO `monitor`@`%`" + PASSWORD]
MINIMAL = [
    "GRANT RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR ON *.* TO "
    "`mini`@`%`" + PASSWORD
]
NO_RELOAD = [
    "GRANT READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR ON *.* TO `mini`@`%`" + PASSWORD
]
SUPER_ONLY = [
    "GRANT SUPER, BINLOG MONITOR, READ_ONLY ADMIN ON *.* TO `norel`@`10.0.%`" + PASSWORD,
    "GRANT SELECT ON `test`.* TO `norel`@`10.0.%`",
]
VIA_ACTIVE_ROLE = [
    "GRANT `failover_admin` TO `viarole`@`%`",
    "GRANT SLAVE MONITOR, READ_ONLY ADMIN ON *.* TO `viarole`@`%`" + PASSWORD,
    "GRANT RELOAD, REPLICATION SLAVE ADMIN ON *.* TO `failover_admin`",
    "SET DEFAULT ROLE `failover_admin` FOR `viarole`@`%`",
]
# The sandbox's application account: everything but what bypasses read_only.
APP = [
    "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, RELOAD, SHUTDOWN, PROCESS, FILE, "
    "REFERENCES, INDEX, ALTER, SHOW DATABASES, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, "
    "REPLICATION SLAVE, BINLOG MONITOR, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, "
    "CREATE USER, EVENT, TRIGGER, CREATE TABLESPACE, DELETE HISTORY, SET USER, FEDERATED ADMIN, "
    "CONNECTION ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, BINLOG ADMIN, "
    "BINLOG REPLAY, SLAVE MONITOR ON *.* TO `app`@`%`" + PASSWORD
]
MYSQL_MINIMAL = [
    "GRANT RELOAD, REPLICATION CLIENT ON *.* TO `monitor`@`%`",
    "GRANT REPLICATION_SLAVE_ADMIN,SYSTEM_VARIABLES_ADMIN ON *.* TO `monitor`@`%`",
]


def test_all_privileges_can_do_everything() -> None:
    caps = capabilities_from_grants(ALL, MARIADB)
    assert caps.can == OPERATIONS
    assert caps.missing == {}
    assert caps.auto_failover
    assert caps.summary() == "can: monitor, promote, repoint, fence, switchover"


def test_the_minimal_grant_is_enough() -> None:
    caps = capabilities_from_grants(MINIMAL, MARIADB)
    assert caps.can == OPERATIONS


def test_without_reload_promotion_and_switchover_are_impossible() -> None:
    caps = capabilities_from_grants(NO_RELOAD, MARIADB)
    assert caps.cannot == ("promote", "switchover")
    assert caps.missing == {"promote": ("RELOAD",), "switchover": ("RELOAD",)}
    assert not caps.auto_failover
    assert caps.missing_text("promote") == "RELOAD (for RESET SLAVE ALL)"
    assert "cannot promote: needs RELOAD (for RESET SLAVE ALL)" in caps.summary()


def test_super_covers_replication_but_not_reload_and_read_only_since_10_11() -> None:
    caps = capabilities_from_grants(SUPER_ONLY, MARIADB)
    assert caps.monitor and caps.repoint and caps.fence  # READ_ONLY ADMIN is granted
    assert caps.missing["promote"] == ("RELOAD",)

    without_read_only_admin = [SUPER_ONLY[0].replace(", READ_ONLY ADMIN", "")]
    caps = capabilities_from_grants(without_read_only_admin, MARIADB)
    assert not caps.fence
    assert caps.missing["fence"] == ("READ_ONLY ADMIN",)
    # Before 10.11 SUPER still implied READ_ONLY ADMIN.
    assert capabilities_from_grants(without_read_only_admin, MARIADB_10_6).fence


def test_replica_monitor_and_replication_client_are_read_as_the_server_prints_them() -> None:
    caps = capabilities_from_grants(["GRANT REPLICA MONITOR ON *.* TO `m`@`%`"], MARIADB)
    assert caps.monitor
    # On MariaDB REPLICATION CLIENT is BINLOG MONITOR: not enough for SHOW SLAVE STATUS.
    caps = capabilities_from_grants(["GRANT REPLICATION CLIENT ON *.* TO `m`@`%`"], MARIADB)
    assert not caps.monitor
    assert caps.missing["monitor"] == ("SLAVE MONITOR",)


def test_an_active_role_counts_and_an_inactive_one_is_noted() -> None:
    assert capabilities_from_grants(VIA_ACTIVE_ROLE, MARIADB).can == OPERATIONS
    inactive = [line for line in VIA_ACTIVE_ROLE if "TO `failover_admin`" not in line]
    caps = capabilities_from_grants(inactive, MARIADB)
    assert caps.missing["promote"] == ("REPLICATION SLAVE ADMIN", "RELOAD")
    assert len(caps.notes) == 1 and "role failover_admin" in caps.notes[0]
    assert "SET DEFAULT ROLE failover_admin" in caps.summary()


def test_database_level_grants_do_not_count() -> None:
    held, notes = global_privileges(SUPER_ONLY)
    assert held == {"SUPER", "BINLOG MONITOR", "READ_ONLY ADMIN"}
    assert notes == ()


def test_the_application_account_cannot_fence_or_promote() -> None:
    caps = capabilities_from_grants(APP, MARIADB)
    assert caps.monitor and caps.repoint
    assert caps.missing["fence"] == ("READ_ONLY ADMIN",)
    assert caps.missing["promote"] == ("READ_ONLY ADMIN",)


def test_usage_only_can_do_nothing() -> None:
    caps = capabilities_from_grants(["GRANT USAGE ON *.* TO `m`@`%`"], MARIADB)
    assert caps.can == ()
    assert caps.missing["switchover"] == (
        "SLAVE MONITOR",
        "REPLICATION SLAVE ADMIN",
        "RELOAD",
        "READ_ONLY ADMIN",
    )
    assert caps.summary().startswith("can: nothing; cannot monitor: needs SLAVE MONITOR")


def test_semi_sync_promotion_needs_replication_master_admin() -> None:
    caps = capabilities_from_grants(MINIMAL, MARIADB, semi_sync=True)
    assert caps.missing["promote"] == ("REPLICATION MASTER ADMIN",)
    assert caps.repoint and caps.fence


def test_mysql_8_dynamic_privileges() -> None:
    assert capabilities_from_grants(MYSQL_MINIMAL, MYSQL).can == OPERATIONS
    caps = capabilities_from_grants(MYSQL_MINIMAL[:1], MYSQL)
    assert caps.monitor and not caps.fence
    assert caps.missing["promote"] == ("REPLICATION_SLAVE_ADMIN", "SYSTEM_VARIABLES_ADMIN")
    assert capabilities_from_grants(["GRANT SUPER, RELOAD ON *.* TO `m`@`%`"], MYSQL).can == (
        OPERATIONS
    )


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (MARIADB, ("mariadb", (10, 11, 19))),
        ("5.5.5-10.6.18-MariaDB", ("mariadb", (10, 6, 18))),
        ("8.0.36-0ubuntu0.22.04.1", ("mysql", (8, 0, 36))),
        ("garbage", ("mysql", (0, 0, 0))),
    ],
)
def test_parse_version(version: str, expected: tuple[str, tuple[int, ...]]) -> None:
    assert parse_version(version) == expected


def _backends(*names: str, unpromotable: tuple[str, ...] = ()) -> list[BackendConfig]:
    return [
        BackendConfig(name=n, address=f"h:{i}", host="h", port=i, promotable=n not in unpromotable)
        for i, n in enumerate(names, 3306)
    ]


REPL = FailoverConfig(mode="auto", replication_user="repl", replication_password="x")


def test_verdict_auto_needs_one_promotable_replica_that_can_be_promoted() -> None:
    full, no_reload = capabilities_from_grants(ALL, MARIADB), capabilities_from_grants(NO_RELOAD, MARIADB)
    backends = _backends("db1", "db2", "db3")
    verdict = judge({"db1": full, "db2": no_reload, "db3": full}, backends, "db1", REPL)
    assert verdict.auto and verdict.switchover
    verdict = judge({"db1": full, "db2": no_reload, "db3": "connection refused"}, backends, "db1", REPL)
    assert not verdict.auto and not verdict.switchover
    assert verdict.why_not_auto == (
        "no replica can be promoted: db2 lacks RELOAD (for RESET SLAVE ALL); "
        "db3: privileges unknown (connection refused)"
    )
    unpromotable = _backends("db1", "db2", "db3", unpromotable=("db3",))
    verdict = judge({"db1": full, "db2": no_reload, "db3": full}, unpromotable, "db1", REPL)
    assert not verdict.auto


def test_verdict_switchover_needs_a_replication_account_and_a_fenceable_master() -> None:
    full = capabilities_from_grants(ALL, MARIADB)
    cannot_fence = capabilities_from_grants(["GRANT SUPER, RELOAD ON *.* TO `m`@`%`"], MARIADB)
    backends = _backends("db1", "db2")
    no_repl = FailoverConfig(mode="auto")
    verdict = judge({"db1": full, "db2": full}, backends, "db1", no_repl)
    assert verdict.auto and not verdict.switchover
    assert "replication_user" in verdict.why_not_switchover
    verdict = judge({"db1": cannot_fence, "db2": full}, backends, "db1", REPL)
    assert verdict.why_not_switchover == (
        "the master db1 cannot be fenced and repointed: needs READ_ONLY ADMIN "
        "(for SET GLOBAL read_only = 1)"
    )
    verdict = judge({"db1": full, "db2": full}, backends, "db1", REPL, {"db2": "repl lacks X"})
    assert verdict.auto and verdict.why_not_switchover == "db2: repl lacks X"
