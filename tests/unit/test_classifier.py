"""Statement classifier: tables of tricky statements, plus properties over arbitrary input."""

from __future__ import annotations

import ast
import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf import classifier_bench
from proxy.routing import classifier
from proxy.routing.classifier import (
    Classification,
    Hint,
    KillRequest,
    Kind,
    Pin,
    SetItem,
    classify,
    is_literal,
)

R, W = Kind.READ, Kind.WRITE
UV, GL, FR = Pin.USER_VAR_ASSIGN, Pin.GET_LOCK, Pin.FOUND_ROWS


def case(sql: bytes, kind: Kind, master_only: bool | None = None, pin=None, unpin=None):
    """master_only defaults to what the kind implies: True for WRITE, else False."""
    if master_only is None:
        master_only = kind is W
    return pytest.param(sql, kind, master_only, pin, unpin, id=sql.decode("latin-1")[:70])


ROUTING = [
    # --- reads, and what may precede their keyword
    case(b"SELECT 1", R),
    case(b"select * from t where id = 1", R),
    case(b"SeLeCt 1", R),
    case(b"  \n\t\r\n SELECT 1", R),
    case(b"/* c */ SELECT 1", R),
    case(b"/**/SELECT 1", R),
    case(b"/***/SELECT 1", R),
    case(b"-- c\nSELECT 1", R),
    case(b"--\tc\nSELECT 1", R),
    case(b"--\nSELECT 1", R),
    case(b"# c\nSELECT 1", R),
    case(b"/* a */ /* b */ -- c\n  # d\n\tSELECT 1", R),
    case(b"/*+ MAX_EXECUTION_TIME(1000) */ SELECT 1", R),
    case(b"/* multi\nline\ncomment */\nSELECT 1", R),
    case(b"(SELECT 1) UNION (SELECT 2)", R),
    case(b"((SELECT a FROM t1) UNION ALL (SELECT a FROM t2)) ORDER BY a", R),
    case(b"( /* c */ select 1)", R),
    case(b"SELECT\n1", R),
    case(b"SELECT\t*\tFROM\tt", R),
    case(b"SELECT(1)", R),
    case(b"SHOW TABLES", R),
    case(b"show full processlist", R),
    case(b"SHOW CREATE TABLE t", R),
    case(b"SHOW SLAVE STATUS", R),
    case(b"DESCRIBE t", R),
    case(b"DESC t", R),
    case(b"desc t a", R),
    case(b"HELP 'SELECT'", R),
    case(b"VALUES ROW(1, 2), ROW(3, 4)", R),
    case(b"TABLE t ORDER BY a LIMIT 1", R),
    # --- a keyword in a comment never decides the kind
    case(b"/* DELETE */ SELECT 1", R),
    case(b"-- DELETE FROM t\nSELECT 1", R),
    case(b"# UPDATE t\nSELECT 1", R),
    case(b"/* SELECT */ DELETE FROM t", W),
    case(b"-- SELECT\nUPDATE t SET a = 1", W),
    case(b"# SELECT 1\nINSERT INTO t VALUES (1)", W),
    case(b"/* SELECT 1 */ /* SHOW TABLES */ DROP TABLE t", W),
    case(b"--SELECT 1", W),  # "--" without a space is not a comment in MySQL
    # --- executable comments are code
    case(b"/*!50000 SELECT */ 1", R),
    case(b"/*!50000SELECT 1*/", R),
    case(b"/*!50000 DELETE FROM t */", W),
    case(b"/*!DELETE FROM t*/", W),
    case(b"/*M!100100 DELETE FROM t */", W),
    case(b"/* c */ /*!50000 /* inner */ DELETE FROM t */", W),
    case(b"/*!40101 SET NAMES utf8mb4 */", Kind.SESSION),
    case(b"SELECT 1 /*!50000 FOR UPDATE */", R, True),
    case(b"SELECT /*M!100100 SQL_CALC_FOUND_ROWS */ a FROM t", R, True, FR),
    # --- EXPLAIN does not execute; ANALYZE and EXPLAIN ANALYZE do
    case(b"EXPLAIN SELECT 1", R),
    case(b"EXPLAIN t", R),
    case(b"EXPLAIN UPDATE t SET a = 1", R),
    case(b"EXPLAIN DELETE FROM t", R),
    case(b"EXPLAIN INSERT INTO t VALUES (1)", R),
    case(b"EXPLAIN REPLACE INTO t VALUES (1)", R),
    case(b"explain format=json delete from t", R),
    case(b"EXPLAIN EXTENDED SELECT 1", R),
    case(b"EXPLAIN PARTITIONS SELECT 1", R),
    case(b"EXPLAIN FOR CONNECTION 12", R),
    case(b"DESCRIBE DELETE FROM t", R),
    case(b"EXPLAIN SELECT GET_LOCK('a', 1)", R),  # not executed: no lock taken
    case(b"EXPLAIN ANALYZE SELECT 1", R),
    case(b"EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", R, True),
    case(b"EXPLAIN ANALYZE DELETE FROM t", W),
    case(b"EXPLAIN ANALYZE FORMAT=TREE UPDATE t SET a = 1", W),
    case(b"explain /* c */ analyze update t set a = 1", W),
    case(b"DESC ANALYZE DELETE FROM t", W),
    case(b"ANALYZE SELECT 1", R),
    case(b"ANALYZE FORMAT=JSON SELECT * FROM t", R),
    case(b"ANALYZE UPDATE t SET a = 1", W),
    case(b"ANALYZE DELETE FROM t", W),
    case(b"ANALYZE TABLE t", W),
    case(b"ANALYZE NO_WRITE_TO_BINLOG TABLE t", W),
    case(b"ANALYZE LOCAL TABLE t", W),
    case(b"ANALYZE", W),
    # --- WITH: the main statement decides
    case(b"WITH c AS (SELECT 1) SELECT * FROM c", R),
    case(b"with c as (select 1), d as (select 2) select * from c, d", R),
    case(
        b"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5) "
        b"SELECT * FROM c",
        R,
    ),
    case(b"WITH c AS (SELECT id FROM t) DELETE FROM t WHERE id IN (SELECT id FROM c)", W),
    case(b"WITH c AS (SELECT 1 AS a) UPDATE t, c SET t.a = c.a", W),
    case(b"WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c", W),
    case(b"WITH `select` AS (SELECT 1) DELETE FROM t", W),
    case(b"WITH c AS (SELECT 1) SELECT * FROM c FOR UPDATE", R, True),
    case(b"WITH c AS (SELECT 1) (SELECT * FROM c)", W),  # parenthesised main: conservative
    case(b"WITH", W),
    # --- literals, quoted identifiers and comments do not fool the scan
    case(b"SELECT 'FOR UPDATE'", R),
    case(b'SELECT "LOCK IN SHARE MODE"', R),
    case(b"SELECT `into` FROM t", R),
    case(b"SELECT 'GET_LOCK(1)', \"LAST_INSERT_ID()\", `FOUND_ROWS()` FROM t", R),
    case(b"SELECT 'a := b', ':='", R),
    case(b"SELECT '@@identity'", R),
    case(b"SELECT 1 /* FOR UPDATE */", R),
    case(b"SELECT 1 -- FOR UPDATE", R),
    case(b"SELECT 1 # FOR UPDATE", R),
    case(b"SELECT 'it''s' FROM t", R),
    # Backslash-escaped quote: read as NO_BACKSLASH_ESCAPES too, so conservatively master-only.
    case(b"SELECT 'it\\'s FOR UPDATE' FROM t", R, True),
    case(b"SELECT 'it''s' FOR UPDATE", R, True),
    case(b"SELECT 'a\\'b'", R),
    # Under NO_BACKSLASH_ESCAPES 'C:\' ends at the second quote: the union is master-only.
    case(b"SELECT 'C:\\' FOR UPDATE", R, True),
    case(b"SELECT my_get_lock(1), get_lockx(2), last_insert_id FROM t", R),
    case(b"SELECT format(1, 2), fortune, foreign_id FROM t FORCE INDEX (i)", R),
    case(b"SELECT * FROM information_schema.tables WHERE table_name = 'x'", R),
    case(b"SELECT * FROM intox, lockers, rowcount", R),
    case(b"SELECT @@version, @x, @@session.sql_mode", R),
    case(b"SELECT a FROM t ORDER BY a LIMIT 10 OFFSET 5", R),
    case(b"SELECT * FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '2020-01-01 00:00:00'", R),
    # --- locking reads and master-only functions
    case(b"SELECT * FROM t FOR UPDATE", R, True),
    case(b"select * from t for   update", R, True),
    case(b"SELECT * FROM t FOR\nUPDATE", R, True),
    case(b"SELECT * FROM t FOR UPDATE NOWAIT", R, True),
    case(b"SELECT * FROM t FOR UPDATE OF t SKIP LOCKED", R, True),
    case(b"SELECT * FROM t FOR SHARE", R, True),
    case(b"SELECT * FROM t LOCK IN SHARE MODE", R, True),
    case(b"SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", R, True),
    case(b"SELECT a FROM t INTO OUTFILE '/tmp/x'", R, True),
    case(b"SELECT a INTO DUMPFILE '/tmp/x' FROM t", R, True),
    case(b"SELECT a INTO @x FROM t", R, True, UV),
    case(b"SELECT a, b FROM t INTO @x, @y", R, True, UV),
    case(b"SELECT 1 INTO @'x'", R, True, UV),
    case(b"SELECT 1 INTO @`x`", R, True, UV),
    case(b"SELECT GET_LOCK('a', 10)", R, True, GL),
    case(b"select get_lock ('a', 10)", R, True, GL),
    case(b"SELECT RELEASE_LOCK('a')", R, True),
    case(b"SELECT RELEASE_ALL_LOCKS()", R, True, None, GL),
    case(b"SELECT IS_USED_LOCK('a')", R, True),
    case(b"SELECT IS_FREE_LOCK('a')", R, True),
    case(b"SELECT LAST_INSERT_ID()", R, True),
    case(b"SELECT last_insert_id( )", R, True),
    case(b"SELECT FOUND_ROWS()", R, True),
    case(b"SELECT ROW_COUNT()", R, True),
    case(b"SELECT NEXTVAL(s)", R, True),
    case(b"SELECT LASTVAL(s)", R, True),
    case(b"SELECT SETVAL(s, 100)", R, True),
    case(b"SELECT NEXT VALUE FOR s", R, True),
    case(b"SELECT PREVIOUS VALUE FOR s", R, True),
    case(b"SELECT s.nextval, s.currval", R, True),
    case(b"SELECT MASTER_GTID_WAIT('0-1-100', 1)", R, True),
    case(b"SELECT MASTER_POS_WAIT('bin.000001', 4)", R, True),
    case(b"SELECT SOURCE_POS_WAIT('bin.000001', 4)", R, True),
    case(b"SELECT WAIT_FOR_EXECUTED_GTID_SET('uuid:1-5', 1)", R, True),
    case(b"SELECT WAIT_UNTIL_SQL_THREAD_AFTER_GTIDS('uuid:1-5', 1)", R, True),
    case(b"SELECT @@identity", R, True),
    case(b"SELECT @@last_insert_id", R, True),
    case(b"SELECT @@SESSION.insert_id", R, True),
    case(b"SELECT @@last_gtid", R, True),
    case(b"SELECT @v := 1", R, True, UV),
    case(b"SELECT @v:=@v+1 AS n FROM t", R, True, UV),
    case(b"SELECT @`v` := 1", R, True, UV),
    case(b"SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 10", R, True, FR),
    case(b"select sql_calc_found_rows a from t", R, True, FR),
    case(b"SELECT GET_LOCK('a', 1), RELEASE_ALL_LOCKS()", R, True, GL, GL),
    case(b"SELECT @a := GET_LOCK('x', 1)", R, True, UV),  # the pin never released wins
    case(b"TABLE t INTO @x", R, True, UV),
    # --- writes, and their pins
    case(b"INSERT INTO t VALUES (1)", W),
    case(b"insert into t values (1)", W),
    case(b"UPDATE t SET a = 1", W),
    case(b"DELETE FROM t", W),
    case(b"REPLACE INTO t VALUES (1)", W),
    case(b"INSERT INTO t SELECT * FROM u", W),
    case(b"UPDATE t SET c = (@v := c + 1) WHERE id = 1", W, True, UV),
    case(b"INSERT INTO t SELECT GET_LOCK('a', 1)", W, True, GL),
    case(b"DO 1", W),
    case(b"DO GET_LOCK('a', 10)", W, True, GL),
    case(b"DO RELEASE_ALL_LOCKS()", W, True, None, GL),
    case(b"CALL p(1)", W),
    case(b"CALL p('@x', @@sql_mode)", W),
    case(b"CALL p(1, @out)", W, True, UV),  # an OUT argument sets @out on the master only
    case(b"LOAD DATA INFILE '/tmp/x' INTO TABLE t", W),
    case(b"LOAD XML LOCAL INFILE 'x' INTO TABLE t", W),
    case(b"HANDLER t OPEN", W, True, Pin.HANDLER),
    case(b"HANDLER t OPEN AS h", W, True, Pin.HANDLER),
    case(b"HANDLER h READ FIRST", W),
    case(b"HANDLER h CLOSE", W, True, None, Pin.HANDLER),
    case(b"FLUSH TABLES", W),
    case(b"FLUSH PRIVILEGES", W),
    case(b"FLUSH TABLES WITH READ LOCK", W, True, Pin.LOCK_TABLES),
    case(b"flush tables t1, t2 with read lock", W, True, Pin.LOCK_TABLES),
    case(b"FLUSH TABLES t FOR EXPORT", W, True, Pin.LOCK_TABLES),
    case(b"OPTIMIZE TABLE t", W),
    case(b"CHECK TABLE t", W),
    case(b"REPAIR TABLE t", W),
    case(b"KILL 5", W),
    case(b"KILL QUERY 5", W),
    case(b"GRANT SELECT ON *.* TO 'u'@'%'", W),
    case(b"REVOKE ALL ON *.* FROM 'u'@'%'", W),
    case(b"CREATE TABLE t (a INT)", W),
    case(b"CREATE TABLE t SELECT 1", W),
    case(b"ALTER TABLE t ADD COLUMN b INT", W),
    case(b"TRUNCATE TABLE t", W),
    case(b"RENAME TABLE a TO b", W),
    case(b"CREATE DATABASE d", W),
    case(b"INSTALL SONAME 'ha_x'", W),
    case(b"PURGE BINARY LOGS TO 'bin.000002'", W),
    case(b"CHANGE MASTER TO MASTER_HOST = 'h'", W),
    case(b"START SLAVE", W),
    case(b"STOP REPLICA", W),
    case(b"RESET MASTER", W),
    case(b"BEGIN NOT ATOMIC SELECT 1 END", W),
    case(b"EXECUTE IMMEDIATE 'SELECT 1'", W),
    case(b"SET PASSWORD = PASSWORD('x')", W),
    case(b"SET PASSWORD FOR 'u'@'h' = 'x'", W),
    case(b"SET ROLE r", W),
    case(b"SET DEFAULT ROLE r FOR u", W),
    case(b"LOCK INSTANCE FOR BACKUP", W),
    case(b"UNLOCK INSTANCE", W),
    case(b"SELEC 1", W),
    case(b"FOO BAR", W),
    case(b"'SELECT 1'", W),
    case(b"`t`", W),
    case(b"()", W),
    case(b"123", W),
    case(b";", W),
    case(b"\xff\xfe\x00", W),
    # --- transactions, savepoints, XA
    case(b"BEGIN", Kind.BEGIN),
    case(b"begin work", Kind.BEGIN),
    case(b"BEGIN;", Kind.BEGIN),
    case(b"START TRANSACTION", Kind.BEGIN),
    case(b"start transaction read write", Kind.BEGIN),
    case(b"START TRANSACTION WITH CONSISTENT SNAPSHOT", Kind.BEGIN),
    case(b"START TRANSACTION BANANA", W),
    case(b"COMMIT", Kind.COMMIT),
    case(b"commit work", Kind.COMMIT),
    case(b"COMMIT AND CHAIN", Kind.COMMIT),
    case(b"COMMIT WORK AND NO CHAIN NO RELEASE", Kind.COMMIT),
    case(b"ROLLBACK", Kind.ROLLBACK),
    case(b"ROLLBACK WORK", Kind.ROLLBACK),
    case(b"ROLLBACK AND CHAIN", Kind.ROLLBACK),
    case(b"ROLLBACK TO SAVEPOINT s1", Kind.SAVEPOINT),
    case(b"rollback work to s1", Kind.SAVEPOINT),
    case(b"SAVEPOINT s1", Kind.SAVEPOINT),
    case(b"RELEASE SAVEPOINT s1", Kind.SAVEPOINT),
    case(b"XA START 'x'", Kind.XA, True, Pin.XA),
    case(b"XA BEGIN 'x'", Kind.XA, True, Pin.XA),
    case(b"XA END 'x'", Kind.XA, True),
    case(b"XA PREPARE 'x'", Kind.XA, True),
    case(b"XA COMMIT 'x'", Kind.XA, True, None, Pin.XA),
    case(b"XA ROLLBACK 'x'", Kind.XA, True, None, Pin.XA),
    case(b"XA RECOVER", Kind.XA, True),
    # --- locks, prepared statements, temporary tables
    case(b"LOCK TABLES t READ", Kind.LOCK_TABLES, True, Pin.LOCK_TABLES),
    case(b"lock table t write, u read", Kind.LOCK_TABLES, True, Pin.LOCK_TABLES),
    case(b"UNLOCK TABLES", Kind.UNLOCK_TABLES, True, None, Pin.LOCK_TABLES),
    case(b"unlock table", Kind.UNLOCK_TABLES, True, None, Pin.LOCK_TABLES),
    case(b"PREPARE s FROM 'SELECT 1'", Kind.PREPARE, True, Pin.SQL_PREPARE),
    case(b"PREPARE s FROM @sql", Kind.PREPARE, True, Pin.SQL_PREPARE),
    case(b"EXECUTE s", Kind.EXECUTE, True),
    case(b"EXECUTE s USING @a, @b", Kind.EXECUTE, True),
    case(b"DEALLOCATE PREPARE s", Kind.DEALLOCATE, True, None, Pin.SQL_PREPARE),
    case(b"DROP PREPARE s", Kind.DEALLOCATE, True, None, Pin.SQL_PREPARE),
    case(b"CREATE TEMPORARY TABLE t (a INT)", W, True, Pin.TEMP_TABLE),
    case(b"DROP TEMPORARY TABLE t", W, True, None, Pin.TEMP_TABLE),
    case(b"DROP TABLE t", W),
    case(b"USE db", Kind.USE),
    case(b"USE", W),
    # --- diagnostics of the previous statement
    case(b"SHOW WARNINGS", R),
    case(b"GET DIAGNOSTICS @n = NUMBER", R),
    case(b"GET BANANAS", W),
    case(b"SHOW MASTER STATUS", R, True),
    case(b"SHOW BINARY LOGS", R, True),
    case(b"SHOW BINLOG EVENTS IN 'bin.000001'", R, True),
    # --- empty statements
    case(b"", Kind.OTHER),
    case(b"   ", Kind.OTHER),
    case(b"\n\t\r\n", Kind.OTHER),
    case(b"/* only a comment */", Kind.OTHER),
    case(b"-- only a comment", Kind.OTHER),
    case(b"# only a comment", Kind.OTHER),
    case(b"/* unterminated", Kind.OTHER),
    case(b"/*!40101 */", Kind.OTHER),
    case(b"-- a\n/* b */\n# c\n", Kind.OTHER),
    case(b"/* baton:master */", Kind.OTHER),
    # --- non-UTF-8 bytes
    case(b"SELECT '\xff\xfe' FROM t", R),
    case(b"SELECT `\xe9t\xe9` FROM t FOR UPDATE", R, True),
    case(b"/* \xff */ SELECT 1", R),
    case(b"UPDATE t SET a = '\x80\x81'", W),
]


