"""Writes: seen at the cursor, collected per transaction, published as the outermost commit succeeds.

Every statement a connection executes passes ``after_cursor_execute``, whatever produced it: an ORM flush
(inserts, updates, deletes, many-to-many link rows, cascades), ORM bulk DML, Core DML, ``text()``,
``exec_driver_sql`` or DDL. Compiled DML and DDL name their table; raw SQL is read with the
:mod:`catalog` (an unresolvable raw write counts as writing ``*``, i.e. everything).

The tables a connection wrote are kept in a stack of frames mirroring its transaction: a ``SAVEPOINT`` pushes
a frame, ``RELEASE`` merges it into its parent, ``ROLLBACK TO`` drops it (the outer transaction's writes
stay), a root ``ROLLBACK`` drops everything. The ``commit`` event fires *before* the database commits, so
there the written tables only become *pending*, parked in the pooled connection's ``info``. They are
published — ``table:<t>`` replaced for every written table and the tables the database cascades to — from
the engine dialect's ``do_commit``, wrapped once per dialect on its first commit with writes: it is the only
point after the database committed and before ``commit()`` returns (SQLAlchemy has no event there), so a
connection kept open after ``conn.commit()`` never leaves readers on stale entries. Every commit of a
connection goes through it: ``Connection.commit()``, ``engine.begin()``, ``Session.commit()`` and their
async forms (inside SQLAlchemy's greenlet), and two-phase commits (``do_commit_twophase``). A commit the
database refuses publishes nothing and drops its writes; one whose outcome is unknown (connection lost,
caller interrupted) publishes, since invalidating is the safe guess. The session's ``after_commit``, the
connection going back to the pool and its next transaction still publish anything left pending. An
AUTOCOMMIT connection publishes after each statement.

Which caches hear about it: every cache whose caching sessions used the same database in this process
(:func:`register`); other processes learn through the shared backend, where the tokens live.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import Pool
from sqlalchemy.sql import ddl
from sqlalchemy.sql.selectable import CompoundSelect, Select

from ...policy.cache import YokedCache
from . import bridge
from .catalog import catalog, name_only_tags

logger = logging.getLogger("yokedcache")

EVERYTHING = "*"
_PENDING = "yokedcache.pending_writes"
_AUTOCOMMIT = "AUTOCOMMIT"

# --- which caches watch which database --------------------------------------------------------------------

_identities: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
_memory_databases: weakref.WeakKeyDictionary[Pool, str] = weakref.WeakKeyDictionary()
_caches: dict[str, weakref.WeakSet[YokedCache]] = {}
_lock = threading.Lock()


def database_identity(engine: Engine) -> str:
    """Names the database an engine talks to, without password or driver (sync and async engines agree).

    In-memory SQLite databases are private to their pool, so each gets a unique name; file paths are made
    absolute; an engine-wide ``schema_translate_map`` is part of the identity (it changes what SQL reads).
    """
    found = _identities.get(engine)
    if found is not None:
        return found
    url = engine.url
    backend = url.get_backend_name()
    database = url.database or ""
    if backend == "sqlite":
        if database in ("", ":memory:") or url.query.get("mode") == "memory":
            database = _memory_databases.setdefault(engine.pool, f":memory:{uuid.uuid4().hex}")
        elif not database.startswith("file:"):
            database = os.path.abspath(database)
    query = "&".join(f"{k}={v}" for k, v in sorted(url.query.items()) if k.lower() != "password")
    identity = f"{backend}://{url.username or ''}@{url.host or ''}:{url.port or ''}/{database}?{query}"
    translate = engine.get_execution_options().get("schema_translate_map")
    if translate:
        identity += "#" + repr(sorted(translate.items(), key=repr))
    _identities[engine] = identity
    return identity


def register(engine: Engine, cache: YokedCache) -> str:
    """Make writes to ``engine``'s database invalidate ``cache`` (idempotent); returns the identity."""
    identity = database_identity(engine)
    caches = _caches.get(identity)
    if caches is None or cache not in caches:
        with _lock:
            _caches.setdefault(identity, weakref.WeakSet()).add(cache)
    return identity


def _watched(engine: Engine) -> str | None:
    identity = database_identity(engine)
    return identity if _caches.get(identity) else None


