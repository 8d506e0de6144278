"""The one Reporter protocol (torchfree/report.py): the CLI's RichReporter and the library's NullReporter both
speak all of it, and the words the loops give it read right."""

from __future__ import annotations

import inspect

from convirt_cli.cli.progress import RichReporter
from convirt_cli.torchfree.report import NullReporter, Reporter, data_lines


def _methods(cls) -> dict[str, list[str]]:
    return {name: list(inspect.signature(f).parameters) for name, f in vars(cls).items()
            if callable(f) and not name.startswith("_")}


def test_both_reporters_speak_the_whole_protocol():
    wanted = _methods(Reporter)
    assert _methods(NullReporter) == wanted
    assert _methods(RichReporter) == wanted


def test_rich_reporter_draws_on_stderr_only(capsys):
    rep = RichReporter()
    with rep.reading("read", 2, "rows") as advance:
        advance(2)
    rep.note("pairs found 3 [not markup]")
    rep.start("pretrain", 4)
    rep.update(2, "loss 1.2345")
    rep.warn("loss is flat [x]")
    rep.table("test auc", ["init", "100% labels"], [["random(tiny)", "0.500 ± 0.000"]])
    rep.end("done 4 steps; run saved to runs/r")
    out, err = capsys.readouterr()
    assert out == ""
    for text in ("pairs found 3 [not markup]", "warning: loss is flat [x]", "random(tiny)", "0.500 ± 0.000",
                 "done 4 steps; run saved to runs/r"):
        assert text in err, err


def test_data_lines():
    summary = {"found": 10, "usable": 7, "skipped": 3, "skip_reasons": {"missing image file": 2, "empty text": 1},
               "skipped_examples": [("t.csv:2", "missing image file")], "splits": {"train": 5, "val": 1, "test": 1},
               "split_by": "by patient", "image_kinds": "", "test_unused": True}
    assert data_lines(summary, "pairs") == [
        ("pairs found 10, usable 7, skipped 3 (2 missing image file, 1 empty text); split by patient: train 5 / val 1 "
        "/ test 1 (unused)"),
        "  skip t.csv:2: missing image file",
        "  ... and 2 more"]