@pytest.mark.parametrize(("sql", "kind", "master_only", "pin", "unpin"), ROUTING)
def test_routing(sql: bytes, kind: Kind, master_only: bool, pin, unpin) -> None:
    c = classify(sql)
    assert (c.kind, c.master_only, c.pin, c.unpin) == (kind, master_only, pin, unpin)
    assert not c.parts


@pytest.mark.parametrize(
    ("sql", "hint"),
    [
        (b"/* baton:master */ SELECT 1", Hint("master")),
        (b"/* baton:replica */ SELECT 1", Hint("replica")),
        (b"/* baton:replica=db2 */ SELECT 1", Hint("replica", "db2")),
        (b"/*baton:replica=db-2.eu*/SELECT 1", Hint("replica", "db-2.eu")),
        (b"-- baton:replica=db2\nSELECT 1", Hint("replica", "db2")),
        (b"# baton:master\nSELECT 1", Hint("master")),
        (b"/* app=shop baton:master trace=1 */ SELECT 1", Hint("master")),
        (b"/* a */\n/* baton:replica */ SELECT 1", Hint("replica")),
        (b"/* baton:master */ /* baton:replica */ SELECT 1", Hint("master")),
        (b"/* BATON:MASTER */ SELECT 1", Hint("master")),
        (b"( /* baton:master */ SELECT 1)", Hint("master")),
        (b"/* baton:replica */ DELETE FROM t", Hint("replica")),  # the router decides
        (b"/* baton:master */ SET STATEMENT a=1 FOR SELECT 1", Hint("master")),
        (b"/* baton:replica */ SELECT 1; SELECT 2", Hint("replica")),
        (b"SELECT /* baton:master */ 1", None),  # only leading comments count
        (b"SELECT 'baton:master'", None),
        (b"/* baton:masters */ SELECT 1", None),
        (b"/* notbaton:master */ SELECT 1", None),
        (b"/*!50000 baton:master */ SELECT 1", None),  # executable comment: code
        (b"SELECT 1", None),
    ],
)
def test_hint(sql: bytes, hint: Hint | None) -> None:
    assert classify(sql).hint == hint


