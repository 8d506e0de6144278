"""Reading a folder of DICOMs before training (`convirt pretrain FOLDER`, `shard`, `finetune`): the header pass that
gives each file's metadata columns and its validation check. ONE JSON line.

    python benchmarks/dicom_folder_bench.py [--n 20000] [--repeats 3]

A synthetic MIMIC-CXR tree (p*/s*/x.dcm, two views a study, a report per study; 64 x 64 12-bit pixels: the header
pass never reads pixels) in a temporary folder. Compared in one run, alternating, files in the page cache:
- `before`: the path up to 2026-11-26: read_rows, a header read for the columns, validate_rows reading each header
  again, one process;
- `one_read`: read_rows + validate_rows, both from one header read, one process;
- `workers`: the same in os.cpu_count() processes, as the CLI runs it.
Each includes the folder walk, the report files and the split grouping.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_tree(root: Path, n: int) -> None:
    from test_dicom import write_dicom

    px = np.random.default_rng(0).integers(0, 4096, (64, 64))
    for i in range(n):
        study = root / f"p{i // 6:06d}" / f"s{i // 2:07d}"
        study.mkdir(parents=True, exist_ok=True)
        write_dicom(study / f"{i:07d}.dcm", px, bits=12, patient=f"P{i // 6}", window=(2048, 4096))
        if i % 2 == 0:
            study.with_suffix(".txt").write_text("FINDINGS: clear lungs.\nIMPRESSION: no acute process.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.validate import validate_rows
    from convirt_cli.torchfree.formats import dicom
    from convirt_cli.torchfree.processes import cpu_workers

    def before(root):
        rows = read_rows(root, text_col="text", metadata=False)
        for r in rows:
            r.columns |= dicom.columns(r.image)
        validate_rows(rows)  # reads each header again (check_row): image_check is unset

    def one_read(root, workers=1):
        validate_rows(read_rows(root, text_col="text", workers=workers))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "files"
        make_tree(root, a.n)
        one_read(root)  # warm the page cache
        times: dict[str, list[float]] = {"before": [], "one_read": [], "workers": []}
        for _ in range(a.repeats):
            for name, fn in (("before", before), ("one_read", one_read),
                             ("workers", lambda r: one_read(r, cpu_workers()))):
                t0 = time.perf_counter()
                fn(root)
                times[name].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) / a.n for k, v in times.items()}
    print(json.dumps({
        "bench": "dicom_folder", "files": a.n, "cpus": cpu_workers(), "machine": platform.processor() or platform.machine(),
        "ms_per_file": {k: round(v, 4) for k, v in ms.items()},
        "speedup_one_read": round(ms["before"] / ms["one_read"], 2),
        "speedup_workers": round(ms["before"] / ms["workers"], 2),
        "minutes_for_377k_files": {k: round(v * 377_000 / 6e4, 1) for k, v in ms.items()},
    }))


if __name__ == "__main__":
    main()
