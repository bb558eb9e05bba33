"""Query results as a JSON-safe row graph, and real ORM objects rebuilt from it without SQL.

A payload is a plain structure the cache's type-faithful codec stores as JSON (never pickle)::

    {"v": 1,
     "classes": [[module, qualname, fingerprint], ...],
     "objects": [[class_index, primary_key_tuple, {column: value}, {relationship: ref | [refs] | None}], ...],
     "rows":    [[cell, ...], ...]}          # entity columns hold object refs (ints) or None

Only what was loaded is recorded, read from each instance's ``__dict__`` (never triggering a load): column
values and loaded relationships, shared identities and cycles by reference. Payloads are always built from
objects a private session has just loaded (see ``reads.py``), so they hold database values, never this
session's uncommitted state.

:func:`rebuild` turns a payload into rows for a session, the way the ORM's own loading does:

- an identity already in the session's identity map is returned **as is** — its loaded attributes, pending
  changes included, are never touched; only attributes it has not loaded (expired after a commit, say)
  are filled, as a database row would fill them;
- any other identity becomes a new instance built without ``__init__``, given its loaded values as
  committed state, made detached with its identity key and added to the session clean; attributes that
  were not loaded are expired, so they load normally on access (lazy loads are never served from here);
- each class's fingerprint (its columns, types and relationships) must match the payload's, otherwise the
  payload is refused (``StalePayload``): a model change never resurrects old data.
"""

from __future__ import annotations

import hashlib
import sys
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached, mapperlib
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.state import InstanceState

from .statements import type_text

PAYLOAD_VERSION = 1
_SKIPPED_LAZY = frozenset({"dynamic", "write_only", "noload"})


class StalePayload(Exception):
    """A payload that cannot be rebuilt here: unknown class, changed model, malformed content."""


class NotCacheable(Exception):
    """A result that must not be stored (e.g. identities from a sharded session)."""


# --- fingerprints ----------------------------------------------------------------------------------------

_fingerprints: weakref.WeakKeyDictionary[Mapper[Any], str] = weakref.WeakKeyDictionary()


