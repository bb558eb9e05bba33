"""SQLAlchemy query caching: cached SELECTs in sessions, invalidated by the writes their commits publish.

- :func:`cache_queries` switches caching on for a ``Session`` or ``AsyncSession`` (``session.py``);
- ``reads.py`` decides hit, miss or bypass for each SELECT; ``statements.py`` knows each statement shape;
  ``rows.py`` stores ORM results as a JSON-safe row graph and rebuilds real objects without SQL;
- ``writes.py`` sees every write at the cursor, collects it per transaction and publishes it after the
  outermost commit; ``catalog.py`` reads raw SQL and follows cascading foreign keys;
- ``stats.py`` keeps per-query-shape statistics in ``cache.query_stats``;
- ``policy/reads.py`` (outside this package) lets every cached computation depend on the tables it read;
  ``reads.py`` here adds each SQL read to the open frame.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and documentation tools; at run time see __getattr__ below
    from .session import QueryCaching, cache_queries, is_caching, stop_caching, track_writes
    from .stats import QueryStats

__all__ = ["QueryCaching", "QueryStats", "cache_queries", "is_caching", "stop_caching", "track_writes"]

_EXPORTS = {
    "QueryCaching": ".session",
    "cache_queries": ".session",
    "is_caching": ".session",
    "stop_caching": ".session",
    "track_writes": ".session",
    "QueryStats": ".stats",
}


_tracking_reads = False


def ensure_read_tracking() -> None:
    """Install the SQLAlchemy listeners once SQLAlchemy is in use, so that values computed by ``@cached``
    functions depend on the tables their queries read even when no session ever turned caching on (the
    tutorial's Pattern 1 and repositories use plain sessions). Costs one flag check after the first call."""
    global _tracking_reads
    if _tracking_reads or "sqlalchemy" not in sys.modules:
        return
    from .session import install

    install()
    _tracking_reads = True


def inputs_predate(arguments: Any, moment_ns: int) -> bool:
    """Whether call arguments carry database state loaded before ``moment_ns`` (ORM instances, sessions
    holding loaded objects); always False while SQLAlchemy is not in use."""
    if "sqlalchemy" not in sys.modules:
        return False
    from .reads import inputs_predate as check

    return check(arguments, moment_ns)


def __getattr__(name: str) -> Any:
    """Lazy, so importing the package does not import SQLAlchemy before it is needed."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
