"""``make bench``: every benchmark, each printing its figures with a baseline measured in the same run.

A benchmark module is any ``benchmarks/<name>.py`` with a ``main() -> dict``. Results are also written
to ``.haven/bench-results.json`` so they can be compared across runs.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

ORDER = ("pipeline", "gateway", "eligibility", "router", "notifier")


def main() -> int:
    """Run the benchmarks named on the command line, or all of them."""
    wanted = sys.argv[1:] or [n for n in ORDER if (Path(__file__).parent / f"{n}.py").exists()]
    results: dict[str, object] = {}
    failed = False
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        try:
            results[name] = importlib.import_module(f"benchmarks.{name}").main()
        except Exception:
            traceback.print_exc()
            failed = True
        print(f"({name} took {time.perf_counter() - started:.0f} s)", flush=True)
    out = Path(".haven") / "bench-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
