"""The torch-free core, enforced: convirt_cli/torchfree never imports torch, transformers or timm, and the
serving commands run from an ONNX export in an interpreter where importing them fails."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import table_with_absolute_paths

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "convirt_cli"
HEAVY = ("torch", "transformers", "timm", "torchvision")
# the one bridge: choosing --backend torch loads the torch encoder inside a function
LAZY_BRIDGES = {("torchfree/serve/backends.py", "convirt_cli.torch.encode")}


def _imports(tree: ast.AST):
    """(module imported, at module level?) for every import in a file."""
    top = set(map(id, getattr(tree, "body", [])))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, id(node) in top


def test_torchfree_modules_import_nothing_heavy():
    bad = []
    for path in sorted((PKG / "torchfree").rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        for mod, _ in _imports(ast.parse(path.read_text())):
            heavy = mod.split(".")[0] in HEAVY or mod.startswith("convirt_cli.cli")
            torch_side = mod.split(".")[:2] == ["convirt_cli", "torch"] and (rel, mod) not in LAZY_BRIDGES
            if heavy or torch_side:
                bad.append(f"{rel}: {mod}")
    assert not bad, "torchfree/ must not import these:\n" + "\n".join(bad)


def cli_importers(pkg: Path) -> list[str]:
    """Modules outside cli/ that import from cli/ (the library never depends on the command line); __main__.py,
    the `python -m convirt_cli` entry, is the one module that must."""
    return [f"{p.relative_to(pkg)}: {m}" for p in sorted(pkg.rglob("*.py"))
            if p.relative_to(pkg).parts[0] != "cli" and p.name != "__main__.py"
            for m, _ in _imports(ast.parse(p.read_text())) if m == "convirt_cli.cli" or m.startswith("convirt_cli.cli.")]


def test_nothing_outside_the_cli_imports_the_cli(tmp_path):
    assert not cli_importers(PKG), "only cli/ may import cli/:\n" + "\n".join(cli_importers(PKG))
    # the check can fail: a library module that reaches into the CLI (even inside a function) is caught
    planted = tmp_path / "convirt_cli" / "torchfree" / "serve"
    planted.mkdir(parents=True)
    (planted / "bad.py").write_text("def f():\n    from convirt_cli.cli.progress import note\n")
    (tmp_path / "convirt_cli" / "__main__.py").write_text("from convirt_cli.cli.entry import run\n")
    assert cli_importers(tmp_path / "convirt_cli") == ["torchfree/serve/bad.py: convirt_cli.cli.progress"]


# flags a command handles itself before building its config (old spellings, a choice of columns)
HANDLED = {("embed", "num_shards"), ("embed", "shard_index"), ("finetune", "label"), ("build", "kind"),
           ("shard", "no_text")}


def dropped_flags(commands: Path) -> list[str]:
    """Parameters of a command function that its resolve()/layered() call does not pass on."""
    out = []
    for f in sorted(commands.glob("*.py")):
        for fn in [n for n in ast.parse(f.read_text()).body if isinstance(n, ast.FunctionDef)]:
            params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            for c in ast.walk(fn):
                name = getattr(c, "func", None) if isinstance(c, ast.Call) else None
                if getattr(name, "id", getattr(name, "attr", "")) in ("resolve", "layered"):
                    passed = {k.arg for k in c.keywords}
                    out += [f"{f.name}: {fn.name} --{p.replace('_', '-')}" for p in sorted(params - passed)
                            if (fn.name, p) not in HANDLED]
    return out


def test_every_flag_reaches_its_config(tmp_path):
    assert not dropped_flags(PKG / "cli" / "commands"), dropped_flags(PKG / "cli" / "commands")
    # the check can fail: pretrain once took --slices and never passed it on (a CI run caught it late)
    (tmp_path / "p.py").write_text("def pretrain(data=None, slices=None):\n    cfg = resolve(C, data=data)\n")
    assert dropped_flags(tmp_path) == ["p.py: pretrain --slices"]


BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError("blocked in this test: " + name)
        return None
sys.meta_path.insert(0, Blocked())
from convirt_cli.cli.entry import run
sys.argv = ["convirt", *{args!r}]
run()
"""


def run_blocked(args: list[str], cwd: Path, stdin: str | None = None, also: tuple[str, ...] = (),
                script: str | None = None) -> subprocess.CompletedProcess:
    """`convirt ARGS` (or a Python `script`) where importing torch and the like fails."""
    # pydicom too: serving a PNG index must not pay for DICOM support (it is imported when a DICOM is met)
    code = BLOCKER.format(heavy={*HEAVY, "pydicom", "pylibjpeg", *also}, args=[str(a) for a in args])
    if script is not None:
        code = code[:code.index("from convirt_cli.cli.entry")] + script
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, check=False,
                          input=stdin, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd)})


SEARCHER = """
import sys
from convirt_cli.torchfree.serve.searcher import Query, Searcher
s = Searcher(sys.argv[1], device="cpu")
path = s.index().items[0]["path"]
res = s.search([Query(text="opacity"), Query(image=path), Query(image=open(path, "rb").read()), Query(like=0)], k=2)
assert [len(r["hits"]) for r in res] == [2, 2, 2, 2] and res[1]["hits"][0]["item"]["id"] == 0, res
assert s.refresh() == []
print("searched", len(res))
"""


@pytest.fixture(scope="module")
def labelled(covid_csv, tmp_path_factory) -> Path:
    """40 covid-cxr rows with their finding, as a table with absolute image paths."""
    return table_with_absolute_paths(covid_csv, tmp_path_factory.mktemp("labelled") / "t.csv",
                                     lambda r: r["finding"] in ("COVID-19", "todo"), limit=40)


