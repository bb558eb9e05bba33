"""Public SQLAlchemy integration: ``cache_queries(session, *, cache=None, ttl=None, table_name=None,
tags=None)`` (see ``yokedcache.integrations.sqlalchemy`` for how it works).

Importing this module needs the ``sqlalchemy`` extra (``pip install 'yokedcache[sqlalchemy]'``).
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError(
        "yokedcache.sqlalchemy needs the 'sqlalchemy' extra: pip install 'yokedcache[sqlalchemy]'"
    ) from None

from .integrations.sqlalchemy.session import cache_queries, is_caching, stop_caching, track_writes
from .integrations.sqlalchemy.stats import QueryStats
from .policy.reads import ReadFrame, reads_of

__all__ = [
    "QueryStats",
    "ReadFrame",
    "cache_queries",
    "is_caching",
    "reads_of",
    "stop_caching",
    "track_writes",
]
