"""yokedcache: a correct, fast caching layer for Python web and database applications."""

from __future__ import annotations

from typing import Any

from .config import CacheConfig, TableCacheConfig
from .exceptions import (
    CacheConnectionError,
    CacheError,
    CacheKeyError,
    CacheSerializationError,
    ConfigValidationError,
    YokedCacheError,
)
from .models import CacheStats, FuzzySearchResult, SerializationMethod
from .policy.cache import YokedCache, get_default_cache, set_default_cache
from .policy.reads import before_frames

__version__ = "2.0.0.dev0"


def _sql_read_tracking() -> None:
    # SQL reads made while a cached value is computed become tags of that value, once SQLAlchemy is in
    # use; importing the integration package does not import SQLAlchemy.
    from .integrations.sqlalchemy import ensure_read_tracking

    ensure_read_tracking()


before_frames(_sql_read_tracking)

__all__ = [
    "CacheConfig",
    "CacheConnectionError",
    "CacheError",
    "CacheKeyError",
    "CacheSerializationError",
    "CacheStats",
    "ConfigValidationError",
    "FuzzySearchResult",
    "SerializationMethod",
    "TableCacheConfig",
    "YokedCache",
    "YokedCacheError",
    "__version__",
    "cached",
    "cached_dependency",
    "get_default_cache",
    "set_default_cache",
    "warm_cache",
    "warm_cache_sync",
]

_LAZY = {
    "cached": ".integrations.decorators",
    "warm_cache": ".integrations.warming",
    "warm_cache_sync": ".integrations.warming",
    "cached_dependency": ".integrations.dependencies",
}


def __getattr__(name: str) -> Any:
    """Integrations load on first use, so ``import yokedcache`` stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'yokedcache' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
