"""The CLI's commands. Each uses the cache's sync API; data goes to stdout, messages to stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import click
import yaml

from ..exceptions import CacheConnectionError
from ..models import CacheStats
from ..monitoring.fleet import fleet_stats
from ..policy.cache import MISSING, YokedCache
from .app import (
    EXIT_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Session,
    cli,
    fail,
    pass_session,
    unreachable_message,
)
from .output import Sink, cell, display, err, table, to_csv, to_json

_SCAN_ALL = 10**9  # "no limit" for listings that filter after scanning
_PREVIEW = 20


def _split_tags(text: str | None) -> list[str]:
    return [tag.strip() for tag in (text or "").split(",") if tag.strip()]


def _format_option(*choices: str) -> Any:
    """``--format`` with ``choices``; the first is the default."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices, case_sensitive=False),
        default=choices[0],
        show_default=True,
        help="Output format.",
    )


def _ttl_text(ttl: int | None) -> str:
    return "-" if ttl is None else f"{ttl}s"


# --- ping / health -----------------------------------------------------------------------------------
@cli.command()
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1), help="Pings to send.")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Seconds between pings."
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for each answer.",
)
@click.option("--show-timing", is_flag=True, help="Print min/avg/max round-trip times.")
@pass_session
def ping(session: Session, count: int, interval: float, timeout: float, show_timing: bool) -> None:
    """Ping the backend: "OK (1.2ms)" per answer; "FAIL: <reason>" and exit 3 if unreachable."""
    cache = session.cache(connection_timeout=timeout, operation_timeout=timeout)
    timings: list[float] = []
    failures = 0
    for attempt in range(count):
        if attempt:
            time.sleep(interval)
        started = time.perf_counter()
        try:
            cache.connect_sync()  # one PING (opens the connection the first time)
        except CacheConnectionError as exc:
            failures += 1
            err("FAIL: " + unreachable_message(exc).removeprefix("error: "))
            continue
        elapsed = (time.perf_counter() - started) * 1000
        timings.append(elapsed)
        click.echo(f"OK ({elapsed:.1f}ms)")
    if show_timing and timings:
        low, high, mean = min(timings), max(timings), sum(timings) / len(timings)
        click.echo(f"min/avg/max = {low:.3f}/{mean:.3f}/{high:.3f} ms")
    if failures:
        fail(EXIT_UNREACHABLE)


@cli.command()
@_format_option("table", "json")
@pass_session
def health(session: Session, fmt: str) -> None:
    """Detailed health check; exit 3 if the backend is unreachable."""
    cache = session.cache()
    report = cache.detailed_health_check_sync()
    if fmt == "json":
        click.echo(to_json(display(report)))
    else:
        rows = [(name, _health_cell(value)) for name, value in report.items()]
        table(("CHECK", "VALUE"), rows, sys.stdout)
    if report.get("latency_ms") is None:
        fail(EXIT_UNREACHABLE, unreachable_message(Exception(report.get("error") or "no answer")))


