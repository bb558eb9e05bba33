"""``do_orm_execute``: serve a SELECT from the cache, or run it and store it, or step aside.

**Bypass** (the statement runs exactly as without caching) for: non-SELECTs; ``execution_options(
yokedcache=False)``; refresh and column loads, lazy and other relationship loads; ``populate_existing``;
``yield_per``/streaming; ``FOR UPDATE``; sharded identities; a snapshot transaction (REPEATABLE READ,
SERIALIZABLE) whose tokens could not be captured at its start (see ``snapshots.py``; a SERIALIZABLE one
is never served hits, only stores); statements whose shape is uncacheable (volatile SQL functions, no
tables, ``text()`` reading unknown tables, bundles); with ``table_name``, statements not reading it;
statements reading a table this transaction has written and not committed; parameters of a type without a
canonical encoding.

Pending changes are flushed first when autoflush would flush them anyway, so they count as written.

**Hit**: one backend round trip (``cache.get_or_capture``), then real objects rebuilt in this session
(``rows.py``) and a ``Result`` of the statement's own shape (``statements.ResultTemplate``). No SQL is sent.

**Miss**: the same round trip that found nothing returned the tags' tokens, so they were captured *before*
the database is read (in a snapshot transaction, the tokens captured at its start are used instead).
Statements that loading issues on its behalf (``selectin``, ``subquery`` eager loads, polymorphic loads) add
their tables, each captured before it runs, and the payload is stored only if every token is still current.
When the session holds no objects yet (a fresh request's session), the statement simply runs in it and
the payload is encoded from the objects it loaded: they are all fresh from the database. Otherwise it runs
in a private session sharing this session's connection and transaction (so the payload holds database
values, not this session's possibly older in-memory objects), and the caller's rows are rebuilt from that
same payload, so a miss and a hit return the same thing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import (
    ReleaseSavepointClause,
    RollbackToSavepointClause,
    SavepointClause,
    TextClause,
)

from ...config import effective_table_settings
from ...keys import normalize_tags
from ...policy.cache import YokedCache
from ...policy.reads import ReadFrame, current_frame
from ...policy.resilience import BurstLogger
from . import bridge, rows, snapshots, writes
from .catalog import catalog
from .keys import UnknownParameter, query_key
from .statements import Shape, shape_of, tables_read_by
from .stats import record_hit, record_miss

logger = logging.getLogger("yokedcache")
_shape_failures = BurstLogger()

CACHING_KEY = "yokedcache.query_caching"
RECORDER_KEY = "yokedcache.read_recorder"
_MISSING: Any = object()
_OPTION_NAMES = frozenset({"ttl", "tags"})


def on_do_orm_execute(orm_state: ORMExecuteState) -> Result[Any] | None:
    """The ``Session.do_orm_execute`` listener (one for every session; inert without caching state)."""
    frame = current_frame()
    if frame is not None and frame.safe and orm_state.is_select:
        vouch_for_older_state(frame, orm_state.session, _mappers_answered_by(orm_state))
    info = orm_state.session.info
    caching = info.get(CACHING_KEY)
    if caching is None:
        recorder = info.get(RECORDER_KEY)
        if recorder is not None:
            recorder.before_nested(orm_state)
        return None
    if caching.recorder is not None:  # a statement issued while a miss loads in this very session
        caching.recorder.before_nested(orm_state)
        return None
    if not orm_state.is_select:
        return None
    try:
        read = _plan(caching, orm_state)
    except ValueError:
        raise  # a malformed execution_options(yokedcache=...): the caller's mistake, reported as such
    except Exception as exc:  # a statement shape this integration does not understand: run it uncached
        _shape_failures.log(logging.WARNING, f"query not cached ({type(exc).__name__}: {exc})")
        return None
    return None if read is None else read.serve()


# --- state loaded before a computation ---------------------------------------------------------------------
#
# A query returns the objects already in the session's identity map as they are, with the attributes they
# were loaded with. A cached computation whose tokens were captured after such an object was loaded could
# store data older than a commit it claims to have seen. So objects are stamped when loaded or refreshed:
# with the time, and — when loaded inside a tracked computation — with the tokens of their tables captured
# before the SQL that loaded them. A later computation that meets the object adopts those older tokens (so
# a commit since the load makes its store fail); an object without them makes it unable to vouch for its
# value (returned, not stored).

LOADED_AT = "yokedcache.loaded_ns"
LOADED_TOKENS = "yokedcache.loaded_tokens"


def _table_tags(mapper: Any) -> list[str]:
    return [f"table:{table.fullname}" for table in mapper.tables]


def stamp_loaded(target: Any, *args: Any) -> None:
    """``load`` / ``refresh`` instance events: remember when (and under which tokens) this object's state
    came from the database."""
    state = getattr(target, "_sa_instance_state", None)
    if state is None:
        return
    info = state.info
    info[LOADED_AT] = time.monotonic_ns()
    frame = current_frame()
    if frame is None or not frame.safe:  # the common case: a load outside any tracked computation
        if LOADED_TOKENS in info:
            del info[LOADED_TOKENS]
        return
    tags = _table_tags(state.mapper)
    if all(tag in frame.tokens for tag in tags):
        info[LOADED_TOKENS] = (frame.cache, {tag: frame.tokens[tag] for tag in tags})
    else:
        info.pop(LOADED_TOKENS, None)


def _loaded_before(state: Any, moment_ns: int) -> bool:
    return bool(state.info.get(LOADED_AT, 0) < moment_ns)


def _older_states(session: Any, moment_ns: int, mappers: frozenset[Any] | None) -> list[Any]:
    identity_map = getattr(session, "identity_map", None)
    if not identity_map:
        return []
    return [
        state
        for state in identity_map.all_states()
        if _loaded_before(state, moment_ns) and (mappers is None or state.mapper in mappers)
    ]


def vouch_for_older_state(frame: ReadFrame, session: Any, mappers: frozenset[Any] | None) -> None:
    """Make ``frame`` answer for objects of ``session`` loaded before it opened: adopt their load-time
    tokens, or mark the frame unsafe when an object has none (loaded outside any tracked computation)."""
    for state in _older_states(session, frame.opened_ns, mappers):
        frame.older = True
        stamped = state.info.get(LOADED_TOKENS)
        if stamped is None or stamped[0] is not frame.cache:
            frame.safe = False
            return
        frame.tokens.update(stamped[1])  # the older token wins: a commit since the load fails the store


def holds_older_state(session: Any, moment_ns: int, mappers: frozenset[Any] | None = None) -> bool:
    """Does ``session`` hold persistent objects (of ``mappers``, if given) loaded before ``moment_ns``?"""
    return bool(_older_states(session, moment_ns, mappers))


def _mappers_answered_by(orm_state: ORMExecuteState) -> frozenset[Any]:
    """Mappers whose objects a SELECT can hand back: its entities, plus their related mappers when loader
    options (``joinedload``, ``selectinload``...) may fill relationships from the identity map too."""
    mappers = set(orm_state.all_mappers)
    if getattr(orm_state.statement, "_with_options", ()):
        for mapper in list(mappers):
            mappers.update(rel.mapper for rel in mapper.relationships)
    return frozenset(mappers)




def inputs_predate(arguments: Any, moment_ns: int) -> bool:
    """Do call arguments carry database state from before ``moment_ns``: ORM instances, or sessions
    already holding loaded objects (``session.get`` answers those from memory, sending no SQL)?"""
    for value in arguments:
        state = getattr(value, "_sa_instance_state", None)
        if state is not None and state.key is not None:
            return True
        session = getattr(value, "sync_session", value)
        if isinstance(session, Session) and holds_older_state(session, moment_ns):
            return True
    return False


# --- deciding ----------------------------------------------------------------------------------------------


def _statement_options(value: Any) -> dict[str, Any]:
    if value is True or value is None:
        return {}
    if not isinstance(value, dict) or not _OPTION_NAMES.issuperset(value):
        raise ValueError(f"execution option yokedcache must be False or a dict with ttl/tags, got {value!r}")
    ttl = value.get("ttl")
    if ttl is not None and (not isinstance(ttl, (int, float)) or ttl < 0):
        raise ValueError(f"yokedcache ttl must be a number >= 0, got {ttl!r}")
    return {"ttl": ttl, "tags": normalize_tags(value.get("tags"))}


def _must_bypass(orm_state: ORMExecuteState, options: Any) -> bool:
    if orm_state.is_column_load or orm_state.is_relationship_load:
        return True
    load = orm_state.load_options
    if load._populate_existing or load._yield_per or options.get("populate_existing"):
        return True
    if options.get("yield_per") or options.get("stream_results") or options.get("identity_token"):
        return True
    if "shard_id" in orm_state.bind_arguments:
        return True
    return getattr(orm_state.statement, "_for_update_arg", None) is not None


def _cache_key(statement: Any) -> Any:
    """SQLAlchemy's structural cache key (``None``: the statement cannot be cached by structure)."""
    generate = getattr(statement, "_generate_cache_key", None)
    return None if generate is None else generate()


