"""Readers, validation and splits on real (messy) data and on small hand-made tables."""

import json
import re
from pathlib import Path

import pytest

from convirt_cli.torchfree.data.readers import Row, read_rows
from convirt_cli.torchfree.data.split import describe_split, split_rows
from convirt_cli.torchfree.data.text import report_sections, split_sentences
from convirt_cli.torchfree.data.validate import validate_rows
from convirt_cli.torchfree.errors import ConvirtError


def test_covid_manifest_with_flags_only(covid_csv):
    rows = read_rows(covid_csv, image_col="image", text_col="report")
    assert len(rows) == 447
    v = validate_rows(rows)
    assert len(v.usable) == 360 and v.reasons() == {"empty text": 87}  # the data README's counts
    assert v.skipped[0][0].source.startswith("manifest.csv:")


def test_missing_column_names_the_file_and_flag(covid_csv):
    with pytest.raises(ConvirtError, match=r"manifest.csv: no column 'text'.*--text-col"):
        read_rows(covid_csv)


def test_strict_fails_on_first_bad_row(covid_csv):
    with pytest.raises(ConvirtError, match=r"manifest.csv:\d+: empty text"):
        validate_rows(read_rows(covid_csv, text_col="report"), strict=True)


def _png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


def test_jsonl_folder_and_bad_files(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    lines = [{"image": "a.png", "text": "Effusion. Cardiomegaly."}, {"image": "b.png", "text": "x y z"},
             {"image": "gone.png", "text": "abc"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    v = validate_rows(read_rows(tmp_path))
    assert [r.image.name for r in v.usable] == ["a.png"]
    assert sorted(v.reasons().items()) == [("missing image file", 1), ("unreadable image", 1)]


def test_folder_of_images_with_txt(tmp_path):
    _png(tmp_path / "x1.png")
    (tmp_path / "x1.txt").write_text("No acute findings.")
    _png(tmp_path / "x2.png")
    rows = read_rows(tmp_path)
    assert [(r.image.name, r.text) for r in rows] == [("x1.png", "No acute findings."), ("x2.png", "")]
    assert len(validate_rows(rows).usable) == 1


def test_text_column_may_name_report_files(tmp_path):
    """MIMIC-CXR keeps one report file per study: a text cell that is a .txt path (relative to the table) is that
    file's text; a named file that is missing is a counted skip, never the path trained on as if it were a report."""
    (tmp_path / "reports" / "p10").mkdir(parents=True)
    (tmp_path / "reports" / "p10" / "s1.txt").write_text("FINDINGS: Small left effusion.\nIMPRESSION: Effusion.")
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    (tmp_path / "pairs.csv").write_text("image,text\na.png,reports/p10/s1.txt\nb.png,reports/p10/s2.txt\n"
                                        "c.png,Heart size normal. Compared with prior.txt\n")
    rows = read_rows(tmp_path)
    assert rows[0].text.startswith("FINDINGS: Small left effusion.") and rows[0].text_problem is None
    assert rows[1].text == "" and rows[1].text_problem == "missing report file"
    assert rows[2].text.startswith("Heart size normal.") and rows[2].text_problem is None  # prose ending in .txt
    v = validate_rows(rows)
    assert [r.image.name for r in v.usable] == ["a.png", "c.png"]
    assert dict(v.reasons()) == {"missing report file": 1}
    assert [r.text for r in read_rows(tmp_path, text_col=None)] == ["", "", ""]  # images only: no reads
    from convirt_cli.torchfree.serve.inputs import read_inputs

    kind, items = read_inputs(str(tmp_path), kind="text")  # `convirt embed --kind text` says why a row is skipped
    assert kind == "text" and [it.get("problem") for it in items] == [None, "missing report file", None]


def test_image_paths_relative_to_a_parent_of_the_table(tmp_path):
    """CheXpert's train.csv sits in CheXpert-v1.0-small/ and names 'CheXpert-v1.0-small/train/...': the folder above
    it is the base. When no base fits, the error shows the path it looked for."""
    top = tmp_path / "CheXpert-v1.0-small"
    for i in range(3):
        _png(top / "train" / f"patient0000{i}" / "study1" / "view1_frontal.png")
    names = [f"CheXpert-v1.0-small/train/patient0000{i}/study1/view1_frontal.png" for i in range(3)]
    (top / "train.csv").write_text("Path,Sex,text\n" + "".join(f"{n},F,t\n" for n in names))
    rows = read_rows(top / "train.csv", image_col="Path")
    assert [r.image for r in rows] == [(tmp_path / n).resolve() for n in names]
    assert len(validate_rows(rows).usable) == 3
    (top / "moved.csv").write_text("Path,text\nelsewhere/a.png,t\nelsewhere/b.png,t\n")
    with pytest.raises(ConvirtError, match=r"moved.csv:2 names .*elsewhere/a.png: image paths are read relative"):
        validate_rows(read_rows(top / "moved.csv", image_col="Path"))


def test_text_from_several_columns(tmp_path):
    """--text-col findings,impression joins those columns, each closed with a full stop (MIMIC-CXR's sectioned CSV)."""
    (tmp_path / "p.csv").write_text('image,findings,impression\na.png,Small left effusion,No pneumothorax.\n'
                                    'b.png,,Clear lungs\n')
    rows = read_rows(tmp_path / "p.csv", text_col="findings,impression")
    assert [r.text for r in rows] == ["Small left effusion. No pneumothorax.", "Clear lungs."]
    with pytest.raises(ConvirtError, match=r"no column 'impresion' .* pass --text-col NAME"):
        read_rows(tmp_path / "p.csv", text_col="findings,impresion")


def test_evaluate_reads_query_texts_as_pretrain_does(tmp_path):
    """`evaluate retrieval` uses the query rows' reports as text queries: report files are read, not their paths."""
    from convirt_cli.torchfree.evaluate.labelled import load_labelled

    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "s1.txt").write_text("Small left effusion.")
    (tmp_path / "p.csv").write_text("image,report,finding\na.png,s1.txt,effusion\nb.png,Clear.,normal\n")
    paths, labels, texts = load_labelled(tmp_path / "p.csv", "image", "finding", [""], "report")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.png", "b.png"]
    assert labels == ["effusion", "normal"] and texts == ["Small left effusion.", "Clear."]
    assert load_labelled(tmp_path / "p.csv", "image", "finding", [""], "nope")[2] is None
    assert load_labelled(tmp_path / "p.csv", "image", "finding", [""], where=["finding=normal"])[1] == ["normal"]


def test_a_folder_with_one_table_of_any_name_reads_it(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "train.csv").write_text("image,text\na.png,Small effusion.\n")
    assert [(r.image.name, r.text) for r in read_rows(tmp_path)] == [("a.png", "Small effusion.")]  # not the folder scan
    (tmp_path / "valid.csv").write_text("image,text\nb.png,Clear.\n")
    with pytest.raises(ConvirtError, match=r"2 tables \(train.csv, valid.csv\) and no pairs.csv; pass the one"):
        read_rows(tmp_path)


def test_folder_in_mimic_layout(tmp_path):
    """MIMIC-CXR's tree: files/p10/p10000032/s50414267/<dicom id>.png with the study's report beside its folder as
    s50414267.txt. With no table, each image takes its study's report, and one study's images share a split."""
    pat = tmp_path / "files" / "p10" / "p10000032"
    for study, images in (("s1", ("a", "b")), ("s2", ("c",))):
        for name in images:
            _png(pat / study / f"{name}.png")
        (pat / f"{study}.txt").write_text(f"FINDINGS: report of {study}.")
    _png(tmp_path / "files" / "own.png")
    (tmp_path / "files" / "own.txt").write_text("Its own report.")
    rows = read_rows(tmp_path / "files")
    assert {r.image.name: r.text for r in rows} == {"a.png": "FINDINGS: report of s1.", "b.png": "FINDINGS: report "
                                                    "of s1.", "c.png": "FINDINGS: report of s2.", "own.png": "Its own report."}
    nested = [r for r in rows if r.image.name != "own.png"]
    assert describe_split(nested, None, None) == "by study ('study')"
    for seed in range(5):
        split = {r.image.name: k for k, v in split_rows(nested, 0.5, seed=seed).items() for r in v}
        assert split["a.png"] == split["b.png"]



def test_mimic_cxr_jpg_metadata_table_finds_images_and_study_reports(tmp_path):
    """MIMIC-CXR-JPG as downloaded: a gzipped metadata table naming only dicom_id (no path, no report), the JPEGs
    under files/p10/p<subject>/s<study>/<dicom_id>.jpg and each study's report beside its folder."""
    import gzip

    lines, views = ["dicom_id,subject_id,study_id,ViewPosition"], {"d1": "PA", "d2": "LATERAL", "d3": "AP"}
    for dicom_id, subject, study in (("d1", "10000032", "500"), ("d2", "10000032", "500"), ("d3", "10000040", "501")):
        folder = tmp_path / "files" / "p10" / f"p{subject}" / f"s{study}"
        _png(folder / f"{dicom_id}.jpg")
        folder.with_name(f"s{study}.txt").write_text(f"FINDINGS: study {study}.")
        lines.append(f"{dicom_id},{subject},{study},{views[dicom_id]}")
    table = tmp_path / "mimic-cxr-2.0.0-metadata.CSV.gz"
    table.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    rows = read_rows(tmp_path, image_col="dicom_id")  # the one table in the folder, upper-case suffix, gzipped
    assert [(r.image.name, r.text, r.source) for r in rows] == [
        ("d1.jpg", "FINDINGS: study 500.", f"{table.name}:2"), ("d2.jpg", "FINDINGS: study 500.", f"{table.name}:3"),
        ("d3.jpg", "FINDINGS: study 501.", f"{table.name}:4")]
    v = validate_rows(rows, where=["ViewPosition=PA,AP"])
    assert [r.image.name for r in v.usable] == ["d1.jpg", "d3.jpg"]
    assert describe_split(v.usable, None, None) == "by patient ('subject_id')"
    (tmp_path / "files" / "p10" / "p10000040" / "s501.txt").unlink()  # a report lost: a counted skip, by reason
    assert validate_rows(read_rows(table, image_col="dicom_id")).reasons() == {"missing report file": 1}
    with pytest.raises(ConvirtError, match=r"no column 'report' \(columns: dicom_id.*pass --text-col NAME"):
        read_rows(table, image_col="dicom_id", text_col="report")  # a named column is never replaced by files
    table.write_bytes(table.read_bytes()[:20])
    with pytest.raises(ConvirtError, match=r"metadata.CSV.gz: not a readable gzip file"):
        read_rows(table, image_col="dicom_id")


def test_join_adds_per_study_labels_and_a_split_file(tmp_path):
    """MIMIC-CXR keeps labels per study (chexpert.csv.gz) and the split per image (split.csv.gz) apart from the image
    table: --join matches each on every column it shares with the rows; ids written as floats still match."""
    from convirt_cli.torchfree.data.join import join_tables

    for i in range(4):
        _png(tmp_path / f"{i}.png")
    (tmp_path / "meta.csv").write_text("image,subject_id,study_id\n0.png,1,10\n1.png,1,10\n2.png,2,20\n3.png,3,30\n")
    (tmp_path / "labels.csv").write_text("subject_id,study_id,Edema\n1,10,1.0\n2.0,20,0.0\n9,90,1.0\n")
    (tmp_path / "split.csv").write_text("image,study_id,split\n0.png,10,train\n1.png,10,train\n2.png,20,validate\n"
                                        "3.png,30,test\n")
    rows = read_rows(tmp_path / "meta.csv", text_col=None)
    warnings = join_tables(rows, [tmp_path / "labels.csv", tmp_path / "split.csv"])
    assert [(r.columns.get("Edema"), r.columns["split"]) for r in rows] == [
        ("1.0", "train"), ("1.0", "train"), ("0.0", "validate"), ("", "test")]
    assert rows[0].columns["subject_id"] == "1"  # a row's own values win
    assert warnings == [("--join labels.csv: 1 of 4 rows match no row on subject_id, study_id: its columns are blank "
                        "there")]
    assert describe_split(rows, None, None) == "by column 'split'"
    (tmp_path / "twice.csv").write_text("study_id,Cardiomegaly\n10,1\n20,0\n10,0\n")
    with pytest.raises(ConvirtError, match=r"--join .*twice.csv:4: study_id = 10 again \(row 2\); a joined table"):
        join_tables(rows, [tmp_path / "twice.csv"])
    (tmp_path / "other.csv").write_text("dicom,Atelectasis\nx,1\n")
    with pytest.raises(ConvirtError, match=r"--join .*other.csv: no column in common with the data \(its columns: "
                                           r"dicom, Atelectasis; the data's: image, subject_id"):
        join_tables(rows, [tmp_path / "other.csv"])
    with pytest.raises(ConvirtError, match=r"--join .*nope.csv: no such file"):
        join_tables(rows, [tmp_path / "nope.csv"])
    with pytest.raises(ConvirtError, match=r"--join .*: a folder; pass the table file inside it"):
        join_tables(rows, [tmp_path])
    with pytest.raises(ConvirtError, match=r"--join .*0.png: expected a .csv, .tsv or .jsonl table"):
        join_tables(rows, [tmp_path / "0.png"])


def test_class_folders_are_not_studies(tmp_path):
    """normal/ and pneumonia/ with many images each: split by image, never a whole class in one split."""
    for cls in ("normal", "pneumonia"):
        for i in range(30):
            _png(tmp_path / cls / f"{i}.png")
    rows = read_rows(tmp_path, text_col=None)
    assert describe_split(rows, None, None).startswith("by image") and "study" not in rows[0].columns
    split = split_rows(rows, 0.3, seed=0)
    assert {r.image.parent.name for r in split["val"]} == {"normal", "pneumonia"}


def test_a_table_of_study_folders_splits_by_patient_folder(tmp_path):
    """CheXpert's table has no patient column, but its images sit in patientN/studyM/ folders: a patient's studies
    (frontal and lateral views) never straddle train and validation. Study folders directly under the root (one
    patient folder above them, or none) group by study."""
    names = [f"train/patient{p}/study{s}/view{v}.png" for p in range(20) for s in (1, 2) for v in (1, 2)]
    for n in names:
        _png(tmp_path / n)
    (tmp_path / "train.csv").write_text("Path,text\n" + "".join(f"{n},t\n" for n in names))
    rows = read_rows(tmp_path / "train.csv", image_col="Path")
    assert describe_split(rows, None, None) == "by patient folder ('patient_folder')"
    split = {r.image.relative_to(tmp_path.resolve()).as_posix(): k for k, v in split_rows(rows, 0.3, seed=0).items()
             for r in v}
    for p in range(20):
        assert len({split[f"train/patient{p}/study{s}/view{v}.png"] for s in (1, 2) for v in (1, 2)}) == 1
    assert len(set(split.values())) == 2  # both splits used
    (tmp_path / "one.csv").write_text("Path,text\n" + "".join(f"{n},t\n" for n in names[:4]))  # one patient
    assert describe_split(read_rows(tmp_path / "one.csv", image_col="Path"), None, None) == "by study ('study')"


def test_windows_separators_in_path_cells(tmp_path):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "s1.txt").write_text("Clear lungs.")
    (tmp_path / "p.csv").write_text("image,text\nimages\\a.png,reports\\s1.txt\n")
    (row,) = read_rows(tmp_path / "p.csv")
    assert row.image == (tmp_path / "images" / "a.png").resolve() and row.text == "Clear lungs."


def test_bare_image_names_are_found_under_the_table_folder(tmp_path):
    """NIH ChestX-ray14: 'Image Index' holds bare names, the files lie in images_001/images/ ... images_012/images/.
    A name two files share is never guessed: its row is a missing image."""
    for folder, name in (("images_001", "00000001_000.png"), ("images_002", "00000002_000.png"),
                         ("images_001", "twice.png"), ("images_002", "twice.png")):
        _png(tmp_path / folder / "images" / name)
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n00000001_000.png,"
                                                  "Cardiomegaly|Effusion,1\n00000002_000.png,No Finding,2\n"
                                                  "twice.png,No Finding,3\n")
    rows = read_rows(tmp_path / "Data_Entry_2017.csv", image_col="Image Index", text_col=None)
    assert [r.image.relative_to(tmp_path.resolve()).as_posix() for r in rows[:2]] == [
        "images_001/images/00000001_000.png", "images_002/images/00000002_000.png"]
    v = validate_rows(rows, need_text=False)
    assert len(v.usable) == 2 and dict(v.reasons()) == {"missing image file": 1}
    (tmp_path / "vindr.csv").write_text("image_id,class_name\n00000001_000,Aortic enlargement\n")  # ids name stems
    assert read_rows(tmp_path / "vindr.csv", image_col="image_id", text_col=None)[0].image.name == "00000001_000.png"


