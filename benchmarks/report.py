"""Render ``docs/benchmarks.md`` and its chart from the JSON results in ``benchmarks/results/``.

    python benchmarks/report.py

Every figure in the page comes from a results file, with the date and machine it was measured on.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "assets" / "benchmark-ratios.svg"

INTRO = """# Performance

Every number on this page was measured by the scripts in `benchmarks/` and written here by
`benchmarks/report.py`; nothing is typed in by hand. Contenders run in alternating rounds in one
process (so a busy neighbour slows all of them alike) and each figure is the median round. A ratio is
yokedcache's throughput divided by the reference's: above 1, yokedcache is faster.

The machine is a shared virtual one. Alternating rounds cancel a neighbour's steady load, not its bursts:
ratios of the Redis scenarios, where a hit is a fraction of a millisecond, move by several hundredths
between back-to-back runs of the same code, and absolute times by much more from one hour to the next.
Read a ratio a few hundredths from its target as "at the target".

Re-run them with `make bench` (Redis on `127.0.0.1:6379` and PostgreSQL on `127.0.0.1:5432` for the
database benchmarks).

![Throughput ratios against each scenario's reference](assets/benchmark-ratios.svg)
"""

TITLES = {
    "core": "Core engine (`benchmarks/bench_core.py`)",
    "decorators": "`@cached` (`benchmarks/bench_decorators.py`)",
    "keys": "Key building (`benchmarks/bench_keys.py`)",
    "sqlalchemy": "SQLAlchemy query caching (`benchmarks/bench_sqlalchemy.py`)",
    "metrics": "Metrics overhead (`benchmarks/bench_metrics.py`)",
    "consistency": "Consistency stress (`benchmarks/consistency_stress.py`)",
}


def load() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]


def verdict(item: dict[str, Any]) -> str:
    if "pass" in item:
        return "✅" if item["pass"] else "❌"
    target = item.get("target")
    if target is None:
        return ""
    return "✅" if item.get("ratio", 0) >= target else "❌"


def render_result(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"## {TITLES.get(result['benchmark'], result['benchmark'])}",
        "",
        f"Measured {result['date']} on {machine['cpu']} ({machine['cores']} cores), "
        f"Python {machine['python']}, Redis {machine.get('redis') or 'n/a'}.",
        "",
        "| scenario | median per operation | ratio | target | |",
        "|---|---|---|---|---|",
    ]
    for item in result["scenarios"]:
        if "median_us" in item:
            figures = "<br>".join(f"{name}: {value:,.2f} µs" for name, value in item["median_us"].items())
        elif "median_ms" in item:
            figures = "<br>".join(f"{name}: {value:,.3f} ms" for name, value in item["median_ms"].items())
        else:
            figures = "<br>".join(f"{k}: {v}" for k, v in item.get("figures", {}).items())
        target = item.get("target")
        target_text = "" if target is None else f"≥ {target}"
        if item.get("target_text"):
            target_text = item["target_text"]
        extra = []
        for key in ("errors", "round_trips", "note"):
            if key in item:
                extra.append(f"{key.replace('_', ' ')}: {item[key]}")
        if extra:
            figures += "<br>" + "<br>".join(extra)
        lines.append(
            f"| {item['name']} | {figures} | {item.get('ratio', '')} | {target_text} | {verdict(item)} |"
        )
    return "\n".join(lines) + "\n"


def render_chart(results: list[dict[str, Any]]) -> str:
    bars = [
        (f"{r['benchmark']}: {item['name']}", float(item["ratio"]), item.get("target"))
        for r in results
        for item in r["scenarios"]
        if isinstance(item.get("ratio"), (int, float)) and item.get("target") is not None
    ]
    width, label_w, row_h = 760, 330, 24
    height = 40 + row_h * len(bars)
    scale_max = max([2.0] + [b[1] for b in bars]) * 1.05
    x = lambda v: label_w + (width - label_w - 20) * v / scale_max  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<text x="{label_w}" y="16">throughput ratio (yokedcache / reference); line = target</text>',
    ]
    for i, (label, value, target) in enumerate(bars):
        y = 28 + i * row_h
        colour = "#2e7d32" if target is None or value >= target else "#c62828"
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{html.escape(label)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{x(value) - label_w:.1f}" height="{row_h - 8}" '
            f'fill="{colour}"/>'
        )
        parts.append(f'<text x="{x(value) + 4:.1f}" y="{y + 14}">{value:.2f}</text>')
        if target is not None:
            parts.append(
                f'<line x1="{x(target):.1f}" x2="{x(target):.1f}" y1="{y}" y2="{y + row_h - 2}" '
                'stroke="#000" stroke-width="2"/>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    results = load()
    CHART.parent.mkdir(parents=True, exist_ok=True)
    CHART.write_text(render_chart(results))
    order = list(TITLES)
    results.sort(key=lambda r: order.index(r["benchmark"]) if r["benchmark"] in order else len(order))
    PAGE.write_text(INTRO + "\n" + "\n".join(render_result(r) for r in results))
    print(f"wrote {PAGE.relative_to(ROOT)} and {CHART.relative_to(ROOT)} from {len(results)} result files")


if __name__ == "__main__":
    main()