def _reads_table(shape: Shape, table_name: str) -> bool:
    return any(t == table_name or t.rpartition(".")[2] == table_name for t in shape.tables)


def _plan(caching: Any, orm_state: ORMExecuteState) -> _Read | None:
    options = orm_state.execution_options
    own = options.get("yokedcache", True)
    if own is False or _must_bypass(orm_state, options):
        return None
    overrides = _statement_options(own)
    session, statement = orm_state.session, orm_state.statement
    if orm_state.load_options._autoflush or not orm_state.is_orm_statement:
        session._autoflush()  # what executing would do next anyway; then the changes count as writes
    bind = session.get_bind(**orm_state.bind_arguments)
    cache = caching.resolve_cache()
    snapshot: _Snapshot | None = None
    if snapshots.reads_from_snapshot(bind, caching.connections):
        connection = session.connection(bind_arguments=orm_state.bind_arguments)  # begins the transaction
        level = snapshots.snapshot_level(connection.engine, (connection,))
        if level is not None:
            snapshot = _Snapshot(connection, level, snapshots.start_tokens(connection, cache))
            if snapshot.start is None:
                snapshot.awaited = snapshots.awaiting(connection, cache)
                if snapshot.awaited is None:
                    return None  # its snapshot was taken before tokens could be captured: run it plainly
    cache_key = _cache_key(statement)
    if cache_key is None:
        return None
    engine = bind.engine
    shape = shape_of(statement, cache_key, engine.dialect)
    if shape.bypass is not None or (caching.table_name and not _reads_table(shape, caching.table_name)):
        return None
    written = writes.written_tables(caching.connections)
    if written and (writes.EVERYTHING in written or not written.isdisjoint(shape.tables)):
        return None
    identity = writes.register(engine, cache)
    parameters = orm_state.parameters
    if parameters is not None and not isinstance(parameters, dict):
        return None  # "executemany" parameters for a SELECT: nothing sensible to cache
    bound = [bind_param.effective_value for bind_param in cache_key.bindparams]
    try:
        key = query_key(identity, shape, bound, parameters, options.get("schema_translate_map"))
    except UnknownParameter as exc:
        logger.debug("not caching a query with a parameter of unknown type: %s", exc)
        return None
    return _Read(caching, orm_state, cache, shape, key, engine, overrides, snapshot)