SET_CASES = [
    (b"SET autocommit = 0", Kind.SESSION, [("session", "autocommit", "0")]),
    (b"set autocommit=1", Kind.SESSION, [("session", "autocommit", "1")]),
    (
        b"SET SESSION sql_mode = 'TRADITIONAL'",
        Kind.SESSION,
        [("session", "sql_mode", "'TRADITIONAL'")],
    ),
    (b"SET LOCAL wait_timeout = 60", Kind.SESSION, [("session", "wait_timeout", "60")]),
    (b"SET @@session.time_zone = '+00:00'", Kind.SESSION, [("session", "time_zone", "'+00:00'")]),
    (b"SET @@SESSION.Time_Zone='+00:00'", Kind.SESSION, [("session", "time_zone", "'+00:00'")]),
    (b"SET @@local.wait_timeout = 5", Kind.SESSION, [("session", "wait_timeout", "5")]),
    (b"SET @@wait_timeout = 5", Kind.SESSION, [("session", "wait_timeout", "5")]),
    (b"SET @@global.max_connections = 10", W, [("global", "max_connections", "10")]),
    (b"SET GLOBAL a = 1, b = 2", W, [("global", "a", "1"), ("global", "b", "2")]),
    (
        b"SET GLOBAL a = 1, SESSION b = 2, c = 3",
        W,
        [("global", "a", "1"), ("session", "b", "2"), ("session", "c", "3")],
    ),
    (
        b"SET SESSION a = 1, @@global.b = 2, c = 3",  # @@global. does not carry over
        W,
        [("session", "a", "1"), ("global", "b", "2"), ("session", "c", "3")],
    ),
    (b"SET PERSIST a = 1", W, [("global", "a", "1")]),
    (b"SET PERSIST_ONLY a = 1", W, [("global", "a", "1")]),
    (b"SET @u = 1, @w := 'x'", Kind.SESSION, [("user", "u", "1"), ("user", "w", "'x'")]),
    (b"SET @U=1", Kind.SESSION, [("user", "u", "1")]),
    (b"SET @'my var' = 1", Kind.SESSION, [("user", "my var", "1")]),
    (b"SET @`x``y` = 2", Kind.SESSION, [("user", "x`y", "2")]),
    (b'SET @"q" = 3', Kind.SESSION, [("user", "q", "3")]),
    (b"SET @a.b$c = 4", Kind.SESSION, [("user", "a.b$c", "4")]),
    (
        b"SET sql_mode = CONCAT(@@sql_mode, ',NO_ZERO_DATE'), @a = 1",
        Kind.SESSION,
        [("session", "sql_mode", "CONCAT(@@sql_mode, ',NO_ZERO_DATE')"), ("user", "a", "1")],
    ),
    (
        b"SET @s = 'a,b', @t = \"c,d\", @u = (1, 2)",
        Kind.SESSION,
        [("user", "s", "'a,b'"), ("user", "t", '"c,d"'), ("user", "u", "(1, 2)")],
    ),
    (b"SET @a = 'it''s, fine'", Kind.SESSION, [("user", "a", "'it''s, fine'")]),
    (b"SET @a = 'x\\', y'", Kind.SESSION, [("user", "a", "'x\\', y'")]),
    (b"SET NAMES utf8mb4", Kind.SESSION, [("names", "charset", "utf8mb4")]),
    (
        b"SET NAMES 'utf8mb4' COLLATE 'utf8mb4_bin'",
        Kind.SESSION,
        [("names", "charset", "'utf8mb4'"), ("names", "collation", "'utf8mb4_bin'")],
    ),
    (
        b"set names utf8mb4 collate utf8mb4_unicode_ci",
        Kind.SESSION,
        [("names", "charset", "utf8mb4"), ("names", "collation", "utf8mb4_unicode_ci")],
    ),
    (b"SET NAMES DEFAULT", Kind.SESSION, [("names", "charset", "DEFAULT")]),
    (
        b"SET NAMES utf8mb4, autocommit = 0",
        Kind.SESSION,
        [("names", "charset", "utf8mb4"), ("session", "autocommit", "0")],
    ),
    (b"SET CHARACTER SET latin1", Kind.SESSION, [("charset", "charset", "latin1")]),
    (b"SET CHARSET 'utf8'", Kind.SESSION, [("charset", "charset", "'utf8'")]),
    (
        b"SET character_set_client = utf8mb4",
        Kind.SESSION,
        [("session", "character_set_client", "utf8mb4")],
    ),
    (
        b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        Kind.SESSION,
        [("transaction", "next_isolation_level", "READ COMMITTED")],
    ),
    (
        b"SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        Kind.SESSION,
        [("transaction", "isolation_level", "SERIALIZABLE")],
    ),
    (
        b"set local transaction read only",
        Kind.SESSION,
        [("transaction", "access_mode", "read only")],
    ),
    (
        b"SET TRANSACTION READ WRITE, ISOLATION LEVEL REPEATABLE   READ",
        Kind.SESSION,
        [
            ("transaction", "next_access_mode", "READ WRITE"),
            ("transaction", "next_isolation_level", "REPEATABLE   READ"),
        ],
    ),
    (
        b"SET GLOBAL TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        W,
        [("global", "isolation_level", "READ UNCOMMITTED")],
    ),
    (
        b"SET transaction_isolation = 'READ-COMMITTED'",
        Kind.SESSION,
        [("session", "transaction_isolation", "'READ-COMMITTED'")],
    ),
    (b"SET tx_read_only = 1", Kind.SESSION, [("session", "tx_read_only", "1")]),
    (b"SET @a = 1 /* note */", Kind.SESSION, [("user", "a", "1")]),
    (b"SET /* c */ @a = /* d */ 1", Kind.SESSION, [("user", "a", "1")]),
    (b"SET @a = -- c\n 5", Kind.SESSION, [("user", "a", "5")]),
    (b"SET @a = 1;", Kind.SESSION, [("user", "a", "1")]),
    (b"SET x = DEFAULT", Kind.SESSION, [("session", "x", "DEFAULT")]),
    (b"SET sql_mode = ''", Kind.SESSION, [("session", "sql_mode", "''")]),
    (b"SET\tsql_mode\n=\n'ANSI'\n", Kind.SESSION, [("session", "sql_mode", "'ANSI'")]),
    (
        b"SET session_track_gtids = OWN_GTID",
        Kind.SESSION,
        [("session", "session_track_gtids", "OWN_GTID")],
    ),
    (b"SET global_x = 1", Kind.SESSION, [("session", "global_x", "1")]),
    (
        b"/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */",
        Kind.SESSION,
        [("user", "old_character_set_client", "@@CHARACTER_SET_CLIENT")],
    ),
    (b"/*!40101 SET NAMES utf8mb4 */", Kind.SESSION, [("names", "charset", "utf8mb4")]),
    (b"SET @a = '\xe9'", Kind.SESSION, [("user", "a", "'\udce9'")]),
    (b"SET a = 1; SET b = 2", Kind.SESSION, [("session", "a", "1"), ("session", "b", "2")]),
    # unparseable SET is a write
    (b"SET", W, []),
    (b"SET x", W, []),
    (b"SET x =", W, []),
    (b"SET x = /* only a comment */", W, []),
    (b"SET @a = 1,", W, []),
    (b"SET NAMES", W, []),
    (b"SET TRANSACTION", W, []),
    (b"SET TRANSACTION ISOLATION LEVEL BANANA", W, []),
]


