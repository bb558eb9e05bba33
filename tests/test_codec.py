"""The codec: type-faithful values, the stored envelope, and the security rules around both."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import pickle
import socket
import subprocess
import sys
import textwrap
import time
import types
import uuid
import zlib
import zoneinfo
from collections import OrderedDict
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pydantic
import pytest
from sqlalchemy import ForeignKey, String, create_engine, event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    defer,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.orm.exc import DetachedInstanceError

import yokedcache.codec
from yokedcache.codec import (
    FORMAT_VERSION,
    MAGIC,
    MARKER,
    CorruptPayload,
    EntryInfo,
    Opened,
    dumps,
    is_mapped_instance,
    loads,
    open_envelope,
    peek,
    seal,
)
from yokedcache.exceptions import CacheError, CacheSerializationError
from yokedcache.models import SerializationMethod

JSON = SerializationMethod.JSON
MSGPACK = SerializationMethod.MSGPACK
PICKLE = SerializationMethod.PICKLE
METHODS = [JSON, MSGPACK]
SIGNING_KEY = b"k" * 32


# --- sample types (module level, so the reader can resolve them) ---


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 1
    W = 2
    X = 4


class Point(NamedTuple):
    x: int
    y: float
    label: str = ""


@dataclasses.dataclass
class Address:
    street: str
    tags: set[str]
    at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Frozen:
    id: uuid.UUID
    amount: Decimal
    point: Point


@dataclasses.dataclass(slots=True)
class Slotted:
    a: int
    b: tuple[int, ...]


class Profile(pydantic.BaseModel):
    bio: str
    born: dt.date
    color: Color = Color.RED


class Member(pydantic.BaseModel):
    name: str
    profile: Profile
    scores: tuple[int, ...] = ()
    friends: list[Profile] = []


class Aliased(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True, extra="allow")

    a: int = pydantic.Field(alias="b")
    b_: int = pydantic.Field(default=0, alias="a")


class Wrapper(pydantic.RootModel[list[int]]):
    pass


class Plain:
    """An arbitrary class: not supported, must be refused."""

    def __init__(self) -> None:
        self.x = 1


class MyStr(str):
    pass


# --- deep comparison: same types all the way down ---


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return repr(a) == repr(b)  # includes tzinfo (type, key/offset, name) and fold
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, pydantic.BaseModel):
        return (
            same(dict(a.__dict__), dict(b.__dict__))
            and a.model_fields_set == b.model_fields_set
            and getattr(a, "__pydantic_extra__", None) == getattr(b, "__pydantic_extra__", None)
        )
    return bool(a == b)


SAMPLES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int": 42,
    "negative int": -(2**63),
    "u64": 2**64 - 1,
    "huge int": 3**200,
    "huge negative int": -(7**99),
    "float": 1.25,
    "negative zero": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "str": "héllo ✓",
    "empty str": "",
    "lone surrogate": "a\ud800b",
    "bytes": b"\x00\xffbin",
    "bytearray": bytearray(b"\x01\x02"),
    "list": [1, "a", None],
    "tuple": (1, "a", (2.5,)),
    "empty tuple": (),
    "dict": {"a": 1, "b": [1, 2]},
    "dict int keys": {2: "two", 1: "one"},
    "dict mixed keys": {"s": 1, 2: 2, (3, 4): 3, None: 4, frozenset({1}): 5, True: 6},
    "dict with marker key": {MARKER: ["t", [1, 2]], "other": 1},
    "dict key order": {"z": 1, "a": 2, "m": 3},
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "empty set": set(),
    "naive datetime": dt.datetime(2024, 2, 29, 13, 14, 15, 123456),
    "utc datetime": dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=dt.timezone.utc),
    "offset datetime": dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "named offset datetime": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3), "BRT")),
    "zoneinfo datetime": dt.datetime(2024, 7, 1, 9, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    "zoneinfo fold": dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 59, 999999),
    "aware time": dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "decimal": Decimal("1.10"),
    "decimal exp": Decimal("-1.5E+1000"),
    "decimal nan": Decimal("NaN"),
    "decimal inf": Decimal("-Infinity"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "enum": Color.GREEN,
    "int enum": Level.HIGH,
    "flag": Perm.R,
    "composite flag": Perm.R | Perm.X,
    "namedtuple": Point(1, 2.5, "p"),
    "dataclass": Address("Main St", {"home"}, dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)),
    "frozen dataclass": Frozen(uuid.UUID(int=7), Decimal("9.99"), Point(0, 0.0)),
    "slots dataclass": Slotted(1, (2, 3)),
    "pydantic": Profile(bio="hi", born=dt.date(2000, 1, 1)),
    "nested pydantic": Member(
        name="m",
        profile=Profile(bio="x", born=dt.date(1990, 5, 6), color=Color.GREEN),
        scores=(1, 2),
        friends=[Profile(bio="f", born=dt.date(1980, 1, 1))],
    ),
    "pydantic alias and extra": Aliased(b=1, a=2, surprise={1, 2}),
    "pydantic root model": Wrapper([1, 2, 3]),
    "nested": {
        "users": [
            {"id": 1, "tags": {"a", "b"}, "joined": dt.date(2020, 1, 1), "point": Point(1, 1.0)},
            (Color.RED, [Decimal("0.1"), {"deep": (None, b"x", math.inf)}]),
        ],
        7: frozenset({(1, 2), (3, 4)}),
    },
}


@pytest.fixture(params=METHODS, ids=lambda m: m.name)
def method(request: pytest.FixtureRequest) -> SerializationMethod:
    return request.param  # type: ignore[no-any-return]


def roundtrip_body(value: Any, method: SerializationMethod) -> Any:
    body, plain = dumps(value, method)
    return loads(body, method, plain=plain)


def sealed(value: Any, **overrides: Any) -> bytes:
    options: dict[str, Any] = {
        "key": "k",
        "method": JSON,
        "allow_pickle": False,
        "compression_threshold": None,
        "signing_key": None,
        "max_value_bytes": None,
        "created_at": 1_700_000_000.5,
    }
    options.update(overrides)
    return seal(value, **options)


def opened(data: bytes, **overrides: Any) -> Opened | None:
    options: dict[str, Any] = {
        "key": "k",
        "allow_pickle": False,
        "signing_key": None,
        "allow_legacy": False,
    }
    options.update(overrides)
    return open_envelope(data, **options)


# --- type fidelity ---


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_supported_type_round_trips_to_the_same_type(name: str, method: SerializationMethod) -> None:
    value = SAMPLES[name]
    out = roundtrip_body(value, method)
    assert type(out) is type(value)
    assert same(out, value), (out, value)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_supported_type_round_trips_through_the_envelope(
    name: str, method: SerializationMethod
) -> None:
    value = SAMPLES[name]
    result = opened(sealed(value, method=method))
    assert result is not None
    assert type(result.value) is type(value)
    assert same(result.value, value)
    assert result.method is method


def test_datetimes_keep_time_zone_microseconds_and_naivety(method: SerializationMethod) -> None:
    naive = dt.datetime(2024, 3, 10, 1, 2, 3, 456789)
    paris = dt.datetime(2024, 3, 10, 1, 2, 3, 456789, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    out_naive, out_paris = roundtrip_body([naive, paris], method)
    assert out_naive.tzinfo is None
    assert out_naive.microsecond == 456789
    assert out_paris.tzinfo == zoneinfo.ZoneInfo("Europe/Paris")
    assert out_paris.utcoffset() == paris.utcoffset()
    assert out_paris == paris


def test_nan_round_trips(method: SerializationMethod) -> None:
    out = roundtrip_body([math.nan, Decimal("NaN")], method)
    assert math.isnan(out[0])
    assert out[1].is_nan()


def test_dict_holding_the_marker_key_is_not_mistaken_for_a_tag(method: SerializationMethod) -> None:
    tricky = {MARKER: ["t", [1, 2]]}
    assert roundtrip_body(tricky, method) == tricky
    # Inside a value that needs tags (so the reader walks the tree looking for them):
    value = ({MARKER: ["t", [1, 2]]}, [{MARKER: ["dc", "os", "system", {}]}], {"a": {MARKER: 1}})
    out = roundtrip_body(value, method)
    assert out == value
    assert type(out[0][MARKER]) is list


def test_plain_data_is_written_natively_without_tags() -> None:
    value = {"name": "x", "n": 1, "f": 1.5, "ok": True, "none": None, "list": [1, {"a": "b"}]}
    body, plain = dumps(value, JSON)
    assert plain is True
    assert body == orjson.dumps(value)
    assert dumps((1, 2), JSON)[1] is False
    assert dumps({"a": [math.nan]}, JSON)[1] is False
    assert dumps({"a": 2**70}, JSON)[1] is False
    assert dumps({1: "a"}, JSON)[1] is False


def test_str_enum_dict_keys_keep_their_type(method: SerializationMethod) -> None:
    value = {Color.RED: 1, "red": 2}
    out = roundtrip_body(value, method)
    assert list(out) == [Color.RED, "red"]
    assert type(next(iter(out))) is Color


def test_each_read_returns_an_independent_copy(method: SerializationMethod) -> None:
    entry = sealed({"items": [1, 2], "meta": {"k": "v"}}, method=method)
    first, second = opened(entry), opened(entry)
    assert first is not None and second is not None
    first.value["items"].append(3)
    first.value["meta"]["k"] = "changed"
    assert second.value == {"items": [1, 2], "meta": {"k": "v"}}


def test_frozen_dataclass_is_rebuilt_without_calling_init(method: SerializationMethod) -> None:
    out = roundtrip_body(SAMPLES["frozen dataclass"], method)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.amount = Decimal(0)


def test_pydantic_model_keeps_fields_set_and_nested_models(method: SerializationMethod) -> None:
    member = Member(name="m", profile=Profile(bio="b", born=dt.date(2001, 2, 3)))
    out = roundtrip_body(member, method)
    assert type(out.profile) is Profile
    assert out.model_fields_set == {"name", "profile"}
    assert out == member


# --- unsupported values are refused, never substituted ---


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (lambda: lambda x: x, "function"),
        (Plain, "Plain"),
        (lambda: object(), "object"),
        (lambda: MyStr("x"), "MyStr"),
        (lambda: OrderedDict(a=1), "OrderedDict"),
        (lambda: iter([1]), "list_iterator"),
    ],
    ids=["lambda", "custom class", "object", "str subclass", "OrderedDict", "iterator"],
)
def test_unsupported_values_raise_and_produce_no_bytes(
    make: Any, type_name: str, method: SerializationMethod
) -> None:
    value = make()
    with pytest.raises(CacheSerializationError, match=f"type {type_name} at value"):
        dumps(value, method)
    with pytest.raises(CacheSerializationError):
        sealed(value, method=method)


def test_open_socket_is_refused(method: SerializationMethod) -> None:
    with socket.socket() as sock, pytest.raises(CacheSerializationError, match="socket"):
        sealed({"conn": sock}, method=method)


def test_error_names_the_offending_type_and_path(method: SerializationMethod) -> None:
    value = {"a": [1, 2, Plain()]}
    with pytest.raises(CacheSerializationError) as info:
        dumps(value, method)
    assert "cannot serialize object of type Plain at value['a'][2]" in str(info.value)

    with pytest.raises(CacheSerializationError, match=r"at value\.tags\[<element>\]"):
        dumps(Address("s", {Plain()}), method)  # type: ignore[arg-type]
    with pytest.raises(CacheSerializationError, match=r"at value\[1\]\[<key>\]"):
        dumps([0, {Plain(): 1}], method)


def test_classes_a_reader_could_not_resolve_are_refused(method: SerializationMethod) -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(CacheSerializationError, match="module level"):
        dumps(Local(1), method)


def test_unsupported_time_zone_is_refused_not_flattened(method: SerializationMethod) -> None:
    class Custom(dt.tzinfo):
        def utcoffset(self, _: Any) -> dt.timedelta:
            return dt.timedelta(hours=1)

        def dst(self, _: Any) -> dt.timedelta:
            return dt.timedelta(0)

    with pytest.raises(CacheSerializationError, match="time zone"):
        dumps(dt.datetime(2024, 1, 1, tzinfo=Custom()), method)


def test_reference_cycles_are_refused(method: SerializationMethod) -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(CacheSerializationError):
        dumps(cycle, method)


# --- pickle ---


EXECUTED: list[Any] = []


def _record(*args: Any) -> None:
    EXECUTED.append(args)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("code ran",))


def test_pickle_is_refused_without_allow_pickle() -> None:
    with pytest.raises(CacheSerializationError, match="allow_pickle"):
        dumps({"a": 1}, PICKLE)
    with pytest.raises(CacheSerializationError, match="allow_pickle"):
        sealed({"a": 1}, method=PICKLE)


def test_pickle_round_trips_when_allowed() -> None:
    value = {"obj": Plain().__dict__, "t": (1, 2)}
    entry = sealed(value, method=PICKLE, allow_pickle=True)
    result = opened(entry, allow_pickle=True)
    assert result is not None and result.value == value and result.method is PICKLE


def test_stored_pickle_is_never_unpickled_while_pickle_is_off() -> None:
    EXECUTED.clear()
    entry = sealed(Exploit(), method=PICKLE, allow_pickle=True)
    raw = pickle.dumps(Exploit())

    assert opened(entry) is None
    assert opened(entry, allow_legacy=True) is None
    assert opened(raw, allow_legacy=True) is None
    assert opened(raw, allow_legacy=True, allow_pickle=True) is None  # un-enveloped: never pickle
    with pytest.raises(CorruptPayload):
        loads(raw, PICKLE, plain=False, allow_pickle=False)
    assert EXECUTED == []

    # The payload is live: the same entry read with pickle on does run it.
    opened(entry, allow_pickle=True)
    assert EXECUTED == [("code ran",)]
    EXECUTED.clear()


def test_flipping_flags_of_a_signed_entry_to_pickle_is_detected() -> None:
    EXECUTED.clear()
    entry = bytearray(sealed(Exploit(), method=PICKLE, allow_pickle=True, signing_key=SIGNING_KEY))
    assert opened(bytes(entry), allow_pickle=True, signing_key=SIGNING_KEY) is not None
    EXECUTED.clear()
    entry[-1] ^= 1
    assert opened(bytes(entry), allow_pickle=True, signing_key=SIGNING_KEY) is None
    assert EXECUTED == []


# --- signing ---


def test_signed_entry_round_trips() -> None:
    entry = sealed({"a": 1}, signing_key=SIGNING_KEY)
    result = opened(entry, signing_key=SIGNING_KEY)
    assert result is not None and result.value == {"a": 1}
    info = peek(entry)
    assert info is not None and info.signed


def test_any_tampered_byte_makes_a_miss() -> None:
    entry = sealed({"a": [1, 2, 3], "b": "text"}, signing_key=SIGNING_KEY)
    for i in range(len(entry)):
        for flip in (0x01, 0x80):
            tampered = bytearray(entry)
            tampered[i] ^= flip
            assert opened(bytes(tampered), signing_key=SIGNING_KEY) is None, i


def test_truncated_or_extended_signed_entry_is_a_miss() -> None:
    entry = sealed({"a": 1}, signing_key=SIGNING_KEY)
    for cut in range(len(entry)):
        assert opened(entry[:cut], signing_key=SIGNING_KEY) is None
    assert opened(entry + b" ", signing_key=SIGNING_KEY) is None


def test_entry_moved_to_another_key_is_a_miss() -> None:
    entry = sealed({"a": 1}, key="user:1", signing_key=SIGNING_KEY)
    assert opened(entry, key="user:1", signing_key=SIGNING_KEY) is not None
    assert opened(entry, key="user:2", signing_key=SIGNING_KEY) is None


def test_wrong_signing_key_is_a_miss() -> None:
    entry = sealed({"a": 1}, signing_key=SIGNING_KEY)
    assert opened(entry, signing_key=b"other") is None


def test_unsigned_entry_read_with_a_signing_key_is_a_miss() -> None:
    entry = sealed({"a": 1})
    assert opened(entry) is not None
    assert opened(entry, signing_key=SIGNING_KEY) is None
    assert opened(b'{"a": 1}', signing_key=SIGNING_KEY, allow_legacy=True) is None


def test_signed_entry_is_readable_by_a_reader_without_a_key() -> None:
    entry = sealed({"a": 1}, signing_key=SIGNING_KEY)
    result = opened(entry)
    assert result is not None and result.value == {"a": 1}


# --- envelope format ---


def test_header_layout() -> None:
    entry = sealed({"a": 1}, created_at=1234.5)
    assert entry[:3] == MAGIC
    assert entry[3] == FORMAT_VERSION
    assert entry[13:] == b'{"a":1}'
    result = opened(entry)
    assert result == Opened({"a": 1}, JSON, False, 1234.5)


def test_wrong_format_version_is_a_miss() -> None:
    entry = bytearray(sealed({"a": 1}))
    for version in (0, 2, 255):
        entry[3] = version
        assert opened(bytes(entry)) is None
        assert peek(bytes(entry)) is None


def test_unknown_flag_bits_or_method_are_a_miss() -> None:
    entry = bytearray(sealed({"a": 1}))
    entry[4] |= 0x80
    assert opened(bytes(entry)) is None
    entry = bytearray(sealed({"a": 1}))
    entry[4] |= 0b11  # method code 3 does not exist
    assert opened(bytes(entry)) is None
    assert peek(bytes(entry)) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\xfe", MAGIC, MAGIC + b"\x01", b"garbage", b"\x00" * 64, b"\xff" * 64],
)
def test_garbage_is_a_miss(data: bytes) -> None:
    assert opened(data) is None
    assert opened(data, allow_legacy=True) is None
    assert peek(data) is None


def test_garbage_body_with_valid_header_is_a_miss(method: SerializationMethod) -> None:
    entry = sealed({"a": (1, 2)}, method=method)
    assert opened(entry[:13] + b"\xc1\xff{not valid") is None


def test_legacy_json_is_read_only_when_allowed() -> None:
    legacy = orjson.dumps({"old": [1, 2]})
    assert opened(legacy) is None
    result = opened(legacy, allow_legacy=True)
    assert result is not None and result.value == {"old": [1, 2]} and result.method is JSON
    assert opened(b"not json", allow_legacy=True) is None
    assert peek(legacy) is None


def test_compression_shrinks_large_repetitive_values_and_round_trips(
    method: SerializationMethod,
) -> None:
    value = {"rows": [{"name": "same text again", "n": i % 3} for i in range(500)]}
    plain_entry = sealed(value, method=method)
    packed = sealed(value, method=method, compression_threshold=1024)
    assert len(packed) < len(plain_entry) / 5
    info = peek(packed)
    assert info is not None and info.compressed and info.size_bytes == len(packed)
    result = opened(packed)
    assert result is not None and result.compressed and result.value == value


def test_compression_respects_the_threshold() -> None:
    small = {"a": "b"}
    assert not opened(sealed(small, compression_threshold=1024)).compressed  # type: ignore[union-attr]
    big = {"a": "b" * 5000}
    assert not opened(sealed(big, compression_threshold=None)).compressed  # type: ignore[union-attr]
    assert opened(sealed(big, compression_threshold=10)).compressed  # type: ignore[union-attr]


def test_compressed_garbage_is_a_miss() -> None:
    entry = bytearray(sealed({"a": "b" * 5000}, compression_threshold=10))
    entry[20] ^= 0xFF
    assert opened(bytes(entry)) is None
    bomb_header = bytearray(sealed({"a": 1}))
    bomb_header[4] |= 1 << 2
    assert opened(bytes(bomb_header[:13]) + zlib.compress(b"\xc1")) is None


def test_max_value_bytes_refuses_larger_entries() -> None:
    value = {"a": "x" * 1000}
    size = len(sealed(value))
    assert sealed(value, max_value_bytes=size)
    with pytest.raises(CacheSerializationError, match=rf"{size} bytes.*max_value_bytes={size - 1}"):
        sealed(value, max_value_bytes=size - 1)


def test_peek_reads_the_header_without_decoding() -> None:
    entry = sealed({"a": Plain().__dict__}, method=MSGPACK, created_at=99.0)
    assert peek(entry) == EntryInfo(MSGPACK, False, 99.0, len(entry), False)
    pickled = sealed(Exploit(), method=PICKLE, allow_pickle=True)
    EXECUTED.clear()
    info = peek(pickled)
    assert info is not None and info.method is PICKLE
    assert EXECUTED == []


# --- class resolution ---


def _module_with_classes(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(
        textwrap.dedent(
            """
            import dataclasses, enum, pydantic

            @dataclasses.dataclass
            class Thing:
                x: int

            class Mood(enum.Enum):
                HAPPY = 1

            class Model(pydantic.BaseModel):
                x: int
            """
        ),
        module.__dict__,
    )
    return module


@pytest.mark.parametrize("kind", ["Thing", "Mood", "Model"])
def test_class_from_a_module_the_reader_has_not_imported_is_a_miss(
    kind: str, method: SerializationMethod
) -> None:
    name = f"yc_ephemeral_{kind.lower()}"
    module = _module_with_classes(name)
    values = {
        "Thing": lambda: module.Thing(1),
        "Mood": lambda: module.Mood.HAPPY,
        "Model": lambda: module.Model(x=1),
    }
    try:
        entry = sealed({"v": values[kind]()}, method=method)
        assert opened(entry) is not None
    finally:
        del sys.modules[name]
    assert opened(entry) is None
    assert name not in sys.modules  # and it was not imported to find out


def test_decoding_never_imports_a_module() -> None:
    assert "antigravity" not in sys.modules
    body = orjson.dumps({MARKER: ["dc", "antigravity", "Thing", {}]})
    with pytest.raises(CorruptPayload, match="not imported"):
        loads(body, JSON, plain=False)
    assert "antigravity" not in sys.modules


def test_resolution_runs_no_module_getattr_hook() -> None:
    calls: list[str] = []
    module = types.ModuleType("yc_lazy_module")
    module.__getattr__ = lambda name: calls.append(name)  # type: ignore[attr-defined]  # PEP 562 hook
    sys.modules["yc_lazy_module"] = module
    try:
        body = orjson.dumps({MARKER: ["dc", "yc_lazy_module", "Thing", {}]})
        with pytest.raises(CorruptPayload):
            loads(body, JSON, plain=False)
    finally:
        del sys.modules["yc_lazy_module"]
    assert calls == []


CONSTRUCTED: list[Any] = []


class Trap:
    """Records any attempt to build it; looks like an enum/NamedTuple/model to a careless reader."""

    __members__ = {"x": "not an enum member"}
    _fields = ()
    model_fields: dict[str, Any] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Trap:
        CONSTRUCTED.append(args)
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        CONSTRUCTED.append(kwargs)


@pytest.mark.parametrize("tag", ["e", "ef", "nt", "dc", "pd", "o"])
def test_class_of_the_wrong_kind_is_a_miss_and_never_called(tag: str) -> None:
    CONSTRUCTED.clear()
    args: dict[str, list[Any]] = {
        "e": [__name__, "Trap", "x"],
        "ef": [__name__, "Trap", 1],
        "nt": [__name__, "Trap", {}],
        "dc": [__name__, "Trap", {}],
        "pd": [__name__, "Trap", {"__dict__": {}}],
        "o": [0, __name__, "Trap", None, {}],
    }
    for module, qualname in ((__name__, "Trap"), ("os", "system"), ("builtins", "eval")):
        node = [tag, *args[tag]]
        if tag == "o":
            node[2:4] = [module, qualname]
        else:
            node[1:3] = [module, qualname]
        body = orjson.dumps({MARKER: node})
        with pytest.raises(CorruptPayload):
            loads(body, JSON, plain=False)
        entry = sealed(None)[:4] + bytes([0]) + sealed(None)[5:13] + body
        assert opened(entry) is None
    assert CONSTRUCTED == []


def test_corrupt_payload_is_not_a_cache_error() -> None:
    assert not issubclass(CorruptPayload, CacheError)
    for body in (b"{", b'{"__yc__": ["nope"]}', b'{"__yc__": ["t"]}', b'{"__yc__": 1, "x": 2}'):
        with pytest.raises(CorruptPayload):
            loads(body, JSON, plain=False)
    with pytest.raises(CorruptPayload):
        loads(b"\xc1", MSGPACK, plain=True)


# --- SQLAlchemy mapped instances ---


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    joined: Mapped[dt.datetime]
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")
    badges: Mapped[set[Badge]] = relationship()


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    author: Mapped[User] = relationship(back_populates="posts")


class Badge(Base):
    __tablename__ = "badges"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    label: Mapped[str]

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Badge) and other.id == self.id


JOINED = dt.datetime(2023, 5, 6, 7, 8, 9, 10, tzinfo=dt.timezone.utc)


@pytest.fixture
def engine() -> Any:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        user = User(id=1, name="ann", email="ann@example.com", joined=JOINED)
        user.posts = [Post(id=10, title="first"), Post(id=11, title="second")]
        user.badges = {Badge(id=5, label="gold"), Badge(id=6, label="silver")}
        session.add(user)
        session.commit()
    yield engine
    engine.dispose()


def _count_sql(engine: Any) -> list[str]:
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return statements


def test_mapped_instance_round_trips_with_loaded_relationships_and_shared_identity(
    engine: Any, method: SerializationMethod
) -> None:
    with Session(engine) as session:
        user = session.scalars(
            select(User).options(selectinload(User.posts), selectinload(User.badges))
        ).one()
        for post in user.posts:
            assert post.author is user  # loads the many-to-one (from the identity map)
        joined = user.joined
        statements = _count_sql(engine)
        entry = sealed({"user": user, "again": user, "first": user.posts[0]}, method=method)
        assert statements == []  # encoding emitted no SQL

    result = opened(entry)
    assert result is not None
    out = result.value
    copy = out["user"]
    assert type(copy) is User and copy is not user
    assert out["again"] is copy
    assert out["first"] is copy.posts[0]
    assert copy.posts[0].author is copy  # the cycle
    assert [p.title for p in copy.posts] == ["first", "second"]
    assert type(copy.badges) is not list and {b.label for b in copy.badges} == {"gold", "silver"}
    assert same(copy.joined, joined)
    state = sa_inspect(copy)
    assert state.detached
    assert not state.modified
    assert state.key is not None and state.key[1] == (1,)


def test_unloaded_attributes_stay_unloaded(engine: Any, method: SerializationMethod) -> None:
    with Session(engine) as session:
        user = session.scalars(select(User).options(defer(User.email))).one()
        statements = _count_sql(engine)
        entry = sealed(user, method=method)
        assert statements == []
        assert "email" in sa_inspect(user).unloaded

    result = opened(entry)
    assert result is not None
    copy = result.value
    assert copy.name == "ann"
    with pytest.raises(DetachedInstanceError):
        _ = copy.email  # deferred column: not loaded at store time
    with pytest.raises(DetachedInstanceError):
        _ = copy.posts  # relationship never loaded


def test_expired_instance_is_stored_without_sql(engine: Any) -> None:
    with Session(engine) as session:
        user = session.get(User, 1)
        assert user is not None
        session.expire(user)
        statements = _count_sql(engine)
        entry = sealed(user)
        assert statements == []
    copy = opened(entry).value  # type: ignore[union-attr]
    assert sa_inspect(copy).key[1] == (1,)
    with pytest.raises(DetachedInstanceError):
        _ = copy.name


def test_decoded_instance_can_be_merged_into_a_session(engine: Any) -> None:
    with Session(engine) as session:
        user = session.scalars(select(User).options(defer(User.email))).one()
        entry = sealed(user)
    copy = opened(entry).value  # type: ignore[union-attr]
    with Session(engine) as session:
        merged = session.merge(copy, load=False)
        assert merged.name == "ann"
        assert merged.email == "ann@example.com"  # loads now that it is attached
        assert not session.dirty


def test_is_mapped_instance() -> None:
    assert is_mapped_instance(User(id=1))
    assert not is_mapped_instance(User)
    assert not is_mapped_instance(Plain())
    assert not is_mapped_instance({"a": 1})


def test_mapped_class_that_is_not_resolvable_is_a_miss(engine: Any) -> None:
    with Session(engine) as session:
        user = session.get(User, 1)
        body, plain = dumps(user, JSON)
    tampered = body.replace(b'"User"', b'"Plain"')
    with pytest.raises(CorruptPayload):
        loads(tampered, JSON, plain=plain)


# --- optional dependencies stay unimported ---


def test_codec_does_not_import_optional_packages() -> None:
    src = Path(yokedcache.codec.__file__).resolve().parents[1]
    script = textwrap.dedent(
        f"""
        import sys, types, dataclasses, datetime
        # Load yokedcache.codec without the package __init__ (which belongs to other layers).
        pkg = types.ModuleType("yokedcache")
        pkg.__path__ = [{str(src)!r}]
        sys.modules["yokedcache"] = pkg
        from yokedcache.codec import seal, open_envelope
        from yokedcache.models import SerializationMethod

        class Plain:
            pass

        @dataclasses.dataclass
        class D:
            x: int

        sys.modules["__main__"].D = D
        for value in ({{"a": 1}}, (1, datetime.date.today()), D(1)):
            e = seal(value, key="k", method=SerializationMethod.JSON, allow_pickle=False,
                     compression_threshold=None, signing_key=None, max_value_bytes=None,
                     created_at=0.0)
            assert open_envelope(e, key="k", allow_pickle=False, signing_key=None,
                                 allow_legacy=False).value == value
        try:
            seal(Plain(), key="k", method=SerializationMethod.JSON, allow_pickle=False,
                 compression_threshold=None, signing_key=None, max_value_bytes=None,
                 created_at=0.0)
        except Exception:
            pass
        loaded = [m for m in ("msgpack", "pydantic", "sqlalchemy") if m in sys.modules]
        print(",".join(loaded))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_timing_sanity() -> None:
    """Not a benchmark: catches an accidental slow path (e.g. the plain check going quadratic)."""
    value = {f"field_{i:02d}": (f"value number {i}" if i % 2 else i * 1000) for i in range(40)}
    entry = sealed(value)
    start = time.perf_counter()
    for _ in range(2000):
        sealed(value)
        opened(entry)
    per_pair = (time.perf_counter() - start) / 2000
    assert per_pair < 500e-6
