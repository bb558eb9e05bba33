"""Public home of the ASGI HTTP response cache (API §12): ``from yokedcache.middleware import ...``."""

from __future__ import annotations

from .integrations.http import HTTPCacheMiddleware

__all__ = ["HTTPCacheMiddleware"]