@pytest.mark.parametrize(
    ("sql", "kind", "items"), SET_CASES, ids=[c[0].decode("latin-1") for c in SET_CASES]
)
def test_set(sql: bytes, kind: Kind, items: list[tuple[str, str, str]]) -> None:
    c = classify(sql)
    assert c.kind is kind
    assert c.session_vars == tuple(SetItem(*i) for i in items)
    assert c.master_only is (kind is W)


def test_set_value_keeps_non_utf8_bytes_round_trip() -> None:
    (item,) = classify(b"SET @a = '\xe9\xff'").session_vars
    assert item.value.encode("utf-8", "surrogateescape") == b"'\xe9\xff'"


@pytest.mark.parametrize(
    ("sql", "master_only", "pin"),
    [
        (b"SET @x = LAST_INSERT_ID()", True, None),
        (b"SET @x = @@identity", True, None),
        (b"SET @l = GET_LOCK('a', 5)", True, GL),
        (b"SET @a = (@b := 2)", True, UV),
        (b"SET @a := 1", False, None),  # its own assignment operator is not a pin
        (b"SET @a = (SELECT x FROM t FOR UPDATE)", True, None),
        (b"SET @a = 'GET_LOCK(1)'", False, None),
    ],
)
def test_set_values_that_must_run_on_master(sql: bytes, master_only: bool, pin) -> None:
    c = classify(sql)
    assert (c.kind, c.master_only, c.pin) == (Kind.SESSION, master_only, pin)