def fingerprint(mapper: Mapper[Any]) -> str:
    """A digest of what a payload of this class depends on: columns, types, relationships."""
    found = _fingerprints.get(mapper)
    if found is None:
        parts = [f"{mapper.class_.__module__}.{mapper.class_.__qualname__}", str(mapper.polymorphic_identity)]
        for prop in mapper.column_attrs:
            columns = ",".join(f"{getattr(c, 'name', '?')}:{type_text(c.type)}" for c in prop.columns)
            parts.append(f"c:{prop.key}:{columns}")
        for rel in mapper.relationships:
            parts.append(f"r:{rel.key}:{rel.mapper.class_.__qualname__}:{rel.uselist}")
        digest = hashlib.sha256("|".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        found = _fingerprints[mapper] = digest
    return found


# --- encoding ----------------------------------------------------------------------------------------------


class _Encoder:
    """Numbers objects as they are reached; each object's record is filled once, breadth first."""

    def __init__(self) -> None:
        self.classes: list[list[Any]] = []
        self.class_index: dict[Mapper[Any], int] = {}
        self.objects: list[list[Any]] = []
        self.refs: dict[int, int] = {}
        self.pending: list[Any] = []

    def ref(self, obj: Any) -> int:
        ref = self.refs.get(id(obj))
        if ref is None:
            ref = self.refs[id(obj)] = len(self.objects)
            self.objects.append([])
            self.pending.append(obj)
        return ref

    def drain(self) -> None:
        while self.pending:
            obj = self.pending.pop()
            self.objects[self.refs[id(obj)]] = self.record(obj)

    def record(self, obj: Any) -> list[Any]:
        state = instance_state(obj)
        if state.key is None or state.key[2] is not None:
            raise NotCacheable("only persistent objects without identity tokens are cached")
        mapper = state.mapper
        loaded = state.dict
        columns = {p.key: loaded[p.key] for p in mapper.column_attrs if p.key in loaded}
        relations: dict[str, Any] = {}
        for rel in mapper.relationships:
            if rel.key not in loaded or rel.lazy in _SKIPPED_LAZY:
                continue
            value = loaded[rel.key]
            if value is None:
                relations[rel.key] = None
            elif rel.uselist:
                items = value.values() if isinstance(value, dict) else value
                relations[rel.key] = [self.ref(item) for item in items]
            else:
                relations[rel.key] = self.ref(value)
        # A list, not a tuple: the codec stores a payload of plain JSON types without tagging, and reads
        # it back without walking it (rebuild turns the key back into a tuple).
        return [self.class_ref(mapper), list(state.key[1]), columns, relations]

    def class_ref(self, mapper: Mapper[Any]) -> int:
        index = self.class_index.get(mapper)
        if index is None:
            cls = mapper.class_
            index = self.class_index[mapper] = len(self.classes)
            self.classes.append([cls.__module__, cls.__qualname__, fingerprint(mapper)])
        return index


def encode(
    rows: Sequence[Sequence[Any]], entity_positions: Sequence[int]
) -> tuple[dict[str, Any], list[Mapper[Any]]]:
    """The payload of ``rows`` (tuples) whose ``entity_positions`` hold mapped instances or ``None``,
    and the mappers its ``classes`` name (so this process can rebuild it without resolving names)."""
    encoder = _Encoder()
    out_rows = []
    for row in rows:
        cells = list(row)
        for position in entity_positions:
            if cells[position] is not None:
                cells[position] = encoder.ref(cells[position])
        out_rows.append(cells)
    encoder.drain()
    payload = {"v": PAYLOAD_VERSION, "classes": encoder.classes, "objects": encoder.objects, "rows": out_rows}
    return payload, list(encoder.class_index)


# --- rebuilding --------------------------------------------------------------------------------------------


# (module, qualname, fingerprint) -> the class found at that attribute path and its checked mapper. A hit
# repeats only the attribute lookup and the (memoized) fingerprint comparison, not the inspection.
_resolved: dict[tuple[str, str, str], tuple[weakref.ref[type], weakref.ref[Mapper[Any]]]] = {}


def _resolve(entry: Any) -> Mapper[Any]:
    """The mapper a payload names: by module attribute path, else the one registered mapper of that name
    (classes defined inside functions); never by importing anything."""
    module, qualname, expected = entry
    if not (type(module) is str and type(qualname) is str and type(expected) is str):
        raise StalePayload("malformed class entry")
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    known = _resolved.get((module, qualname, expected))
    if known is not None and known[0]() is target:
        remembered = known[1]()
        if remembered is not None and fingerprint(remembered) == expected:
            return remembered
    mapper = sa_inspect(target, raiseerr=False) if isinstance(target, type) else None
    if not isinstance(mapper, Mapper) or mapper.class_ is not target:
        candidates = [
            m
            for registry in mapperlib._all_registries()
            for m in registry.mappers
            if m.class_.__module__ == module
            and m.class_.__qualname__ == qualname
            and fingerprint(m) == expected
        ]
        if len(candidates) != 1:
            raise StalePayload(f"{module}.{qualname} is not one mapped class here")
        mapper = candidates[0]
    if fingerprint(mapper) != expected:
        raise StalePayload(f"{module}.{qualname} changed since the payload was stored")
    if mapper.class_ is target:
        _resolved[(module, qualname, expected)] = (weakref.ref(target), weakref.ref(mapper))
    return mapper


_attribute_names: weakref.WeakKeyDictionary[Mapper[Any], tuple[frozenset[str], frozenset[str], int]] = (
    weakref.WeakKeyDictionary()
)


def _names(mapper: Mapper[Any]) -> tuple[frozenset[str], frozenset[str], int]:
    """Column attribute names, relationship names and primary key length of ``mapper`` (memoized: a
    payload is checked against them on every hit)."""
    found = _attribute_names.get(mapper)
    if found is None:
        found = _attribute_names[mapper] = (
            frozenset(p.key for p in mapper.column_attrs),
            frozenset(r.key for r in mapper.relationships),
            len(mapper.primary_key),
        )
    return found


def _check(payload: Any, mappers: list[Mapper[Any]] | None) -> tuple[list[Mapper[Any]], list[Any], list[Any]]:
    """Validate everything before touching the session, so a bad payload changes nothing."""
    if type(payload) is not dict or payload.get("v") != PAYLOAD_VERSION:
        raise StalePayload("not a row payload of this version")
    if mappers is None:
        mappers = [_resolve(entry) for entry in payload["classes"]]
    objects, rows = payload["objects"], payload["rows"]
    count = len(objects)
    for class_index, pk, columns, relations in objects:
        column_names, relationship_names, pk_length = _names(mappers[class_index])
        if len(pk) != pk_length:
            raise StalePayload("primary key does not match the mapper")
        if not column_names.issuperset(columns):
            raise StalePayload(f"unknown column attribute in {sorted(columns)}")
        for name, value in relations.items():
            refs = value if isinstance(value, list) else [value]
            if name not in relationship_names or any(r is not None and not 0 <= r < count for r in refs):
                raise StalePayload(f"bad relationship {name!r}")
    return mappers, objects, rows


def rebuild(
    payload: Any,
    session: Session,
    entity_positions: Sequence[int],
    mappers: list[Mapper[Any]] | None = None,
) -> list[tuple[Any, ...]]:
    """The payload's rows with real, persistent objects of ``session`` (see the module docstring).

    ``mappers`` are the classes' mappers when the caller knows them (a payload it just encoded); otherwise
    they are resolved by name and checked against the recorded fingerprints.
    """
    mappers, records, rows = _check(payload, mappers)
    objects: list[Any] = []
    new_keys: list[Any] = []
    identity_map = session.identity_map
    for class_index, pk, _, _ in records:
        mapper = mappers[class_index]
        key = mapper.identity_key_from_primary_key(tuple(pk))
        existing = identity_map.get(key)
        objects.append(existing if existing is not None else mapper.class_manager.new_instance())
        new_keys.append(None if existing is not None else key)
    fresh = [key for key in new_keys if key is not None]
    if len(set(fresh)) != len(fresh):
        raise StalePayload("an identity appears twice")
    for obj, key, (_, _, columns, relations) in zip(objects, new_keys, records):
        _fill(obj, key is not None, columns, relations, objects)
    for obj, key in zip(objects, new_keys):
        if key is not None:
            _attach(session, obj, key)
    for obj, key in zip(objects, new_keys):
        if key is not None:
            state = instance_state(obj)
            state.manager.dispatch.load(state, None)  # reconstructors, Mutable coercion: as a real load
    return [_row(cells, entity_positions, objects) for cells in rows]


# What ``make_transient_to_detached(obj)`` followed by ``session.add(obj)`` does for an object built here,
# without the save-update cascade walk (every object of the payload is attached by this loop anyway) and
# without recomputing the identity key: on a hit this is most of the rebuilding time. It needs the
# session's attach steps, which are not public; without them the public pair is used.
_LEAN_ATTACH = all(hasattr(Session, name) for name in ("_before_attach", "_after_attach")) and all(
    hasattr(InstanceState, name) for name in ("_commit_all", "_expire_attributes", "unloaded")
)


def _attach(session: Session, obj: Any, key: Any) -> None:
    """Make a freshly built ``obj`` persistent in ``session`` under identity ``key``, clean, with the
    attributes it was not given expired (so they load on access)."""
    if not _LEAN_ATTACH:
        make_transient_to_detached(obj)
        session.add(obj)
        return
    state = instance_state(obj)
    state.key = key
    loaded = state.dict
    state._commit_all(loaded)
    unloaded = state.unloaded
    if unloaded:
        state._expire_attributes(loaded, unloaded)
    if session._before_attach(state, obj):
        session.identity_map.add(state)
        session._after_attach(state, obj)


def _fill(
    obj: Any, is_new: bool, columns: dict[str, Any], relations: dict[str, Any], objects: list[Any]
) -> None:
    """New objects get everything; existing ones only what they have not loaded (never pending changes)."""
    state = instance_state(obj)
    loaded = state.dict
    filled = []
    if is_new:
        loaded.update(columns)
    for name, value in () if is_new else columns.items():
        if name not in loaded:
            set_committed_value(obj, name, value)
            filled.append(name)
    for name, ref in relations.items():
        if not is_new and name in loaded:
            continue
        target = [objects[r] for r in ref] if isinstance(ref, list) else None if ref is None else objects[ref]
        set_committed_value(obj, name, target)
        filled.append(name)
    if filled and not is_new:
        state.manager.dispatch.refresh(state, None, filled)


def _row(cells: Sequence[Any], entity_positions: Sequence[int], objects: list[Any]) -> tuple[Any, ...]:
    out = list(cells)
    for position in entity_positions:
        if out[position] is not None:
            out[position] = objects[out[position]]
    return tuple(out)
