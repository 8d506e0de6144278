"""`convirt finetune`: labels, label fractions, the classifier format, and real runs on PneumoniaMNIST / covid-cxr.

Real runs are small on purpose (subset of rows, 28 px images upscaled to 64, tiny tower, few epochs).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, PNEUMONIA
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torch.classifier import ImageClassifier, head_loss, load_classifier, save_classifier
from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.labels import check_train_classes, parse_labels, sample_fraction

runner = CliRunner()


def _rows(**cols: list[str]) -> list[Row]:
    n = len(next(iter(cols.values())))
    return [Row(image=Path(f"/x/{i}.png"), text="", source=f"t.csv:{i + 2}",
                columns={k: v[i] for k, v in cols.items()}) for i in range(n)]


def _subset(tmp: Path, per_split: dict[str, int]) -> Path:
    """Every k-th row of each official split (absolute image paths), so both classes appear."""
    with PNEUMONIA.open() as f:
        rows = list(csv.DictReader(f))
    out = []
    for split, n in per_split.items():
        part = [r for r in rows if r["split"] == split]
        out += part[:: max(1, len(part) // n)][:n]
    for r in out:
        r["image"] = str(PNEUMONIA.parent / r["image"])
    path = tmp / "pneumonia.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return path


# ---------------------------------------------------------------- labels


def test_parse_labels_for_each_task():
    mc = parse_labels(_rows(c=["b", "a", "", "b"]), ["c"])
    assert mc.task == "multiclass" and mc.names == ["a", "b"]
    np.testing.assert_array_equal(mc.y, [1, 0, np.nan, 1])

    ml = parse_labels(_rows(c=["x|y", "y", "", "z"]), ["c"])
    assert ml.task == "multilabel" and ml.names == ["x", "y", "z"]
    np.testing.assert_array_equal(ml.y, [[1, 1, 0], [0, 1, 0], [np.nan] * 3, [0, 0, 1]])

    # --task multilabel on one column: names even when no row has two of them; a 0/1 column stays binary
    one = parse_labels(_rows(c=["x", "y", "", "x"]), ["c"], task="multilabel")
    assert one.task == "multilabel" and one.names == ["x", "y"]
    np.testing.assert_array_equal(one.y, [[1, 0], [0, 1], [np.nan] * 2, [1, 0]])
    flag = parse_labels(_rows(c=["1", "0", "", "1"]), ["c"], task="multilabel")
    assert flag.names == ["c"]
    np.testing.assert_array_equal(flag.y, [[1], [0], [np.nan], [1]])

    cols = parse_labels(_rows(a=["1", "0", "-1", ""], b=["0", "1", "1", "1.0"]), ["a", "b"], missing=["-1"])
    np.testing.assert_array_equal(cols.y, [[1, 0], [0, 1], [np.nan, 1], [np.nan, 1]])
    chexpert = parse_labels(_rows(a=["1.0", "0.0", "-1.0", ""], b=["0.0", "-1.0", "1.0", "1.0"]), ["a", "b"],
                            missing=["-1"])  # CheXpert writes floats: --missing -1 still names its -1.0
    np.testing.assert_array_equal(chexpert.y, [[1, 0], [0, np.nan], [np.nan, 1], [np.nan, 1]])

    reg = parse_labels(_rows(age=["61", "", "7.5"]), ["age"], task="regression")
    np.testing.assert_array_equal(reg.y, [61, np.nan, 7.5])
    assert reg.num_outputs == 1


def test_bad_labels_name_the_column_and_rows():
    with pytest.raises(ConvirtError, match="no label column 'sexx'.*columns: sex"):
        parse_labels(_rows(sex=["M"]), ["sexx"])
    with pytest.raises(ConvirtError, match=r"'age' is not numeric in rows t.csv:3 \('unknown'\)"):
        parse_labels(_rows(age=["61", "unknown"]), ["age"], task="regression")
    with pytest.raises(ConvirtError, match=r"column 'a' must hold 0/1.*t.csv:2 \('-1'\)"):
        parse_labels(_rows(a=["-1", "1"], b=["0", "1"]), ["a", "b"])  # -1 not declared missing
    train = parse_labels(_rows(c=["a", "a", "b"]), ["c"])
    with pytest.raises(ConvirtError, match="label column 'c': class.*'b' have no examples.*t.csv:2"):
        check_train_classes(train.subset(np.array([0, 1])), _rows(c=["a", "a"]))
    cols = parse_labels(_rows(Pneumonia=["0", "0"], Effusion=["1", "0"]), ["Pneumonia", "Effusion"])
    with pytest.raises(ConvirtError, match=r"^label column 'Pneumonia' has no positive example .*t.csv:2"):
        check_train_classes(cols, _rows(Pneumonia=["0", "0"], Effusion=["1", "0"]))
    names = parse_labels(_rows(labels=["a|b", "a"]), ["labels"], task="multilabel")
    with pytest.raises(ConvirtError, match=r"^label 'a' \(column 'labels'\) has no negative example"):
        check_train_classes(names, _rows(labels=["a|b", "a"]))


def test_label_fractions_are_stratified_nested_and_fixed_by_seed():
    y = ["rare"] * 5 + ["common"] * 995
    labels = parse_labels(_rows(c=y), ["c"])
    small = sample_fraction(labels, 0.01, seed=3)
    assert np.any(labels.y[small] == labels.names.index("rare"))  # 1% of 5 rounds up to one example
    assert len(small) == 1 + 10
    np.testing.assert_array_equal(small, sample_fraction(labels, 0.01, seed=3))
    assert set(small) <= set(sample_fraction(labels, 0.1, seed=3))  # nested
    assert set(small) != set(sample_fraction(labels, 0.01, seed=4))

    ml = parse_labels(_rows(a=["1"] + ["0"] * 99, b=["1"] * 99 + ["0"]), ["a", "b"])
    idx = sample_fraction(ml, 0.02, seed=0)
    for k in range(2):  # every label keeps a positive and a negative
        assert set(ml.y[idx, k]) == {0.0, 1.0}


def test_head_loss_masks_missing_targets():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 0.1]])
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), float("nan")]])
    known = [(0, 0, 1.0), (1, 0, 0.0), (1, 1, 1.0)]
    ref = np.mean([-(t * np.log(1 / (1 + np.exp(-float(logits[i, j])))) +
                     (1 - t) * np.log(1 - 1 / (1 + np.exp(-float(logits[i, j]))))) for i, j, t in known])
    assert float(head_loss("multilabel", logits, y)) == pytest.approx(ref, rel=1e-6)
    yc = torch.tensor([1.0, float("nan"), 0.0])
    ref_c = -(torch.log_softmax(logits, 1)[0, 1] + torch.log_softmax(logits, 1)[2, 0]) / 2
    assert float(head_loss("multiclass", logits, yc)) == pytest.approx(float(ref_c), rel=1e-6)


def test_full_finetune_stops_early_and_keeps_the_best_epoch(monkeypatch):
    """Scripted validation AUCs 0.6, 0.8, 0.7, 0.75, 0.9 with patience 2: training stops after epoch 4 (two
    epochs without beating 0.8) and returns the weights it had after epoch 2, not the last ones."""
    import convirt_cli.torch.finetune.full as ft
    from convirt_cli.torch.finetune.inits import build_tower
    from convirt_cli.torchfree.config import FinetuneConfig
    from convirt_cli.torchfree.evaluate.labels import Labels

    script, snapshots = iter([0.6, 0.8, 0.7, 0.75, 0.9]), []
    real_predict = ft.predict

    def predict_and_snapshot(model, images, device):  # called once per epoch, on the validation images
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_predict(model, images, device)

    monkeypatch.setattr(ft, "task_metrics", lambda task, y, scores, names: {"auc": next(script)})
    monkeypatch.setattr(ft, "predict", predict_and_snapshot)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 1, 32, 32), dtype=np.uint8)
    labels = Labels("multiclass", ["a", "b"], ["c"], np.array([0, 1] * 12, np.float32))
    cfg = FinetuneConfig(data=Path("unused.csv"), epochs=5, patience=2, batch_size=8, lr=1e-2)
    tower = build_tower("random", "tiny", False, 32, 0)
    model, info = ft.train_full(tower, labels, images, np.arange(16), np.arange(16, 24), cfg, seed=0,
                                device=torch.device("cpu"), metric="auc")
    assert info["best_epoch"] == 2 and info["epochs_run"] == 4 and info["val"] == {"auc": 0.8}
    assert len(snapshots) == 4
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


# ---------------------------------------------------------------- the saved classifier


@pytest.mark.parametrize("task,names", [("multiclass", ["normal", "pneumonia"]), ("regression", ["age"])])
def test_classifier_round_trip(tmp_path, task, names):
    from convirt_cli.torch.finetune.inits import build_tower

    torch.manual_seed(0)
    model = ImageClassifier(build_tower("random", "tiny", False, 64, 0), task, names).eval()
    save_classifier(model, tmp_path / "clf")
    save_classifier(model, tmp_path / "clf")  # overwriting in place works (atomic swap)
    back = load_classifier(tmp_path / "clf")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    assert back(x).shape == (3, 1 if task == "regression" else 2)
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta["task"] == task and meta["label_names"] == names and meta["image"]["image_size"] == 64
    assert back.image_cfg.image_size == 64
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["classifier.json", "head.safetensors", "image"]


@pytest.mark.parametrize("task,names", [("multilabel", ["effusion", "nodule", "edema"]), ("regression", ["age"])])
def test_classifier_exports_to_onnx(tmp_path, task, names):
    """`convirt export CLASSIFIER`: one graph (tower + head) whose scores match torch's predict() on new inputs."""
    import onnxruntime as ort

    from convirt_cli.torch.finetune.inits import build_tower

    torch.manual_seed(1)
    model = ImageClassifier(build_tower("random", "tiny", False, 64, 0), task, names).eval()
    if task == "regression":
        from convirt_cli.torch.classifier import fold_target_scale

        fold_target_scale(model.head, mean=55.0, std=12.0)  # values in years, as finetune saves them
    save_classifier(model, tmp_path / "clf")
    res = runner.invoke(app, ["export", str(tmp_path / "clf"), "--onnx", "--out", str(tmp_path / "onnx")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    man = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert man["kind"] == "classifier" and man["task"] == task and man["label_names"] == names
    assert man["parity"]["max_abs_diff"] <= 1e-4
    pre = json.loads((tmp_path / "onnx" / "preprocess.json").read_text())
    assert pre["image_size"] == 64 and pre["channels"] == 3
    x = torch.randn(5, 3, 64, 64)
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    scores, feats = sess.run(["scores", "features"], {"pixels": x.numpy()})
    with torch.no_grad():
        ref = model.predict(x).numpy()
        ref_feats = model.tower(x).numpy()
    assert scores.shape == (5, len(names) if task == "multilabel" else 1)
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-4 * (60 if task == "regression" else 1))
    np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-4)
    if task == "multilabel":
        assert ((scores > 0) & (scores < 1)).all()  # probabilities, not logits
    res = runner.invoke(app, ["export", str(tmp_path / "clf"), "--int8-text"])
    assert res.exit_code != 0 and "no text tower" in str(res.exception)