@pytest.mark.parametrize(
    ("sql", "kind", "master_only"),
    [
        (b"SET STATEMENT max_statement_time=60 FOR SELECT * FROM t", R, False),
        (b"set statement a=1, b=(SELECT 1 FOR UPDATE) for delete from t", W, True),
        (b"SET STATEMENT a=1 FOR SELECT 1 FOR UPDATE", R, True),
        (b"SET STATEMENT a='FOR' FOR SELECT 1", R, False),
        (b"SET STATEMENT a=1 FOR /* c */ (SELECT 1)", R, False),
        (b"SET STATEMENT a=1 FOR SET @b = 2", Kind.SESSION, False),
        (b"SET STATEMENT a=1 FOR SET STATEMENT b=2 FOR SELECT 1", R, False),
        (b"SET STATEMENT x = 1", W, True),
    ],
)
def test_set_statement_for_is_its_inner_statement(
    sql: bytes, kind: Kind, master_only: bool
) -> None:
    c = classify(sql)
    assert (c.kind, c.master_only) == (kind, master_only)


def test_set_statement_does_not_leak_its_variables_into_session_state() -> None:
    assert classify(b"SET STATEMENT sql_mode='' FOR SELECT 1").session_vars == ()


@pytest.mark.parametrize(
    ("sql", "read_only"),
    [
        (b"START TRANSACTION READ ONLY", True),
        (b"start transaction  read\nonly", True),
        (b"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY", True),
        (b"START TRANSACTION READ WRITE", False),
        (b"START TRANSACTION", False),
        (b"BEGIN", False),
    ],
)
def test_read_only_transaction(sql: bytes, read_only: bool) -> None:
    c = classify(sql)
    assert (c.kind, c.read_only_trx) == (Kind.BEGIN, read_only)


@pytest.mark.parametrize(
    ("sql", "schema"),
    [
        (b"USE db", "db"),
        (b"use `my db`", "my db"),
        (b"USE `we``ird`", "we`ird"),
        (b"USE db;", "db"),
        (b"/* c */ USE /* d */ shop_2", "shop_2"),
        (b"USE `\xe9`", "\udce9"),
    ],
)
def test_use_gives_schema(sql: bytes, schema: str) -> None:
    c = classify(sql)
    assert (c.kind, c.schema) == (Kind.USE, schema)


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        (b"CREATE TEMPORARY TABLE t (a INT)", "t"),
        (b"create temporary table if not exists db.t (a int)", "db.t"),
        (b"CREATE OR REPLACE TEMPORARY TABLE `my t` LIKE u", "my t"),
        (b"CREATE TEMPORARY TABLE `d`.`t` AS SELECT 1", "d.t"),
        (b"CREATE TEMPORARY TABLE t2 SELECT * FROM t1 FOR UPDATE", "t2"),
    ],
)
def test_create_temporary_table(sql: bytes, name: str) -> None:
    c = classify(sql)
    assert (c.kind, c.pin, c.temp_table) == (W, Pin.TEMP_TABLE, name)


def test_create_ordinary_table_pins_nothing() -> None:
    c = classify(b"CREATE TABLE t (a INT)")
    assert (c.pin, c.temp_table) == (None, None)


@pytest.mark.parametrize(
    ("sql", "unpin", "names"),
    [
        (b"DROP TEMPORARY TABLE t", Pin.TEMP_TABLE, ("t",)),
        (b"drop temporary table if exists a, `b`.c", Pin.TEMP_TABLE, ("a", "b.c")),
        (b"DROP TABLE t", None, ("t",)),  # may drop a temporary t: the router checks
        (b"DROP TABLES a,b CASCADE", None, ("a", "b")),
    ],
)
def test_drop_table(sql: bytes, unpin, names: tuple[str, ...]) -> None:
    c = classify(sql)
    assert (c.kind, c.unpin, c.dropped_tables) == (W, unpin, names)


