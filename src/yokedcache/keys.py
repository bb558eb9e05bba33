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
    if not key.isascii() and not _encodable(key):
        raise CacheKeyError(f"cache keys must be encodable as UTF-8 (no lone surrogates): {key!r}")
    return key


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode text. A lone surrogate (``"\\ud800"``) is a ``str`` but has no
    UTF-8 form: Redis (hiredis), SQLite and Memcached clients raise ``UnicodeEncodeError`` on it, so it is
    refused up front as a bad key (or tag) on every backend alike."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        if not tag.isascii() and not _encodable(tag):
            raise ValueError(f"tags must be encodable as UTF-8 (no lone surrogates): {tag!r}")
    return tuple(sorted(set(items)))  # type: ignore[arg-type]


def escape_glob(text: str) -> str:
    """Escape glob metacharacters so ``text`` matches only itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob to a regex that matches exactly what Redis ``MATCH``/``KEYS`` would.

    A port of Redis's ``stringmatchlen`` (util.c), so listings and pattern invalidation give the same keys
    on every backend: ``*`` any run, ``?`` one character, ``\\x`` the literal ``x`` (a trailing ``\\`` is
    itself), ``[...]`` a class with ``^`` negation, ``a-z`` ranges (either order) and ``\\`` escapes; ``]``
    right after ``[`` closes an empty class (matches nothing; ``[^]`` any character) and an unterminated
    class runs to the end of the pattern.
    """
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            items: list[str] = []
            while i < n and pattern[i] != "]":
                if pattern[i] == "\\" and i + 1 < n:
                    i += 1
                    items.append(re.escape(pattern[i]))
                elif i + 2 < n and pattern[i + 1] == "-":
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    items.append(f"{re.escape(low)}-{re.escape(high)}")
                    i += 2
                else:
                    items.append(re.escape(pattern[i]))
                i += 1
            if items:
                out.append(f"[{'^' if negate else ''}{''.join(items)}]")
            else:
                out.append("." if negate else "(?!)")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)