def test_patient_split_keeps_patients_together(covid_csv):
    rows = validate_rows(read_rows(covid_csv, text_col="report")).usable
    s = split_rows(rows, val_fraction=0.2, test_fraction=0.1, patient_col="patientid", seed=3)
    pats = {k: {r.columns["patientid"] for r in v} for k, v in s.items()}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    assert sum(len(v) for v in s.values()) == len(rows)
    assert 0.1 < len(s["val"]) / len(rows) < 0.35
    assert split_rows(rows, 0.2, 0.1, patient_col="patientid", seed=3) == s  # deterministic


def test_patient_column_is_detected(covid_csv):
    rows = validate_rows(read_rows(covid_csv, text_col="report")).usable
    assert split_rows(rows, 0.2, seed=1) == split_rows(rows, 0.2, patient_col="patientid", seed=1)


@pytest.mark.parametrize("col", ["Patient ID", "subject_id", "PatientID", "MRN"])
def test_archive_patient_columns_are_detected(tmp_path, col):
    """NIH ChestX-ray14 writes 'Patient ID', MIMIC-CXR subject_id: each still keeps a patient in one split."""
    lines = [f"image,text,{col}"] + [f"{i}.png,t,P{i % 7}" for i in range(70)]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    rows = read_rows(tmp_path / "p.csv")
    assert describe_split(rows, None, None) == f"by patient ('{col}')"
    s = split_rows(rows, 0.3, seed=0)
    pats = {k: {r.columns[col] for r in v} for k, v in s.items()}
    assert pats["train"] and pats["val"] and not pats["train"] & pats["val"]


