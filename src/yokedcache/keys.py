"""User keys, tags and the backend namespace: pure functions, no I/O."""

from __future__ import annotations

import re

from .exceptions import CacheKeyError

RESERVED = "__yc__:"
_TAG_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid user key, else raise ``CacheKeyError``."""
    if type(key) is not str:
        raise CacheKeyError(f"cache keys must be str, got {type(key).__name__}: {key!r}")
    if not key:
        raise CacheKeyError("cache keys must not be empty")
    if key.startswith(RESERVED):
        raise CacheKeyError(f"keys starting with {RESERVED!r} are reserved for yokedcache's metadata")
    return key


def normalize_tags(tags: object) -> tuple[str, ...]:
    """Turn ``None``, a str, or an iterable of str into a sorted, de-duplicated tuple of tags.

    Tags may not contain control characters: the Redis entry header separates tags with them.
    """
    if tags is None:
        return ()
    if isinstance(tags, str):
        items: list[object] = [tags]
    else:
        try:
            items = list(tags)  # type: ignore[call-overload]
        except TypeError:
            raise ValueError(f"tags must be a str or an iterable of str, got {tags!r}") from None
    for tag in items:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"tags must be non-empty strings, got {tag!r}")
        if _TAG_FORBIDDEN.search(tag):
            raise ValueError(f"tags must not contain control characters: {tag!r}")
    return tuple(sorted(set(items)))  # type: ignore[arg-type]


def escape_glob(text: str) -> str:
    """Escape glob metacharacters so ``text`` matches only itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob with Redis semantics (``*``, ``?``, ``[...]``, ``\\`` escapes) to a regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)