def test_serving_commands_run_with_torch_unimportable(tiny_export, labelled, tmp_path):
    """embed (images and texts), retrieve, index build, classify, evaluate retrieval, shard and explain from an ONNX export,
    and the Searcher library itself."""
    steps = [
        ["embed", labelled, "--model", tiny_export, "--out", tmp_path / "idx", "--runs-dir", tmp_path / "runs",
         "--columns", "view"],
        ["retrieve", "--query", "bilateral opacities", "--index", tmp_path / "idx", "-k", "3", "--format", "jsonl"],
        ["retrieve", "--like", "0", "--offset", "1", "--where", "view=PA", "--index", tmp_path / "idx", "-k", "2",
         "--format", "csv"],
        ["retrieve", "--image", labelled.parent / "nope.png", "--index", tmp_path / "idx"],
        ["embed", labelled, "--kind", "text", "--text-col", "report", "--model", tiny_export, "--out",
         tmp_path / "tidx", "--runs-dir", tmp_path / "runs"],
        ["index", "build", tmp_path / "idx", "--faiss", "--index-type", "flat"],
        ["classify", labelled, "--label-col", "finding", "--model", tiny_export, "--format", "json"],
        ["evaluate", "retrieval", labelled, "--label-col", "finding", "--queries-per-class", "2", "--model",
         tiny_export, "--format", "json"],
        ["shard", labelled, "--out", tmp_path / "shards", "--per-shard", "16", "--text-col", "report", "--workers", "1"],
        ["explain", labelled, "--query", "bilateral opacities", "--model", tiny_export, "--out", tmp_path / "maps",
         "--format", "html", "--batch-size", "8"],
    ]
    for args in steps:
        # retrieve takes the fast lane (cli/entry.py): no typer, no pydantic either; shard writes its tars without
        # webdataset (which imports torch)
        also = {"retrieve": ("typer", "pydantic"), "shard": ("webdataset",)}.get(args[0], ())
        p = run_blocked(args, tmp_path, also=also)
        out = p.stdout + p.stderr
        assert "blocked in this test" not in out, (args, out)
        assert "Traceback" not in out, (args, out)
        if any(str(a).endswith("nope.png") for a in args):
            assert p.returncode == 2 and "nope.png" in p.stderr  # a bad query is still one line
        else:
            assert p.returncode == 0, (args, out)
    hits = [json.loads(line) for line in run_blocked(steps[1], tmp_path).stdout.splitlines()]
    assert len(hits) == 3 and all(h["path"].endswith(".png") for h in hits)
    assert json.loads((tmp_path / "shards" / "shards.json").read_text())["splits"]["train"]["count"] > 0
    assert (tmp_path / "maps" / "index.html").is_file() and len(list((tmp_path / "maps").glob("*.png"))) == 40
    p = run_blocked([tmp_path / "idx"], tmp_path, script=SEARCHER.replace("sys.argv[1]", repr(str(tmp_path / "idx"))))
    assert p.returncode == 0 and "searched 4" in p.stdout, p.stdout + p.stderr


def test_serve_runs_with_torch_unimportable(search_indexes, tiny_export, tmp_path):
    """`convirt serve` of an image and a report index answers health, a text search, an image upload and a
    thumbnail, and stops on SIGTERM with 0, in an interpreter where torch (and pydicom) cannot be imported."""
    import signal

    from serving import call, start

    def blocked(argv: list[str]) -> list[str]:
        return ["-c", BLOCKER.format(heavy={*HEAVY, "pydicom", "pylibjpeg"}, args=argv)]

    served = start([f"images={search_indexes['images']}", f"reports={search_indexes['reports']}", "--model",
                    tiny_export], tmp_path / "log", python=blocked)
    try:
        assert call(served.port, "GET", "/api/health").json()["status"] == "ok"
        assert len(call(served.port, "GET", "/api/search?q=opacity&k=3&index=reports").json()["hits"]) == 3
        path = call(served.port, "GET", "/api/search?q=opacity&k=1").json()["hits"][0]["thumbnail"]
        assert call(served.port, "GET", path).status == 200
        image = open_first_image(search_indexes["images"])
        hits = call(served.port, "POST", "/api/search?k=1", image, {"Content-Type": "image/png"}).json()["hits"]
        assert hits[0]["score"] > 0.999
    finally:
        code = served.stop(signal.SIGTERM)
    log = served.log_text()
    assert code == 0 and "blocked in this test" not in log and "Traceback" not in log, log


def open_first_image(index: Path) -> bytes:
    from convirt_cli.torchfree.serve.index import open_index

    return Path(open_index(index).items[0]["path"]).read_bytes()


def test_retrieve_says_which_backend_and_warns_on_torch_fallback(tiny_run, tiny_export, labelled, tmp_path):
    """The index names the run; its RUN/onnx is missing, so retrieve falls back to torch and says why."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("onnx"))
    from typer.testing import CliRunner

    from convirt_cli.cli.main import app

    r = CliRunner().invoke(app, ["embed", str(labelled), "--model", str(run), "--out", str(tmp_path / "idx"),
                                 "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert f"warning: using torch: {run.resolve()} has no ONNX export" in r.stderr
    r = CliRunner().invoke(app, ["retrieve", "--query", "opacity", "--index", str(tmp_path / "idx"), "--format", "paths"])
    assert r.exit_code == 0, r.output
    assert "has no ONNX export" in r.stderr and "with torch on cpu" in r.stderr
    assert all(line.endswith(".png") for line in r.stdout.splitlines())  # stdout: results only