def test_split_column_values_case_insensitive(tmp_path):
    (tmp_path / "p.csv").write_text("image,text,s\na.png,t,Train\nb.png,t,VALID\nc.png,t,validation\nd.png,t,test\n"
                                    "e.png,t,validate\n")  # MIMIC-CXR's split file says validate
    s = split_rows(read_rows(tmp_path / "p.csv"), split_col="s")
    assert {k: len(v) for k, v in s.items()} == {"train": 1, "val": 3, "test": 1}
    (tmp_path / "q.csv").write_text("image,text,s\na.png,t,foo\n")
    with pytest.raises(ConvirtError, match=r"q.csv:2: split value 'foo'"):
        split_rows(read_rows(tmp_path / "q.csv"), split_col="s")


def test_sentences():
    assert split_sentences("Heart is normal. Small left effusion.\nNo pneumothorax!") == [
        "Heart is normal.", "Small left effusion.", "No pneumothorax!"]
    assert split_sentences("1. 2.") == ["1. 2."]


def test_duplicate_pairs_are_counted_skips(tmp_path, covid_csv):
    """The same (image, report) twice would be its own negative in a contrastive batch: the second is skipped and
    counted, naming the row it repeats; the same image with another report is kept."""
    import csv

    from convirt_cli.torch.train.data import prepare_rows
    from convirt_cli.torchfree.config import PretrainConfig
    from convirt_cli.torchfree.report import NullReporter

    with covid_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r["report"].strip()][:6]
    for r in rows:
        r["image"] = str(covid_csv.parent / r["image"])
    rows += [dict(rows[0]), dict(rows[1], report="another note")]
    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    class Keep(NullReporter):
        def __init__(self):
            self.lines: list[str] = []

        def note(self, message):
            self.lines.append(message)

    rep = Keep()
    train, val, _, data = prepare_rows(PretrainConfig(data=table, text_col="report", val_fraction=0.0), True, rep)
    assert data["found"] == 8 and data["usable"] == 7 == len(train) + len(val)
    assert data["skipped"] == {"duplicate pair": 1}  # counted by kind: a thousand duplicates are one count
    assert [line for line in rep.lines if "skip " in line] == ["  skip t.csv:8: duplicate pair (of t.csv:2)"]


MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 No focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities, most likely nipple shadows

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_report_sections_by_hand():
    """Headings at line starts (MIMIC-CXR) or inline (IU X-ray), any case; a section ends at the next known heading;
    the report's order is kept, headings dropped, each section closed with a full stop."""
    assert report_sections(MIMIC_STYLE, ["findings", "impression"]) == (
        "No focal consolidation, pleural effusion or pneumothorax.  Bilateral\n nodular opacities, most likely "
        "nipple shadows. No acute cardiopulmonary process.")
    assert report_sections(MIMIC_STYLE, ["impression", "findings"]) == report_sections(MIMIC_STYLE,
                                                                                         ["findings", "impression"])
    assert report_sections(MIMIC_STYLE, ["indication"]) == "___F with new onset ascites  // eval for infection."
    inline = "Findings: Borderline cardiomegaly. Clear lungs. Impression: No acute findings. Recommendation: none"
    assert report_sections(inline, ["impression"]) == "No acute findings."
    assert report_sections("Heart size: normal. No effusion.", ["findings"]) == ""  # no heading: nothing
    assert report_sections("HISTORY: cough. OPINION: clear", ["opinion"]) == "clear."


def test_report_sections_agree_with_iu_columns():
    """On the 3,955 real IU X-ray reports, findings + impression taken from the `report` text equal the data set's
    own `findings` and `impression` columns (seen: all but 2, where a 'Comparison:' heading sits inside findings)."""
    import csv

    from conftest import SHARED

    with (SHARED / "iu-xray-reports" / "reports.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    words = lambda t: re.findall(r"\w+", t)  # the words, whatever the punctuation between sections
    same = sum(words(report_sections(r["report"], ["findings", "impression"]))
               == words(r["findings"] + " " + r["impression"]) for r in rows)
    assert len(rows) == 3955 and same >= 3950, same


def test_sections_skip_reports_without_them(tmp_path):
    for name in ("a.png", "b.png"):
        _png(tmp_path / name)
    (tmp_path / "pairs.csv").write_text('image,text\na.png,"INDICATION: cough. FINDINGS: Small effusion."\n'
                                        'b.png,"INDICATION: cough. TECHNIQUE: PA."\n')
    v = validate_rows(read_rows(tmp_path, sections=["findings", "impression"]))
    assert [r.text for r in v.usable] == ["Small effusion."]
    assert dict(v.reasons()) == {"no findings/impression section": 1}


def test_header_checks_overlap_only_on_slow_storage(monkeypatch):
    """A header read that waits on storage (2 ms here, as on a network file system) sends the rows after the timed
    probe through threads; fast reads stay on this thread. Either way the reasons come back in row order."""
    import threading
    import time

    import convirt_cli.torchfree.data.validate as V

    rows = [Row(image=Path(f"/x/{i}.png"), text="t", source=f"t.csv:{i}") for i in range(40)]
    seen = []

    def check(row, need_text, wait):
        seen.append(threading.get_ident())
        time.sleep(wait)
        return int(row.image.stem) + 10

    for wait, threaded in ((0.002, True), (0.0, False)):
        seen.clear()
        monkeypatch.setattr(V, "check_row", lambda r, n, w=wait: check(r, n, w))
        advanced = []
        assert V.check_rows(rows, True, threads=4, probe=8, advance=advanced.append) == list(range(10, 50))
        assert (set(seen) != {threading.get_ident()}) == threaded
        assert advanced == [8] * 5  # a progress bar moves in either mode


def test_where_keeps_rows_by_column_and_counts_the_rest(tmp_path):
    """--where view=PA,AP: frontal views only (any case); the others are counted by value, and --strict fails only
    on a bad row, never on one --where left out."""
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    (tmp_path / "p.csv").write_text("image,text,view\na.png,t,PA\nb.png,t,LATERAL\nc.png,t,ap\nd.png,t,PA\n")
    rows = read_rows(tmp_path / "p.csv")
    v = validate_rows(rows, where=["view=PA,AP"])
    assert [r.image.name for r in v.usable] == ["a.png", "c.png"]
    assert dict(v.reasons()) == {"--where view: LATERAL": 1, "missing image file": 1}
    with pytest.raises(ConvirtError, match=r"p.csv:5: missing image file \(d.png\); 1 bad rows"):
        validate_rows(rows, strict=True, where=["view=PA,AP"])
    assert len(validate_rows(rows[:3], strict=True, where=["view=PA,AP"]).usable) == 2
    with pytest.raises(ConvirtError, match=r"no column 'sex' for --where \(columns: image, text, view\)"):
        validate_rows(rows, where=["sex=F"])
    (tmp_path / "q.csv").write_text("image,text,modality\na.png,t,DX\nb.png,t,ct\nc.png,t,\n")
    v = validate_rows(read_rows(tmp_path / "q.csv"), where=["modality!=CT,MR"])  # none of them; blank stays
    assert [r.image.name for r in v.usable] == ["a.png", "c.png"] and dict(v.reasons()) == {"--where modality: ct": 1}


def test_image_kinds_show_what_an_archive_holds():
    """A DICOM export may hold CT slices or lateral views beside the radiographs: counted by value before training."""
    from convirt_cli.torchfree.data.validate import image_kinds

    rows = [Row(image=Path(f"/x/{i}.dcm"), text="", source=f"d/{i}",
                columns={"modality": "CT" if i < 5 else "DX", "view": "" if i < 5 else "PA" if i % 2 else "LL",
                         "body_part": ""}) for i in range(12)]
    assert image_kinds(rows) == "modality DX 7, CT 5; view blank 5, PA 4, LL 3"
    assert image_kinds([Row(image=Path("/x/a.png"), text="", source="t.csv:2", columns={"label": "1"})]) == ""
    seven = [Row(image=Path("/x/a.png"), text="", source="", columns={"view": v}) for v in "abcdefgg"]
    assert image_kinds(seven) == "view g 2, a 1, b 1, c 1, d 1, e 1 ..."


def test_a_spreadsheet_is_one_line_saying_what_to_do(tmp_path):
    (tmp_path / "labels.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(ConvirtError, match=r"labels.xlsx: expected a .csv, .tsv or .jsonl file \(or .gz of one\) \(a "
                                           r"spreadsheet: save it as CSV\)"):
        read_rows(tmp_path / "labels.xlsx")
