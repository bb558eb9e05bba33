"""Keys of ``@cached`` calls (API.md §6): canonical, typed, order-independent, stable across processes, and
loudly refused for arguments without a stable representation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from yokedcache import CacheKeyError, YokedCache, cached
from yokedcache.integrations.arguments import KeyBuilder

ROOT = Path(__file__).resolve().parent.parent
CACHE = YokedCache(key_prefix="keys")  # no I/O happens in this module: cache_key never touches the backend


def digest(key: str) -> str:
    return key.rsplit(":", 1)[1]


@cached(cache=CACHE, ttl=60)
async def search(query: str, limit: int = 10, *, exact: bool = False) -> list[str]:
    return []


@cached(cache=CACHE)
def anything(value: Any) -> Any:
    return value


@cached(cache=CACHE)
def flexible(a: int, *rest: Any, **options: Any) -> Any:
    return None


def test_key_format() -> None:
    key = search.cache_key("q")
    assert key.startswith(f"keys:fn:{__name__}.search:")
    assert len(digest(key)) == 32
    assert all(c in "0123456789abcdef" for c in digest(key))


def test_positional_keyword_and_default_spellings_give_one_key() -> None:
    spellings = [
        search.cache_key("q"),
        search.cache_key("q", 10),
        search.cache_key("q", limit=10),
        search.cache_key(query="q"),
        search.cache_key(limit=10, query="q"),
        search.cache_key("q", exact=False),
        search.cache_key(exact=False, limit=10, query="q"),
    ]
    assert len(set(spellings)) == 1
    assert search.cache_key("q", 11) != spellings[0]
    assert search.cache_key("q", exact=True) != spellings[0]


def test_kwargs_are_order_independent_and_varargs_count() -> None:
    assert flexible.cache_key(1, x=1, y=2) == flexible.cache_key(1, y=2, x=1)
    assert flexible.cache_key(1, x=1) != flexible.cache_key(1, x=2)
    assert flexible.cache_key(1, 2) != flexible.cache_key(1)
    assert flexible.cache_key(1) == flexible.cache_key(a=1)


def test_values_are_encoded_with_their_type() -> None:
    values: list[Any] = [
        1,
        1.0,
        True,
        "1",
        None,
        b"1",
        [1],
        (1,),
        {1},
        frozenset({1}),
        {"1": 1},
        float("nan"),
    ]
    keys = [anything.cache_key(v) for v in values]
    assert len(set(keys)) == len(values)
    assert anything.cache_key(0) != anything.cache_key(False)
    assert anything.cache_key(0.0) != anything.cache_key(-0.0)
    assert anything.cache_key(None) != anything.cache_key(float("nan"))
    assert anything.cache_key([1, [2]]) != anything.cache_key([[1], 2])
    assert anything.cache_key(["a", "b"]) != anything.cache_key(["ab"])
    assert anything.cache_key(2**70) != anything.cache_key(str(2**70))
    assert anything.cache_key([float("nan")]) != anything.cache_key([None])
    assert anything.cache_key({"a": float("inf")}) != anything.cache_key({"a": None})
    assert anything.cache_key({"a": float("inf")}) != anything.cache_key({"a": float("-inf")})
    assert anything.cache_key("\ud800") != anything.cache_key("\ud801")


def test_dicts_and_sets_are_order_independent() -> None:
    assert anything.cache_key({"a": 1, "b": 2}) == anything.cache_key({"b": 2, "a": 1})
    assert anything.cache_key({1: "x", "1": "y"}) == anything.cache_key({"1": "y", 1: "x"})
    assert anything.cache_key({"c", "a", "b"}) == anything.cache_key({"b", "c", "a"})
    nested_one = {"filters": {"x": [1, 2], "y": {"z": None}}, "sort": ("a", "b")}
    nested_two = {"sort": ("a", "b"), "filters": {"y": {"z": None}, "x": [1, 2]}}
    assert anything.cache_key(nested_one) == anything.cache_key(nested_two)
    assert anything.cache_key({"a": 1}) != anything.cache_key({"a": 2})


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Pair(NamedTuple):
    left: int
    right: int


@dataclasses.dataclass(frozen=True)
class Filter:
    field: str
    value: Any


class WithCacheKey:
    def __init__(self, ident: int) -> None:
        self.ident = ident

    def __cache_key__(self) -> Any:
        return ("with-key", self.ident)


class WithRepr:
    def __init__(self, ident: int) -> None:
        self.ident = ident

    def __repr__(self) -> str:
        return f"WithRepr({self.ident})"


class Plain:
    pass


ACCEPTED: list[tuple[Any, Any]] = [
    (Color.RED, Color.BLUE),
    (Pair(1, 2), Pair(2, 1)),
    (Filter("a", 1), Filter("a", 2)),
    (WithCacheKey(1), WithCacheKey(2)),
    (WithRepr(1), WithRepr(2)),
    (dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 13)),
    (dt.date(2024, 1, 1), dt.date(2024, 1, 2)),
    (dt.timedelta(seconds=1), dt.timedelta(seconds=2)),
    (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
    (uuid.UUID(int=1), uuid.UUID(int=2)),
    (Plain, WithRepr),  # classes: by import path
]


@pytest.mark.parametrize(("one", "other"), ACCEPTED, ids=lambda v: type(v).__name__)
def test_accepted_argument_types_are_stable_and_distinct(one: Any, other: Any) -> None:
    assert anything.cache_key(one) == anything.cache_key(one)
    assert anything.cache_key(one) != anything.cache_key(other)


def test_equal_objects_give_equal_keys() -> None:
    assert anything.cache_key(WithCacheKey(5)) == anything.cache_key(WithCacheKey(5))
    assert anything.cache_key(Filter("a", [1])) == anything.cache_key(Filter("a", [1]))
    assert anything.cache_key(Pair(1, 2)) != anything.cache_key((1, 2))  # the type is part of the key


def test_pydantic_models_are_keyed_by_their_fields() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Query(pydantic.BaseModel):
        text: str
        page: int = 1

    assert anything.cache_key(Query(text="a")) == anything.cache_key(Query(text="a", page=1))
    assert anything.cache_key(Query(text="a")) != anything.cache_key(Query(text="a", page=2))


def test_unstable_argument_raises_before_the_function_runs() -> None:
    runs: list[int] = []

    @cached(cache=CACHE, ttl=60)  # fallback_enabled is on: a key error is the caller's bug, it still raises
    def lookup(user_id: int, ctx: Any) -> int:
        runs.append(1)
        return user_id

    with pytest.raises(CacheKeyError) as caught:
        lookup(1, Plain())
    message = str(caught.value)
    assert caught.value.parameter == "ctx"
    assert "'ctx'" in message and "key_builder" in message and "exclude_args" in message
    assert runs == []
    with pytest.raises(CacheKeyError, match="'ctx'"):
        lookup(1, [1, {"deep": Plain()}])  # nested too
    with pytest.raises(CacheKeyError):
        lookup.cache_key(1, Plain())
    assert isinstance(caught.value, ValueError)


async def test_unstable_argument_raises_in_async_functions_too() -> None:
    runs: list[int] = []

    @cached(cache=CACHE, ttl=60)
    async def lookup(obj: Any) -> int:
        runs.append(1)
        return 1

    with pytest.raises(CacheKeyError, match="'obj'"):
        await lookup(object())
    assert runs == []


def test_exclude_args_and_key_builder_resolve_unstable_arguments() -> None:
    @cached(cache=CACHE, exclude_args=["ctx"])
    def excluded(user_id: int, ctx: Any) -> int:
        return user_id

    @cached(cache=CACHE, key_builder=lambda user_id, ctx: f"user:{user_id}")
    def built(user_id: int, ctx: Any) -> int:
        return user_id

    assert excluded.cache_key(1, Plain()) == excluded.cache_key(1, ctx=Plain())
    assert built.cache_key(1, Plain()) == "keys:user:1"


def test_self_and_cls_are_left_out_and_classes_never_share() -> None:
    class UserRepository:
        def __init__(self, session: Any) -> None:
            self.session = session

        @cached(cache=CACHE)
        async def get_by_id(self, obj_id: int) -> Any:
            return None

        @cached(cache=CACHE)
        @classmethod
        async def count(cls, active: bool) -> int:
            return 0

    class PostRepository:
        def __init__(self, session: Any) -> None:
            self.session = session

        @cached(cache=CACHE)
        async def get_by_id(self, obj_id: int) -> Any:
            return None

    users_a, users_b, posts = UserRepository(Plain()), UserRepository(Plain()), PostRepository(Plain())
    assert users_a.get_by_id.cache_key(1) == users_b.get_by_id.cache_key(1)
    assert users_a.get_by_id.cache_key(1) != posts.get_by_id.cache_key(1)
    assert ".UserRepository.get_by_id:" in users_a.get_by_id.cache_key(1)
    assert ".PostRepository.get_by_id:" in posts.get_by_id.cache_key(1)
    assert UserRepository.count.cache_key(True) == users_a.count.cache_key(True)


def test_sqlalchemy_sessions_and_engines_are_left_out() -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session, sessionmaker

    engine = sqlalchemy.create_engine("sqlite://")

    @cached(cache=CACHE)
    def query(db: Any, user_id: int) -> Any:
        return None

    with Session(engine) as one, sessionmaker(bind=engine)() as two, engine.connect() as conn:
        expected = query.cache_key(None, 1)
        assert query.cache_key(one, 1) == query.cache_key(two, 1)
        assert query.cache_key(conn, 1) == query.cache_key(engine, 1) == query.cache_key(one, 1)
        assert query.cache_key(one, 1) != expected  # a session is a marker, not None
        assert query.cache_key(one, 2) != query.cache_key(one, 1)
    async_engine = create_async_engine("sqlite+aiosqlite://")
    assert query.cache_key(AsyncSession(async_engine), 1) == query.cache_key(async_engine, 1)


def test_starlette_request_objects_are_left_out() -> None:
    pytest.importorskip("starlette")
    from starlette.background import BackgroundTasks
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    @cached(cache=CACHE)
    def endpoint(request: Any, response: Any, tasks: Any, item: int) -> Any:
        return None

    def make_request(path: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""})

    one = endpoint.cache_key(make_request("/a"), Response(), BackgroundTasks(), 1)
    two = endpoint.cache_key(make_request("/b"), JSONResponse({}), BackgroundTasks(), 1)
    assert one == two
    assert endpoint.cache_key(make_request("/a"), Response(), BackgroundTasks(), 2) != one


def test_orm_instances_are_keyed_by_class_and_identity() -> None:
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import Column, Integer, String, create_engine
    from sqlalchemy.orm import DeclarativeBase, Session

    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = "accounts"
        id = Column(Integer, primary_key=True)
        name = Column(String(20))

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Account(id=1, name="a"), Account(id=2, name="b")])
        session.commit()
        first = session.get(Account, 1)
    with Session(engine) as other:
        again = other.get(Account, 1)
        second = other.get(Account, 2)
        assert anything.cache_key(first) == anything.cache_key(again)
        assert anything.cache_key(first) != anything.cache_key(second)
        with pytest.raises(CacheKeyError, match="identity"):
            anything.cache_key(Account(name="transient"))


def test_keys_are_stable_across_processes() -> None:
    """The same calls, keyed in a fresh interpreter with another hash seed, give the same keys."""
    code = (
        "import tests.test_decorator_keys as m\n"
        "for args in m.CROSS_PROCESS_CALLS:\n"
        "    print(m.anything.cache_key(*args))\n"
        "print(m.search.cache_key('q', limit=3))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOKEDCACHE_")}
    env.update(PYTHONHASHSEED="12345", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    here = [anything.cache_key(*args) for args in CROSS_PROCESS_CALLS] + [search.cache_key("q", limit=3)]
    assert done.stdout.split() == here


CROSS_PROCESS_CALLS: list[tuple[Any, ...]] = [
    (1,),
    ("text with ünïcode",),
    ({"b": [1, 2.5], "a": {"x", "y", "z"}},),
    (frozenset({"p", "q", "r", "s"}),),
    ((Color.RED, dt.date(2024, 2, 29), decimal.Decimal("3.14")),),
    (Filter("f", {"k": (1, None)}),),
    (WithCacheKey(3),),
]


def test_key_builder_binding_matches_signature_bind() -> None:
    """The fast binder agrees with ``inspect.Signature.bind`` + ``apply_defaults``, and raises like it."""

    def f(a: int, b: int = 2, *, c: int = 3, d: int) -> None: ...

    builder = KeyBuilder(f)
    assert builder.bind((1,), {"d": 4}) == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert list(builder.bind((), {"d": 4, "c": 5, "a": 1})) == ["a", "b", "c", "d"]
    for bad_args, bad_kwargs in [
        ((1, 2, 3), {"d": 4}),
        ((1,), {}),
        ((1,), {"d": 4, "e": 5}),
        ((1,), {"a": 1}),
        ((1, 2, 3, 4), {}),
    ]:
        with pytest.raises(TypeError):
            builder.bind(bad_args, bad_kwargs)


def test_positional_only_parameters() -> None:
    @cached(cache=CACHE)
    def pos(a: int, /, b: int = 0) -> int:
        return a

    assert pos.cache_key(1) == pos.cache_key(1, b=0) == pos.cache_key(1, 0)
    with pytest.raises(TypeError):
        pos.cache_key(a=1)


def test_keyword_only_parameters_cannot_be_given_positionally() -> None:
    @cached(cache=CACHE)
    def kw(a: int, *, b: int) -> int:
        return a

    assert kw.cache_key(1, b=2) == kw.cache_key(b=2, a=1)
    with pytest.raises(TypeError):
        kw.cache_key(1, 2)


# --- property: equal keys exactly for equal (typed) values -------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.binary(max_size=4),
)
_hashable = st.one_of(
    _scalars.filter(lambda v: not (isinstance(v, float) and v != v)), st.tuples(st.integers())
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_hashable, inner, max_size=4),
        st.frozensets(_hashable, max_size=4),
    ),
    max_leaves=12,
)


def typed(value: Any) -> Any:
    """A comparison that tells types apart (1, 1.0, True) and compares floats by repr (0.0, -0.0, nan)."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(typed(x) for x in value))
    if isinstance(value, dict):
        return ("dict", frozenset((typed(k), typed(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, frozenset(typed(x) for x in value))
    return (type(value).__name__, value)


@settings(max_examples=200, deadline=None)
@given(_values, _values)
def test_keys_are_equal_exactly_for_equal_values(one: Any, other: Any) -> None:
    assert (anything.cache_key(one) == anything.cache_key(other)) == (typed(one) == typed(other))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _values, max_size=6), st.randoms())
def test_dict_insertion_order_never_matters(mapping: dict[str, Any], rnd: Any) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert anything.cache_key(mapping) == anything.cache_key(dict(items))