def publish(identity: str, tables: Iterable[str]) -> None:
    """Replace the tokens of the written tables (and their cascades) in every cache watching the database."""
    caches = list(_caches.get(identity, ()))
    tables = set(tables)
    if not caches or not tables:
        return
    if EVERYTHING in tables:
        tags = ["table:*"]
    else:
        tags = sorted(f"table:{name}" for name in catalog().with_cascades(tables))
    failure: BaseException | None = None
    for cache in caches:
        try:
            bridge.invalidate_tags(cache, tags)
        except Exception as exc:  # fallback off: raise, but only after every cache had its chance
            failure = failure or exc
    if failure is not None:
        raise failure


def publish_pending(info: dict[Any, Any]) -> None:
    """Publish what a committed transaction left in a pooled connection's ``info``, once."""
    pending = info.pop(_PENDING, None)
    if pending:
        identity, tables = pending
        publish(identity, tables)


# --- per-connection transaction frames ------------------------------------------------------------------


class _TransactionWrites:
    """Tables written in one connection's transaction, one set per open savepoint level."""

    __slots__ = ("identity", "stack")

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.stack: list[tuple[str | None, set[str]]] = [(None, set())]

    def write(self, tables: Iterable[str]) -> None:
        self.stack[-1][1].update(tables)

    def savepoint(self, name: str | None) -> None:
        self.stack.append((name, set()))

    def end_savepoint(self, name: str, keep: bool) -> None:
        """Close savepoint ``name`` and any inside it; unnamed frames (SQLAlchemy names a savepoint only
        after announcing it) are closed innermost first, as nested transactions always are."""
        names = [frame_name for frame_name, _ in self.stack[1:]]
        depth = len(names) - names[::-1].index(name) if name in names else len(names)
        while len(self.stack) > max(depth, 1):
            _, tables = self.stack.pop()
            if keep:
                self.stack[-1][1].update(tables)

    def written(self) -> set[str]:
        out: set[str] = set()
        for _, tables in self.stack:
            out |= tables
        return out


_transactions: weakref.WeakKeyDictionary[Connection, _TransactionWrites] = weakref.WeakKeyDictionary()


def _writes_of(connection: Connection, identity: str) -> _TransactionWrites:
    writes = _transactions.get(connection)
    if writes is None:
        writes = _transactions[connection] = _TransactionWrites(identity)
    return writes


def written_tables(connections: Iterable[Connection]) -> set[str]:
    """Tables written and not yet committed on these connections (``"*"`` for unresolved raw writes)."""
    out: set[str] = set()
    for connection in connections:
        writes = _transactions.get(connection)
        if writes is not None:
            out |= writes.written()
    return out


# --- what a statement writes ------------------------------------------------------------------------------

_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.DOTALL)
_FIRST_WORD = re.compile(r"[A-Za-z_]+")
_READS = frozenset(["select", "with", "values", "table", "show", "describe", "desc", "explain"])
_NEUTRAL = frozenset(
    [
        "begin", "start", "commit", "end", "rollback", "savepoint", "release", "set", "reset", "pragma",
        "analyze", "vacuum", "checkpoint", "listen", "unlisten", "notify", "fetch", "declare", "close",
        "discard", "deallocate", "lock", "use",
    ]
)  # fmt: skip
DYNAMIC = frozenset(["do", "call", "exec", "execute", "perform"])  # what they touch cannot be read
_DML = re.compile(r"\b(?:insert|update|delete|merge|truncate|replace|upsert|copy)\b", re.IGNORECASE)
_ROW_LOCKS = re.compile(r"\bfor\s+(?:no\s+key\s+)?(?:update|share|key\s+share)\b", re.IGNORECASE)
_SELECT_INTO = re.compile(r"\binto\b", re.IGNORECASE)


def first_word(sql: str) -> str:
    """The statement's first keyword, lower-cased (comments and parentheses skipped)."""
    start = _LEADING_NOISE.match(sql)
    word = _FIRST_WORD.match(sql, start.end() if start else 0)
    return word.group(0).lower() if word else ""


def raw_statement_kind(sql: str) -> str:
    """``"read"``, ``"write"`` or ``"neutral"`` (transaction control, settings) for raw SQL text."""
    first = first_word(sql)
    if first in _NEUTRAL:
        return "neutral"
    if first not in _READS:
        return "write"
    unlocked = _ROW_LOCKS.sub(" ", sql)
    if first == "select" and _SELECT_INTO.search(unlocked):
        return "write"  # SELECT ... INTO creates a table
    if first in ("with", "explain") and _DML.search(unlocked):
        return "write"  # a writable CTE, or EXPLAIN ANALYZE running DML
    return "read"


