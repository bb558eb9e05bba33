"""Transactions that read from a snapshot: ``REPEATABLE READ``, ``SERIALIZABLE``, ``SNAPSHOT``.

Such a transaction sees the database as it was when its first statement ran, however long ago that was.
A value computed from that snapshot may only be stored under tokens captured *before* the snapshot was
taken: tokens captured later may already reflect a commit the snapshot does not contain, and the store
would then plant old data under current tokens.

So when a caching session begins a transaction at such a level on a connection that has not sent a
statement in it yet — or, for a plain session or connection read inside a tracked computation (``@cached``,
``cached_dependency``), just before the transaction's first statement — the tokens of every known table
(plus ``table:*`` and the session's and the configured tables' tags) are captured in one request, before
the snapshot exists. Misses in that transaction
are stored under those tokens, so any commit since the transaction began makes the store fail; a table
whose token was not captured then is still read and returned, just not stored. Hits need nothing special
under REPEATABLE READ: a hit is always checked against the *current* tokens, so it is never older than a
commit that has returned (it may be newer than the snapshot, as a read of another connection would be).
A SERIALIZABLE transaction is never served from the cache: the database must see its reads to detect
conflicts between transactions (PostgreSQL's serialization failures, InnoDB's shared locks); its results
are still stored, under its start tokens, for other readers.

A connection whose transaction already ran a statement before the session joined it (its snapshot is
taken, at an unknown moment) gets no start tokens, and its reads are not cached.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Connection

from ...policy.cache import YokedCache
from . import bridge
from .catalog import catalog
from .writes import first_word, written_tables

_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE", "SNAPSHOT"})

# Connections whose current transaction has begun and sent no statement yet (its snapshot is not taken).
_unread: weakref.WeakSet[Connection] = weakref.WeakSet()
# Per connection: the cache the start tokens belong to, and the tokens (``None``: none could be captured).
_start_tokens: weakref.WeakKeyDictionary[Connection, tuple[YokedCache, dict[str, str] | None]] = (
    weakref.WeakKeyDictionary()
)
# Per connection: start tokens a caching session still awaits (its cache, and the tags to capture).
_awaiting: weakref.WeakKeyDictionary[Connection, tuple[YokedCache, list[str]]] = weakref.WeakKeyDictionary()
START_KEY = "sql:snapshot"  # routes a session's start-token capture to the backend of its sql: entries


def snapshot_level(bind: Any, connections: Iterable[Any] = ()) -> str | None:
    """``"REPEATABLE READ"``, ``"SERIALIZABLE"`` or ``"SNAPSHOT"`` when reads come from a snapshot (the most
    specific setting wins: connection, then engine, then the dialect's), ``None`` otherwise. SQLite's
    nominal SERIALIZABLE default is excepted: pysqlite runs reads outside ``BEGIN``, so each statement sees
    the latest commit. ``"UNKNOWN"`` while the dialect has not connected yet (treated as a snapshot until
    the connection tells)."""
    dialect = bind.dialect
    connections = list(connections)
    if any(_isolation_unknown(c) for c in connections):
        return "UNKNOWN"
    levels = [c.get_execution_options().get("isolation_level") for c in connections]
    levels.append(bind.get_execution_options().get("isolation_level"))
    levels.append(getattr(dialect, "_on_connect_isolation_level", None))
    configured = [level for level in levels if level]
    if not configured and dialect.name != "sqlite":
        default = getattr(dialect, "default_isolation_level", None)
        if default is None:
            return "UNKNOWN"
        configured = [default]
    for level in configured:
        spelled = str(level).upper()
        if spelled in _SNAPSHOT_LEVELS:
            return spelled
    # Inside an explicit transaction (BEGIN emitted, as SQLAlchemy's recipe for SAVEPOINT support does, or
    # Python 3.12's autocommit=False) SQLite in WAL mode reads from a snapshot taken at the first read,
    # while other connections go on committing. Once the transaction has written, it holds the database's
    # only write lock (and got it only if no commit had happened since its snapshot), so nobody else can
    # commit until it ends.
    sqlite_snapshot = (
        dialect.name == "sqlite"
        and any(_sqlite_transaction_open(c) for c in connections)
        and not written_tables(connections)
    )
    return "SNAPSHOT" if sqlite_snapshot else None


def _isolation_unknown(connection: Any) -> bool:
    try:
        return bool(connection.info.get(ISOLATION_UNKNOWN))
    except Exception:
        return False


def _sqlite_transaction_open(connection: Any) -> bool:
    try:
        return getattr(connection.connection.dbapi_connection, "in_transaction", None) is True
    except Exception:
        return False


def reads_from_snapshot(bind: Any, connections: Iterable[Any] = ()) -> bool:
    return snapshot_level(bind, connections) is not None


def on_transaction_begin(connection: Connection) -> None:
    """Engine ``begin``: a new transaction, no snapshot yet."""
    _unread.add(connection)
    _start_tokens.pop(connection, None)
    _awaiting.pop(connection, None)


# Statements known to take no snapshot. Anything else counts as taking one: capturing start tokens too
# early is always safe, too late is what plants stale data (DECLARE CURSOR, ANALYZE, PRAGMA, START
# TRANSACTION WITH CONSISTENT SNAPSHOT all take one).
_NO_SNAPSHOT = frozenset(["begin", "start", "savepoint", "release", "rollback", "commit", "end", "set"])
_BEGIN_WITH_LEVEL = re.compile(r"isolation|\bsnapshot\b", re.IGNORECASE)
_CONSISTENT_SNAPSHOT = re.compile(r"\bconsistent\s+snapshot\b", re.IGNORECASE)
# SET TRANSACTION ..., SET SESSION CHARACTERISTICS ..., SET default_transaction_isolation / tx_isolation ...
_SET_ISOLATION = re.compile(r"\btransaction\b|\bcharacteristics\b|isolation|\bsnapshot\b", re.IGNORECASE)
ISOLATION_UNKNOWN = "yokedcache.isolation_unknown"  # in a driver connection's info: set by raw SQL


def statement_effect(statement: str) -> str:
    """What a statement sent as text does to a transaction's snapshot: ``"control"`` (nothing: BEGIN,
    SAVEPOINT, a plain SET...), ``"isolation"`` (changes the isolation level or imports a snapshot, behind
    SQLAlchemy's back), or ``"other"`` (may read, so may take the snapshot)."""
    first = first_word(statement)
    if first not in _NO_SNAPSHOT:
        return "other"
    if first in ("begin", "start"):
        if _CONSISTENT_SNAPSHOT.search(statement):
            return "other"  # takes the snapshot right away, at the level the session already has
        return "isolation" if _BEGIN_WITH_LEVEL.search(statement) else "control"
    if first == "set":
        return "isolation" if _SET_ISOLATION.search(statement) else "control"
    return "control"


def on_statement(connection: Connection, statement: str, is_text: bool) -> bool:
    """Every statement (``before_cursor_execute``): from the first one that is not transaction control the
    transaction's snapshot exists. True for that first statement (the snapshot is not taken yet); start
    tokens a caching session still awaits are captured right then, before it runs. A statement that
    changes the isolation level or imports a snapshot makes this transaction, and what the connection
    runs later, untrusted: no start tokens, and its level is unknown from then on."""
    if is_text:
        effect = statement_effect(statement)
        if effect == "isolation":
            _distrust(connection)
            return False
        if effect == "control":
            return False
    if connection not in _unread:
        return False
    _unread.discard(connection)
    awaited = _awaiting.pop(connection, None)
    if awaited is not None:
        cache, tags = awaited
        record_start(connection, cache, tags, bridge.capture_tokens(cache, tags, START_KEY))
    return True


def _distrust(connection: Connection) -> None:
    try:
        connection.info[ISOLATION_UNKNOWN] = True
    except Exception:
        pass
    _unread.discard(connection)
    awaited = _awaiting.pop(connection, None)
    found = _start_tokens.get(connection)
    cache = awaited[0] if awaited is not None else found[0] if found is not None else None
    if cache is not None:
        _start_tokens[connection] = (cache, None)


def start_tags(extra_tags: Iterable[str] = ()) -> list[str]:
    """What start tokens cover: every known table, ``table:*`` and ``extra_tags``."""
    return sorted({"table:*", *(f"table:{name}" for name in catalog().fullnames), *extra_tags})


def expect_start(connection: Connection, cache: YokedCache, extra_tags: Iterable[str]) -> None:
    """A caching session began a transaction on ``connection``. If it reads from a snapshot not taken yet,
    its start tokens are to be captured before its first statement: by the cached read that comes first
    (in the same request as its lookup, see :func:`awaiting`), or just before any other statement."""
    if not reads_from_snapshot(connection.engine, (connection,)):
        return
    if connection not in _unread or _driver_in_transaction(connection):
        _start_tokens[connection] = (cache, None)
        return
    _awaiting[connection] = (cache, start_tags(extra_tags))


def awaiting(connection: Connection, cache: YokedCache) -> list[str] | None:
    """The tags whose tokens are still to be captured as ``connection``'s start tokens in ``cache``."""
    found = _awaiting.get(connection)
    if found is None or found[0] is not cache or connection not in _unread:
        return None
    return found[1]


def record_start(
    connection: Connection, cache: YokedCache, tags: list[str], tokens: list[str] | None
) -> None:
    """``tokens`` of ``tags``, captured before ``connection``'s first statement, are its start tokens."""
    _awaiting.pop(connection, None)
    _start_tokens[connection] = (cache, None if tokens is None else dict(zip(tags, tokens)))


def capture_before_first_statement(connection: Connection, cache: YokedCache, key: str) -> None:
    """Inside a tracked computation, just before a snapshot transaction's first statement: its start
    tokens are the tokens of now (``key`` routes the capture to the backend the value will go to)."""
    if _driver_in_transaction(connection):
        _start_tokens[connection] = (cache, None)
        return
    tags = start_tags()
    record_start(connection, cache, tags, bridge.capture_tokens(cache, tags, key))


def _driver_in_transaction(connection: Connection) -> bool:
    """Does the driver already hold an open transaction (so its snapshot may exist)? Statements sent on
    the raw driver connection pass no SQLAlchemy event: the default pre-ping's ``SELECT 1``, for one,
    opens a transaction on drivers that begin implicitly (pg8000), before the transaction "begins"."""
    try:
        driver = connection.connection.dbapi_connection
    except Exception:
        return False
    if connection.dialect.name == "sqlite":
        return False  # BEGIN DEFERRED takes no snapshot; SQLite's first read does (see snapshot_level)
    status = getattr(driver, "get_transaction_status", None)  # psycopg2: 0 is idle
    if callable(status):
        return bool(status() != 0)
    state = getattr(getattr(driver, "info", None), "transaction_status", None)  # psycopg 3: 0 is idle
    if state is not None:
        return int(state) != 0
    flag = getattr(driver, "in_transaction", None)  # sqlite3, pg8000
    return flag is True


def start_tokens(connection: Connection, cache: YokedCache) -> dict[str, str] | None:
    """The tokens ``cache`` had when ``connection``'s snapshot transaction began, if captured then."""
    found = _start_tokens.get(connection)
    if found is None or found[0] is not cache:
        return None
    return found[1]


def tokens_for(start: dict[str, str], tags: Iterable[str]) -> list[str] | None:
    """The start tokens of ``tags``, in order; ``None`` if any was not captured (then nothing may be
    stored)."""
    out: list[str] = []
    for tag in tags:
        token = start.get(tag)
        if token is None:
            return None
        out.append(token)
    return out