def _health_cell(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "-" if value is None else str(value)


# --- stats -------------------------------------------------------------------------------------------
_STATS_CSV = (
    "hit_rate",
    "miss_rate",
    "cache_hits",
    "cache_misses",
    "sets",
    "deletes",
    "invalidations",
    "errors",
    "total_operations",
    "key_count",
    "memory_usage_mb",
    "uptime_seconds",
)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _stats_lines(stats: CacheStats) -> str:
    lines = [
        ("Hit rate:", f"{stats.hit_rate:.2%}"),
        ("Miss rate:", f"{stats.miss_rate:.2%}"),
        ("Keys:", str(stats.key_count)),
        ("Memory:", f"{stats.memory_usage_mb:.2f} MB"),
        ("Hits:", str(stats.cache_hits)),
        ("Misses:", str(stats.cache_misses)),
        ("Sets:", str(stats.sets)),
        ("Deletes:", str(stats.deletes)),
        ("Invalidations:", str(stats.invalidations)),
        ("Errors:", str(stats.errors)),
        ("Total ops:", str(stats.total_operations)),
        ("Uptime:", _duration(stats.uptime_seconds)),
    ]
    return "\n".join(f"{label:<15}{value}" for label, value in lines)


def _write_stats(stats: CacheStats, fmt: str, sink: Sink, first: bool, watching: bool) -> None:
    if fmt == "json":
        sink.write(to_json(stats.to_dict(), compact=watching))
    elif fmt == "csv":
        data = stats.to_dict()
        sink.write(to_csv(_STATS_CSV, [[data[name] for name in _STATS_CSV]], with_header=first))
    else:
        sink.write(_stats_lines(stats))
        if stats.functions:
            sink.write("\nFunctions:")
            rows = [
                (
                    name,
                    f["hits"],
                    f["misses"],
                    f"{f['hit_rate']:.1%}",
                    f"{f['mean_hit_ms']:.3f}",
                    f"{f['mean_miss_ms']:.3f}",
                    f"{f['time_saved_ms']:.1f}",
                )
                for name, f in stats.functions.items()
            ]
            columns = ("FUNCTION", "HITS", "MISSES", "HIT RATE", "HIT MS", "MISS MS", "SAVED MS")
            table(columns, rows, sink.stream)
        if watching:
            sink.write("")


@cli.command()
@_format_option("table", "json", "csv")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), help="Write to this file.")
@click.option("--watch", is_flag=True, help="Repeat every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1))
@pass_session
def stats(session: Session, fmt: str, output: str | None, watch: bool, interval: float) -> None:
    """Fleet-wide counters: what every process sharing this backend and prefix published."""
    cache = session.cache()
    sink = Sink(output)
    try:
        first = True
        while True:
            _write_stats(fleet_stats(cache), fmt, sink, first, watch)
            first = False
            if not watch:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass  # --watch ends with Ctrl-C
    finally:
        sink.close()
    if output:
        err(f"Wrote stats to {output}")


# --- keys --------------------------------------------------------------------------------------------
def _listing(
    cache: YokedCache, pattern: str, tags: list[str], limit: int
) -> list[tuple[str, dict[str, Any]]]:
    keys = sorted(cache.get_keys_by_pattern_sync(pattern, limit=_SCAN_ALL if tags else limit))
    wanted = set(tags)
    found: list[tuple[str, dict[str, Any]]] = []
    for key in keys:
        meta = cache.get_meta_sync(key)
        if meta is None or (wanted and not wanted & set(meta["tags"])):
            continue  # expired meanwhile, or not carrying any of the tags
        found.append((key, meta))
        if len(found) >= limit:
            break
    return found


@cli.command("list")
@click.option("--pattern", default="*", show_default=True, help="Glob over keys (without the prefix).")
@click.option("--tags", help="Only keys carrying any of these comma-separated tags.")
@click.option("--include-values", is_flag=True, help="Also show the values.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@_format_option("table", "json", "csv")
@pass_session
def list_keys(
    session: Session, pattern: str, tags: str | None, include_values: bool, limit: int, fmt: str
) -> None:
    """List live keys (without the prefix) with TTL, tags and size."""
    cache = session.cache()
    found = _listing(cache, pattern, _split_tags(tags), limit)
    values = cache.get_many_sync([key for key, _ in found]) if include_values and found else {}
    if fmt == "json":
        items = []
        for key, meta in found:
            item: dict[str, Any] = {
                "key": key,
                "ttl": meta["ttl"],
                "tags": meta["tags"],
                "size_bytes": meta["size_bytes"],
            }
            if include_values:
                item["value"] = display(values.get(key))
            items.append(item)
        click.echo(to_json(items))
        return
    columns = ["KEY", "TTL", "TAGS"] + (["VALUE"] if include_values else [])
    if fmt == "csv":
        header = ["key", "ttl", "tags", "size_bytes"] + (["value"] if include_values else [])
        rows = [
            [key, meta["ttl"], ";".join(meta["tags"]), meta["size_bytes"]]
            + ([cell(values.get(key))] if include_values else [])
            for key, meta in found
        ]
        click.echo(to_csv(header, rows), nl=False)
        return
    table_rows = [
        [key, _ttl_text(meta["ttl"]), ",".join(meta["tags"]) or "-"]
        + ([cell(values.get(key))] if include_values else [])
        for key, meta in found
    ]
    table(columns, table_rows, sys.stdout)
    err(f"{len(found)} key(s)")


@cli.command()
@click.argument("key")
@_format_option("json", "table")
@pass_session
def get(session: Session, key: str, fmt: str) -> None:
    """Print the value stored under KEY (exit 1 if there is none)."""
    cache = session.cache()
    value = cache.get_sync(key, MISSING)
    if value is MISSING:
        fail(EXIT_ERROR, f"error: key not found: {key!r} (prefix {cache.config.key_prefix!r})")
    shown = display(value)
    if fmt == "table" and isinstance(shown, str):
        click.echo(shown)
    else:
        click.echo(to_json(shown))


@cli.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--ttl", type=click.IntRange(min=0), help="Seconds to live (default: default_ttl; 0 deletes).")
@click.option("--tags", help="Comma-separated tags.")
@click.option("--string", "as_string", is_flag=True, help="Store VALUE as a string, never parsed as JSON.")
@pass_session
def set_value(
    session: Session, key: str, value: str, ttl: int | None, tags: str | None, as_string: bool
) -> None:
    """Store VALUE under KEY (parsed as JSON unless it is not valid JSON or --string is given)."""
    parsed: Any = value
    if not as_string:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
    cache = session.cache()
    if not cache.set_sync(key, parsed, ttl=ttl, tags=_split_tags(tags) or None):
        fail(EXIT_ERROR, f"error: could not store {key!r}")
    err(f"Stored {key!r}")


@cli.command()
@click.argument("keys", nargs=-1, required=True)
@pass_session
def delete(session: Session, keys: tuple[str, ...]) -> None:
    """Delete KEYS; prints how many live entries were removed."""
    click.echo(session.cache().delete_many_sync(list(keys)))


@cli.command()
@click.option("--tags", help="Comma-separated tags to invalidate (O(1) per tag).")
@click.option("--pattern", help="Glob: delete the keys matching it.")
@pass_session
def invalidate(session: Session, tags: str | None, pattern: str | None) -> None:
    """Invalidate tags and/or delete keys matching a pattern."""
    tag_list = _split_tags(tags)
    if not tag_list and not pattern:
        raise click.UsageError("give --tags and/or --pattern")
    cache = session.cache()
    count = 0
    if tag_list:
        count += cache.invalidate_tags_sync(tag_list)
    if pattern:
        count += cache.invalidate_pattern_sync(pattern)
    click.echo(f"Invalidated {count}")


# --- flush -------------------------------------------------------------------------------------------
def _flush_targets(
    cache: YokedCache, tags: list[str], pattern: str | None, key: str | None, everything: bool
) -> list[str]:
    if key is not None:
        return [key] if cache.exists_sync(key) else []
    if everything:
        return sorted(cache.get_all_keys_sync(limit=_SCAN_ALL))
    if pattern is not None:
        return sorted(cache.get_keys_by_pattern_sync(pattern, limit=_SCAN_ALL))
    return [k for k, _ in _listing(cache, "*", tags, _SCAN_ALL)]


@cli.command()
@click.option("--tags", help="Remove the entries carrying any of these comma-separated tags.")
@click.option("--pattern", help="Remove the entries whose key matches this glob.")
@click.option("--key", help="Remove this one entry.")
@click.option("--all", "everything", is_flag=True, help="Remove everything under the key prefix.")
@click.option("--confirm", is_flag=True, help="Ask before removing (the default).")
@click.option("--force", is_flag=True, help="Do not ask.")
@pass_session
def flush(
    session: Session,
    tags: str | None,
    pattern: str | None,
    key: str | None,
    everything: bool,
    confirm: bool,
    force: bool,
) -> None:
    """Remove entries under the key prefix (never anything outside it)."""
    tag_list = _split_tags(tags)
    chosen = [
        name
        for name, given in (
            ("--tags", tag_list),
            ("--pattern", pattern),
            ("--key", key),
            ("--all", everything),
        )
        if given
    ]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --tags, --pattern, --key or --all")
    if confirm and force:
        raise click.UsageError("--confirm and --force contradict each other")
    cache = session.cache()
    targets = _flush_targets(cache, tag_list, pattern, key, everything)
    if not force:
        prefix = cache.config.key_prefix
        err(f"{len(targets)} key(s) under prefix {prefix!r} will be removed:")
        for name in targets[:_PREVIEW]:
            err(f"  {name}")
        if len(targets) > _PREVIEW:
            err(f"  ... and {len(targets) - _PREVIEW} more")
        try:
            proceed = click.confirm("Proceed?", default=False, err=True)
        except click.Abort:
            proceed = False
        if not proceed:
            fail(EXIT_ERROR, "Aborted")
    if everything:
        cache.flush_all_sync()
        removed = len(targets)
    elif pattern is not None:
        removed = cache.invalidate_pattern_sync(pattern)
    elif key is not None:
        removed = int(cache.delete_sync(key))
    else:  # tags: list again, so entries tagged since the preview go too
        removed = cache.delete_many_sync([k for k, _ in _listing(cache, "*", tag_list, _SCAN_ALL)])
    click.echo(f"Flushed {removed}")


# --- warm --------------------------------------------------------------------------------------------
def _load_entries(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        fail(EXIT_USAGE, f"error: {path} is not valid YAML/JSON: {exc}")
    entries = data.get("entries") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        fail(EXIT_USAGE, f"error: {path} needs an 'entries:' list of {{key, value, ttl?, tags?}} mappings")
    return entries


@cli.command()
@click.option(
    "--config-file",
    "warm_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or JSON file with an 'entries:' list of {key, value, ttl?, tags?}.",
)
@click.option("--verbose", is_flag=True, help="Report every entry.")
@pass_session
def warm(session: Session, warm_file: str, verbose: bool) -> None:
    """Store the entries of a warming file; exit 1 if any could not be stored."""
    from rich.console import Console
    from rich.progress import Progress

    from .. import warm_cache_sync

    entries = _load_entries(warm_file)
    cache = session.cache()
    stored = 0
    problems: list[str] = []
    with Progress(console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("Warming", total=len(entries))
        for index, entry in enumerate(entries):
            name = entry.get("key") if isinstance(entry, Mapping) else None
            try:
                done = warm_cache_sync(cache, [entry])
            except (ValueError, TypeError) as exc:  # malformed entry (CacheKeyError is a ValueError)
                done = 0
                problems.append(f"entry {index} ({name!r}): {exc}")
            else:
                if not done:
                    problems.append(f"entry {index} ({name!r}): not stored")
            stored += done
            if verbose:
                progress.console.print(f"{'stored' if done else 'FAILED'} {name!r}", markup=False)
            progress.advance(task)
    click.echo(f"Stored {stored} of {len(entries)} entries")
    if problems:
        for problem in problems[:_PREVIEW]:
            err(f"  {problem}")
        fail(EXIT_ERROR, f"error: {len(problems)} of {len(entries)} entries failed")


# --- search ------------------------------------------------------------------------------------------
@cli.command()
@click.argument("query")
@click.option("--threshold", type=click.IntRange(0, 100), help="Minimum score (default: fuzzy_threshold).")
@click.option("--max-results", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--tags", help="Only entries carrying any of these comma-separated tags.")
@_format_option("table", "json", "csv")
@pass_session
def search(
    session: Session, query: str, threshold: int | None, max_results: int, tags: str | None, fmt: str
) -> None:
    """Fuzzy search over keys (needs enable_fuzzy and the 'fuzzy' extra)."""
    cache = session.cache()
    if not cache.config.enable_fuzzy:
        fail(
            EXIT_ERROR,
            "error: fuzzy search is disabled: set enable_fuzzy: true in --config-file "
            "or YOKEDCACHE_ENABLE_FUZZY=true",
        )
    results = cache.fuzzy_search_sync(query, threshold, max_results, _split_tags(tags) or None)
    if fmt == "json":
        click.echo(to_json([{"key": r.key, "score": r.score, "value": display(r.value)} for r in results]))
    elif fmt == "csv":
        rows: Iterable[list[Any]] = ([r.key, r.score, cell(r.value)] for r in results)
        click.echo(to_csv(("key", "score", "value"), rows), nl=False)
    else:
        table(
            ("KEY", "SCORE", "VALUE"),
            ([r.key, r.score, cell(r.value)] for r in results),
            sys.stdout,
        )
        err(f"{len(results)} result(s)")


# --- export-config -----------------------------------------------------------------------------------
@cli.command("export-config")
@_format_option("yaml", "json")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), help="Write to this file.")
@pass_session
def export_config(session: Session, fmt: str, output: str | None) -> None:
    """Print the effective configuration, secrets redacted."""
    config = session.config
    text = config.to_yaml(redact=True) if fmt == "yaml" else to_json(config.to_dict(redact=True))
    sink = Sink(output)
    try:
        sink.write(text)
    finally:
        sink.close()
    if output:
        err(f"Wrote configuration to {output}")
