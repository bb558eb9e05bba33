"""Run a test once through the async API and once through its ``*_sync`` twin."""

from __future__ import annotations

from typing import Any

from yokedcache import YokedCache


class Api:
    """Run one cache operation through the async API or its sync twin."""

    def __init__(self, cache: YokedCache, face: str) -> None:
        self.cache = cache
        self.face = face

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.face == "async":
            return await getattr(self.cache, name)(*args, **kwargs)
        return getattr(self.cache, f"{name}_sync")(*args, **kwargs)