def written_by(context: Any, statement: str) -> set[str] | None:
    """The tables a statement writes, ``{"*"}`` if unknown, ``None`` if it writes nothing."""
    compiled = getattr(context, "compiled", None)
    if compiled is not None:
        if context.isinsert or context.isupdate or context.isdelete:
            table = getattr(compiled.statement, "table", None)
            if table is not None and hasattr(table, "fullname"):
                return {table.fullname, *name_only_tags(table)}
        elif context.isddl:
            return _ddl_tables(compiled.statement)
        elif isinstance(compiled.statement, (Select, CompoundSelect)):
            return None
    return _raw_sql_tables(statement)


def _ddl_tables(element: Any) -> set[str] | None:
    if isinstance(element, (ddl.CreateSequence, ddl.DropSequence)):
        return None
    target = getattr(element, "element", None)
    table = target if hasattr(target, "fullname") else getattr(target, "table", None)
    if table is not None and hasattr(table, "fullname"):
        return {table.fullname}
    if isinstance(element, ddl.DDL):
        return _raw_sql_tables(element.statement)
    return {EVERYTHING}


def _raw_sql_tables(sql: str) -> set[str] | None:
    if raw_statement_kind(sql) != "write":
        return None
    if first_word(sql) in DYNAMIC:
        return {EVERYTHING}
    return catalog().written_by_sql(sql) or {EVERYTHING}


def _is_autocommit(connection: Connection) -> bool:
    level = connection.get_execution_options().get("isolation_level") or getattr(
        connection.dialect, "_on_connect_isolation_level", None
    )
    if level == _AUTOCOMMIT:
        return True
    try:
        return getattr(connection.connection.dbapi_connection, "autocommit", None) is True
    except Exception:
        return False


# --- event handlers ---------------------------------------------------------------------------------------


def is_compiled_select(context: Any) -> bool:
    """A statement SQLAlchemy compiled from a SELECT construct (never a write: no SQL text to read)."""
    if context is None or context.compiled is None or context.isddl:
        return False
    if context.isinsert or context.isupdate or context.isdelete:
        return False
    return isinstance(context.compiled.statement, (Select, CompoundSelect))


