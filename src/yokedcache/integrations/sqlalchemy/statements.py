"""What a SELECT *is*, worked out once per statement shape and remembered.

Caching a query needs, besides its parameter values, facts that depend only on the statement's structure:
a digest of that structure that is equal in every process, the tables the query really reads (including
joined eager loads, subqueries, CTEs, link tables and joined-inheritance tables, which only the compiled
form shows), whether it calls a volatile SQL function, its SQL text (for statistics and
``query_specific_ttls``) and how to rebuild a :class:`~sqlalchemy.engine.Result` of the same shape
without a cursor. Compiling is the expensive part, so :func:`shape_of` memoizes a :class:`Shape` per
dialect under SQLAlchemy's own statement cache key, exactly as the engine memoizes compiled SQL.

SQLAlchemy's cache key is a nested tuple holding classes, ``Table`` and ``Mapper`` objects, operator
functions and plain values; :func:`stable_text` spells it with names instead of object identities, so the
digest survives restarts and is shared by every process. A key holding anything it cannot spell
(``Unstable``) makes the statement uncacheable rather than risking two statements sharing one entry.
"""

from __future__ import annotations

import enum
import hashlib
import re
import threading
import types
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.engine.result import IteratorResult, Result, SimpleResultMetaData
from sqlalchemy.orm import Mapper, MapperProperty
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.schema import Column, Table
from sqlalchemy.sql.selectable import TableClause
from sqlalchemy.util import immutabledict

from .catalog import catalog, name_only_tags, remember_metadata

FORMAT = "yc-sql-1"  # bump when the payload or key layout changes: old entries then never match
MAX_SHAPES = 2000  # per dialect

_VOLATILE = re.compile(
    r"\b(?:now|random|rand|randomblob|random_bytes|uuid|uuid_short|gen_random_uuid|uuid_generate_v[1-5]|"
    r"newid|newsequentialid|sys_guid|nextval|currval|lastval|setval|clock_timestamp|statement_timestamp|"
    r"transaction_timestamp|timeofday|sysdate|systimestamp|sysdatetime|getdate|getutcdate|unix_timestamp|"
    r"utc_timestamp|last_insert_id|last_insert_rowid|changes|total_changes|txid_current|"
    r"pg_current_xact_id|pg_backend_pid|connection_id|random_uuid|setseed)\s*\("
    r"|\b(?:current_timestamp|current_date|current_time|localtimestamp|localtime)\b"
    r"|'now'",
    re.IGNORECASE,
)


class Unstable(Exception):
    """A cache key element has no spelling that is the same in every process."""


# --- stable spelling of SQLAlchemy cache keys ----------------------------------------------------------


def stable_text(key: Any) -> str:
    """Spell a SQLAlchemy cache key tuple without object addresses (raises ``Unstable``)."""
    out: list[str] = []
    _spell(key, out)
    return "".join(out)


def _spell(node: Any, out: list[str]) -> None:
    if isinstance(node, tuple):
        out.append("(")
        for item in node:
            _spell(item, out)
            out.append(",")
        out.append(")")
    elif node is None or isinstance(node, (str, int, float, bool)):
        out.append(repr(node))
    else:
        out.append(_spell_object(node))


def _spell_object(node: Any) -> str:
    if isinstance(node, type):
        return f"<{node.__module__}.{node.__qualname__}>"
    if isinstance(node, TableClause):
        return f"<table {node.fullname}>"
    if isinstance(node, Mapper):
        return f"<mapper {node.class_.__module__}.{node.class_.__qualname__}>"
    if isinstance(node, MapperProperty):
        owner = node.parent.class_
        return f"<property {owner.__module__}.{owner.__qualname__}.{node.key}>"
    if isinstance(node, Column) and node.table is not None:
        return f"<column {node.table.fullname}.{node.name}>"
    if isinstance(node, (types.FunctionType, types.BuiltinFunctionType)):
        return f"<fn {getattr(node, '__module__', '')}.{node.__qualname__}>"
    if isinstance(node, enum.Enum):
        return f"<enum {type(node).__qualname__}.{node.name}>"
    if isinstance(node, types.CodeType):
        return f"<code {node.co_filename}:{node.co_firstlineno}:{node.co_name}>"
    if isinstance(node, (bytes, frozenset)):
        return repr(sorted(node) if isinstance(node, frozenset) else node)
    raise Unstable(type(node).__qualname__)


# --- result templates --------------------------------------------------------------------------------


def _require_unique(_: Any) -> Any:
    from sqlalchemy.exc import InvalidRequestError

    raise InvalidRequestError(
        "The unique() method must be invoked on this Result, as it contains results that include "
        "joined eager loads against collections"
    )


def _hash_or(fallback: Any) -> Any:
    def unique_key(obj: Any) -> Any:
        try:
            return hash(obj)
        except TypeError:
            return fallback(obj)

    return unique_key


