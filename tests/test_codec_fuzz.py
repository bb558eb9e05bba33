"""Property tests: no input bytes make the reader raise or unpickle; supported values round-trip."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import os
import struct
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from yokedcache.codec import MAGIC, MARKER, CorruptPayload, dumps, loads, open_envelope, peek, seal
from yokedcache.models import SerializationMethod

JSON = SerializationMethod.JSON
MSGPACK = SerializationMethod.MSGPACK
PICKLE = SerializationMethod.PICKLE
SIGNING_KEY = b"fuzz-signing-key"

# YC_FUZZ_EXAMPLES=5000 for a longer run.
FUZZ = settings(
    max_examples=int(os.environ.get("YC_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Appended to by any unpickled Exploit; must stay empty. Nothing is patched to make this true.
UNPICKLED: list[Any] = []


def _ran(*args: Any) -> None:
    UNPICKLED.append(args)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_ran, ("unpickled",))


class Suit(enum.Enum):
    HEARTS = "h"
    SPADES = "s"


class Pair(NamedTuple):
    left: Any
    right: Any


@dataclasses.dataclass
class Box:
    content: Any
    label: str = ""


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down (nan equals nan; tz, fold and key order count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return repr(a) == repr(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, (set, frozenset)):
        types_a = sorted(type(x).__name__ for x in a)
        return a == b and types_a == sorted(type(x).__name__ for x in b)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def _seal(value: Any, **overrides: Any) -> bytes:
    options: dict[str, Any] = {
        "key": "fuzz",
        "method": JSON,
        "allow_pickle": False,
        "compression_threshold": None,
        "signing_key": None,
        "max_value_bytes": None,
        "created_at": 1_700_000_000.0,
    }
    options.update(overrides)
    return seal(value, **options)


SAMPLE = {"user": {"id": 7, "tags": ("a", "b"), "when": dt.date(2024, 1, 2)}, "n": [1.5, None]}

# (entry, signed, pickle-allowed-when-reading) - every kind of envelope the writer can produce.
ENVELOPES: list[tuple[bytes, bool, bool]] = [
    (_seal({"plain": [1, "two", None]}), False, False),
    (_seal(SAMPLE), False, False),
    (_seal(SAMPLE, method=MSGPACK), False, False),
    (_seal({"big": "x" * 4000, **SAMPLE}, compression_threshold=64), False, False),
    (_seal(SAMPLE, signing_key=SIGNING_KEY), True, False),
    (_seal(Exploit(), method=PICKLE, allow_pickle=True), False, False),
    # A signed pickle read with pickle ON: only the MAC stands between a mutation and unpickling.
    (_seal(Exploit(), method=PICKLE, allow_pickle=True, signing_key=SIGNING_KEY), True, True),
    (
        _seal(
            Exploit(),
            method=PICKLE,
            allow_pickle=True,
            signing_key=SIGNING_KEY,
            compression_threshold=1,
        ),
        True,
        True,
    ),
]


def _read_every_way(data: bytes) -> None:
    for signing_key in (None, SIGNING_KEY):
        for allow_legacy in (False, True):
            open_envelope(
                data,
                key="fuzz",
                allow_pickle=False,
                signing_key=signing_key,
                allow_legacy=allow_legacy,
            )
    peek(data)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _read_every_way(data)
    assert UNPICKLED == []


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), st.floats(), st.binary(max_size=256))
def test_arbitrary_bytes_behind_a_valid_magic_never_raise(
    version: int, flags: int, created_at: float, body: bytes
) -> None:
    data = MAGIC + struct.pack(">BBd", version, flags, created_at) + body
    _read_every_way(data)
    info = peek(data)
    assert info is None or info.size_bytes == len(data)
    assert UNPICKLED == []


@st.composite
def mutated_envelope(draw: st.DrawFn) -> tuple[bytes, bytes, bool, bool]:
    original, signed, allow_pickle = draw(st.sampled_from(ENVELOPES))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "flip", "truncate", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if action == "set":
            data[i] = draw(st.integers(0, 255))
        elif action == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[i:]
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 8))]
    return original, bytes(data), signed, allow_pickle


@FUZZ
@given(mutated_envelope())
def test_mutated_envelopes_never_raise_and_never_unpickle(
    case: tuple[bytes, bytes, bool, bool],
) -> None:
    original, data, signed, allow_pickle = case
    assume(data != original)
    _read_every_way(data)
    if signed:
        # With the key, any change to a signed entry is a miss - even with pickle allowed.
        result = open_envelope(
            data, key="fuzz", allow_pickle=allow_pickle, signing_key=SIGNING_KEY, allow_legacy=True
        )
        assert result is None
    assert UNPICKLED == []


def test_the_exploit_is_live() -> None:
    """Guard against a vacuous fuzz: the signed pickle entries above do run code when intact."""
    entry = ENVELOPES[6][0]
    open_envelope(entry, key="fuzz", allow_pickle=True, signing_key=SIGNING_KEY, allow_legacy=False)
    assert UNPICKLED == [("unpickled",)]
    UNPICKLED.clear()


# --- supported values round-trip ---

_zones = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    st.builds(
        lambda minutes, named: (
            dt.timezone(dt.timedelta(minutes=minutes), "Zone")
            if named
            else dt.timezone(dt.timedelta(minutes=minutes))
        ),
        st.integers(-23 * 60, 23 * 60),
        st.booleans(),
    ),
    st.timezones(),
)

# Includes lone surrogates (valid in a Python str, not in UTF-8) and the tag marker itself.
_text = st.text(
    st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=12
) | st.just(MARKER)

_hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    _text,
    st.binary(max_size=16),
    st.dates(),
    st.uuids(),
    st.sampled_from(Suit),
    st.decimals(allow_nan=False),
)
_hashables = st.recursive(
    _hashable_scalars,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)

_scalars = st.one_of(
    _hashable_scalars,
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=16).map(bytearray),
    st.datetimes(timezones=_zones),
    st.times(timezones=_zones),
    st.timedeltas(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.integers(min_value=2**64, max_value=2**300) | st.integers(max_value=-(2**63) - 1),
)

values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_text, inner, max_size=4),
        st.dictionaries(_hashables, inner, max_size=4),
        st.sets(_hashables, max_size=4),
        st.frozensets(_hashables, max_size=4),
        st.builds(Pair, inner, inner),
        st.builds(Box, inner, _text),
    ),
    max_leaves=25,
)


@FUZZ
@given(values)
@pytest.mark.parametrize("method", [JSON, MSGPACK], ids=["JSON", "MSGPACK"])
def test_supported_values_round_trip(method: SerializationMethod, value: Any) -> None:
    body, plain = dumps(value, method)
    out = loads(body, method, plain=plain)
    assert same(out, value), (value, out)


@FUZZ
@given(values, st.booleans(), st.booleans())
def test_supported_values_round_trip_through_the_envelope(value: Any, signed: bool, compress: bool) -> None:
    key = SIGNING_KEY if signed else None
    entry = _seal(value, signing_key=key, compression_threshold=32 if compress else None)
    result = open_envelope(entry, key="fuzz", allow_pickle=False, signing_key=key, allow_legacy=False)
    assert result is not None
    assert same(result.value, value)


@FUZZ
@given(values, st.booleans())
def test_a_body_read_with_the_wrong_method_fails_cleanly(value: Any, plain: bool) -> None:
    """Reading a body as the other method gives some value or CorruptPayload, nothing else."""
    for written, read in ((MSGPACK, JSON), (JSON, MSGPACK)):
        body, _ = dumps(value, written)
        try:
            loads(body, read, plain=plain)
        except CorruptPayload:
            pass
