"""Claims (issue 26): `convirt serve` over a 100,000-item index answers a text query at one client within 1.5x the
in-process search service's time (the same queries through Searcher, in the same run), with 0 errors, RSS growing
under 5% from warm-up to 10,000 requests, and far more queries/s than clip-retrieval's ~20/s on 2 cores (the figure
the issue quotes). ONE JSON line.

    python benchmarks/serve_bench.py [--preset convirt-resnet18-minilm] [--items 100000] [--seconds 15]

The server listens on 127.0.0.1 only (a free port), is a subprocess (`python -m convirt_cli serve`, torch-free) and
is stopped with SIGTERM at the end. Every phase stops at its request budget or after --seconds, whichever comes
first, so the whole run is bounded. The index holds random unit vectors stamped with the export's fingerprint (the
scan costs what a real one costs); its items point at the real covid-cxr PNGs in turn, so thumbnails are real
renders (447 distinct files: after the first pass the server's render cache answers). Clients are threads of this
process, each with one keep-alive connection, as a script with a session would call; they share the 2 cores with
the server, as a browser on the same machine would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # serving.start: the server as the tests start it
COVID = ROOT.parent / "shared" / "data" / "covid-cxr"
if not COVID.is_dir():
    COVID = Path("/work/shared/data/covid-cxr")

QUERIES = ["moderate left pleural effusion", "bilateral ground glass opacities", "right lower lobe consolidation",
           "no acute cardiopulmonary process", "cardiomegaly with pulmonary edema", "pneumothorax on the right",
           "patchy opacities in both lungs", "endotracheal tube and central line in place", "small effusion",
           "multifocal pneumonia", "clear lungs, normal heart size", "peripheral airspace disease",
           "lobar collapse of the left lower lobe", "interstitial markings increased", "hilar lymphadenopathy",
           "diffuse reticular pattern"]

Request = tuple[str, str, bytes | None, dict]  # method, path, body, headers


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def pct(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2) if s else float("nan")


def phase(port: int, request: Callable[[int], Request], clients: int, budget: int, seconds: float) -> dict:
    """`clients` threads call request(i) for i = 0, 1, ... until `budget` requests or `seconds` have passed."""
    lock, counter, lat, errors = threading.Lock(), iter(range(budget)), [], []
    deadline = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            method, path, body, headers = request(i)
            t = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                ok, r = False, e
            ms = (time.perf_counter() - t) * 1e3
            with lock:
                lat.append(ms) if ok else errors.append(str(getattr(r, "status", r))[:80])
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat) + len(errors), "errors": len(errors),
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "per_s": round((len(lat) + len(errors)) / wall, 1),
            **({"first_errors": sorted(set(errors))[:3]} if errors else {})}


def requests(n: int, images: list[bytes]) -> dict[str, Callable[[int], Request]]:
    def text(i: int) -> Request:
        return "GET", "/api/search?" + urlencode({"q": QUERIES[i % len(QUERIES)], "k": 10}), None, {}

    def upload(i: int) -> Request:
        return "POST", "/api/search?k=10", images[i % len(images)], {"Content-Type": "image/png"}

    def thumbnail(i: int) -> Request:
        return "GET", f"/api/items/{(i * 7919) % n}/thumbnail", None, {}

    def mixed(i: int) -> Request:  # the soak: mostly thumbnails, as a page of results loads them
        return upload(i) if i % 50 == 0 else text(i) if i % 10 == 0 else thumbnail(i)

    return {"text": text, "upload": upload, "thumbnail": thumbnail, "mixed": mixed}


def in_process(index: Path, export: Path, images: list[bytes], rounds: int) -> dict:
    """The same queries through the library's search service in this process, one at a time (k=11: the server
    asks one more than it shows, to say whether there is a next page)."""
    from convirt_cli.torchfree.serve.searcher import Query, Searcher

    s = Searcher({"bench": index}, export, backend="onnx", device="cpu")
    out = {}
    for name, queries in (("text", [Query(text=q) for q in QUERIES]),
                          ("upload", [Query(image=b, name="upload") for b in images[:16]])):
        s.search(queries[0], k=11)  # warm
        ms = []
        for i in range(rounds):
            t = time.perf_counter()
            s.search(queries[i % len(queries)], k=11)
            ms.append((time.perf_counter() - t) * 1e3)
        out[name] = {"requests": rounds, "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99),
                     "per_s": round(1e3 / statistics.mean(ms), 1)}
    return out


def serve(index: Path, export: Path, tmp: Path, a) -> dict:
    from serving import start

    pngs = sorted((COVID / "images").glob("*.png"))
    images = [p.read_bytes() for p in pngs[:64]]
    make = requests(a.items, images)
    served = start([index, "--model", export], tmp / "serve.log")
    pid, out, total = served.proc.pid, {}, 0
    try:
        out["rss_start_mb"] = rss_mb(pid)
        warm = [phase(served.port, make["text"], 8, 100, a.seconds), phase(served.port, make["upload"], 8, 50, a.seconds),
                phase(served.port, make["thumbnail"], 32, len(pngs) * 2, a.seconds)]
        total += sum(w["requests"] for w in warm)
        out["rss_warm_mb"], out["warm_up_requests"] = rss_mb(pid), total
        for name, kind, clients, budget in (("text_1", "text", 1, 300), ("text_8", "text", 8, 600),
                                            ("text_32", "text", 32, 800), ("upload_8", "upload", 8, 200),
                                            ("thumbnail_32", "thumbnail", 32, 4000)):
            out[name] = phase(served.port, make[kind], clients, budget, a.seconds)
            total += out[name]["requests"]
        out["soak_8"] = phase(served.port, make["mixed"], 8, max(0, 10_000 - total), 4 * a.seconds)
        total += out["soak_8"]["requests"]
        out["requests_total"], out["rss_end_mb"] = total, rss_mb(pid)
    finally:
        code = served.stop(signal.SIGTERM)
    log = served.log_text()
    out["exit_code"], out["tracebacks_in_log"] = code, log.count("Traceback")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="convirt-resnet18-minilm")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=15, help="time cap of each phase (the soak: 4x)")
    p.add_argument("--rounds", type=int, default=100, help="in-process queries of each kind")
    a = p.parse_args()
    from retrieve_bench import exported, synthetic_index  # benchmarks/ is sys.path[0] when run as a script

    t0, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export, man = exported(a.preset, tmp)
        pngs = sorted(str(p) for p in (COVID / "images").glob("*.png"))
        index = synthetic_index(tmp / "index", export, man, [pngs[i % len(pngs)] for i in range(a.items)])
        local = in_process(index, export, [Path(x).read_bytes() for x in pngs[:64]], a.rounds)
        served = serve(index, export, tmp, a)
    errors = sum(v["errors"] for v in served.values() if isinstance(v, dict))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(json.dumps({
        "benchmark": "serve_bench", "preset": a.preset, "items": a.items, "dim": man["dim"],
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {cpu}", "date": time.strftime("%Y-%m-%d"),
        "load_avg_1min_start_end": [round(load, 1), round(os.getloadavg()[0], 1)],
        "in_process": local, "served": served,
        "goals": {"text_p50_1_client_over_in_process": round(served["text_1"]["p50_ms"] / local["text"]["p50_ms"], 2),
                  "errors": errors,
                  "rss_growth_after_warm_up_pct": round(100 * (served["rss_end_mb"] / served["rss_warm_mb"] - 1), 2),
                  "text_per_s_best_over_clip_retrieval_20": round(max(served[f"text_{c}"]["per_s"]
                                                                      for c in (1, 8, 32)) / 20, 2)},
        "wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
