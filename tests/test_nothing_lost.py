"""Nothing lost: a hostile pass over every command's --out, the readers and the output formats.

--out replaces only what convirt made (a folder marked with its kind), never an input; one writer at a time
(two real processes); every write error (ulimit -f, /dev/full, EROFS/EACCES/EIO at the rename) is one line naming
the file, with the previous state intact and no temporary file left; streams and special files (closed stdin and
stdout, FIFOs, /dev/null, <(...), invalid UTF-8, newlines in names); tables and shards as they come; CSV safe to
open; messages that tell the truth."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import table_with_absolute_paths
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError, WriteError
from convirt_cli.torchfree.outputs import MARKER, check_file, locked, write_file
from convirt_cli.torchfree.serve.index import merge_indexes, open_index, write_index

PY = [sys.executable, "-m", "convirt_cli"]


def invoke(*args, input: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def one_line(r) -> str:
    """The one-line error of a CliRunner result (ConvirtError), or fail."""
    assert r.exit_code != 0 and isinstance(r.exception, ConvirtError), (r.output, repr(r.exception))
    assert "\n" not in str(r.exception)
    return str(r.exception)


def run(*args, timeout: float = 120, limit: int | None = None, **kw) -> subprocess.CompletedProcess:
    """`convirt ARGS` in a real process; `limit`: RLIMIT_FSIZE (`ulimit -f`) in bytes."""
    pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))) if limit else kw.pop("preexec_fn", None)
    return subprocess.run([*PY, *map(str, args)], check=False, stdout=kw.pop("stdout", subprocess.PIPE),
                          stderr=subprocess.PIPE,
                          text=True, timeout=timeout, preexec_fn=pre, **kw)


def last_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    return p.stderr.strip().splitlines()[-1]


@contextmanager
def file_size_limit(nbytes: int):
    """`ulimit -f` in this process for a moment (Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def fake_index(path: Path, n: int = 4, dim: int = 8, paths: list[str] | None = None) -> Path:
    """An index of n random unit rows (no model needed), written as embed writes one."""
    x = np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = [{"id": i, "path": (paths or [f"/img/{i}.png" for i in range(n)])[i], "source": f"t.csv:{i + 2}"}
             for i in range(n)]
    write_index(path, x, items, {"fingerprint": "f" * 16, "kind": "image", "dim": dim, "next_id": n})
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a writer left: .NAME.xxxx, .tmp-*, locks."""
    return sorted(p.name for p in Path(folder).rglob(".*") if p.name != MARKER)


@pytest.fixture(scope="module")
def data(covid_csv, tmp_path_factory) -> SimpleNamespace:
    """A 16-row covid-cxr table (absolute paths), a folder of 4 of its images, a tiny index of them."""
    tmp = tmp_path_factory.mktemp("lost")
    table = table_with_absolute_paths(covid_csv, tmp / "t.csv", limit=16)
    imgs = tmp / "imgs"
    imgs.mkdir()
    for p in sorted((covid_csv.parent / "images").glob("*.png"))[:4]:
        shutil.copy(p, imgs / p.name)
    return SimpleNamespace(tmp=tmp, table=table, imgs=imgs)


@pytest.fixture(scope="module")
def index(data, tiny_export) -> Path:
    out = data.tmp / "index"
    r = invoke("embed", data.imgs, "--model", tiny_export, "--out", out, "--runs-dir", data.tmp / "runs")
    assert r.exit_code == 0, r.output
    return out


def precious(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "precious.txt").write_text("x\n")
    return folder


# ---------------------------------------------------------------- what --out may replace

@pytest.mark.parametrize("command", ["embed", "export", "index merge", "shard", "pretrain", "finetune"])
def test_every_folder_out_refuses_a_folder_it_did_not_make(command, data, tiny_run, tiny_export, index, tmp_path):
    u = precious(tmp_path / "u")
    args = {"embed": ["embed", data.imgs, "--model", tiny_export],
            "export": ["export", tiny_run],
            "index merge": ["index", "merge", index],
            "shard": ["shard", data.table, "--text-col", "report"],
            "pretrain": ["pretrain", data.table, "--text-col", "report", "--runs-dir", tmp_path / "runs"],
            "finetune": ["finetune", data.table, "--label", "sex", "--runs-dir", tmp_path / "runs"]}[command]
    line = one_line(invoke(*args, "--out", u))
    assert line.startswith(f"--out {u}: exists and is not a convirt ") and "choose a new folder or remove it" in line
    assert sorted(p.name for p in u.iterdir()) == ["precious.txt"] and not leftovers(tmp_path)


def test_embed_out_onto_its_own_input_is_refused_and_the_images_stay(data, tiny_export, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(data.imgs, imgs)
    before = sorted(p.name for p in imgs.iterdir())
    assert "is the input" in one_line(invoke("embed", imgs, "--model", tiny_export, "--out", imgs))
    assert "lies inside the input" in one_line(invoke("embed", imgs, "--model", tiny_export, "--out", imgs / "idx"))
    assert "holds the input" in one_line(invoke("embed", imgs / before[0], "--model", tiny_export, "--out", imgs))
    assert sorted(p.name for p in imgs.iterdir()) == before


def test_merge_out_onto_a_part_is_refused(tmp_path):
    a, b = fake_index(tmp_path / "a"), fake_index(tmp_path / "b")
    before = (a / "items.jsonl").read_bytes()
    with pytest.raises(ConvirtError, match=r"--out .*/a: is the input"):
        merge_indexes([a, b], a)
    assert (a / "items.jsonl").read_bytes() == before


def test_an_index_of_its_own_kind_or_an_empty_folder_is_replaced_another_kind_is_not(tmp_path):
    (tmp_path / "empty").mkdir()
    fake_index(tmp_path / "empty", n=3)
    assert open_index(tmp_path / "empty").count == 3 and (tmp_path / "empty" / MARKER).is_file()
    fake_index(tmp_path / "empty", n=5)  # an index over an index: replaced whole
    assert open_index(tmp_path / "empty").count == 5
    legacy = tmp_path / "legacy"  # made before markers: recognised by its index.json
    fake_index(legacy)
    (legacy / MARKER).unlink()
    fake_index(legacy, n=2)
    assert open_index(legacy).count == 2
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / MARKER).write_text('{"kind": "export"}\n')
    with pytest.raises(ConvirtError, match=r"exists and is not a convirt index \(it is a convirt export\)"):
        fake_index(tmp_path / "exp")


def test_a_folder_out_that_is_a_link_writes_the_target_and_keeps_the_link(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    fake_index(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and open_index(tmp_path / "target").count == 4


def device(tmp_path: Path, name: str) -> Path:
    """A link to /dev/<name>: the code follows it to the device, while a regression that replaced the path would
    replace only the link, never the machine's /dev/null (tests run as root)."""
    (tmp_path / name).symlink_to(f"/dev/{name}")
    return tmp_path / name


@pytest.mark.parametrize("special", ["device", "file", "fifo"])
def test_a_folder_out_that_is_a_file_device_or_fifo_is_refused(special, tmp_path):
    path = device(tmp_path, "null") if special == "device" else tmp_path / special
    if special == "file":
        path.write_text("x")
    elif special == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConvirtError, match=r"exists and is (a file|a device|a named pipe), not a convirt index"):
        fake_index(path)
    assert {"device": stat.S_ISCHR, "fifo": stat.S_ISFIFO, "file": stat.S_ISREG}[special](os.stat(path).st_mode)
    assert special != "device" or path.is_symlink()


