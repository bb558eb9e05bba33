"""Run every benchmark (each in its own process, one after another) and rewrite docs/benchmarks.md.

    python benchmarks/run_all.py [name ...]

Needs Redis on 127.0.0.1:6379 and, for the SQLAlchemy and consistency runs, PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = [
    "bench_core",
    "bench_decorators",
    "bench_keys",
    "bench_metrics",
    "bench_sqlalchemy",
    "consistency_stress",
]


def main() -> int:
    chosen = sys.argv[1:] or BENCHMARKS
    failed = []
    for name in chosen:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"skipping {name}: {script} not found")
            continue
        print(f"=== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(name)
    subprocess.run([sys.executable, str(HERE / "report.py")], check=True)
    if failed:
        print("benchmarks that missed a target or failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