def _unhashable(datatype: Any) -> Any:
    def refuse(obj: Any) -> Any:
        from sqlalchemy.exc import InvalidRequestError

        raise InvalidRequestError(
            f"Can't apply uniqueness to row tuple containing value of type {datatype!r}; "
            "this datatype produces non-hashable values"
        )

    return refuse


@dataclass(frozen=True)
class ResultTemplate:
    """Everything a :class:`Result` of this shape needs besides its rows.

    Mirrors what ``sqlalchemy.orm.loading.instances`` builds for ORM statements (labels, entity objects for
    ``row._mapping[User]`` lookups, per-column uniquing rules, the "call unique() first" guard of joined
    collection eager loads) and what a cursor result freezes to for Core statements, so a cached result
    behaves like the uncached one under ``scalars()``, ``unique()``, ``mappings()``, legacy ``Query``...
    """

    keys: tuple[str, ...]
    extra: tuple[Any, ...]
    orm: bool
    entity_positions: tuple[int, ...]  # columns holding mapped instances
    single_entity_capable: bool
    filtered: bool
    requires_unique: bool
    unique_specs: tuple[tuple[str, Any], ...]  # per column: ("id"|"plain"|"uncertain"|"unhashable", type)
    # Result metadata is immutable and shared between results (as SQLAlchemy shares a compiled statement's),
    # so it is built once per uniquing flavour instead of on every hit.
    _metadata: dict[bool, SimpleResultMetaData] = field(default_factory=dict, compare=False, repr=False)

    def result(self, rows: Sequence[Sequence[Any]], only_tuples: bool, legacy_uniquing: bool) -> Result[Any]:
        single = self.orm and self.single_entity_capable and not only_tuples
        metadata = self._metadata.get(legacy_uniquing)
        if metadata is None:
            metadata = self._metadata[legacy_uniquing] = self._new_metadata(legacy_uniquing)
        data: list[Any] = [row[0] for row in rows] if single else [tuple(row) for row in rows]
        result: IteratorResult[Any] = IteratorResult(metadata, iter(data))
        result._source_supports_scalars = single
        if self.orm:
            result._attributes = immutabledict({"filtered": self.filtered, "is_single_entity": single})
        if self.requires_unique:
            result._unique_filter_state = (set(), _require_unique)
        return result

    def _new_metadata(self, legacy_uniquing: bool) -> SimpleResultMetaData:
        filters = [self._unique_filter(spec, legacy_uniquing) for spec in self.unique_specs]
        return SimpleResultMetaData(
            list(self.keys),
            list(self.extra) if self.extra else None,
            _create_unique_filters=(lambda _result: filters) if self.orm else None,
        )

    @staticmethod
    def _unique_filter(spec: tuple[str, Any], legacy: bool) -> Any:
        kind, datatype = spec
        if kind == "id":
            return id
        if kind == "plain":
            return None
        if legacy:
            return _hash_or(id) if kind == "uncertain" else id
        return _hash_or(_unhashable(datatype)) if kind == "uncertain" else _unhashable(datatype)


def _orm_template(compile_state: Any) -> ResultTemplate:
    entities = list(compile_state._entities)
    specs = []
    for entity in entities:
        if entity.use_id_for_hash:
            specs.append(("id", None))
        elif entity._null_column_type:
            specs.append(("uncertain", entity.column.type))
        elif entity._non_hashable_value:
            specs.append(("unhashable", entity.column.type))
        else:
            specs.append(("plain", None))
    return ResultTemplate(
        keys=tuple(entity._label_name for entity in entities),
        extra=tuple(entity._extra_entities for entity in entities),
        orm=True,
        entity_positions=tuple(i for i, e in enumerate(entities) if type(e).__name__ == "_MapperEntity"),
        single_entity_capable=len(entities) == 1 and entities[0].supports_single_entity,
        filtered=bool(compile_state._has_mapper_entities),
        requires_unique=bool(compile_state.multi_row_eager_loaders),
        unique_specs=tuple(specs),
    )


def _core_template(compiled: Any) -> ResultTemplate:
    columns = list(compiled._result_columns)
    return ResultTemplate(
        keys=tuple(column.keyname for column in columns),
        extra=tuple(column.objects for column in columns),
        orm=False,
        entity_positions=(),
        single_entity_capable=False,
        filtered=False,
        requires_unique=False,
        unique_specs=(),
    )


# --- shapes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The structure-only facts about one SELECT (see the module docstring)."""

    digest: str
    sql: str
    tables: frozenset[str]
    template: ResultTemplate | None
    bypass: str | None = None  # why this shape is never cached


_SUPPORTED_ENTITIES = frozenset({"_MapperEntity", "_ORMColumnEntity", "_RawColumnEntity"})


def _uncacheable(reason: str, sql: str, tables: frozenset[str] | None) -> Shape:
    return Shape(digest="", sql=sql, tables=tables or frozenset(), template=None, bypass=reason)