def _after_cursor_execute(
    connection: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    if is_compiled_select(context):
        return  # the hot path: a compiled SELECT writes nothing
    identity = _watched(connection.engine)
    if identity is None:
        return
    tables = written_by(context, statement)
    if not tables:
        return
    if _is_autocommit(connection):
        publish(identity, tables)
        return
    _writes_of(connection, identity).write(tables)


def _park(connection: Connection) -> bool:
    """Move the committing transaction's written tables to the connection's pending ones (True if any)."""
    writes = _transactions.pop(connection, None)
    if writes is None:
        return False
    tables = writes.written()
    if not tables:
        return False
    info = connection.info
    pending = info.get(_PENDING)
    if pending is None:
        info[_PENDING] = (writes.identity, tables)
    else:
        pending[1].update(tables)
    return True


def _on_commit(connection: Connection) -> None:
    if _park(connection):
        # Connection.commit() looks do_commit up only after this event, so even this commit publishes
        _publish_on_do_commit(connection.engine.dialect)


def _on_commit_twophase(connection: Connection, xid: Any, is_prepared: bool) -> None:
    if _park(connection):
        _publish_on_do_commit_twophase(connection.engine.dialect)


_publishing_dialects: weakref.WeakSet[Dialect] = weakref.WeakSet()
_publishing_twophase_dialects: weakref.WeakSet[Dialect] = weakref.WeakSet()
_dialect_lock = threading.Lock()


def _publish_on_do_commit(dialect: Dialect) -> None:
    """Wrap this dialect instance's ``do_commit``, once, to publish what the committing connection parked."""
    _wrap_once(dialect, "do_commit", _publishing_dialects, _committing)


def _publish_on_do_commit_twophase(dialect: Dialect) -> None:
    """The same for two-phase commits, which go through ``do_commit_twophase(connection, xid, ...)``."""
    _wrap_once(dialect, "do_commit_twophase", _publishing_twophase_dialects, _committing_twophase)


def _wrap_once(
    dialect: Dialect, name: str, wrapped: weakref.WeakSet[Dialect], wrap: Callable[[Dialect, Any], Any]
) -> None:
    if dialect in wrapped:
        return
    with _dialect_lock:
        if dialect in wrapped:
            return
        setattr(dialect, name, wrap(dialect, getattr(dialect, name)))
        wrapped.add(dialect)


def _committing_twophase(dialect: Dialect, do_commit_twophase: Callable[..., None]) -> Callable[..., None]:
    """``do_commit_twophase`` (which is handed the ``Connection``) followed by the publication."""

    def do_commit_twophase_then_publish(connection: Any, *args: Any, **kwargs: Any) -> None:
        info = connection.info
        try:
            do_commit_twophase(connection, *args, **kwargs)
        except BaseException as exc:
            _commit_failed(dialect, connection.connection, info, exc)
            raise
        if _PENDING in info:
            publish_pending(info)

    return do_commit_twophase_then_publish


def _committing(dialect: Dialect, do_commit: Callable[[Any], None]) -> Callable[[Any], None]:
    """``do_commit`` followed, once the database has committed, by the publication, still inside the
    caller's ``commit()`` (and, for async connections, inside SQLAlchemy's greenlet)."""

    def do_commit_then_publish(dbapi_connection: Any) -> None:
        info = getattr(dbapi_connection, "info", None)  # the pooled connection's, where _on_commit parks
        try:
            do_commit(dbapi_connection)
        except BaseException as exc:
            if info is not None:
                _commit_failed(dialect, dbapi_connection, info, exc)
            raise
        if info is not None and _PENDING in info:
            publish_pending(info)  # a publish failure (fallback off) reaches the caller of commit()

    return do_commit_then_publish


def _commit_failed(dialect: Dialect, dbapi_connection: Any, info: dict[Any, Any], exc: BaseException) -> None:
    """A commit raised. Only a driver error that is not a lost connection says the database refused it:
    then its writes are dropped, never published by a later fallback.

    Anything else leaves the outcome unknown — the connection was lost, or the caller was interrupted
    (``KeyboardInterrupt``, task cancellation, a timeout that is no driver error) possibly after the database
    committed — and an extra invalidation costs a miss where a missing one serves stale data. An ordinary
    exception publishes now; an interruption leaves the writes pending, published when the connection goes
    back to the pool or begins again (an interrupted caller may be unable to reach the cache right now).
    """
    if _refused_by_database(dialect, dbapi_connection, exc):
        info.pop(_PENDING, None)
        return
    if not isinstance(exc, Exception):
        return
    pending = info.pop(_PENDING, None)
    if pending is None:
        return
    try:
        publish(*pending)
    except Exception as publish_error:  # the commit's own error is the one the caller must see
        logger.error("could not publish invalidations for a commit of unknown outcome: %s", publish_error)


def _refused_by_database(dialect: Dialect, dbapi_connection: Any, exc: BaseException) -> bool:
    try:
        if not isinstance(exc, dialect.loaded_dbapi.Error):
            return False  # only the driver's own errors say what the database did
        return not dialect.is_disconnect(exc, dbapi_connection, None)
    except Exception:
        return False


def _on_rollback(connection: Connection) -> None:
    _transactions.pop(connection, None)


def _on_rollback_twophase(connection: Connection, xid: Any, is_prepared: bool) -> None:
    _transactions.pop(connection, None)


def _on_savepoint(connection: Connection, name: str | None) -> None:
    identity = _watched(connection.engine)
    if identity is not None:
        _writes_of(connection, identity).savepoint(name)


def _on_release_savepoint(connection: Connection, name: str, context: Any) -> None:
    writes = _transactions.get(connection)
    if writes is not None:
        writes.end_savepoint(name, keep=True)


def _on_rollback_savepoint(connection: Connection, name: str, context: Any) -> None:
    writes = _transactions.get(connection)
    if writes is not None:
        writes.end_savepoint(name, keep=False)


def _on_begin(connection: Connection) -> None:
    try:
        info = connection.info
    except Exception:
        return
    if _PENDING in info:
        publish_pending(info)


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    if record is None or _PENDING not in record.info:
        return
    try:
        publish_pending(record.info)
    except Exception as exc:  # a pool return must never fail; the cache already logged the failure
        logger.error("could not publish invalidations on connection check-in: %s", exc)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Listen to every engine's and pool's events, once per process."""
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
        event.listen(Engine, "commit", _on_commit)
        event.listen(Engine, "commit_twophase", _on_commit_twophase)
        event.listen(Engine, "rollback", _on_rollback)
        event.listen(Engine, "rollback_twophase", _on_rollback_twophase)
        event.listen(Engine, "savepoint", _on_savepoint)
        event.listen(Engine, "release_savepoint", _on_release_savepoint)
        event.listen(Engine, "rollback_savepoint", _on_rollback_savepoint)
        event.listen(Engine, "begin", _on_begin)
        event.listen(Pool, "checkin", _on_checkin)
        _installed = True
