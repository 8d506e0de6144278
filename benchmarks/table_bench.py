"""Reading a big table before training (`read_rows` + `validate_rows`): what a MIMIC-CXR-sized CSV costs before the
first step. ONE JSON line.

    python benchmarks/table_bench.py [--rows 200000] [--repeats 3]

A CSV of --rows rows naming the real PneumoniaMNIST PNGs by absolute path (repeated), in a temporary folder.
Compared in one run, alternating: image paths made absolute with Path.resolve() (the code up to 2026-11-26, which
walks every path component on disk) and with os.path.abspath (links kept), then the validation pass, the same
for both.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from convirt_cli.torchfree.data import readers
    from convirt_cli.torchfree.data.validate import validate_rows

    with (DATA / "manifest.csv").open() as f:
        src = list(csv.DictReader(f))
    absolute = readers.absolute
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "t.csv"
        with table.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(src[0]))
            w.writeheader()
            for i in range(a.rows):
                r = src[i % len(src)]
                w.writerow(r | {"image": str(DATA / r["image"])})
        times: dict[str, list[float]] = {"read_resolve": [], "read_abspath": [], "validate": []}
        for _ in range(a.repeats):
            for name, fn in (("read_resolve", lambda p: p.resolve()), ("read_abspath", absolute)):
                readers.absolute = fn
                t0 = time.perf_counter()
                rows = readers.read_rows(table, text_col=None)
                times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            validate_rows(rows, need_text=False)
            times["validate"].append(time.perf_counter() - t0)
        readers.absolute = absolute
    us = {k: 1e6 * statistics.median(v) / a.rows for k, v in times.items()}
    print(json.dumps({"bench": "table", "rows": a.rows, "machine": platform.processor() or platform.machine(),
                      "us_per_row": {k: round(v, 1) for k, v in us.items()},
                      "read_speedup": round(us["read_resolve"] / us["read_abspath"], 2),
                      "seconds_for_377k_rows": {k: round(v * 0.377, 1) for k, v in us.items()}}))


if __name__ == "__main__":
    main()