def analyse(statement: Any, cache_key: Any, dialect: Dialect) -> Shape:
    """Compile ``statement`` once and derive its :class:`Shape` (uncached; see :func:`shape_of`).

    The tables are worked out even for shapes that are never cached: read tracking needs them.
    """
    compiled = statement.compile(dialect=dialect)
    sql = " ".join(compiled.string.split())
    found = _tables_of(compiled, statement)
    if found is None:
        return _uncacheable("text() reads a table that is not in the metadata", sql, None)
    objects, names = found
    try:
        spelled = stable_text(cache_key.key)
    except Unstable as exc:
        return _uncacheable(f"statement structure has no stable spelling ({exc})", sql, names)
    if _VOLATILE.search(sql):
        return _uncacheable("volatile SQL function", sql, names)
    if not names:
        return _uncacheable("reads no table", sql, names)
    template = _template(statement, compiled, getattr(compiled, "compile_state", None))
    if template is None:
        return _uncacheable("result shape not supported (bundles, identity tokens)", sql, names)
    digest = hashlib.sha256(
        "\x1f".join((FORMAT, spelled, schema_fingerprint(objects))).encode("utf-8", "surrogatepass")
    ).hexdigest()
    return Shape(digest, sql, names, template)


def _tables_of(compiled: Any, statement: Any) -> tuple[set[TableClause], frozenset[str]] | None:
    """Table objects and fullnames a compiled statement reads (``None``: a ``text()`` names unknown ones).

    ORM statements are looked at in their compiled form, which holds joined eager loads and inheritance
    joins; ``text()`` fragments are read with the catalog.
    """
    compiled_statement = getattr(getattr(compiled, "compile_state", None), "statement", None)
    tables: set[TableClause] = set()
    texts: list[str] = []
    for element in visitors.iterate(statement if compiled_statement is None else compiled_statement):
        if isinstance(element, TableClause):
            tables.add(element)
        elif isinstance(element, TextClause):
            texts.append(element.text)
    remember_metadata(t for t in tables if isinstance(t, Table))
    names = {t.fullname for t in tables}
    for table in tables:
        names.update(name_only_tags(table))
    for text in texts:
        in_text = catalog().tables_in_fragment(text)
        if in_text is None:
            return None
        names |= in_text
    return tables, frozenset(names)


_compiled_tables: weakref.WeakKeyDictionary[Any, frozenset[str] | None] = weakref.WeakKeyDictionary()


def tables_read_by(compiled: Any) -> frozenset[str] | None:
    """Fullnames a compiled SELECT reads, memoized per compiled object (``None``: cannot be named)."""
    try:
        return _compiled_tables[compiled]
    except KeyError:
        pass
    found = _tables_of(compiled, compiled.statement)
    names = None if found is None else found[1]
    _compiled_tables[compiled] = names
    return names


def _template(statement: Any, compiled: Any, compile_state: Any) -> ResultTemplate | None:
    if statement._propagate_attrs.get("compile_state_plugin") == "orm":
        entities = getattr(compile_state, "_entities", None)
        if entities is None:  # e.g. a UNION of ORM selects: its rows have no single entity layout
            return None
        if any(type(e).__name__ not in _SUPPORTED_ENTITIES for e in entities):
            return None
        return _orm_template(compile_state)
    return _core_template(compiled)


def schema_fingerprint(tables: Iterable[TableClause]) -> str:
    """Columns and types of the tables read: a schema change gives queries new keys."""
    parts = []
    for table in sorted(tables, key=lambda t: t.fullname):
        columns = ",".join(f"{c.name}:{type_text(c.type)}" for c in table.columns)
        parts.append(f"{table.fullname}({columns})")
    return ";".join(parts)


def type_text(datatype: Any) -> str:
    """A type's spelling without object addresses."""
    text = repr(datatype)
    return type(datatype).__qualname__ if "0x" in text else text


class _ShapeMemo:
    """Bounded memo of shapes per dialect; oldest shapes are forgotten first."""

    def __init__(self) -> None:
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, dict[Any, Shape]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, statement: Any, cache_key: Any, dialect: Dialect) -> Shape:
        shapes = self._by_dialect.get(dialect)
        if shapes is None:
            with self._lock:
                shapes = self._by_dialect.setdefault(dialect, {})
        found = shapes.get(cache_key.key)
        if found is not None:
            return found
        shape = analyse(statement, cache_key, dialect)
        with self._lock:
            while len(shapes) >= MAX_SHAPES:
                shapes.pop(next(iter(shapes)))
            shapes[cache_key.key] = shape
        return shape


_memo = _ShapeMemo()


def shape_of(statement: Any, cache_key: Any, dialect: Dialect) -> Shape:
    """The memoized :class:`Shape` of ``statement`` (whose ``_generate_cache_key()`` is ``cache_key``)."""
    return _memo.get(statement, cache_key, dialect)
