"""SQLite backend: a persistent cache shared by every process of one host (stdlib ``sqlite3``, WAL mode).

Tables (one file may hold several namespaces; every key, tag and counter name starts with ``<namespace>:``)::

    entries(key TEXT PRIMARY KEY, body BLOB, tags TEXT, expires_at REAL)  -- tags: JSON [[tag, token], ...]
    tokens(tag TEXT PRIMARY KEY, token TEXT)                              -- tag: <ns>:__yc__:t:<tag>
    counts(tag TEXT PRIMARY KEY, n INTEGER)                               -- writes per tag since invalidation
    counters(name TEXT PRIMARY KEY, value INTEGER)                        -- fleet-wide stats
    locks(key TEXT PRIMARY KEY, owner TEXT, expires_at REAL)              -- @cached(lock=True) leases

* **Processes:** WAL journal (readers never block the writer) and a busy timeout (``timeout`` seconds, then
  ``CacheConnectionError``). Every write that depends on tokens runs in one ``BEGIN IMMEDIATE`` transaction,
  so a write with captured tokens is checked and stored atomically against invalidations from any process.
* **Reads:** a hit is one ``SELECT`` of the entry plus, when it recorded tags, one ``SELECT`` of their
  tokens (both local, no network round trip). Expiry is ``expires_at`` (UNIX seconds, shared by processes).
* **Purging:** a read that meets an expired or invalidated row deletes it (only if the row is unchanged
  since it was read); every ``sweep_interval`` seconds a write also deletes this namespace's expired rows.
* **Async face:** the sync implementation runs in a worker thread (``asyncio.to_thread``). That is exactly
  what ``aiosqlite`` does (a thread per connection running ``sqlite3``), without a second code path.
  Connections come from a small pool (``check_same_thread=False``, one user at a time), reopened after
  ``close()`` and in a forked child.
* **Globs:** Redis-style patterns (``\\`` escapes) are translated to SQLite ``GLOB`` (which has no escape
  character: a literal ``*`` becomes ``[*]``), and each match is re-checked with the same regex the other
  backends use.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ..exceptions import CacheConnectionError
from ..keys import glob_to_regex
from .base import Inspected, ThreadedBackend, new_token

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(key TEXT PRIMARY KEY, body BLOB NOT NULL, tags TEXT NOT NULL,
                                   expires_at REAL);
CREATE INDEX IF NOT EXISTS entries_expires_at ON entries(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS tokens(tag TEXT PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counts(tag TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS locks(key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
"""
_CHUNK = 500  # stays under SQLite's host-parameter limit
_POOL_IDLE_MAX = 8


class _Row(NamedTuple):
    body: bytes
    tags_json: str
    recorded: tuple[tuple[str, str], ...] | None  # None: not a row this backend wrote (garbage: dead)
    expires_at: float | None


# A parsed glob: ("*",), ("?",), ("lit", ch) or ("class", negate, ((low, high), ...)).
_Token = tuple[Any, ...]
_CLASS_SPECIAL = "]-^"  # characters whose place inside an SQLite class changes their meaning


def _parse_glob(pattern: str) -> list[_Token]:
    """Parse a glob exactly as ``keys.glob_to_regex`` reads it (Redis ``stringmatchlen`` semantics)."""
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch in "*?":
            tokens.append((ch,))
        elif ch == "\\" and i + 1 < n:
            i += 1
            tokens.append(("lit", pattern[i]))
        elif ch == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            items: list[tuple[str, str]] = []
            while i < n and pattern[i] != "]":
                if pattern[i] == "\\" and i + 1 < n:
                    i += 1
                    items.append((pattern[i], pattern[i]))
                elif i + 2 < n and pattern[i + 1] == "-":
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    items.append((low, high))
                    i += 2
                else:
                    items.append((pattern[i], pattern[i]))
                i += 1
            tokens.append(("class", negate, tuple(items)))  # an unterminated class runs to the end
        else:
            tokens.append(("lit", ch))
        i += 1
    return tokens


