"""The tables this process knows about, for reading raw SQL and following foreign-key cascades.

Raw SQL (``text()``, ``exec_driver_sql``, ``DDL``) carries no ``Table`` objects, so the tables it touches
are found by name: every table of every mapped registry's ``MetaData`` (association tables included) and of
any ``MetaData`` a cached statement used, matched with word boundaries (``users`` does not match
``users_archive``), schema-qualified or not, quoted or not. A name that matches too much only invalidates
more than needed; a write that matches nothing invalidates everything (``table:*``): never stale.

The same catalog knows which foreign keys the database itself cascades (``ON DELETE``/``ON UPDATE``
``CASCADE``/``SET NULL``/``SET DEFAULT``), so a write to a parent also invalidates the children the
database changes behind the ORM's back.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import MetaData
from sqlalchemy.orm import mapperlib
from sqlalchemy.sql.schema import Table
from sqlalchemy.sql.selectable import TableClause

_QUOTES = re.compile(r'["`\[\]]')
_CASCADING = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})
# Targets of statements that change data or schema, as written in SQL: group 1 is the table name.
_WRITE_TARGET = re.compile(
    r"\b(?:insert\s+(?:or\s+\w+\s+|ignore\s+)?into|replace\s+into|merge\s+into|update(?:\s+only)?"
    r"|delete\s+from|truncate(?:\s+table)?(?:\s+only)?|(?:alter|drop)\s+table(?:\s+if\s+exists)?(?:\s+only)?"
    r"|create\s+(?:(?:global\s+|local\s+)?(?:temp|temporary|unlogged)\s+)?table(?:\s+if\s+not\s+exists)?"
    r"|(?:create|drop)\s+(?:unique\s+)?index(?:\s+concurrently)?(?:\s+if\s+(?:not\s+)?exists)?\s+[\w$.]+\s+on"
    r"|select\b[^;]*?\binto)\s+([\w$.]+)",
    re.IGNORECASE | re.DOTALL,
)
_FROM_TARGET = re.compile(r"\b(?:from|join)\s+([\w$.]+)", re.IGNORECASE)
_BARE_NAME = re.compile(r"\s*[\w$.]+(?:\s+(?:as\s+)?[\w$]+)?\s*", re.IGNORECASE)
_NOT_TABLES = frozenset({"select", "lateral", "unnest", "values", "only", "generate_series", "json_each"})

_extra_metadata: weakref.WeakSet[MetaData] = weakref.WeakSet()


def remember_metadata(tables: Iterable[Table]) -> None:
    """Also know the tables of these tables' ``MetaData`` (Core users have no mapped registry)."""
    for table in tables:
        if table.metadata not in _extra_metadata:
            _extra_metadata.add(table.metadata)


def name_only_tags(table: TableClause) -> tuple[str, ...]:
    """A table in no MetaData (``table("x", ...)``) is unknown to every catalog, so a write to it, raw or
    Core, is matched by its bare lower-case name (``Catalog.resolve``): its reads and writes carry it too."""
    return () if isinstance(table, Table) else (table.name.lower(),)


@dataclass
class Catalog:
    """A snapshot of the known tables: names, fullnames by bare name, cascading foreign keys."""

    fullnames: frozenset[str]
    by_name: dict[str, set[str]] = field(default_factory=dict)  # lower-case name or fullname -> fullnames
    cascades: dict[str, set[str]] = field(default_factory=dict)  # parent fullname -> child fullnames
    pattern: re.Pattern[str] | None = None

    @classmethod
    def build(cls, tables: Iterable[Table]) -> Catalog:
        tables = list(tables)
        self = cls(frozenset(t.fullname for t in tables))
        for table in tables:
            for spelling in {table.name.lower(), table.fullname.lower()}:
                self.by_name.setdefault(spelling, set()).add(table.fullname)
            for fk in table.foreign_keys:
                actions = {(fk.ondelete or "").upper(), (fk.onupdate or "").upper()}
                if actions & _CASCADING and fk.column is not None:
                    self.cascades.setdefault(fk.column.table.fullname, set()).add(table.fullname)
        if self.by_name:
            names = sorted(self.by_name, key=len, reverse=True)
            alternatives = "|".join(re.escape(n) for n in names)
            self.pattern = re.compile(rf"(?<![\w$.])(?:{alternatives})(?![\w$])")
        return self

    def names_in(self, sql: str) -> set[str]:
        """Fullnames of known tables named anywhere in ``sql`` (word boundaries, quotes ignored)."""
        if self.pattern is None:
            return set()
        text = _QUOTES.sub("", sql).lower()
        found: set[str] = set()
        for match in self.pattern.finditer(text):
            found |= self.by_name[match.group(0)]
        return found

    def resolve(self, spelled: str) -> set[str]:
        """Fullnames for one table name as written, plus its bare lower-case name: reads of a table known
        only by name (``table("x")``) carry that name too (``name_only_tags``), however they or
        this write qualify or capitalise it, and even when a known table shares the name."""
        name = _QUOTES.sub("", spelled).lower()
        bare = name.rpartition(".")[2]
        known = self.by_name.get(name) or self.by_name.get(bare)
        return (set(known) if known else {name}) | {bare}

    def tables_in_fragment(self, sql: str) -> set[str] | None:
        """Tables a ``text()`` fragment of a SELECT reads; ``None`` if it reads an unknown one."""
        for match in _FROM_TARGET.finditer(_QUOTES.sub("", sql)):
            name = match.group(1).lower()
            if name not in _NOT_TABLES and not self.by_name.get(name) and not name.startswith("("):
                return None
        found = self.names_in(sql)
        if not found and _BARE_NAME.fullmatch(_QUOTES.sub("", sql)):
            return None  # select_from(text("name")): a table we cannot see
        return found

    def written_by_sql(self, sql: str) -> set[str]:
        """Tables a raw write statement may change: its targets plus every known table it names."""
        found = self.names_in(sql)
        for match in _WRITE_TARGET.finditer(_QUOTES.sub("", sql)):
            found |= self.resolve(match.group(1))
        return found

    def with_cascades(self, tables: Iterable[str]) -> set[str]:
        """``tables`` plus, transitively, the tables whose rows the database cascades to."""
        out = set(tables)
        todo = list(out)
        while todo:
            for child in self.cascades.get(todo.pop(), ()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out


_lock = threading.Lock()
_current: tuple[tuple[tuple[int, int], ...], Catalog] | None = None


def _known_metadata() -> list[MetaData]:
    seen: dict[int, MetaData] = {}
    for registry in mapperlib._all_registries():
        seen[id(registry.metadata)] = registry.metadata
    for metadata in list(_extra_metadata):
        seen[id(metadata)] = metadata
    return list(seen.values())


def catalog() -> Catalog:
    """The current catalog, rebuilt only when a registry or table was added since the last call."""
    global _current
    metadatas = _known_metadata()
    version = tuple(sorted((id(m), len(m.tables)) for m in metadatas))
    snapshot = _current
    if snapshot is not None and snapshot[0] == version:
        return snapshot[1]
    built = Catalog.build(t for m in metadatas for t in m.tables.values())
    with _lock:
        _current = (version, built)
    return built
