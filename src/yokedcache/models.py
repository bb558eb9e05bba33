"""Plain data types shared by every layer."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class SerializationMethod(str, enum.Enum):
    """How a value's body is encoded inside its envelope."""

    JSON = "json"
    MSGPACK = "msgpack"
    PICKLE = "pickle"

    @classmethod
    def parse(cls, value: SerializationMethod | str) -> SerializationMethod:
        """Accept a member, its name or its value in any case; raise ``ValueError`` otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            for member in cls:
                if text in (member.value, member.name.lower()):
                    return member
        raise ValueError(f"unknown serialization method {value!r}; expected json, msgpack or pickle")


@dataclass
class CacheStats:
    """Counters of one cache instance (or, from the CLI, of every process sharing a backend)."""

    cache_hits: int = 0
    cache_misses: int = 0
    sets: int = 0
    deletes: int = 0
    invalidations: int = 0
    errors: int = 0
    key_count: int = 0
    memory_usage_mb: float = 0.0
    uptime_seconds: int = 0
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def total_operations(self) -> int:
        return self.cache_hits + self.cache_misses + self.sets + self.deletes

    @property
    def hit_rate(self) -> float:
        reads = self.cache_hits + self.cache_misses
        return self.cache_hits / reads if reads else 0.0

    @property
    def miss_rate(self) -> float:
        reads = self.cache_hits + self.cache_misses
        return self.cache_misses / reads if reads else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hit_rate"] = self.hit_rate
        data["miss_rate"] = self.miss_rate
        data["total_operations"] = self.total_operations
        return data


@dataclass(frozen=True)
class FuzzySearchResult:
    key: str
    score: int
    value: Any