@pytest.mark.parametrize(
    ("sql", "kind", "name"),
    [
        (b"PREPARE stmt1 FROM 'SELECT 1'", Kind.PREPARE, "stmt1"),
        (b"prepare `S2` from @sql", Kind.PREPARE, "s2"),
        (b"EXECUTE Stmt1 USING @a", Kind.EXECUTE, "stmt1"),
        (b"DEALLOCATE PREPARE stmt1", Kind.DEALLOCATE, "stmt1"),
        (b"DROP PREPARE stmt1", Kind.DEALLOCATE, "stmt1"),
    ],
)
def test_prepared_statement_names(sql: bytes, kind: Kind, name: str) -> None:
    c = classify(sql)
    assert (c.kind, c.statement_name) == (kind, name)


@pytest.mark.parametrize(
    "sql",
    [
        b"SHOW WARNINGS",
        b"show errors limit 1",
        b"SHOW COUNT(*) WARNINGS",
        b"GET DIAGNOSTICS @n = NUMBER",
        b"GET CURRENT DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT",
        b"SELECT @@warning_count",
        b"SELECT @@session.error_count",
    ],
)
def test_reads_of_the_previous_statements_diagnostics(sql: bytes) -> None:
    c = classify(sql)
    assert (c.kind, c.reads_last_statement) == (R, True)


def test_ordinary_show_does_not_read_the_last_statement() -> None:
    assert not classify(b"SHOW TABLES").reads_last_statement


# --- multi-statements (CLIENT_MULTI_STATEMENTS)


@pytest.mark.parametrize(
    ("sql", "kind", "part_kinds"),
    [
        (b"SELECT 1; DELETE FROM t", W, [R, W]),
        (b"SELECT 1; SELECT 2", R, [R, R]),
        (b"SELECT 1;SELECT 2;", R, [R, R]),
        (b"BEGIN; INSERT INTO t VALUES (1); COMMIT", W, [Kind.BEGIN, W, Kind.COMMIT]),
        (b"USE d; SELECT 1", W, [Kind.USE, R]),
        (b"SELECT 'a\\'; DELETE FROM t; -- '", W, [R, W]),  # NO_BACKSLASH_ESCAPES reading
        (b"/*!50000 SELECT 1; DELETE FROM t */", W, [R, W]),
        # Compound bodies are split too: conservative, the head part is already a write.
        (b"CREATE PROCEDURE p() BEGIN SELECT 1; END", W, [W, W]),
        (b"BEGIN NOT ATOMIC SELECT GET_LOCK('a', 1); END", W, [W, W]),
    ],
)
def test_multi_statement(sql: bytes, kind: Kind, part_kinds: list[Kind]) -> None:
    c = classify(sql)
    assert c.multi_statement
    assert (c.kind, [p.kind for p in c.parts]) == (kind, part_kinds)
    assert c.master_only is (kind is W)


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT 1;",
        b"SELECT 1 ;  \n",
        b"SELECT 1; -- bye",
        b"SELECT 1; /* bye */",
        b"SELECT 'a;b'",
        b"SELECT `a;b` FROM t",
        b"SELECT 1 /* ; DELETE FROM t */",
        b"SELECT 1 -- ; DELETE FROM t",
        b"SELECT 1;;",
    ],
)
def test_single_statement_with_semicolons(sql: bytes) -> None:
    c = classify(sql)
    assert (c.kind, c.multi_statement) == (R, False)


def test_no_backslash_escapes_reading_is_not_applied_to_a_write() -> None:
    # Split that way, data would look like statements; a write runs on the master anyway.
    c = classify(b"INSERT INTO t VALUES ('it\\'s; fine'), ('x;y')")
    assert (c.kind, c.multi_statement) == (W, False)


def test_multi_statement_summary_keeps_state_of_every_part() -> None:
    c = classify(
        b"SET NAMES utf8mb4; SELECT GET_LOCK('a', 1); USE shop; CREATE TEMPORARY TABLE tt (a INT)"
    )
    assert c.kind is W
    assert c.session_vars == (SetItem("names", "charset", "utf8mb4"),)
    assert (c.pin, c.schema, c.temp_table) == (Pin.TEMP_TABLE, "shop", "tt")
    assert [p.pin for p in c.parts] == [None, Pin.GET_LOCK, None, Pin.TEMP_TABLE]


# --- inputs and API shape


def test_accepts_bytearray_and_memoryview() -> None:
    payload = bytearray(b"\x03SELECT * FROM t FOR UPDATE")
    view = memoryview(payload)[1:]
    assert classify(view) == classify(bytes(view)) == classify(bytearray(view))
    assert classify(view).master_only


def test_results_are_frozen_and_hashable() -> None:
    c = classify(b"SET @a = 1")
    with pytest.raises(AttributeError):
        c.kind = Kind.WRITE  # type: ignore[misc]
    assert hash(c) == hash(classify(b"SET @a = 1"))


def test_deep_nesting_is_bounded() -> None:
    sql = b"SET STATEMENT a=1 FOR " * 50 + b"SELECT 1"
    assert classify(sql).kind is W  # too deep to look inside: the safe default


def test_long_statement_is_scanned_to_the_end() -> None:
    sql = (
        b"SELECT * FROM t WHERE id IN ("
        + b", ".join(b"'%d'" % i for i in range(20000))
        + b") FOR UPDATE"
    )
    assert classify(sql).master_only


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "-1",
        "+1.5",
        "1e10",
        "2.5E-3",
        ".5",
        "0x1F",
        "0b101",
        "'abc'",
        "''",
        "'it''s'",
        "'a\\'b'",
        '"x"',
        "_utf8mb4'x'",
        "_latin1 'x'",
        "N'x'",
        "X'0A'",
        "B'01'",
        "NULL",
        "null",
        "TRUE",
        "false",
        "DEFAULT",
        "ON",
        "OFF",
        "utf8mb4",
        "  utf8mb4  ",
        "READ_COMMITTED",
        "'\udce9'",
    ],
)
def test_is_literal(value: str) -> None:
    assert is_literal(value)


@pytest.mark.parametrize(
    "value",
    [
        "CONCAT('a', 'b')",
        "@@sql_mode",
        "@x",
        "NOW()",
        "CURRENT_TIMESTAMP",
        "current_user",
        "LOCALTIME",
        "UTC_TIMESTAMP",
        "1 + 1",
        "(1)",
        "",
        "   ",
        "'unterminated",
        "a.b",
        "1, 2",
        "'a' COLLATE utf8mb4_bin",
        "READ-COMMITTED",
        "'a' 'b'",
        "(SELECT 1)",
    ],
)
def test_is_not_literal(value: str) -> None:
    assert not is_literal(value)


def test_bench_prints_ns_per_statement(capsys: pytest.CaptureFixture[str]) -> None:
    results = classifier_bench.bench(rounds=5)
    assert results and all(ns > 0 for ns in results.values())
    assert "ns" in capsys.readouterr().out


# --- properties


