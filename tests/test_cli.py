"""The ``yokedcache`` command line, run as a subprocess against a real Redis (``python -m yokedcache``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from yokedcache import YokedCache, __version__

Run = Callable[..., "subprocess.CompletedProcess[str]"]


def yokedcache(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yokedcache", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cache(redis_url: str, prefix: str) -> Iterator[YokedCache]:
    """The library's view of the prefix the CLI works on (for seeding and checking)."""
    instance = YokedCache(redis_url=redis_url, key_prefix=prefix, ttl_jitter_percent=0)
    yield instance
    instance.flush_all_sync()
    instance.disconnect_sync()


@pytest.fixture
def cli(redis_url: str, prefix: str, cache: YokedCache) -> Run:
    def run(
        *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return yokedcache("--redis-url", redis_url, "--key-prefix", prefix, *args, stdin=stdin, env=env)

    return run


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- basics -------------------------------------------------------------------------------------------
def test_help_and_version() -> None:
    result = yokedcache("--help")
    assert result.returncode == 0
    for command in (
        "ping",
        "health",
        "stats",
        "list",
        "get",
        "set",
        "delete",
        "invalidate",
        "flush",
        "warm",
        "search",
        "export-config",
    ):
        assert command in result.stdout
    version = yokedcache("--version")
    assert version.returncode == 0 and __version__ in version.stdout


def test_ping(cli: Run) -> None:
    result = cli("ping", "--count", "2", "--interval", "0", "--show-timing")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [bool(re.fullmatch(r"OK \(\d+\.\dms\)", line)) for line in lines[:2]] == [True, True]
    assert re.fullmatch(r"min/avg/max = [\d.]+/[\d.]+/[\d.]+ ms", lines[2])


@pytest.mark.parametrize(
    "args",
    [
        ("ping",),
        ("health",),
        ("stats",),
        ("get", "k"),
        ("list",),
        ("set", "k", "1"),
        ("flush", "--all", "--force"),
    ],
)
def test_unreachable_backend_exits_3_with_one_line(args: tuple[str, ...]) -> None:
    result = yokedcache("--redis-url", "redis://127.0.0.1:1/0", *args)
    assert result.returncode == 3, (result.stdout, result.stderr)
    line = one_line_error(result)
    assert "127.0.0.1:1" in line and ("--redis-url" in line)
    if args == ("ping",):
        assert line.startswith("FAIL: ")


def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    bad_url = yokedcache("--redis-url", "http://nope", "ping")
    assert bad_url.returncode == 2
    assert "redis_url" in one_line_error(bad_url)
    config = tmp_path / "bad.yaml"
    config.write_text("default_ttl: -5\n")
    bad_file = yokedcache("--config-file", str(config), "stats")
    assert bad_file.returncode == 2
    assert "default_ttl" in one_line_error(bad_file)
    missing = yokedcache("--config-file", str(tmp_path / "missing.yaml"), "stats")
    assert missing.returncode == 2
    one_line_error(missing)
    unknown = yokedcache("no-such-command")
    assert unknown.returncode == 2
    one_line_error(unknown)


def test_config_precedence_env_then_file_then_options(tmp_path: Path) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text("key_prefix: from_file\ndefault_ttl: 42\n")
    env = {
        "YOKEDCACHE_KEY_PREFIX": "from_env",
        "YOKEDCACHE_DEFAULT_TTL": "7",
        "YOKEDCACHE_FUZZY_THRESHOLD": "55",
    }

    def exported(*args: str) -> dict[str, object]:
        result = yokedcache(*args, "export-config", "--format", "json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert exported()["key_prefix"] == "from_env"
    from_file = exported("--config-file", str(config))
    assert (from_file["key_prefix"], from_file["default_ttl"], from_file["fuzzy_threshold"]) == (
        "from_file",
        42,
        55,
    )
    assert (
        exported("--config-file", str(config), "--key-prefix", "from_option")["key_prefix"] == "from_option"
    )


def test_export_config_is_redacted(tmp_path: Path) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text("redis_url: redis://user:hunter2@127.0.0.1:6379/15\nsigning_key: topsecret\n")
    result = yokedcache("--config-file", str(config), "export-config")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "topsecret" not in result.stdout
    data = yaml.safe_load(result.stdout)
    assert data["signing_key"] == "***" and "***" in data["redis_url"]
    target = tmp_path / "out.json"
    written = yokedcache(
        "--config-file", str(config), "export-config", "--format", "json", "--output", str(target)
    )
    assert written.returncode == 0 and written.stdout == ""
    assert json.loads(target.read_text())["signing_key"] == "***"


# --- values -------------------------------------------------------------------------------------------
def test_set_and_get(cli: Run, cache: YokedCache) -> None:
    run = cli
    stored = run("set", "user:1", '{"name": "Ada", "ids": [1, 2]}', "--ttl", "100", "--tags", "users,admins")
    assert stored.returncode == 0 and stored.stdout == ""  # messages go to stderr
    assert cache.get_sync("user:1") == {"name": "Ada", "ids": [1, 2]}
    meta = cache.get_meta_sync("user:1")
    assert meta is not None and meta["tags"] == ["admins", "users"] and 89 <= meta["ttl"] <= 110  # jittered

    assert run("set", "n", "12").returncode == 0
    assert run("set", "s", "12", "--string").returncode == 0
    assert run("set", "plain", "not json").returncode == 0
    assert (cache.get_sync("n"), cache.get_sync("s"), cache.get_sync("plain")) == (12, "12", "not json")

    got = run("get", "user:1")
    assert got.returncode == 0 and json.loads(got.stdout) == {"name": "Ada", "ids": [1, 2]}
    assert run("get", "plain", "--format", "table").stdout == "not json\n"
    missing = run("get", "nope")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "nope" in one_line_error(missing)


def test_get_shows_rich_values_as_display_json(cli: Run, cache: YokedCache) -> None:
    import datetime as dt
    from decimal import Decimal
    from uuid import UUID

    cache.set_sync(
        "rich",
        {
            "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "price": Decimal("9.99"),
            "id": UUID(int=1),
            "tags": {"b", "a"},
            "pair": (1, 2),
            "raw": b"\x00\x01",
        },
    )
    result = cli("get", "rich")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "when": "2024-01-02T03:04:05+00:00",
        "price": "9.99",
        "id": "00000000-0000-0000-0000-000000000001",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "raw": "AAE=",
    }


def test_delete_prints_the_count(cli: Run, cache: YokedCache) -> None:
    cache.set_many_sync({"a": 1, "b": 2})
    result = cli("delete", "a", "b", "c")
    assert result.returncode == 0 and result.stdout.strip() == "2"
    assert cache.get_many_sync(["a", "b"]) == {"a": None, "b": None}


def test_list_formats_and_filters(cli: Run, cache: YokedCache) -> None:
    cache.set_sync("user:1", {"n": 1}, ttl=100, tags=["users"])
    cache.set_sync("user:2", {"n": 2}, ttl=100, tags=["users", "vip"])
    cache.set_sync("post:1", "hello [world]", ttl=100)

    table = cli("list")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["KEY", "TTL", "TAGS"]
    assert [row.split()[0] for row in rows[1:]] == ["post:1", "user:1", "user:2"]

    as_json = json.loads(cli("list", "--format", "json", "--include-values").stdout)
    assert [item["key"] for item in as_json] == ["post:1", "user:1", "user:2"]
    assert as_json[2]["tags"] == ["users", "vip"] and 90 <= as_json[2]["ttl"] <= 100
    assert as_json[0]["value"] == "hello [world]" and as_json[0]["size_bytes"] > 0

    vip = json.loads(cli("list", "--tags", "vip,nothing", "--format", "json").stdout)
    assert [item["key"] for item in vip] == ["user:2"]
    users = json.loads(cli("list", "--pattern", "user:*", "--limit", "1", "--format", "json").stdout)
    assert [item["key"] for item in users] in (["user:1"], ["user:2"])  # the first found: scans stop early

    csv_rows = cli("list", "--format", "csv", "--pattern", "user:2", "--include-values").stdout.splitlines()
    assert csv_rows[0] == "key,ttl,tags,size_bytes,value"
    assert csv_rows[1].startswith("user:2,") and "users;vip" in csv_rows[1] and '""n"":2' in csv_rows[1]


def test_invalidate(cli: Run, cache: YokedCache) -> None:
    cache.set_sync("a", 1, tags=["t"])
    cache.set_sync("b", 2)
    cache.set_sync("c:1", 3)
    neither = cli("invalidate")
    assert neither.returncode == 2
    one_line_error(neither)
    by_tag = cli("invalidate", "--tags", "t")
    assert by_tag.returncode == 0 and by_tag.stdout.strip() == "Invalidated 1"
    assert cache.get_sync("a") is None and cache.get_sync("b") == 2
    by_pattern = cli("invalidate", "--pattern", "c:*")
    assert by_pattern.stdout.strip() == "Invalidated 1"
    assert cache.get_sync("c:1") is None and cache.get_sync("b") == 2


# --- flush --------------------------------------------------------------------------------------------
def test_flush_asks_and_aborts_on_no(cli: Run, cache: YokedCache) -> None:
    cache.set_many_sync({f"k{i}": i for i in range(25)})
    declined = cli("flush", "--all", stdin="n\n")
    assert declined.returncode == 1
    assert "25 key(s)" in declined.stderr and "Proceed? [y/N]" in declined.stderr
    assert "Aborted" in declined.stderr and "... and 5 more" in declined.stderr
    assert len(cache.get_all_keys_sync()) == 25
    no_answer = cli("flush", "--all")  # EOF on stdin counts as "no"
    assert no_answer.returncode == 1
    accepted = cli("flush", "--all", "--confirm", stdin="y\n")
    assert accepted.returncode == 0 and accepted.stdout.strip() == "Flushed 25"
    assert cache.get_all_keys_sync() == []


def test_flush_never_touches_another_prefix(cli: Run, cache: YokedCache, redis_url: str, prefix: str) -> None:
    neighbour = YokedCache(redis_url=redis_url, key_prefix=f"{prefix}x")  # shares the prefix's first chars
    try:
        neighbour.set_sync("k1", "keep", tags=["t"])
        neighbour.set_sync("k2", "keep")
        cache.set_sync("k1", "drop", tags=["t"])
        for args in (("--all",), ("--pattern", "*"), ("--tags", "t"), ("--key", "k2")):
            result = cli("flush", *args, "--force")
            assert result.returncode == 0, result.stderr
        assert cache.get_sync("k1") is None
        assert neighbour.get_many_sync(["k1", "k2"]) == {"k1": "keep", "k2": "keep"}
    finally:
        neighbour.flush_all_sync()
        neighbour.disconnect_sync()


def test_flush_by_key_pattern_and_tags(cli: Run, cache: YokedCache) -> None:
    cache.set_sync("a:1", 1, tags=["x"])
    cache.set_sync("a:2", 2)
    cache.set_sync("b:1", 3, tags=["y"])
    cache.set_sync("c", 4)
    usage = cli("flush", "--key", "c", "--all", "--force")
    assert usage.returncode == 2
    assert cli("flush", "--key", "c", "--force").stdout.strip() == "Flushed 1"
    assert cli("flush", "--tags", "y", "--force").stdout.strip() == "Flushed 1"
    assert cli("flush", "--pattern", "a:*", "--force").stdout.strip() == "Flushed 2"
    assert cache.get_all_keys_sync() == []


# --- warm and search ----------------------------------------------------------------------------------
def test_warm_from_yaml_and_json(cli: Run, cache: YokedCache, tmp_path: Path) -> None:
    warming = tmp_path / "warming.yaml"
    warming.write_text(
        yaml.safe_dump(
            {
                "entries": [
                    {"key": "config:site", "value": {"name": "demo"}, "ttl": 100, "tags": ["config"]},
                    {"key": "config:flags", "value": [1, 2, 3]},
                ]
            }
        )
    )
    result = cli("warm", "--config-file", str(warming))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Stored 2 of 2 entries"
    assert cache.get_sync("config:site") == {"name": "demo"} and cache.get_sync("config:flags") == [1, 2, 3]
    assert (cache.get_meta_sync("config:site") or {}).get("tags") == ["config"]

    as_json = tmp_path / "warming.json"
    as_json.write_text(
        json.dumps({"entries": [{"key": "j", "value": 1}, {"key": "", "value": 2}, {"value": 3}]})
    )
    partial = cli("warm", "--config-file", str(as_json), "--verbose")
    assert partial.returncode == 1
    assert partial.stdout.strip() == "Stored 1 of 3 entries"
    assert "2 of 3 entries failed" in partial.stderr and "Traceback" not in partial.stderr
    assert cache.get_sync("j") == 1

    no_entries = tmp_path / "empty.yaml"
    no_entries.write_text("something: else\n")
    assert cli("warm", "--config-file", str(no_entries)).returncode == 2


def test_search(cli: Run, cache: YokedCache) -> None:
    pytest.importorskip("rapidfuzz")
    cache.set_sync("user:alice", {"n": 1}, tags=["users"])
    cache.set_sync("user:bob", {"n": 2})
    cache.set_sync("order:9", 3)
    disabled = cli("search", "alice")
    assert disabled.returncode == 1 and "enable_fuzzy" in one_line_error(disabled)
    fuzzy = {"YOKEDCACHE_ENABLE_FUZZY": "true"}
    found = cli("search", "alice", "--threshold", "90", "--format", "json", env=fuzzy)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == [{"key": "user:alice", "score": 100, "value": {"n": 1}}]
    tagged = cli("search", "user", "--tags", "users", "--format", "csv", env=fuzzy)
    assert tagged.stdout.splitlines() == ["key,score,value", 'user:alice,100,"{""n"":1}"']
    table = cli("search", "user", "--max-results", "1", env=fuzzy)
    assert table.stdout.splitlines()[0].split() == ["KEY", "SCORE", "VALUE"]
    assert len(table.stdout.splitlines()) == 2


# --- health -------------------------------------------------------------------------------------------
def test_health(cli: Run) -> None:
    as_json = cli("health", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["status"] == "healthy" and report["backend_type"] == "redis"
    assert report["redis_connected"] is True and report["latency_ms"] >= 0
    table = cli("health")
    assert table.returncode == 0 and "healthy" in table.stdout


def test_memory_backend_warns_but_works() -> None:
    result = yokedcache("ping")
    assert result.returncode == 0 and result.stdout.startswith("OK (")
    assert "no Redis URL configured" in result.stderr