# --- serving ---------------------------------------------------------------------------------------------


class _Snapshot:
    """A read in a transaction that reads from a snapshot: its start tokens, or the tags whose tokens are
    still to be captured as such (no statement has run yet), and whether hits may be served."""

    __slots__ = ("awaited", "connection", "serve_hits", "start")

    def __init__(self, connection: Any, level: str, start: dict[str, str] | None) -> None:
        self.connection = connection
        self.start = start
        self.awaited: list[str] | None = None
        # The database must see a serializable read; a level set by raw SQL is unknown, so maybe that.
        self.serve_hits = level not in ("SERIALIZABLE", "UNKNOWN")


class _Read:
    """One cacheable execution: its key is known; serve it from the cache or from the database."""

    def __init__(
        self,
        caching: Any,
        orm_state: ORMExecuteState,
        cache: YokedCache,
        shape: Shape,
        key: str,
        engine: Any,
        overrides: dict[str, Any],
        snapshot: _Snapshot | None,
    ) -> None:
        self.caching = caching
        self.orm_state = orm_state
        self.cache = cache
        self.shape = shape
        self.key = key
        self.engine = engine
        self.overrides = overrides
        self.snapshot = snapshot  # set when the transaction reads from a snapshot

    @property
    def start(self) -> dict[str, str] | None:
        """Tokens captured before this snapshot transaction's first statement (else None)."""
        return None if self.snapshot is None else self.snapshot.start

    def serve(self) -> Result[Any]:
        started = time.perf_counter()
        frame = current_frame()
        if frame is not None:  # a hit sends no SQL, so tell the computation around us what it read
            if self.start is not None and frame.cache is not self.cache:
                frame.safe = False  # no start tokens of that cache: its value cannot be vouched for
            else:
                record_read(frame, self.shape.tables, self.engine, self.start)
        tags, ttl, serialization, compress = self._settings()
        payload, tokens = self._lookup(tags)
        if payload is not _MISSING:
            found = self._rebuild(payload)
            if found is not None:
                record_hit(self.cache, self.shape.sql, self.shape.tables, time.perf_counter() - started)
                return self._result(found)
            if self.snapshot is None:
                tokens = bridge.capture_tokens(self.cache, tags, self.key)
            elif self.snapshot.awaited is not None:
                awaited = self.snapshot.awaited
                self._begin(bridge.capture_tokens(self.cache, awaited, self.key))
        if self.snapshot is not None:  # only tokens from before the snapshot will do
            start = self.snapshot.start
            tokens = None if start is None else snapshots.tokens_for(start, tags)
        recorder = ReadRecorder(self.cache, self.key, tags, tokens, self.engine.dialect, self.start)
        return self._compute(recorder, ttl, serialization, compress)

    def _lookup(self, tags: list[str]) -> tuple[Any, list[str] | None]:
        """The entry (or ``_MISSING``) and, on a miss outside a snapshot, the tags' tokens, in one request.
        A snapshot transaction whose start tokens are still awaited gets them from that same request."""
        snapshot = self.snapshot
        if snapshot is None:
            return bridge.cache_get_or_capture(self.cache, self.key, tags, _MISSING)
        if snapshot.awaited is not None:
            awaited = snapshot.awaited
            if snapshot.serve_hits:
                payload, captured = bridge.cache_get_or_capture(self.cache, self.key, awaited, _MISSING)
            else:
                payload, captured = _MISSING, bridge.capture_tokens(self.cache, awaited, self.key)
            if payload is _MISSING:
                self._begin(captured)
            return payload, None
        if not snapshot.serve_hits:
            return _MISSING, None
        return bridge.cache_get(self.cache, self.key, _MISSING), None

    def _begin(self, captured: list[str] | None) -> None:
        """Record the start tokens just captured (before the statement that will take the snapshot)."""
        snapshot = self.snapshot
        assert snapshot is not None and snapshot.awaited is not None
        snapshots.record_start(snapshot.connection, self.cache, snapshot.awaited, captured)
        snapshot.start = snapshots.start_tokens(snapshot.connection, self.cache)
        snapshot.awaited = None

    def _rebuild(self, payload: Any) -> list[tuple[Any, ...]] | None:
        assert self.shape.template is not None
        try:
            return rows.rebuild(payload, self.orm_state.session, self.shape.template.entity_positions)
        except Exception as exc:  # a payload from another model version, or garbage: a miss, never an error
            logger.debug("cached rows for %s could not be rebuilt (%s); reading the database", self.key, exc)
            return None

    def _result(self, found: list[tuple[Any, ...]]) -> Result[Any]:
        assert self.shape.template is not None
        load = self.orm_state.load_options
        return self.shape.template.result(found, load._only_return_tuples, load._legacy_uniquing)

    def _settings(self) -> tuple[list[str], float | None, Any, bool | None]:
        settings = effective_table_settings(self.cache.config, self.shape.tables, self.shape.sql)
        tags = {f"table:{t}" for t in self.shape.tables} | {"table:*"}
        tags |= set(self.caching.tags) | set(settings.tags) | set(self.overrides.get("tags", ()))
        ttl = self.overrides.get("ttl")
        if ttl is None:
            ttl = self.caching.ttl if self.caching.ttl is not None else settings.ttl
        return sorted(tags), ttl, settings.serialization, settings.compression

    def _compute(self, recorder: ReadRecorder, ttl: float | None, serialization: Any, compress: Any) -> Any:
        started = time.perf_counter()
        if self.orm_state.session.identity_map:
            loaded = self._load_privately(recorder)
        else:
            loaded = self._load_here(recorder)
        db_seconds = time.perf_counter() - started
        if loaded is None:
            return self.orm_state.invoke_statement()  # not representable: run it plainly, cache nothing
        payload, found = loaded
        if payload is not None and recorder.storable and ttl != 0:
            stored_tags, tokens = recorder.tags_and_tokens()
            bridge.store_computed(
                self.cache, self.key, payload, tokens, stored_tags, ttl, serialization, compress
            )
        record_miss(self.cache, self.shape.sql, self.shape.tables, db_seconds)
        return self._result(found)

    def _load_here(self, recorder: ReadRecorder) -> tuple[dict[str, Any] | None, list[tuple[Any, ...]]]:
        """Run the statement in the caller's session, which holds no objects: everything it returns was
        just loaded from the database, so it is encoded as is and handed back without rebuilding."""
        self.caching.recorder = recorder
        try:
            fetched = _raw_rows(self.orm_state.invoke_statement())
        finally:
            self.caching.recorder = None
        assert self.shape.template is not None
        try:
            payload, _ = rows.encode(fetched, self.shape.template.entity_positions)
        except rows.NotCacheable:
            return None, fetched
        return payload, fetched

    def _load_privately(
        self, recorder: ReadRecorder
    ) -> tuple[dict[str, Any] | None, list[tuple[Any, ...]]] | None:
        """Run the statement in a private session on this session's connection (so the payload holds
        database values, not this session's objects), then rebuild the caller's rows from the payload."""
        orm_state = self.orm_state
        session = orm_state.session
        connection = session.connection(bind_arguments=orm_state.bind_arguments)
        info = {k: v for k, v in session.info.items() if k != CACHING_KEY}
        info[RECORDER_KEY] = recorder
        private = Session(
            bind=connection,
            join_transaction_mode="rollback_only",
            autoflush=False,
            expire_on_commit=False,
            info=info,
        )
        assert self.shape.template is not None
        positions = self.shape.template.entity_positions
        try:
            result = private._execute_internal(
                orm_state.statement,
                orm_state.parameters,
                execution_options=orm_state.local_execution_options,
                bind_arguments=dict(orm_state.bind_arguments),
                _parent_execute_state=orm_state,
            )
            try:
                payload, mappers = rows.encode(_raw_rows(result), positions)
            except rows.NotCacheable:
                return None
        finally:
            private.close()
        return payload, rows.rebuild(payload, session, positions, mappers)