class _Failures(logging.Handler):
    """Collects the classifier's own error log: its fallback must never be needed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def failures():
    handler = _Failures()
    logger = logging.getLogger(classifier.__name__)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


FRAGMENTS = [
    b"SELECT",
    b"select",
    b"SET",
    b"STATEMENT",
    b"FOR",
    b"UPDATE",
    b"WITH",
    b"EXPLAIN",
    b"ANALYZE",
    b"DELETE",
    b"NAMES",
    b"GLOBAL",
    b"TRANSACTION",
    b"READ ONLY",
    b"USE",
    b"CREATE TEMPORARY TABLE",
    b"DROP",
    b"PREPARE",
    b"XA",
    b"LOCK",
    b"INTO",
    b"GET_LOCK(",
    b" ",
    b"\n",
    b"\t",
    b"'",
    b'"',
    b"`",
    b"\\",
    b"/*",
    b"*/",
    b"/*!50000",
    b"/*M!",
    b"--",
    b"-- ",
    b"#",
    b";",
    b"(",
    b")",
    b",",
    b"=",
    b":=",
    b"@",
    b"@@",
    b".",
    b"x",
    b"1",
    b"baton:replica=",
    b"\xff",
    b"\x00",
]
sql_like = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), sql_like))
def test_never_raises_on_arbitrary_bytes(failures: _Failures, data: bytes) -> None:
    c = classify(data)
    assert isinstance(c, Classification)
    assert failures.records == []
    for part in c.parts:
        assert not part.parts


STATEMENTS = [p.values[0] for p in ROUTING] + [c[0] for c in SET_CASES]


def _comment_body(draw_text: str) -> bool:
    return "*/" not in draw_text and not draw_text.startswith(("!", "M!", "m!"))


prefix_item = st.one_of(
    st.sampled_from([b" ", b"\t", b"\n", b"\r\n"]),
    st.text(max_size=12).filter(_comment_body).map(lambda t: b"/*" + t.encode() + b"*/"),
    st.text(max_size=12).filter(lambda t: "\n" not in t).map(lambda t: b"-- " + t.encode() + b"\n"),
    st.text(max_size=12).filter(lambda t: "\n" not in t).map(lambda t: b"#" + t.encode() + b"\n"),
)


def _routing(c: Classification) -> tuple[object, ...]:
    return (c.kind, c.master_only, c.pin, c.unpin, c.read_only_trx, len(c.parts))


@settings(max_examples=300)
@given(st.sampled_from(STATEMENTS), st.lists(prefix_item, min_size=1, max_size=4))
def test_leading_whitespace_and_comments_do_not_change_the_classification(
    sql: bytes, prefix: list[bytes]
) -> None:
    assert _routing(classify(b"".join(prefix) + sql)) == _routing(classify(sql))


@settings(max_examples=300)
@given(st.sampled_from(STATEMENTS), st.randoms(use_true_random=False))
def test_letter_case_does_not_change_the_classification(sql: bytes, rnd) -> None:
    flipped = bytes(
        b ^ 0x20 if chr(b).isalpha() and b < 0x80 and rnd.random() < 0.5 else b for b in sql
    )
    assert _routing(classify(flipped)) == _routing(classify(sql))
    assert _routing(classify(sql.upper())) == _routing(classify(sql.lower()))


def test_a_repeated_set_is_answered_from_the_statement_cache_and_equals_a_fresh_parse() -> None:
    first = classify(b"SET NAMES utf8mb4")
    assert classify(b"SET NAMES utf8mb4") is first
    assert classifier._set(b"SET NAMES utf8mb4", 3, None, 0) == first


def test_without_client_multi_statements_a_semicolon_does_not_split() -> None:
    # The server rejects the second statement and runs nothing: the head decides.
    c = classify(b"SELECT 1; DELETE FROM t", multi_statements=False)
    assert (c.kind, c.multi_statement) == (R, False)
    assert classify(b"SELECT 1; DELETE FROM t").kind is W


def test_bulk_write_is_scanned_for_pins_only_up_to_the_limit() -> None:
    pad = b"(1, 'x'), " * (classifier._WRITE_SCAN_LIMIT // 10)
    assert classify(b"INSERT INTO t VALUES (GET_LOCK('a', 1)), " + pad + b"(2, 'y')").pin is GL
    late = classify(b"INSERT INTO t VALUES " + pad + b"(GET_LOCK('a', 1))")
    assert (late.kind, late.master_only, late.pin) == (W, True, None)  # documented limit


# --- KILL: answered by Baton, never forwarded ------------------------------------------------

KILLS = [
    (b"KILL 5", KillRequest(5)),
    (b"kill query 7 ;", KillRequest(7, query_only=True)),
    (b"KILL HARD 5", KillRequest(5)),
    (b"KILL SOFT QUERY 5", KillRequest(5, query_only=True)),
    (b"KILL HARD CONNECTION 5", KillRequest(5)),
    (b"KILL /*c*/ 5", KillRequest(5)),
    (b"KILL 5 -- why", KillRequest(5)),
    (b"/*!50000 KILL 5 */", KillRequest(5)),
    (b"KILL /*!HARD*/ QUERY 5", KillRequest(5, query_only=True)),
    (b"/* baton:replica */ KILL 3", KillRequest(3)),
]
REFUSED_KILLS = [
    (b"KILL QUERY ID 5", "KILL QUERY ID"),
    (b"KILL USER app", "KILL USER"),
    (b"KILL HARD CONNECTION USER 'app'@'%'", "KILL USER"),
    (b"KILL SOFT", "connection id number"),
    (b"KILL 1+1", "connection id number"),
    (b"KILL @id", "connection id number"),
    (b"KILL (5)", "connection id number"),
    (b"SELECT 1; KILL 5", "multi-statement"),
    (b"KILL QUERY 5; SELECT SLEEP(1)", "multi-statement"),
]


@pytest.mark.parametrize(("sql", "expected"), KILLS, ids=[k[0].decode() for k in KILLS])
def test_kill_forms_resolve_to_a_baton_connection_id(sql: bytes, expected: KillRequest) -> None:
    c = classify(sql)
    assert c.kill == expected and c.master_only


@pytest.mark.parametrize(("sql", "why"), REFUSED_KILLS, ids=[k[0].decode() for k in REFUSED_KILLS])
def test_kill_forms_baton_cannot_resolve_are_refused_not_forwarded(sql: bytes, why: str) -> None:
    kill = classify(sql).kill
    assert kill is not None and why in kill.unsupported
    if sql.startswith(b"KILL"):  # (without multi-statements, "SELECT 1; KILL 5" is a syntax error)
        assert classify(sql, multi_statements=False).kill is not None


def test_statement_cache_lets_the_oldest_go_first() -> None:
    classifier.clear_caches()
    # (backticks: texts without a shape, each one its own entry)
    stmts = [b"SELECT c FROM `t` WHERE id=%d" % i for i in range(classifier._CACHE_SIZE + 1)]
    results = [classify(s) for s in stmts]
    cache = classifier._CACHE_MULTI
    assert len(cache) <= classifier._CACHE_SIZE
    assert stmts[0] not in cache  # evicted with the oldest eighth
    assert all(cache[s] is r for s, r in zip(stmts[-100:], results[-100:], strict=True))
    classifier.clear_caches()


def test_statement_cache_is_bounded_and_gives_what_classifying_afresh_gives() -> None:
    stmts = [b"SELECT c FROM t%d WHERE id=%d" % (i, i) for i in range(classifier._CACHE_SIZE + 100)]
    stmts += [b"SELECT c FROM `t` WHERE id=%d" % i for i in range(classifier._CACHE_SIZE + 100)]
    stmts += [b"SELECT @a := 1", b"KILL 7", b"SET @baton_consistency = 'session'", b"DROP TABLE t"]
    first = [classify(s) for s in stmts]
    assert len(classifier._CACHE_MULTI) <= classifier._CACHE_SIZE
    assert len(classifier._SHAPES_MULTI) <= classifier._CACHE_SIZE
    again = [classify(s) for s in stmts]
    classifier.clear_caches()
    fresh = [classify(s) for s in stmts]
    assert first == again == fresh
    assert fresh[-4].pin is Pin.USER_VAR_ASSIGN and fresh[-3].kill == KillRequest(7, False)
    assert fresh[-2].local and fresh[-1].ddl
    # keyed by the multi-statements setting too: the same text may split or not
    two = b"SELECT 1; SELECT @a := 2"
    assert classify(two, multi_statements=True).parts
    assert not classify(two, multi_statements=False).parts
    assert classify(two, multi_statements=True).parts
    # long texts are classified every time, never kept
    big = b"SELECT * FROM t WHERE id IN (" + b",".join(b"%d" % i for i in range(200)) + b")"
    classify(big)
    assert big not in classifier._CACHE_MULTI


# --- statements of one shape: one statement, different values ----------------------------------

# Texts that differ from the first of each pair only in digits and string contents: those
# with a value-free result share it, the others must not (a lock name, a KILL id, a SET).
SAME_SHAPE = [
    (b"SELECT c FROM sbtest1 WHERE id=5012", b"SELECT c FROM sbtest3 WHERE id=1700"),
    (b"UPDATE t SET c='a;b' WHERE id=1", b"UPDATE t SET c='it''s' WHERE id=2"),
    (b"SELECT 1 FOR UPDATE", b"SELECT 2 FOR UPDATE"),
    (b"SELECT GET_LOCK1('a', 1)", b"SELECT GET_LOCK2('b', 2)"),
    (b"SELECT GET_LOCK('a', 1)", b"SELECT GET_LOCK('b', 2)"),
    (b"KILL 5", b"KILL 6"),
    (b"SET @x = 1", b"SET @x = 2"),
    (b"SET autocommit=1", b"SET autocommit=0"),
    (b"USE db1", b"USE db2"),
    (b"CREATE TEMPORARY TABLE t1 (a INT)", b"CREATE TEMPORARY TABLE t2 (a INT)"),
    (b"DROP TABLE t1", b"DROP TABLE t2"),
    (b"PREPARE s1 FROM 'SELECT 1'", b"PREPARE s2 FROM 'DELETE FROM t'"),
    (b"SELECT @v1 := 1", b"SELECT @v2 := 2"),
    (b"SELECT 1; SELECT 2", b"SELECT 3; SELECT 4"),
    (b"START TRANSACTION READ ONLY", b"START TRANSACTION READ ONLY"),
    (b"SELECT 'x'; DELETE FROM t", b"SELECT ';'; DELETE FROM t"),
]


def _assert_shared_result_is_fresh(first: bytes, second: bytes, multi: bool = True) -> None:
    """``second`` classified after ``first`` (from the shape cache when they share a shape)
    gives what classifying ``second`` with empty caches gives."""
    classifier.clear_caches()
    classify(first, multi)
    shared = classify(second, multi)
    classifier.clear_caches()
    assert shared == classify(second, multi), (first, second, multi)


def _refilled(text: bytes, content: Callable[[], bytes], digit: Callable[[], int]) -> bytes:
    """``text`` with each single-quoted string's content and each digit replaced."""
    parts = text.split(b"'")
    for i in range(1, len(parts), 2):
        parts[i] = content()
    return bytes(digit() if 48 <= b <= 57 else b for b in b"'".join(parts))


