"""Label checks of every training data loader (supremix_med.data.labels) and the exclusion report
(supremix_med.data.exclusions): manifests, DIR face splits, tables and sentence pairs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest

from supremix_med.data.exclusions import report_exclusions
from supremix_med.bundles import bundle_names, load_config
from supremix_med.data.labels import check_labels, check_range, label_problems
from supremix_med.data.manifest import load_manifest
from supremix_med.data.sources.faces import read_dir_split
from supremix_med.data.sources.tables import load_table, read_table
from supremix_med.data.sources.text_pairs import read_pairs

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def report(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "excluded.csv", dtype=str, keep_default_na=False)


def test_every_bundle_declares_a_plausible_range():
    ranges = {name: load_config(name, folder=BUNDLES)["plausible_range"] for name in bundle_names(BUNDLES)}
    assert len(ranges) == 9 and all(check_range(name, r) == tuple(r) for name, r in ranges.items())
    assert ranges["ukb_brainage"] == [0.0, 120.0] and ranges["xray_boneage"] == [0.0, 240.0]


def test_label_problems_name_each_kind():
    values = pd.Series(["61", "", None, "abc", "inf", "-inf", "-5", "999", "120"])
    assert label_problems(values, (0, 120)).tolist() == [
        "", "missing", "missing", "'abc' is not a number", "inf is not finite", "-inf is not finite",
        "-5 is outside the plausible range [0, 120]", "999 is outside the plausible range [0, 120]", ""]
    assert label_problems(pd.Series([-5.0, math.nan])).tolist() == ["", "missing"]  # no range: any finite number


@pytest.mark.parametrize("bounds", [(120, 0), (0, math.nan), (None, 1), "0-120", (1,)])
def test_check_range_refuses_malformed_ranges(bounds):
    with pytest.raises(ValueError, match=r"label_range must be \(low, high\) with low < high"):
        check_range("label_range", bounds)
    with pytest.raises(ValueError, match="label_policy must be one of"):
        check_labels(pd.DataFrame({"id": ["a"], "y": [1.0]}), "y", label_policy="ignore")


def test_manifest_refuses_inf_ages_naming_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,age\na,x.nii,70\nb,y.nii,inf\nc,z.nii,\n")
    with pytest.raises(ValueError, match=r"m.csv: 'age' must be a finite number .*inf is not finite at line 3 "
                                         r"\(id 'b'\)"):
        load_manifest(tmp_path / "m.csv")


def test_manifest_target_range_refuses_or_drops_with_a_report(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,age,split\na,x.nii,70,train\nb,y.nii,-5,train\nc,z.nii,,val\n"
                                    "d,w.nii,999,test\n")
    assert len(load_manifest(tmp_path / "m.csv")) == 4  # no target named: an empty age is an unlabelled sample
    with pytest.raises(ValueError) as error:
        load_manifest(tmp_path / "m.csv", target="age", label_range=(0, 120))
    assert str(error.value).startswith(f"{tmp_path / 'm.csv'}: 3 unusable 'age' label(s), plausible range [0, 120]: "
                                       "line 3 (id 'b'): -5 is outside the plausible range [0, 120]; line 4 (id 'c'): "
                                       "missing; line 5 (id 'd'): 999 is outside")
    kept = load_manifest(tmp_path / "m.csv", target="age", label_range=(0, 120), label_policy="drop",
                         output_dir=tmp_path / "out")
    assert kept["id"].tolist() == ["a"] and kept.index.tolist() == [0]
    assert report(tmp_path / "out")[["id", "split"]].values.tolist() == [["b", "train"], ["c", "val"], ["d", "test"]]
    with pytest.raises(ValueError, match=r"no target column 'ef'"):
        load_manifest(tmp_path / "m.csv", target="ef")


def test_face_split_drops_implausible_ages(tmp_path):
    (tmp_path / "split.csv").write_text("age,path,split\n30,a.jpg,train\n150,b.jpg,train\n-1,c.jpg,val\n40,d.jpg,test\n")
    table = read_dir_split(tmp_path / "split.csv", label_range=(0, 120), label_policy="drop", output_dir=tmp_path)
    assert table["id"].tolist() == ["a.jpg", "d.jpg"] and table["line"].tolist() == [2, 5]
    assert report(tmp_path)["reason"].tolist() == ["label 150 is outside the plausible range [0, 120]",
                                                   "label -1 is outside the plausible range [0, 120]"]


def test_table_targets_are_screened_features_still_refused(tmp_path, caplog):
    rows = "\n".join(f"{i},{2 * i},{100 + i}" for i in range(1, 21))
    (tmp_path / "t.csv").write_text(f"x1,x2,db\n{rows}\n7,8,inf\n9,10,250\n11,12,\n")
    with pytest.raises(ValueError, match=r"t.csv: 3 unusable 'db' label\(s\), plausible range \[0, 194\]: row 21 "
                                         r"\(id '21'\): inf is not finite; row 22 \(id '22'\): 250 is outside"):
        read_table(tmp_path / "t.csv", "db", label_range=(0, 194))
    with caplog.at_level(logging.WARNING):
        table = load_table(tmp_path / "t.csv", "db", label_range=(0, 194), label_policy="drop", output_dir=tmp_path)
    assert "left out 3 of 23 sample(s)" in caplog.text
    assert table.values.index.max() == 19 and len(table.values) == 20  # ids stay the file's row numbers
    assert report(tmp_path)["id"].tolist() == ["21", "22", "23"]
    (tmp_path / "f.csv").write_text("x1,db\n1,100\nbad,101\n")
    with pytest.raises(ValueError, match=r"row 2, column 'x1': 'bad' is not a finite number"):
        read_table(tmp_path / "f.csv", "db", label_policy="drop")


def test_sentence_pair_scores_outside_0_5_are_dropped(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t4.5\n1\tc\td\t7\n2\te\tf\t-1\n")
    with pytest.raises(ValueError, match=r"2 unusable 'score' label\(s\), plausible range \[0, 5\]: line 3 \(id '1'\)"):
        read_pairs(tmp_path / "train.tsv", label_range=(0, 5))
    pairs = read_pairs(tmp_path / "train.tsv", label_range=(0, 5), label_policy="drop", output_dir=tmp_path)
    assert pairs["id"].tolist() == ["0"] and pairs.index.tolist() == [0]
    assert report(tmp_path)["id"].tolist() == ["1", "2"]


def test_report_replaces_its_own_rows_and_refuses_a_foreign_file(tmp_path):
    rows = pd.DataFrame({"id": ["a", "b"], "split": ["train", "val"], "reason": ["x", "y"]})
    report_exclusions(rows, "first.csv", ["train", "val"], tmp_path)
    report_exclusions(rows.iloc[:1].assign(reason="z"), "second.csv", ["train"], tmp_path)
    report_exclusions(rows.iloc[:0], "first.csv", ["train"], tmp_path)  # first.csv's train rows are gone now
    assert report(tmp_path).values.tolist() == [["b", "val", "y", "first.csv"], ["a", "train", "z", "second.csv"]]
    (tmp_path / "excluded.csv").write_text("name,value\n1,2\n")
    with pytest.raises(ValueError, match="not an exclusion report"):
        report_exclusions(rows, "first.csv", ["train"], tmp_path)