@pytest.mark.parametrize("command", ["evaluate retrieval", "classify"])
def test_report_out_onto_the_data_or_a_folder_is_refused_before_the_work(command, data, tmp_path):
    before = data.table.read_bytes()
    args = [*command.split(), data.table, "--label-col", "sex", "--model", "nowhere"]
    assert "is the input" in one_line(invoke(*args, "--out", data.table))
    assert "is a folder; name a file" in one_line(invoke(*args, "--out", tmp_path))
    assert data.table.read_bytes() == before


def test_file_outputs_follow_links_stream_to_devices_and_fifos_and_refuse_folders_and_inputs(tmp_path):
    (tmp_path / "real.html").write_text("old")
    (tmp_path / "link.html").symlink_to(tmp_path / "real.html")
    write_file(tmp_path / "link.html", "new")
    assert (tmp_path / "link.html").is_symlink() and (tmp_path / "real.html").read_text() == "new"
    write_file(device(tmp_path, "null"), "x" * 100)  # written as a stream
    assert (tmp_path / "null").is_symlink() and stat.S_ISCHR(os.stat(tmp_path / "null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_file(fifo, "through the pipe\n")
    reader.join(10)
    assert got == ["through the pipe\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(ConvirtError, match="is a folder; name a file"):
        write_file(tmp_path, "x")
    with pytest.raises(ConvirtError, match="is the input"):
        check_file(tmp_path / "real.html", inputs=[tmp_path / "real.html"])


# ---------------------------------------------------------------- one writer at a time

HOLD = "import sys, time\nfrom convirt_cli.torchfree.outputs import locked\nwith locked(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(60)\n"


@contextmanager
def held_by_another_process(folder: Path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_second_writer_stops_naming_the_holder_and_the_lock_dies_with_kill_9(tmp_path):
    idx = tmp_path / "idx"
    fake_index(idx)
    with held_by_another_process(idx) as holder:
        with pytest.raises(ConvirtError, match=rf"--out {idx}: another convirt \(pid {holder.pid}\) is writing it; "
                                               "wait for it to finish or pass --wait"):
            fake_index(idx, n=2)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fake_index(idx, n=2)  # the kernel dropped the lock with the process
    assert open_index(idx).count == 2 and not leftovers(tmp_path)


def test_pretrain_into_a_run_another_process_writes_stops_with_its_pid(data, tmp_path):
    run_dir = tmp_path / "r"
    with held_by_another_process(run_dir) as holder:
        line = one_line(invoke("pretrain", data.table, "--text-col", "report", "--out", run_dir, "--max-steps", "1",
                               "--runs-dir", tmp_path / "runs", "--device", "cpu"))
    assert f"(pid {holder.pid}) is writing it" in line and not run_dir.exists()


def _waiting(pids: list[int]) -> bool:
    """Are these processes blocked on a flock (a '->' line of /proc/locks)?"""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    waiting = {int(line.split()[5]) for line in lines if "->" in line and "FLOCK" in line}
    return set(pids) <= waiting


def test_two_appends_at_once_keep_both_rows(index, data, tiny_export, tmp_path):
    """Two real `convirt embed --append --wait` into one index at once: both rows kept (before the lock, both
    reported success and one's rows were gone)."""
    idx = tmp_path / "idx"
    shutil.copytree(index, idx)
    lists = []
    for i, img in enumerate(sorted(data.imgs.iterdir())[:2]):
        lists.append(tmp_path / f"more{i}.txt")
        lists[-1].write_text(f"{img}\n")
    with locked(idx):  # both start while this process writes, then race for the folder
        procs = [subprocess.Popen([*PY, "embed", str(f), "--model", str(tiny_export), "--out", str(idx), "--append",
                                   "--wait", "--runs-dir", str(tmp_path / "runs")], stderr=subprocess.PIPE, text=True)
                 for f in lists]
        deadline = time.time() + 60
        while not _waiting([p.pid for p in procs]) and time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    got = open_index(idx)
    assert got.count == 6 and sorted(it["id"] for it in got.items) == [0, 1, 2, 3, 4, 5]
    assert {Path(it["path"]).name for it in got.items[4:]} == {Path(f.read_text().strip()).name for f in lists}


# ---------------------------------------------------------------- write errors: one line, nothing lost

def test_a_file_over_ulimit_f_is_one_line_and_the_old_file_stays(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old\n")
    with file_size_limit(1000), pytest.raises(WriteError) as e:
        write_file(out, "x" * 5000)
    assert str(e.value) == f"cannot write {out}: file too large (over the size limit of this shell, `ulimit -f`, or " \
                           "of the file system)"
    assert out.read_text() == "old\n" and not leftovers(tmp_path)


def test_dev_full_is_one_line(tmp_path):
    with pytest.raises(WriteError, match=f"cannot write {tmp_path}/full: no space left on the device"):
        write_file(device(tmp_path, "full"), "x" * 10)
    assert (tmp_path / "full").is_symlink()


@pytest.mark.parametrize(("err", "words"), [(errno.EROFS, "read-only file system"),
                                            (errno.EACCES, "permission denied"),
                                            (errno.EIO, "input/output error"),
                                            (errno.ENOSPC, "no space left on the device")])
def test_rename_errors_leave_the_old_index_and_no_temp_files(err, words, tmp_path, monkeypatch):
    """Root ignores file modes, so EROFS / EACCES / EIO are raised at the one seam every write ends in."""
    fake_index(tmp_path / "idx", n=3)
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    real_replace = os.replace

    def failing(src, dst, *a, **k):
        if Path(dst).name == "index.json":
            raise OSError(err, os.strerror(err), str(src))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(WriteError) as e:
        fake_index(tmp_path / "idx", n=5)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'idx' / 'index.json'}: {words}")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert not leftovers(tmp_path)


def test_a_failed_swap_puts_the_old_index_back(tmp_path, monkeypatch):
    fake_index(tmp_path / "idx", n=3)
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    real_replace = os.replace

    def failing(src, dst, *a, **k):
        if Path(dst) == tmp_path / "idx" and Path(src).name.startswith(".idx.") and Path(src).name != ".idx.old":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(WriteError, match=rf"cannot write {tmp_path / 'idx'}: input/output error"):
        fake_index(tmp_path / "idx", n=5)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before and not leftovers(tmp_path)


def test_embed_on_a_full_disk_is_one_line_and_keeps_the_index(index, data, tiny_export, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(index, idx)
    before = {p.name: p.read_bytes() for p in idx.iterdir()}
    limit = (idx / "embeddings.npy").stat().st_size - 64  # a new embeddings.npy (of the same images) is cut
    for extra in ([], ["--append"]):
        p = run("embed", data.imgs, "--model", tiny_export, "--out", idx, "--runs-dir", tmp_path / "runs", *extra,
                limit=limit)
        assert p.returncode == 1 and last_line(p).startswith(
            f"error: cannot write {idx}/embeddings.npy: file too large"), p.stderr
        assert {q.name: q.read_bytes() for q in idx.iterdir()} == before and not leftovers(tmp_path)


def test_export_on_a_full_disk_is_one_line_and_keeps_the_old_export(tiny_run, tiny_export, tmp_path):
    from convirt_cli.torch.export import export_onnx

    out = tmp_path / "onnx"
    shutil.copytree(tiny_export, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with file_size_limit(1 << 20), pytest.raises(WriteError, match=rf"cannot write {out}/\S+: file too large"):
        export_onnx(tiny_run, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not leftovers(tmp_path)


@pytest.mark.parametrize(("limit", "name"), [(20_000, "model.safetensors"), (300_000, "state.pt")])
def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_last_one_stays(limit, name, tmp_path):
    import torch

    from convirt_cli.torch.train.checkpoint import candidates, save_checkpoint

    model = torch.nn.Linear(100, 100)  # 40 kB of weights; the state below is 400 kB
    state = {"step": 1, "big": torch.zeros(100_000)}
    first = save_checkpoint(tmp_path, model, state)
    with file_size_limit(limit), pytest.raises(WriteError) as e:
        save_checkpoint(tmp_path, model, state | {"step": 2})
    assert str(e.value).startswith(f"cannot write {tmp_path}/checkpoints/step-0000002/{name}: file too large")
    assert candidates(tmp_path) == [first] and not leftovers(tmp_path / "checkpoints")


def test_pretrain_on_a_full_disk_stops_at_the_checkpoint_in_one_line(data, tmp_path):
    """tiny's towers (1.3 MB the largest file) fit under the limit; its checkpoint's state.pt (4.7 MB) does not.
    (The limit ends before loss.png would be drawn: the run stops at the checkpoint.)"""
    with file_size_limit(3 << 20):
        r = invoke("pretrain", data.table, "--text-col", "report", "--out", tmp_path / "r", "--max-steps", "2",
                   "--batch-size", "4", "--image-size", "32", "--val-fraction", "0",
                   "--runs-dir", tmp_path / "runs", "--device", "cpu")
    line = one_line(r)
    assert isinstance(r.exception, WriteError) and r.exception.exit_code == 1
    assert line.startswith(f"cannot write {tmp_path / 'r'}/checkpoints/step-") and "file too large" in line, line
    assert not leftovers(tmp_path / "r" / "checkpoints") if (tmp_path / "r").exists() else True


def test_retrieve_to_a_full_disk_or_a_full_stdout_is_one_line(index, tmp_path):
    out = tmp_path / "hits.jsonl"
    out.write_text("old\n")
    p = run("retrieve", "--index", index, "--query", "effusion", "--format", "jsonl", "--out", out, limit=200)
    assert p.returncode == 1 and last_line(p) == (
        f"error: cannot write {out}: file too large (over the size limit of this shell, `ulimit -f`, or of the file "
        "system)"), p.stderr
    assert out.read_text() == "old\n" and not leftovers(tmp_path)
    with open("/dev/full", "w") as full:
        p = run("retrieve", "--index", index, "--query", "effusion", "--format", "csv", stdout=full)
    assert p.returncode == 1 and last_line(p) == (
        "error: cannot write stdout: no space left on the device; free some or write elsewhere"), p.stderr


# ---------------------------------------------------------------- streams and special files

def test_closed_stdout_and_stdin_are_one_line(index):
    p = run("retrieve", "--index", index, "--query", "effusion", preexec_fn=lambda: os.close(1))
    assert p.returncode == 2 and last_line(p) == "error: stdout is closed; pass --out FILE or give the command a stdout"
    p = run("retrieve", "--index", index, "--queries", "-", preexec_fn=lambda: os.close(0))
    assert p.returncode == 2 and p.stderr.strip() == (
        "error: --queries -: stdin is closed; pipe the queries in or name a file"), p.stderr


def queries(**kw) -> SimpleNamespace:
    return SimpleNamespace(**({"query": [], "image": [], "like": [], "queries": None, "slices": "middle"} | kw))


def test_queries_from_dev_null_a_pipe_bad_utf8_and_blank_lines(tmp_path):
    from convirt_cli.cli.retrieve import read_queries
    from convirt_cli.torchfree.serve.searcher import Query

    with pytest.raises(ConvirtError, match=r"--queries /dev/null: no queries in it"):
        read_queries(queries(queries="/dev/null"))
    r, w = os.pipe()  # what bash's <(printf ...) hands over: /dev/fd/N, a pipe
    os.write(w, b"pleural effusion\n\nx.png\n")
    os.close(w)
    try:
        assert read_queries(queries(queries=f"/dev/fd/{r}")) == [Query(text="pleural effusion"), Query(image="x.png")]
    finally:
        os.close(r)
    (tmp_path / "q.txt").write_bytes(b"effusion\ncardiomegaly \xe9\n")
    with pytest.raises(ConvirtError, match=r"--queries .*q.txt:2: not UTF-8 \(byte 22\); save the file as UTF-8"):
        read_queries(queries(queries=str(tmp_path / "q.txt")))
    for blank in ("", "   "):
        with pytest.raises(ConvirtError, match="--query: an empty query"):
            read_queries(queries(query=[blank]))


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv", "paths", "html"])
def test_retrieve_out_is_honoured_in_every_format(fmt, index, tmp_path):
    out = tmp_path / f"hits.{fmt}"
    r = invoke("retrieve", "--index", index, "--query", "effusion", "-k", "2", "--format", fmt, "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and out.stat().st_size > 0
    text = out.read_text()
    assert {"table": "rank", "jsonl": '"rank": 1', "csv": "query,query_kind", "paths": ".png\n",
            "html": "<!doctype html>"}[fmt] in text
    assert "\x1b[" not in text  # no terminal colours in a file


def test_paths_with_a_newline_are_escaped_or_nul_separated():
    from convirt_cli.torchfree.serve import formats

    results = [{"query": {"text": "q"}, "hits": [
        {"rank": 1, "score": 0.5, "item": {"id": 0, "path": "/d/two\nlines.png"}},
        {"rank": 2, "score": 0.4, "item": {"id": 1, "path": "/d/plain.png"}}]}]
    assert formats.to_paths(results) == "/d/two\\nlines.png\n/d/plain.png\n"
    assert formats.paths_with_newlines(results) == 1
    assert formats.to_paths(results, null=True) == "/d/two\nlines.png\0/d/plain.png\0"


def test_fifos_named_as_images_or_table_rows_are_skipped_never_opened(data, tiny_export, tmp_path):
    from convirt_cli.torchfree.data.readers import Row, read_rows
    from convirt_cli.torchfree.data.validate import check_row

    folder = tmp_path / "f"
    shutil.copytree(data.imgs, folder)
    for name in ("stuck.png", "stuck.dcm", "IM0001"):
        os.mkfifo(folder / name)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'stuck.png'}\n{folder / 'stuck.dcm'}\n{next(data.imgs.glob('*.png'))}\n")
    p = run("embed", listing, "--model", tiny_export, "--out", tmp_path / "idx", "--runs-dir", tmp_path / "runs",
            timeout=60)
    assert p.returncode == 0, p.stderr
    skipped = json.loads((tmp_path / "idx" / "index.json").read_text())["skipped"]
    assert [s["reason"] for s in skipped] == ["ImageError: not a regular file (a named pipe)"] * 2, skipped
    assert check_row(Row(image=folder / "stuck.png", text="x", source="t:2"), True) == "not a regular file (a named pipe)"
    rows = read_rows(folder, text_col=None)  # the folder reader: the .dcm FIFO is a counted skip, IM0001 not read
    assert {r.image.name: r.image_check for r in rows if r.image_check} == {"stuck.dcm": "not a regular file (a named pipe)"}


# ---------------------------------------------------------------- tables and shards as they come

def test_a_row_wider_than_its_header_is_an_error_naming_it_in_data_and_join_tables(data, tmp_path):
    from convirt_cli.torchfree.data.readers import read_rows

    img = next(data.imgs.glob("*.png"))
    (tmp_path / "t.csv").write_text(f"image,text,label\n{img},clear lungs,0\n{img},small, left effusion,1\n")
    with pytest.raises(ConvirtError, match=r"t.csv:3: 4 cells but the header has 3 \(an unquoted comma in a cell\?\); "
                                           r"1 such row\(s\): 3\. Quote those cells or fix the rows"):
        read_rows(tmp_path / "t.csv")
    (tmp_path / "ok.csv").write_text(f"image,text\n{img},clear lungs\n")
    (tmp_path / "j.csv").write_text(f"image,label\n{img},0,extra\n")
    with pytest.raises(ConvirtError, match=r"j.csv:2: 3 cells but the header has 2"):
        read_rows(tmp_path / "ok.csv", join=[tmp_path / "j.csv"])


def test_items_lines_without_an_id_are_named(tmp_path):
    idx = tmp_path / "idx"
    fake_index(idx)
    lines = (idx / "items.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"path": "/img/2.png"})
    (idx / "items.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConvirtError, match=r"items.jsonl:3: damaged line \(no id, or neither path nor text\)"):
        list(open_index(idx).items)


def _shards(folder: Path) -> Path:
    import io
    import tarfile

    folder.mkdir()
    with tarfile.open(folder / "train-000000.tar", "w") as tar:
        for i in range(2):
            for ext, data in (("txt", b"clear lungs"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (folder / "shards.json").write_text(json.dumps({"format": "convirt-shards/1", "per_shard": 1000,
                                                    "splits": {"train": {"count": 2, "shards": ["train-000000.tar"]}}}))
    return folder


@pytest.mark.parametrize(("damage", "words"), [
    ("truncated", "train-000000.tar: cut short or damaged"),
    ("random", "train-000000.tar: cut short or damaged"),
    ("json", "shards.json: damaged"),
    ("splits", "shards.json: damaged (its splits are not {count, shards})"),
    ("unfinished", "shards without shards.json: an unfinished `convirt shard`")])
def test_damaged_shards_are_one_line_each(damage, words, tmp_path):
    from convirt_cli.torch.data.shards import open_shards

    folder = _shards(tmp_path / "s")
    tar, meta = folder / "train-000000.tar", folder / "shards.json"
    if damage == "truncated":
        tar.write_bytes(tar.read_bytes()[:1500])
    elif damage == "random":
        tar.write_bytes(np.random.default_rng(0).bytes(tar.stat().st_size))
    elif damage == "json":
        meta.write_text(meta.read_text()[:30])
    elif damage == "splits":
        meta.write_text(json.dumps({"splits": {"train": ["train-000000.tar"]}}))
    else:
        meta.unlink()
    assert open_shards(_shards(tmp_path / "good"))["train"].count == 2
    with pytest.raises(ConvirtError) as e:
        open_shards(folder)
    assert words in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- output safe to open; messages that tell the truth

def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised():
    from convirt_cli.torchfree.serve import formats

    texts = ["=HYPERLINK(\"http://x\")", "+1", "-2 cm nodule", "@SUM(A1)", "\tx", "\rx", "plain"]
    results = [{"query": {"text": "=cmd|' /C calc'!A0"}, "hits": [
        {"rank": i + 1, "score": -0.5, "item": {"id": i, "text": t, "source": "s"}} for i, t in enumerate(texts)]}]
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(formats.to_csv(results), newline="")))
    assert [r["text"] for r in rows] == ["'" + t for t in texts[:-1]] + ["plain"]
    assert rows[0]["query"].startswith("'=") and rows[0]["score"] == "-0.5"  # numbers stay numbers


def test_merging_indexes_of_different_inputs_says_so(tmp_path):
    a = fake_index(tmp_path / "a")
    b = fake_index(tmp_path / "b", paths=[f"/other/{i}.png" for i in range(4)])
    with pytest.raises(ConvirtError) as e:
        merge_indexes([a, b], tmp_path / "m")
    assert "embedded from different inputs" in str(e.value) and "twice" not in str(e.value)
    c = fake_index(tmp_path / "c")
    with pytest.raises(ConvirtError, match="the same inputs embedded twice"):
        merge_indexes([a, c], tmp_path / "m")


def test_a_collapsed_run_without_validation_is_not_said_to_be_at_chance():
    from convirt_cli.torch.train.guard import verdict

    stuck = [np.log(8)] * 30
    assert "validation retrieval is at chance" not in verdict(stuck, 8, None, None)["message"]
    assert "validation retrieval is at chance" in verdict(stuck, 8, None, {"val_i2t_r5": 0.1,
                                                                       "val_r5_chance": 0.1})["message"]


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height grey pixels (the pixel data is a token: only the size is read)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height", "mp"), [(11_000, 10_000, 110), (20_000, 20_000, 400)])
def test_an_image_over_100_megapixels_is_refused_by_its_header(width, height, mp, tmp_path):
    import warnings

    from convirt_cli.torchfree.formats import ImageError, check_image
    from convirt_cli.torchfree.imageio import load_gray

    path = _png_header(tmp_path / "huge.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would be an error here
        with pytest.raises(ImageError, match=f"{mp} MP"):
            check_image(path)  # the validation pass refuses it by its header too
        with pytest.raises(ImageError, match=rf"{mp} MP\) is over the 100 MP limit|^{mp} MP is over the 100 MP"):
            load_gray(path, 64)


def test_a_dicom_over_100_megapixels_is_refused_by_its_header(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    from convirt_cli.torchfree.formats import ImageError, check_image

    ds = pydicom.dcmread(write_dicom(tmp_path / "big.dcm", np.zeros((8, 8), np.uint8)))
    ds.Rows = ds.Columns = 20_000  # the header's claim; its pixel data stays 64 bytes
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    with pytest.raises(ImageError, match=r"20000 x 20000 pixels \(400 MP\) is over the 100 MP limit"):
        check_image(tmp_path / "big.dcm")


def test_a_read_only_run_still_gives_its_fingerprint(tmp_path, monkeypatch):
    from convirt_cli.torchfree.files import weights_fingerprint

    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "model.safetensors").write_bytes(b"weights")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)  # its cache cannot be written: hashed again next time
    assert len(weights_fingerprint(tmp_path)) == 16 and not leftovers(tmp_path)
