"""Read tracking: a value computed from database reads depends on the tables those reads touched.

Every computation that caches its result — ``YokedCache.fill``, behind ``@cached`` (e.g. the tutorial's
``UserRepository.get_by_id``), ``get_or_set`` and ``cached_dependency`` — opens a :class:`ReadFrame`
around the call (:func:`reads_of`). It lives in a
context variable, so it follows the call into the same thread, task, and SQLAlchemy's greenlets. Every SQL
statement executed meanwhile, in any session or connection, and every query served from the SQL cache, adds
its ``table:<t>`` tags (plus ``table:*``) to the frame with tokens captured *before* that read. The
computation then stores its value with its own tags plus the frame's (:meth:`ReadFrame.merge_into`), so the
commit that changes a table also retires every cached value computed from it — the same guarantee the SQL
cache gives, extended to functions that return ORM objects or anything derived from them.

A read whose tables cannot be named (raw SQL naming unknown tables) makes the frame unsafe: the value is then
returned but not stored. Frames nest: an inner computation's reads also belong to the outer value.

The SQLAlchemy integration fills the frames; this module imports nothing from SQLAlchemy, so the policy
layer can open frames unconditionally.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any


class ReadFrame:
    """The tags (and their tokens, as captured before each read) a computation's value depends on."""

    __slots__ = ("cache", "key", "older", "opened_ns", "safe", "tokens")

    def __init__(self, cache: Any, key: str) -> None:
        self.cache = cache  # the YokedCache the value will be stored in: tokens come from its backend
        self.key = key  # the value's key: routes token captures to the backend that will store it
        self.tokens: dict[str, str] = {}
        self.safe = True
        # Set when the computation used data read before it began (objects a session loaded earlier, a
        # snapshot transaction's reads): its result is then no proof of freshness for a caller that
        # arrived before the computation started (single flight must not hand it over on that ground).
        self.older = False
        # Data loaded before this moment (objects already in a session) may predate tokens captured now:
        # a value computed from it cannot be vouched for, so integrations mark the frame unsafe.
        self.opened_ns = time.monotonic_ns()

    def missing(self, tags: Iterable[str]) -> list[str]:
        """The tags not yet in the frame (the only ones whose tokens need capturing)."""
        return [tag for tag in tags if tag not in self.tokens]

    def add(self, tags: Sequence[str], tokens: Sequence[str] | None) -> None:
        """Record tags with tokens captured before the read (``None``: backend down, frame unsafe).

        Two different tokens for one tag mean the tag was invalidated between the two captures, so the
        value mixes data from both sides of a commit: it cannot be stored. (Which capture came first is
        not always known — a snapshot transaction's tokens date from its start — so neither may win.)
        """
        if tokens is None:
            self.safe = False
            return
        known = self.tokens
        for tag, token in zip(tags, tokens):
            found = known.setdefault(tag, token)
            if found != token:
                self.safe = False

    def merge_into(
        self, tags: Sequence[str], tokens: Sequence[str] | None
    ) -> tuple[tuple[str, ...], list[str] | None]:
        """The value's own tags and tokens plus the frame's; tokens ``None`` means "do not store"."""
        if tokens is None or not self.safe:
            return tuple(tags), None
        if any(self.tokens.get(tag, token) != token for tag, token in zip(tags, tokens)):
            return tuple(tags), None  # a tag invalidated between the value's capture and a read's
        extra = sorted(tag for tag in self.tokens if tag not in tags)
        return (*tags, *extra), [*tokens, *(self.tokens[tag] for tag in extra)]

    def absorb(self, inner: ReadFrame) -> None:
        """An inner computation's reads are reads of this one too (tokens only mean something per cache)."""
        self.older = self.older or inner.older
        if inner.cache is not self.cache:
            self.safe = self.safe and not inner.tokens and inner.safe
            return
        self.safe = self.safe and inner.safe
        self.add(list(inner.tokens), list(inner.tokens.values()))


_current: ContextVar[ReadFrame | None] = ContextVar("yokedcache_read_frame", default=None)
_before_frame: list[Callable[[], None]] = []


def before_frames(hook: Callable[[], None]) -> None:
    """Run ``hook`` before each frame opens: how an integration that fills frames (SQLAlchemy) makes sure
    its listeners are installed, without this layer knowing about it. Hooks must be cheap and idempotent."""
    if hook not in _before_frame:
        _before_frame.append(hook)


def current_frame() -> ReadFrame | None:
    """The innermost open frame of this context, if any."""
    return _current.get()


@contextmanager
def reads_of(cache: Any, key: str) -> Iterator[ReadFrame]:
    """Track the reads made while computing the value stored under ``key`` in ``cache``."""
    for hook in _before_frame:
        hook()
    outer = _current.get()
    frame = ReadFrame(cache, key)
    reset = _current.set(frame)
    try:
        yield frame
    finally:
        _current.reset(reset)
        if outer is not None:
            outer.absorb(frame)


__all__ = ["ReadFrame", "before_frames", "current_frame", "reads_of"]