@pytest.mark.parametrize(("first", "second"), SAME_SHAPE, ids=[p[0].decode() for p in SAME_SHAPE])
def test_a_text_of_a_known_shape_gets_what_classifying_it_afresh_gives(first: bytes, second: bytes) -> None:
    assert classifier._shape(first) == classifier._shape(second)
    _assert_shared_result_is_fresh(first, second)


def test_statements_of_one_shape_share_one_result_and_valued_ones_do_not() -> None:
    classifier.clear_caches()
    one = classify(b"SELECT c FROM sbtest1 WHERE id=5012")
    assert classify(b"SELECT c FROM sbtest2 WHERE id=6301") is one  # as many digits: one shape
    assert classifier._CACHE_MULTI[b"SELECT c FROM sbtest2 WHERE id=6301"] is one  # kept as text too
    assert classify(b"KILL 6").kill == KillRequest(6)  # KILL 5's result is not KILL 6's
    classify(b"KILL 5")
    assert classify(b"KILL 6").kill == KillRequest(6)
    assert classify(b"SELECT GET_LOCK('a', 1)").lock_calls != classify(b"SELECT GET_LOCK('b', 1)").lock_calls
    # what the shape cannot read faithfully is classified as written
    for text in (b"SELECT '\\'' FROM t", b"SELECT `1`", b'SELECT "1"', b"SELECT 1 # x",
                 b"SELECT /* baton:replica=db1 */ 1", b"SELECT 1 -- x"):
        assert classifier._shape(text) is None
    classifier.clear_caches()


_FILL = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="'\\"), max_size=12)
_DIGIT = st.sampled_from(b"0123456789")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=st.sampled_from([a for a, _ in SAME_SHAPE]), data=st.data())
def test_values_changed_in_a_known_shape_never_change_the_result(template: bytes, data: st.DataObject) -> None:
    """Property: digits and string contents replaced at random; the shared result is the fresh one."""

    def refill(text: bytes) -> bytes:  # inside quotes: any content without ' and backslash
        return _refilled(text, lambda: data.draw(_FILL).encode(), lambda: data.draw(_DIGIT))

    _assert_shared_result_is_fresh(refill(template), refill(template))


def test_every_statement_of_these_tests_keeps_its_result_when_its_values_change() -> None:
    """The whole corpus above (every bytes literal in this file), each text with a shape
    refilled three times at random: a result shared by shape is the one a fresh parse gives."""
    tree = ast.parse(Path(__file__).read_text())
    texts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, bytes)}
    rnd = random.Random(7)

    def refill(text: bytes) -> bytes:
        return _refilled(
            text,
            lambda: bytes(rnd.choice(b"ab;c d,()=-*/x") for _ in range(rnd.randint(0, 6))),
            lambda: rnd.choice(b"0123456789"),
        )

    checked = 0
    for text in sorted(t for t in texts if len(t) <= classifier._CACHE_TEXT_MAX):
        shape = classifier._shape(text)
        if shape is None:
            continue
        for variant in {refill(text) for _ in range(3)}:
            if classifier._shape(variant) != shape:
                continue  # a quote refilled into the unquoted part: another shape
            for multi in (True, False):
                _assert_shared_result_is_fresh(text, variant, multi)
                checked += 1
    assert checked > 500