def _sqlite_class(negate: bool, items: Sequence[tuple[str, str]]) -> str | None:
    """An SQLite ``[...]`` for a parsed class; ``None`` if it matches nothing.

    SQLite reads ``]`` as a member only first, ``-`` as a member only first or last, ``^`` as negation only
    first, and has no escapes: so specials become single members placed where they are literal, and a
    range with a special endpoint is narrowed (the endpoint becomes a member)."""
    if not items:
        return "?" if negate else None  # Redis: "[]" matches nothing, "[^]" any one character
    members: set[str] = set()
    ranges: list[str] = []
    for low, high in items:
        lo, hi = ord(low), ord(high)
        while lo <= hi and chr(lo) in _CLASS_SPECIAL:
            members.add(chr(lo))
            lo += 1
        while hi >= lo and chr(hi) in _CLASS_SPECIAL:
            members.add(chr(hi))
            hi -= 1
        if lo < hi:
            ranges.append(f"{chr(lo)}-{chr(hi)}")
        elif lo == hi:
            members.add(chr(lo))
    plain = sorted(m for m in members if m not in _CLASS_SPECIAL)
    body = "".join(
        [
            "]" if "]" in members else "",
            "-" if "-" in members else "",
            *ranges,
            *plain,
            "^" if "^" in members else "",
        ]
    )
    if body == "^" and not negate:
        return "^"  # "[^]" would be a negation in SQLite; outside a class "^" is literal
    return f"[{'^' if negate else ''}{body}]"


def glob_to_sqlite(pattern: str) -> str | None:
    """Translate a Redis-style glob into SQLite ``GLOB`` syntax; ``None`` if the glob matches nothing.

    Same wildcards; but SQLite has no escape character (an escaped ``*``, ``?`` or ``[`` becomes the class
    ``[*]``) and reads classes differently (see ``_sqlite_class``). The result may match a superset (it
    never misses a key); ``scan`` re-checks every candidate with the regex the other backends use.
    """
    out: list[str] = []
    for token in _parse_glob(pattern):
        if token[0] in "*?":
            out.append(token[0])
        elif token[0] == "lit":
            out.append(f"[{token[1]}]" if token[1] in "*?[" else token[1])
        else:
            translated = _sqlite_class(token[1], token[2])
            if translated is None:
                return None
            out.append(translated)
    result = "".join(out)
    if "\x00" in result or not _encodable(result):
        return "*"  # SQLite stops at NUL; lone surrogates cannot be bound: let the regex decide
    return result