def _raw_rows(result: Result[Any]) -> list[tuple[Any, ...]]:
    result._unique_filter_state = None  # raw rows: the template re-applies uniquing rules
    return [tuple(row) for row in result.all()]


class ReadRecorder:
    """Follows a miss while it loads: extends the entry's tags with the tables of every statement loading
    issues, each one's token captured before that statement runs (or, in a snapshot transaction, taken
    from the tokens captured at its start)."""

    def __init__(
        self,
        cache: YokedCache,
        key: str,
        tags: list[str],
        tokens: list[str] | None,
        dialect: Any,
        start: dict[str, str] | None = None,
    ) -> None:
        self.cache = cache
        self.key = key
        self.dialect = dialect
        self.start = start
        self.tokens: dict[str, str] | None = None if tokens is None else dict(zip(tags, tokens))

    @property
    def storable(self) -> bool:
        return self.tokens is not None

    def tags_and_tokens(self) -> tuple[list[str], list[str]]:
        assert self.tokens is not None
        tags = sorted(self.tokens)
        return tags, [self.tokens[t] for t in tags]

    def before_nested(self, orm_state: ORMExecuteState) -> None:
        if self.tokens is None or not orm_state.is_select:
            return
        statement = orm_state.statement
        cache_key = _cache_key(statement)
        shape = None if cache_key is None else shape_of(statement, cache_key, self.dialect)
        if shape is None or shape.bypass is not None:
            self.tokens = None  # a load whose tables we cannot name: do not store this entry
            return
        new = [f"table:{t}" for t in sorted(shape.tables) if f"table:{t}" not in self.tokens]
        if not new:
            return
        if self.start is not None:
            tokens = snapshots.tokens_for(self.start, new)
        else:
            tokens = bridge.capture_tokens(self.cache, new, self.key)
        if tokens is None:
            self.tokens = None
        else:
            self.tokens.update(zip(new, tokens))


