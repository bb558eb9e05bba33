"""SQLAlchemy mapped instances inside cached values.

An instance is written as ``[ref, module, qualname, identity, attributes]``:

- ``ref``: its number within this value; the same object reached again (a shared identity, or a
  cycle such as ``user.posts[0].author is user``) is written as just ``[ref]`` and decodes to the
  same object;
- ``module``/``qualname``: its mapped class, resolved on read from already-imported modules only;
- ``identity``: ``[primary key tuple, identity token]``, or ``None`` for a transient/pending object;
- ``attributes``: ``{name: value}`` for the column attributes and relationships **already loaded**,
  read from the instance state's dict, so encoding never triggers a lazy load or emits SQL.
  Collections are written as lists; scalars as the related instance or ``None``.

Decoding builds a new **detached** instance without calling ``__init__``
(``class_manager.new_instance()``), sets each loaded attribute as committed state
(``set_committed_value``: no history, the object is clean) and marks the column attributes that
were not loaded as expired, so touching one raises ``DetachedInstanceError`` instead of quietly
returning ``None``. Unloaded relationships keep their lazy loader, which raises the same. Attach the
result to a session with ``session.merge(obj, load=False)``.

Nothing here imports SQLAlchemy unless ``sqlalchemy.orm`` is already in :data:`sys.modules`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

EncodeChild = Callable[[Any, str], Any]
ClassRef = Callable[[type, Any], "tuple[str, str]"]


def is_mapped_instance(obj: object) -> bool:
    """True for an instance of a mapped class; free when SQLAlchemy's ORM was never imported."""
    if "sqlalchemy.orm" not in sys.modules or isinstance(obj, type):
        return False
    from sqlalchemy import inspect
    from sqlalchemy.orm import InstanceState

    return isinstance(inspect(obj, raiseerr=False), InstanceState)


def encode_instance(obj: Any, encode: EncodeChild, refs: dict[int, int], class_ref: ClassRef) -> list[Any]:
    """Arguments of the ``o`` node for ``obj``; ``encode(value, path_segment)`` encodes children."""
    ref = refs.get(id(obj))
    if ref is not None:
        return [ref]
    ref = refs[id(obj)] = len(refs)

    from sqlalchemy import inspect

    state = inspect(obj)
    mapper = state.mapper
    module, qualname = class_ref(type(obj), obj)
    identity = None
    if state.key is not None:
        identity = [
            encode(tuple(state.key[1]), ".<identity>"),
            encode(state.key[2], ".<identity_token>"),
        ]

    loaded = state.dict  # only what is loaded: reading it never emits SQL
    attributes: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        if prop.key in loaded:
            attributes[prop.key] = encode(loaded[prop.key], f".{prop.key}")
    for rel in mapper.relationships:
        if rel.key not in loaded:
            continue
        value = loaded[rel.key]
        if rel.uselist and value is not None:
            value = list(value.values()) if isinstance(value, dict) else list(value)
        attributes[rel.key] = encode(value, f".{rel.key}")
    return [ref, module, qualname, identity, attributes]


def decode_instance(
    args: list[Any],
    decode: Callable[[Any], Any],
    refs: dict[int, Any],
    resolve_class: Callable[[Any, Any], type],
) -> Any:
    """Rebuild (or, for ``[ref]``, look up) a detached instance; raise on anything malformed."""
    if len(args) == 1:
        return refs[args[0]]
    ref, module, qualname, identity, attributes = args
    if type(ref) is not int or ref != len(refs) or type(attributes) is not dict:
        raise ValueError("malformed mapped instance")
    cls = resolve_class(module, qualname)
    if "sqlalchemy.orm" not in sys.modules:
        raise TypeError(f"{module}.{qualname} is not a mapped class")
    from sqlalchemy import inspect
    from sqlalchemy.orm import Mapper
    from sqlalchemy.orm.attributes import instance_state, set_committed_value

    mapper: Any = inspect(cls, raiseerr=False)
    if not isinstance(mapper, Mapper) or mapper.class_ is not cls:
        raise TypeError(f"{module}.{qualname} is not a mapped class")

    obj = mapper.class_manager.new_instance()  # no __init__
    refs[ref] = obj  # registered before its attributes: they may point back to it
    state = instance_state(obj)
    if identity is not None:
        pk, token = identity
        pk = decode(pk)
        if type(pk) is not tuple:
            raise ValueError("malformed identity")
        state.key = mapper.identity_key_from_primary_key(pk, identity_token=decode(token))

    columns = {prop.key for prop in mapper.column_attrs}
    relationships = {rel.key: rel for rel in mapper.relationships}
    for name, node in attributes.items():
        value = decode(node)
        rel = relationships.get(name)
        if rel is not None:
            target = rel.mapper.class_
            if rel.uselist:
                if type(value) is not list or not all(isinstance(x, target) for x in value):
                    raise TypeError(f"bad collection for {qualname}.{name}")
            elif value is not None and not isinstance(value, target):
                raise TypeError(f"bad value for {qualname}.{name}")
        elif name not in columns:
            raise ValueError(f"{qualname} has no mapped attribute {name!r}")
        set_committed_value(obj, name, value)

    unloaded = [key for key in columns if key not in attributes]
    if unloaded:
        # Expired, not just absent: on a detached object an absent column would read as None; an
        # expired one raises DetachedInstanceError, as the original object would have done.
        state.expired_attributes.update(unloaded)
    return obj


__all__ = ["decode_instance", "encode_instance", "is_mapped_instance"]