def _literal_prefix(pattern: str) -> str:
    prefix: list[str] = []
    for token in _parse_glob(pattern):
        if token[0] != "lit":
            break
        prefix.append(token[1])
    return "".join(prefix)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _range_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (UTF-8 byte order, which is
    code point order); ``None`` if there is none (an empty prefix)."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def _namespace_end(prefix: str) -> str:
    """Upper bound of the keys under ``prefix`` (which ends with ``:``, so one always exists)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _parse_tags(text: Any) -> tuple[tuple[str, str], ...] | None:
    try:
        pairs = json.loads(text)
        recorded = tuple((str(tag), str(token)) for tag, token in pairs)
    except (TypeError, ValueError):
        return None
    return recorded


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SQLiteBackend(ThreadedBackend):
    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] = "yokedcache.db",
        key_prefix: str | None = None,
        *,
        timeout: float = 10.0,
        sweep_interval: float = 300.0,
    ) -> None:
        super().__init__(key_prefix)
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise ValueError("SQLiteBackend needs a file path: an in-memory database is not shared")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.sweep_interval = sweep_interval
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._epoch = 0
        self._pid = os.getpid()
        self._next_sweep = time.monotonic() + sweep_interval if sweep_interval > 0 else None

    # --- connections -----------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection for one operation; sqlite3 errors become ``CacheConnectionError``."""
        try:
            with self._lock:
                if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use
                    self._pid = os.getpid()
                    self._idle = []
                    self._epoch += 1
                conn = self._idle.pop() if self._idle else None
                epoch = self._epoch
            if conn is None:
                conn = self._open()
            try:
                yield conn
            finally:
                self._release(conn, epoch)
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError):
            raise  # a bug, not an unavailable store
        except (sqlite3.DatabaseError, OSError) as exc:  # locked, busy, unreadable file, disk full, ...
            raise CacheConnectionError(f"sqlite at {self.path}: {type(exc).__name__}: {exc}") from exc

    def _release(self, conn: sqlite3.Connection, epoch: int) -> None:
        if conn.in_transaction:  # an operation failed midway
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        with self._lock:
            if epoch == self._epoch and len(self._idle) < _POOL_IDLE_MAX and not conn.in_transaction:
                self._idle.append(conn)
                return
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: other writers wait (busy timeout), readers go on (WAL)."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            if conn.in_transaction:  # the body may have rolled back already
                conn.execute("COMMIT")

    # --- shared reads ----------------------------------------------------------------------------------
    def _rows(self, conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, _Row]:
        """Stored rows by key (absent keys are left out)."""
        out: dict[str, _Row] = {}
        unique = list(dict.fromkeys(keys))
        for chunk in _chunks(unique):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, body, tags, expires_at FROM entries WHERE key IN ({marks})"
            for key, body, tags, expires_at in conn.execute(sql, chunk):
                recorded = _parse_tags(tags) if isinstance(body, bytes) else None
                out[key] = _Row(body if recorded is not None else b"", tags, recorded, expires_at)
        return out

    def _tokens(self, conn: sqlite3.Connection, tags: Iterable[str]) -> dict[str, str]:
        prefix = self.token_prefix
        names = [prefix + tag for tag in dict.fromkeys(tags)]
        found: dict[str, str] = {}
        for chunk in _chunks(names):
            marks = ",".join("?" * len(chunk))
            for tag, token in conn.execute(f"SELECT tag, token FROM tokens WHERE tag IN ({marks})", chunk):
                found[tag[len(prefix) :]] = token
        return found

    def _split_live(
        self, conn: sqlite3.Connection, rows: dict[str, _Row], now: float
    ) -> tuple[dict[str, _Row], list[tuple[str, _Row]]]:
        """(live rows, dead rows) — dead = expired, tag-invalidated or unreadable."""
        live: dict[str, _Row] = {}
        dead: list[tuple[str, _Row]] = []
        candidates: dict[str, _Row] = {}
        for key, row in rows.items():
            if row.recorded is None or (row.expires_at is not None and row.expires_at <= now):
                dead.append((key, row))
            else:
                candidates[key] = row
        tokens = self._tokens(conn, {tag for r in candidates.values() for tag, _ in r.recorded or ()})
        for key, row in candidates.items():
            if all(tokens.get(tag) == token for tag, token in row.recorded or ()):
                live[key] = row
            else:
                dead.append((key, row))
        return live, dead

    def _purge(self, conn: sqlite3.Connection, dead: list[tuple[str, _Row]]) -> None:
        """Best effort, never waiting for the write lock: delete dead rows that are still unchanged (another
        process may have rewritten the key since it was read)."""
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "DELETE FROM entries WHERE key = ? AND tags IS ? AND expires_at IS ?",
                [(key, row.tags_json, row.expires_at) for key, row in dead],
            )
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    def _live(self, keys: Sequence[str]) -> dict[str, _Row]:
        with self._connection() as conn:
            live, dead = self._split_live(conn, self._rows(conn, keys), time.time())
            if dead:
                self._purge(conn, dead)
            return live

    def _maybe_sweep(self, conn: sqlite3.Connection) -> None:
        if self._next_sweep is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_interval
        start = f"{self.namespace}:"
        conn.execute(
            "DELETE FROM entries WHERE expires_at <= ? AND key >= ? AND key < ?",
            (time.time(), start, _namespace_end(start)),
        )

    # --- sync face -------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        row = self._live([key]).get(key)
        return None if row is None else row.body

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        live = self._live(keys)
        return [live[k].body if k in live else None for k in keys]

    def inspect(self, key: str) -> Inspected | None:
        row = self._live([key]).get(key)
        if row is None:
            return None
        ttl_ms = None if row.expires_at is None else max(1, int((row.expires_at - time.time()) * 1000))
        return Inspected(row.body, tuple(row.recorded or ()), ttl_ms)

    def _create_tokens(self, conn: sqlite3.Connection, tags: Sequence[str]) -> dict[str, str]:
        current = self._tokens(conn, tags)
        missing = [tag for tag in tags if tag not in current]
        if missing:
            conn.executemany(
                "INSERT OR IGNORE INTO tokens(tag, token) VALUES (?, ?)",
                [(self.token_prefix + tag, new_token()) for tag in missing],
            )
            current = self._tokens(conn, tags)
        return current

    def capture_tokens(self, tags: Sequence[str]) -> list[str]:
        if not tags:
            return []
        with self._connection() as conn:
            current = self._tokens(conn, tags)
        if any(tag not in current for tag in tags):
            with self._write() as conn:
                current = self._create_tokens(conn, tags)
        return [current[tag] for tag in tags]

    def set(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        with self._write() as conn:
            if tokens is None:
                current = self._create_tokens(conn, tags) if tags else {}
                recorded = [(tag, current[tag]) for tag in tags]
            else:
                current = self._tokens(conn, tags)
                if any(current.get(tag) != token for tag, token in zip(tags, tokens)):
                    conn.execute("ROLLBACK")
                    return False
                recorded = list(zip(tags, tokens))
            tags_json = json.dumps(recorded, ensure_ascii=False, separators=(",", ":"))
            now = time.time()
            conn.executemany(
                "INSERT OR REPLACE INTO entries(key, body, tags, expires_at) VALUES (?, ?, ?, ?)",
                [(key, body, tags_json, now + ms / 1000 if ms > 0 else None) for key, body, ms in items],
            )
            if tags and items:
                conn.executemany(
                    "INSERT INTO counts(tag, n) VALUES (?, ?) "
                    "ON CONFLICT(tag) DO UPDATE SET n = n + excluded.n",
                    [(self.count_prefix + tag, len(items)) for tag in tags],
                )
            self._maybe_sweep(conn)
        return True

    def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        with self._write() as conn:
            live, _ = self._split_live(conn, self._rows(conn, keys), time.time())
            unique = list(dict.fromkeys(keys))
            for chunk in _chunks(unique):
                conn.execute(f"DELETE FROM entries WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        return len(live)

    def expire(self, key: str, ttl_ms: int) -> bool:
        with self._write() as conn:
            now = time.time()
            live, _ = self._split_live(conn, self._rows(conn, [key]), now)
            if key not in live:
                return False
            expires_at = now + ttl_ms / 1000 if ttl_ms > 0 else None
            conn.execute("UPDATE entries SET expires_at = ? WHERE key = ?", (expires_at, key))
        return True

    def invalidate(self, tags: Sequence[str]) -> int:
        if not tags:
            return 0
        writes = 0
        with self._write() as conn:
            for tag in tags:
                conn.execute(
                    "INSERT OR REPLACE INTO tokens(tag, token) VALUES (?, ?)",
                    (self.token_prefix + tag, new_token()),
                )
                count_key = self.count_prefix + tag
                row = conn.execute("SELECT n FROM counts WHERE tag = ?", (count_key,)).fetchone()
                if row is not None:
                    writes += int(row[0])
                    conn.execute("DELETE FROM counts WHERE tag = ?", (count_key,))
        return writes

    def scan(self, pattern: str, limit: int | None) -> list[str]:
        translated = glob_to_sqlite(pattern)
        if translated is None:
            return []
        regex = glob_to_regex(pattern)
        meta = self.meta_prefix
        # The glob's literal head (at least "<namespace>:") bounds an index range scan. Keys holding NUL
        # are handed to the regex whatever GLOB says: SQLite's GLOB stops reading at a NUL.
        sql = "SELECT key, tags, expires_at FROM entries WHERE key >= ?"
        head = _literal_prefix(pattern)
        params: list[Any] = [head]
        end = _range_end(head) if _encodable(head) else None
        if end is None:
            params = [""]
        else:
            sql += " AND key < ?"
            params.append(end)
        sql += " AND (key GLOB ? OR instr(key, char(0)) > 0) AND (expires_at IS NULL OR expires_at > ?)"
        params += [translated, time.time()]
        found: list[str] = []
        with self._connection() as conn:
            cursor = conn.execute(sql, params)
            while limit is None or len(found) < limit:
                batch = cursor.fetchmany(_CHUNK)
                if not batch:
                    break
                rows: dict[str, _Row] = {}
                for key, tags, expires_at in batch:
                    if key.startswith(meta) or not regex.match(key):
                        continue
                    recorded = _parse_tags(tags)
                    if recorded is not None:
                        rows[key] = _Row(b"", tags, recorded, expires_at)
                live, _ = self._split_live(conn, rows, time.time())
                found += [key for key in rows if key in live]
            cursor.close()
        return found[:limit] if limit is not None else found

    def flush(self) -> int:
        start = f"{self.namespace}:"
        end = _namespace_end(start)
        with self._write() as conn:
            removed = conn.execute("DELETE FROM entries WHERE key >= ? AND key < ?", (start, end)).rowcount
            conn.execute("DELETE FROM tokens WHERE tag >= ? AND tag < ?", (start, end))
            conn.execute("DELETE FROM counts WHERE tag >= ? AND tag < ?", (start, end))
            conn.execute("DELETE FROM counters WHERE name >= ? AND name < ?", (start, end))
            conn.execute("DELETE FROM locks WHERE key >= ? AND key < ?", (start, end))
        return int(removed)

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def usage(self) -> tuple[int, int]:
        start = f"{self.namespace}:"
        with self._connection() as conn:
            count, used = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(body) + length(key)), 0) FROM entries "
                "WHERE key >= ? AND key < ?",
                (start, _namespace_end(start)),
            ).fetchone()
        return int(count), int(used)

    def _counter_prefix(self) -> str:
        return f"{self.meta_prefix}stats:"

    def add_counters(self, counters: dict[str, int]) -> None:
        prefix = self._counter_prefix()
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                [(prefix + name, delta) for name, delta in counters.items()],
            )

    def read_counters(self) -> dict[str, int]:
        prefix = self._counter_prefix()
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT name, value FROM counters WHERE name >= ? AND name < ?",
                (prefix, _namespace_end(prefix)),
            ).fetchall()
        return {name[len(prefix) :]: int(value) for name, value in rows}

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._epoch += 1  # connections in use are closed when released
        for conn in idle:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # --- cross-process compute lock (a row with a lease; waiters poll) ---------------------------------
    def acquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM locks WHERE key = ? AND expires_at <= ?", (key, now))
            cursor = conn.execute(
                "INSERT OR IGNORE INTO locks(key, owner, expires_at) VALUES (?, ?, ?)",
                (key, owner, now + ttl_ms / 1000),
            )
            return cursor.rowcount == 1

    def release_lock(self, key: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM locks WHERE key = ? AND owner = ?", (key, owner))

    def _lock_held(self, key: str) -> bool:
        with self._connection() as conn:
            row = conn.execute("SELECT 1 FROM locks WHERE key = ? AND expires_at > ?", (key, time.time()))
            return row.fetchone() is not None