# --- read tracking (see tracking.py) ---------------------------------------------------------------------


def record_read(
    frame: ReadFrame, tables: frozenset[str] | None, engine: Any, start: dict[str, str] | None = None
) -> None:
    """Add a read of ``tables`` (``None``: tables we cannot name) to ``frame``, capturing tokens first
    (in a snapshot transaction, ``start`` holds the tokens captured when it began)."""
    if tables is None:
        frame.safe = False
        return
    writes.register(engine, frame.cache)  # so this database's commits reach the frame's cache
    tags = ["table:*", *(f"table:{t}" for t in sorted(tables))]
    if start is not None:  # all of them: a start token differing from an earlier capture makes it unsafe
        frame.older = True  # the snapshot may have been taken before the computation began
        frame.add(tags, snapshots.tokens_for(start, tags))
        return
    missing = frame.missing(tags)
    if missing:
        frame.add(missing, bridge.capture_tokens(frame.cache, missing, frame.key))


def track_cursor_read(
    connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    """``before_cursor_execute``: every SELECT a tracked computation sends, in any session or connection."""
    compiled_select = writes.is_compiled_select(context)
    is_text = not compiled_select and _sent_as_text(context)
    first = snapshots.on_statement(connection, statement, is_text)
    frame = current_frame()
    if frame is None or not frame.safe:
        return
    start = None
    if snapshots.reads_from_snapshot(connection.engine, (connection,)):
        # Tokens captured now may be newer than this transaction's snapshot: only start tokens will do,
        # and before its first statement, now *is* its start.
        if first and snapshots.start_tokens(connection, frame.cache) is None:
            snapshots.capture_before_first_statement(connection, frame.cache, frame.key)
        start = snapshots.start_tokens(connection, frame.cache)
        if start is None:
            frame.safe = False
            return
    if compiled_select:
        record_read(frame, tables_read_by(context.compiled), connection.engine, start)
        return
    kind = writes.raw_statement_kind(statement)
    if kind == "read":
        found = catalog().tables_in_fragment(statement)
        record_read(frame, None if found is None else frozenset(found), connection.engine, start)
    elif is_text and _reads_unknown_tables(statement, kind):
        frame.safe = False  # FETCH from a cursor, EXECUTE of a prepared statement, CALL: tables unknown


_READ_AS_TEXT = (TextClause, SavepointClause, ReleaseSavepointClause, RollbackToSavepointClause)


def _sent_as_text(context: Any) -> bool:
    """Raw SQL (``exec_driver_sql``: no compiled form; a ``text()`` construct), or the savepoint statements
    SQLAlchemy compiles, whose text tells what they are."""
    compiled = getattr(context, "compiled", None)
    return compiled is None or isinstance(getattr(compiled, "statement", None), _READ_AS_TEXT)


def _reads_unknown_tables(statement: str, kind: str) -> bool:
    if kind == "neutral":
        return snapshots.statement_effect(statement) == "other"  # not plain transaction control
    return kind == "write" and writes.first_word(statement) in writes.DYNAMIC