# ---------------------------------------------------------------- real runs


@pytest.mark.slow
def test_linear_probe_of_pretrained_tower_beats_chance_and_random_init_on_example_data(tmp_path, example_run):
    """Linear probe (frozen tower) for the finding (6 balanced classes) on the held-out test split of
    examples/data: chance is accuracy 1/6 and AUC 0.5. `random` is the run's own tower (architecture and 96 px)
    untrained. Seen on 2 CPU cores: pretrained accuracy 0.64 / AUC 0.88, random init 0.59 / 0.79 (random conv
    features are already far above chance; before `random` took the run's architecture it was the `tiny` preset at
    its 128 px default, 0.40 / 0.73, which flattered the pretrained tower)."""
    out = tmp_path / "probe"
    res = runner.invoke(app, ["finetune", str(EXAMPLES / "pairs.csv"), "--init", f"{example_run},random", "--label",
                              "finding", "--split-col", "split", "--device", "cpu", "--bootstrap", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    records = json.loads((out / "results.json").read_text())["records"]
    (pre,) = [r["test"] for r in records if r["init"] != "random(tiny)"]
    (rnd,) = [r["test"] for r in records if r["init"] == "random(tiny)"]
    assert json.loads((out / "config.json").read_text())["random_model"] == str(example_run)
    assert pre["accuracy"] >= 1 / 6 + 0.25 and pre["auc"] >= 0.5 + 0.25, pre  # AUC: one-vs-rest, macro
    assert pre["accuracy"] > rnd["accuracy"] and pre["auc"] >= rnd["auc"] + 0.05, (pre, rnd)


@pytest.mark.slow
def test_linear_probe_sweep_on_pneumoniamnist(tmp_path, example_run):
    """Pretrained tiny tower vs random, two fractions, two seeds: table, CSV, plot, reloadable models."""
    data = _subset(tmp_path, {"train": 400, "val": 150, "test": 300})
    out = tmp_path / "lin"
    res = runner.invoke(app, ["finetune", str(data), "--init", f"{example_run},random", "--label", "label_name",
                              "--split-col", "split", "--label-fraction", "0.1,1.0", "--seeds", "2",
                              "--image-size", "64", "--device", "cpu", "--bootstrap", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    table = json.loads((out / "table.json").read_text())
    assert table["metric"] == "auc" and table["split"] == "test" and table["fractions"] == [0.1, 1.0]
    assert [r["init"] for r in table["rows"]] == [example_run.name, "random(tiny)"]
    for row in table["rows"]:
        for cell in row["cells"].values():
            assert cell["n"] == 2 and cell["mean"] > 0.6  # pneumonia vs normal is visible even at 64 px
    assert (out / "table.csv").read_text().splitlines()[0] == "init,0.1 mean,0.1 sd,0.1 n,0.1 rows,1 mean,1 sd,1 n,1 rows"
    assert (out / "data_efficiency.png").stat().st_size > 1000
    records = json.loads((out / "results.json").read_text())["records"]
    with data.open() as f:
        train_labels = [r["label_name"] for r in csv.DictReader(f) if r["split"] == "train"]
    per_class = [train_labels.count(c) for c in ("normal", "pneumonia")]
    assert len(records) == 8
    assert {r["n_train"] for r in records} == {sum(-(-n // 10) for n in per_class), 400}  # ceil(10%) per class
    for r in records:
        lo, hi = r["test_ci95"]["auc"]
        assert lo <= r["test"]["auc"] <= hi
    # the saved classifier reproduces the recorded test AUC from pixels
    from convirt_cli.torch.finetune.full import predict
    from convirt_cli.torchfree.evaluate.metrics import roc_auc
    from convirt_cli.torchfree.imageio import load_gray

    rec = records[2]
    clf = load_classifier(Path(rec["model_dir"]))
    with data.open() as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    imgs = np.stack([load_gray(r["image"], 64)[None] for r in test])
    y = np.array([r["label_name"] == "pneumonia" for r in test])
    assert roc_auc(y, predict(clf, imgs, torch.device("cpu"))[:, 1]) == pytest.approx(rec["test"]["auc"], abs=1e-4)


@pytest.mark.slow
def test_full_finetune_from_random_learns_pneumonia(tmp_path):
    data = _subset(tmp_path, {"train": 256, "val": 96, "test": 300})
    out = tmp_path / "full"
    res = runner.invoke(app, ["finetune", str(data), "--init", "random", "--model", "tiny", "--label", "label_name",
                              "--split-col", "split", "--mode", "full", "--epochs", "6", "--lr", "3e-3",
                              "--image-size", "64", "--device", "cpu", "--bootstrap", "100", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rec = json.loads((out / "results.json").read_text())["records"][0]
    assert rec["mode"] == "full" and 1 <= rec["best_epoch"] <= rec["epochs_run"] <= 6
    assert rec["test"]["auc"] > 0.7  # chance is 0.5: a margin of 0.2 after <= 48 steps from random weights (0.88 seen)
    assert load_classifier(Path(rec["model_dir"])).task == "multiclass"


@pytest.mark.slow
def _split_baselines(covid_csv):
    """The trivial predictors on the same patient-level test split, computed from the table alone."""
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.split import split_rows

    rows = read_rows(covid_csv, text_col=None)
    sex = split_rows([r for r in rows if r.columns["sex"].strip()], 0.1, 0.2, None, None, 0)
    y = [r.columns["sex"] for r in sex["test"]]
    majority = max(y.count(v) for v in set(y)) / len(y)
    age = split_rows([r for r in rows if r.columns["age"].strip()], 0.1, 0.2, None, None, 0)
    train_mean = np.mean([float(r.columns["age"]) for r in age["train"]])
    mean_mae = float(np.mean([abs(float(r.columns["age"]) - train_mean) for r in age["test"]]))
    return majority, mean_mae


def test_demographic_probes_on_covid_cxr(tmp_path, tiny_run, covid_csv):
    """RAD-DINO's demographic probes, patient-level split: sex ranks better than the majority class (AUC), age beats
    predicting the training mean (the probe's L2 grid reaches strong enough shrinkage never to do worse than it)."""
    majority, mean_mae = _split_baselines(covid_csv)
    common = ["--init", str(tiny_run), "--image-size", "128", "--device", "cpu", "--bootstrap", "50",
              "--no-save-models", "--no-plot"]
    res = runner.invoke(app, ["finetune", str(covid_csv), "--label", "sex", "--out", str(tmp_path / "sex"), *common])
    assert res.exit_code == 0, res.output + repr(res.exception)
    sex = json.loads((tmp_path / "sex" / "results.json").read_text())
    assert sex["summary"]["skip_reasons"]["no label"] == 41 and sex["summary"]["usable"] == 406
    rec = sex["records"][0]
    assert rec["n_train"] + rec["n_val"] + rec["n_eval"] == 406 and rec["n_eval"] == 87  # patient-level test split
    assert 0.0 <= rec["test_ci95"]["auc"][0] <= rec["test"]["auc"] <= rec["test_ci95"]["auc"][1] <= 1.0
    # the majority class scores AUC 0.5 (it ranks nobody); at the 0.5 threshold the probe's accuracy sits near the
    # majority's (63% of test patients are men): seen AUC 0.66, accuracy 0.61-0.64
    assert rec["test"]["auc"] > 0.6 and rec["test"]["accuracy"] >= majority - 0.04, (rec["test"], majority)
    res = runner.invoke(app, ["finetune", str(covid_csv), "--task", "regression", "--label", "age",
                              "--out", str(tmp_path / "age"), *common])
    assert res.exit_code == 0, res.output + repr(res.exception)
    age = json.loads((tmp_path / "age" / "results.json").read_text())
    assert age["metric"] == "r2" and age["summary"]["usable"] == 447 - 111
    assert age["records"][0]["test"]["mae"] < mean_mae, (age["records"][0]["test"], mean_mae)  # ~12.5 years


def test_multilabel_columns_with_bad_images_on_example_data(tmp_path):
    """0/1 columns -> per-label AUC/AUPRC; a corrupt and a missing image are skipped and counted."""
    from conftest import EXAMPLES

    with (EXAMPLES / "pairs.csv").open() as f:
        rows = list(csv.DictReader(f))[:160]
    for r in rows:
        r["image"] = str(EXAMPLES / r["image"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rows[0]["image"] = str(tmp_path / "broken.png")
    rows[1]["image"] = str(tmp_path / "gone.png")
    data = tmp_path / "pairs.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "ml"
    labels = "cardiomegaly,pleural_effusion,pneumothorax"
    res = runner.invoke(app, ["finetune", str(data), "--labels", labels, "--split-col", "split", "--image-size", "32",
                              "--device", "cpu", "--bootstrap", "20", "--no-plot", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["skipped"] == 2 and results["summary"]["usable"] == 158
    test = results["records"][0]["test"]
    assert results["metric"] == "macro_auc" and set(test) == {"macro_auc", "macro_auprc"} | {
        f"{m}/{k}" for m in ("auc", "auprc") for k in labels.split(",")}
    assert test["macro_auc"] == pytest.approx(np.nanmean([test[f"auc/{k}"] for k in labels.split(",")]))
    clf = load_classifier(Path(results["records"][0]["model_dir"]))
    assert clf.task == "multilabel" and clf.label_names == labels.split(",") and clf.head.out_features == 3


def test_cli_errors_are_one_line(tmp_path, covid_csv):
    res = runner.invoke(app, ["finetune", str(covid_csv), "--label", "gender"])
    assert isinstance(res.exception, ConvirtError) and "no label column 'gender'" in str(res.exception)
    res = runner.invoke(app, ["finetune", str(covid_csv), "--task", "regression", "--label", "sex"])
    assert isinstance(res.exception, ConvirtError) and "'sex' is not numeric" in str(res.exception)
    res = runner.invoke(app, ["finetune", str(covid_csv), "--label", "sex", "--metric", "r2", "--init", "random"])
    assert isinstance(res.exception, ConvirtError) and "not a multiclass metric" in str(res.exception)
    res = runner.invoke(app, ["finetune", str(covid_csv), "--label", "sex", "--label-fraction", "0"])
    assert isinstance(res.exception, ConvirtError) and "--label-fraction 0: label fractions must lie in (0, 1]" in str(res.exception)


def test_tiny_label_fraction_reports_the_rows_it_used(tmp_path, covid_csv):
    """--label-fraction 0.0001 of ~50 rows cannot be 0.01%: every class keeps one example, the table says how many
    rows that came to, and a warning says it was raised."""
    from convirt_cli.torch.finetune.sweep import NullReporter, finetune
    from convirt_cli.torchfree.config import FinetuneConfig

    class Warn(NullReporter):
        def __init__(self):
            self.lines: list[str] = []

        def warn(self, message):
            self.lines.append(message)

    cfg = FinetuneConfig(data=covid_csv, labels=["sex"], init=["random"], label_fraction=[0.0001, 1.0], image_size=32,
                         device="cpu", bootstrap=0, save_models=False, plot=False, out=tmp_path / "ft")
    rep = Warn()
    out = finetune(cfg, rep)
    table = json.loads((out / "table.json").read_text())
    rec = json.loads((out / "results.json").read_text())["records"]
    n_small = next(r["n_train"] for r in rec if r["fraction"] == 0.0001)
    n_all = next(r["n_train"] for r in rec if r["fraction"] == 1.0)
    assert n_small == 2  # one per class (F, M)
    used = table["used"]["0.0001"]
    assert used["raised"] and used["n_min"] == 2 and used["fraction_min"] == pytest.approx(2 / n_all)
    assert not table["used"]["1.0"]["raised"] and table["used"]["1.0"]["n_min"] == n_all
    assert len(rep.lines) == 1 and rep.lines[0].startswith("--label-fraction 0.0001: 0.01% of the ")
    assert f"it takes 2 ({2 / n_all:.1%})" in rep.lines[0]
    from convirt_cli.torch.finetune.results import used_label

    assert used_label(0.0001, table["used"]) == f"0.01% (2 rows = {2 / n_all:.1%})"
    assert used_label(1.0, table["used"]) == f"100% ({n_all} rows)"


def test_an_image_listed_twice_is_one_sample(covid_csv, tmp_path):
    """RSNA Pneumonia lists an image once per box, VinDr-CXR once per reader: each image is one sample (else it is
    counted twice in the test metrics, and split by image it can sit in train and test at once). The first row's
    labels stay; a repeat with other labels is counted apart."""
    from convirt_cli.torch.finetune.data import one_row_per_image, prepare_data
    from convirt_cli.torch.finetune.sweep import NullReporter
    from convirt_cli.torchfree.config import FinetuneConfig

    rows = _rows(sex=["F", "F", "M", "M", "F"])
    for r, name in zip(rows, "aabac"):
        r.image = Path(f"/x/{name}.png")
    y = parse_labels(rows, ["sex"]).y
    other = "duplicate image with other labels"
    assert one_row_per_image(rows, y, [0, 1, 2, 3, 4]) == (
        [0, 2, 4], [("t.csv:3", "duplicate image (of t.csv:2)"), ("t.csv:5", f"{other} (of t.csv:2)")])
    assert one_row_per_image(rows, y, [1, 2, 3]) == ([1, 2], [("t.csv:5", f"{other} (of t.csv:3)")])
    with covid_csv.open() as f:
        table = [r for r in csv.DictReader(f) if r["sex"] in ("F", "M")][:40]
    for r in table:
        r["image"] = str(covid_csv.parent / r["image"])
    table += [dict(table[0]), dict(table[1]), dict(table[2], sex="M" if table[2]["sex"] == "F" else "F")]
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    rows, _, splits, summary = prepare_data(FinetuneConfig(data=path, labels=["sex"]), NullReporter())
    assert len(rows) == 40 == sum(len(v) for v in splits.values()) and len({r.image for r in rows}) == 40
    assert summary["skip_reasons"] == {"duplicate image": 2, "duplicate image with other labels": 1}


def test_finetune_takes_its_labels_from_a_joined_table(covid_csv, tmp_path):
    """Labels kept apart from the image table (MIMIC-CXR: per study) come in with --join; rows the labels table does
    not hold are counted as having no label, and the command says how many did not match."""
    with covid_csv.open() as f:
        rows = [r for r in csv.DictReader(f)][:60]
    (tmp_path / "images.csv").write_text("image,patientid,study\n" + "".join(
        f"{covid_csv.parent / r['image']},{r['patientid']},{i}\n" for i, r in enumerate(rows)))
    labelled = [(i, r["sex"]) for i, r in enumerate(rows) if i % 10]  # every 10th study has no labels row
    (tmp_path / "labels.csv").write_text("study,sex\n" + "".join(f"{i},{s}\n" for i, s in labelled))
    res = runner.invoke(app, ["finetune", str(tmp_path / "images.csv"), "--join", str(tmp_path / "labels.csv"),
                              "--label", "sex", "--init", "random", "--model", "tiny", "--image-size", "32",
                              "--device", "cpu", "--bootstrap", "0", "--no-save-models", "--no-plot",
                              "--out", str(tmp_path / "ft")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "--join labels.csv: 6 of 60 rows match no row on study" in " ".join(res.output.split())
    summary = json.loads((tmp_path / "ft" / "results.json").read_text())["summary"]
    assert summary["usable"] == sum(s in ("F", "M") for _, s in labelled)
    assert summary["skip_reasons"]["no label"] == 60 - summary["usable"]


def test_finetune_dry_run_checks_labels_and_split_and_writes_nothing(tmp_path):
    r = runner.invoke(app, ["finetune", str(EXAMPLES / "pairs.csv"), "--init", "random", "--label", "finding",
                            "--dry-run", "--out", str(tmp_path / "ft"), "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = " ".join(r.output.split())
    assert "rows found 600, usable 600" in out and "task multiclass on finding" in out and "dry run: nothing" in out
    assert not (tmp_path / "ft").exists() and not (tmp_path / "runs").exists()
    r = runner.invoke(app, ["finetune", str(EXAMPLES / "pairs.csv"), "--init", "nope", "--label", "finding",
                            "--dry-run"])
    assert isinstance(r.exception, ConvirtError)  # a bad init fails the dry run, as it would fail the run
