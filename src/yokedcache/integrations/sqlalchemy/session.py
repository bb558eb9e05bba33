"""``cache_queries``: switch query caching on for one session.

The switch is a small state object in ``session.info`` (the sync session's, for an ``AsyncSession``); the
listeners that act on it are installed once per process on the ``Session`` class, the engines and the
pools, and do nothing for sessions without that state. Nothing proxies or subclasses the session: the
object the application holds is the one SQLAlchemy runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapper, Session

from ...keys import normalize_tags
from ...policy.cache import YokedCache, get_default_cache
from . import reads, snapshots, writes

S = TypeVar("S")

CACHING_KEY = reads.CACHING_KEY
AUTO_DETECT = "auto_detect"


class QueryCaching:
    """Per-session settings plus the connections of its current transaction."""

    __slots__ = ("cache", "connections", "recorder", "table_name", "tags", "ttl")

    def __init__(
        self, cache: YokedCache | None, ttl: float | None, table_name: str | None, tags: Iterable[str]
    ) -> None:
        self.cache = cache
        self.ttl = ttl
        self.table_name = table_name
        self.tags = tuple(tags)
        self.connections: set[Connection] = set()
        self.recorder: reads.ReadRecorder | None = None  # set while a miss loads in this session

    def resolve_cache(self) -> YokedCache:
        return self.cache if self.cache is not None else get_default_cache()


def sync_session_of(session: Any) -> Session:
    """The ``Session`` doing the work: itself, an ``AsyncSession``'s ``sync_session``, a scoped session's."""
    if isinstance(session, Session):
        return session
    inner = getattr(session, "sync_session", None)
    if isinstance(inner, Session):
        return inner
    registry = getattr(session, "registry", None)
    if callable(registry):
        return sync_session_of(registry())
    raise TypeError(f"cache_queries needs a SQLAlchemy Session or AsyncSession, got {type(session).__name__}")


def cache_queries(
    session: S,
    *,
    cache: YokedCache | None = None,
    ttl: float | None = None,
    table_name: str | None = None,
    tags: str | Iterable[str] | None = None,
) -> S:
    """Cache this session's eligible SELECTs in ``cache`` and invalidate on its commits; returns ``session``.

    ``table_name`` ``None``/``"auto_detect"`` caches every eligible SELECT; a table name caches only SELECTs
    reading that table. ``ttl`` beats table and query-specific TTLs; ``tags`` are added to every entry.
    Invalidation never depends on these: it follows the tables written. Calling it again replaces them.
    """
    if ttl is not None and ttl < 0:
        raise ValueError(f"ttl must be >= 0, got {ttl!r}")
    install()
    target = sync_session_of(session)
    name = None if table_name in (None, AUTO_DETECT) else table_name
    state = QueryCaching(cache, ttl, name, normalize_tags(tags))
    previous = target.info.get(CACHING_KEY)
    if isinstance(previous, QueryCaching):
        state.connections = previous.connections
    target.info[CACHING_KEY] = state
    return session


def track_writes(bind: Any, cache: YokedCache | None = None) -> None:
    """Publish every commit made through ``bind`` (an engine, async engine, connection or session) to
    ``cache``, in this process, from now on.

    Caching sessions do this by themselves; call it in processes that only write (workers, scripts) with
    plain sessions or connections, so the readers' entries are invalidated by their commits too.
    """
    install()
    if isinstance(bind, Session) or hasattr(bind, "sync_session"):
        bind = sync_session_of(bind).get_bind()
    engine = getattr(bind, "sync_engine", bind).engine
    writes.register(engine, cache if cache is not None else get_default_cache())


def stop_caching(session: Any) -> None:
    """Switch query caching off again (writes already collected are still published at commit)."""
    sync_session_of(session).info.pop(CACHING_KEY, None)


def is_caching(session: Any) -> bool:
    return CACHING_KEY in sync_session_of(session).info


# --- session events ----------------------------------------------------------------------------------------


def _after_begin(session: Session, transaction: Any, connection: Connection) -> None:
    state = session.info.get(CACHING_KEY)
    if state is not None:
        state.connections.add(connection)
        cache = state.resolve_cache()
        writes.register(connection.engine, cache)
        configured = (tag for table in cache.config.tables.values() for tag in table.tags)
        snapshots.expect_start(connection, cache, [*state.tags, *configured])


def _after_commit(session: Session) -> None:
    """Publish right after the database commit, before ``commit()`` returns (greenlet-aware)."""
    state = session.info.get(CACHING_KEY)
    if state is None:
        return
    for connection in list(state.connections):
        try:
            info = connection.info
        except Exception:
            continue
        writes.publish_pending(info)


def _after_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        state = session.info.get(CACHING_KEY)
        if state is not None:
            state.connections.clear()


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Install the session, engine and pool listeners once per process."""
    global _installed
    if _installed:  # every cache_queries() call comes here: no lock once done
        return
    with _lock:
        if _installed:
            return
        writes.install()
        event.listen(Session, "do_orm_execute", reads.on_do_orm_execute)
        event.listen(Session, "after_begin", _after_begin)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_transaction_end", _after_transaction_end)
        event.listen(Engine, "begin", snapshots.on_transaction_begin)
        event.listen(Engine, "before_cursor_execute", reads.track_cursor_read)
        event.listen(Mapper, "load", reads.stamp_loaded)
        event.listen(Mapper, "refresh", reads.stamp_loaded)
        _installed = True
