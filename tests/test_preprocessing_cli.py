"""The command line every preprocessing module shares (preprocessing._common.run_cli): refusals are one line
naming the file and what to do, with exit status 2; ``--debug`` shows the traceback; a manifest's labels are checked
against the plausible range of the bundle the module feeds before anything is preprocessed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from preprocessing import _common, fmri, pet, t1, ukb, ultrasound, xray
from supremix_med.bundles import bundle_names, load_config
from supremix_med.data.cache import DiskFullError

REPO = Path(__file__).resolve().parents[1]
CACHE_CLIS = {"t1": t1, "pet": pet, "fmri": fmri, "xray": xray, "ultrasound": ultrasound}


def _refusal(main, argv: list[str], capsys) -> str:
    """The stderr of a refused run, checked to be one line with status 2."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == _common.EXIT_REFUSED
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    return error


@pytest.mark.parametrize("name", sorted(CACHE_CLIS))
def test_bad_manifest_is_one_line_naming_the_file_with_status_2(name, tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,file\na,a.nii.gz\n")
    error = _refusal(CACHE_CLIS[name].main, ["--manifest", str(manifest), "--output", str(tmp_path / "c")], capsys)
    assert error == (f"python -m preprocessing.{name}: error: {manifest}: missing required column(s) ['path']; found "
                     "columns ['id', 'file']. Correct the manifest and run again.\n")


def test_refusals_say_what_which_file_and_what_to_do(tmp_path, capsys):
    _tiny_scans(tmp_path / "scans", 2)
    manifest, cache = tmp_path / "manifest.csv", tmp_path / "cache"
    manifest.write_text("id,path\na,scans/s0.nii.gz\nb,scans/s1.nii.gz\n")
    arguments = ["--manifest", str(manifest), "--output", str(cache), "--register", "never"]

    error = _refusal(t1.main, arguments, capsys)  # no age to stratify the splits by, no split column
    assert f"{manifest}: no 'age' column to stratify" in error and "add it, or a 'split' column" in error

    manifest.write_text("id,path,split\na,scans/s0.nii.gz,train\nb,scans/s1.nii.gz,val\n")
    t1.main(arguments)
    assert "2 scans in the cache" in capsys.readouterr().out
    error = _refusal(t1.main, [*arguments[:-1], "always"], capsys)  # changed parameters
    assert error.startswith(f"python -m preprocessing.t1: error: {cache} holds a cache built otherwise: ")
    assert "fingerprint['params.register']: cache has 'never', now 'always'" in error and "--overwrite" in error

    error = _refusal(t1.main, ["--manifest", str(tmp_path / "nowhere.csv"), "--output", str(cache)], capsys)
    assert error == (f"python -m preprocessing.t1: error: manifest not found: {tmp_path / 'nowhere.csv'}; check "
                     "--manifest.\n")
    error = _refusal(ukb.main, ["--ukb_root", str(tmp_path / "ukb"), "--age_table", str(manifest),
                                "--output", str(tmp_path / "m.csv")], capsys)
    assert error == f"python -m preprocessing.ukb: error: UK Biobank folder not found: {tmp_path / 'ukb'}\n"


def test_debug_shows_the_traceback(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,file\na,a.nii.gz\n")
    with pytest.raises(ValueError, match="missing required column") as error:  # uncaught: Python prints the traceback
        pet.main(["--manifest", str(manifest), "--output", str(tmp_path / "c"), "--debug"])
    assert isinstance(error.value.__cause__, ValueError) and capsys.readouterr().err == ""


def test_environment_failures_exit_1(tmp_path, capsys):
    def full(args):
        raise DiskFullError(tmp_path, 3 * 10**9, 10**9)

    with pytest.raises(SystemExit) as exit_:
        _common.run_cli(_common.cache_parser("prog", "test"), ["--manifest", "m.csv", "--output", "o"], full)
    assert exit_.value.code == _common.EXIT_FAILED
    assert capsys.readouterr().err == f"prog: error: disk full at {tmp_path}: need 3.00 GB, have 1.00 GB; free some " \
                                      "space (or choose another output folder) and run again: the build continues " \
                                      "where it stopped.\n"


def _tiny_scans(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        data = np.random.default_rng(i).normal(size=(12, 12, 12)).astype(np.float32) + 5.0
        t1.nib.save(t1.nib.Nifti1Image(data, np.diag([8.0, 8.0, 8.0, 1.0])), folder / f"s{i}.nii.gz")


def test_left_out_samples_are_a_one_line_warning(tmp_path):
    _tiny_scans(tmp_path / "scans", 1)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,path,split\na,scans/s0.nii.gz,train\nb,scans/gone.nii.gz,train\n")
    command = [sys.executable, "-m", "preprocessing.t1", "--manifest", str(manifest), "--output",
               str(tmp_path / "cache"), "--register", "never"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and warning[0].startswith(
        "python -m preprocessing.t1: warning: 1 of 2 samples could not be preprocessed and are left out of the cache;")
    assert f"'b': FileNotFoundError: no such file or folder: {tmp_path / 'scans' / 'gone.nii.gz'}" in warning[0]


# ------------------------------------------------------------------------------------------------- labels
def test_unusable_ages_refuse_the_manifest_before_any_scan_is_read(tmp_path, capsys):
    manifest, cache = tmp_path / "manifest.csv", tmp_path / "cache"
    ages = {"a": "-5", "b": "999", "c": "inf", "d": "", "e": "-inf", "f": "130", "g": "70"}
    manifest.write_text("id,path,age\n" + "".join(f"{i},nowhere/{i}.nii.gz,{age}\n" for i, age in ages.items()))
    error = _refusal(t1.main, ["--manifest", str(manifest), "--output", str(cache)], capsys)
    assert error.startswith(f"python -m preprocessing.t1: error: {manifest}: 6 unusable 'age' label(s), plausible "
                            "range [0, 120]: line 2 (id 'a'): -5 is outside the plausible range [0, 120]; line 3 "
                            "(id 'b'): 999 is outside the plausible range [0, 120]; line 4 (id 'c'): inf is not "
                            "finite; line 5 (id 'd'): missing; line 6 (id 'e'): -inf is not finite; and 1 more.")
    assert "or pass --label_policy drop to leave these samples out" in error
    assert not cache.exists()  # refused before the cache (or any scan) was touched


def test_label_policy_drop_caches_the_good_rows_and_lists_the_others(tmp_path, capsys):
    _tiny_scans(tmp_path / "scans", 2)
    manifest, cache = tmp_path / "manifest.csv", tmp_path / "cache"
    manifest.write_text("id,path,age,split\na,scans/s0.nii.gz,70,train\nb,nowhere.nii.gz,-5,train\n"
                        "c,nowhere.nii.gz,999,val\nd,nowhere.nii.gz,inf,train\ne,nowhere.nii.gz,,test\n"
                        "f,scans/s1.nii.gz,40,val\n")
    with pytest.warns(UserWarning) as caught:
        t1.main(["--manifest", str(manifest), "--output", str(cache), "--register", "never", "--label_policy", "drop"])
    assert "2 scans in the cache" in capsys.readouterr().out
    assert len(caught) == 1 and f"{manifest}: left out 4 of 6 sample(s)" in str(caught[0].message)
    cached = pd.read_csv(cache / "manifest.csv", dtype={"id": str})
    assert cached["id"].tolist() == ["a", "f"] and cached["age"].tolist() == [70.0, 40.0]
    report = pd.read_csv(cache / "excluded.csv", dtype=str, keep_default_na=False)
    assert report.values.tolist() == [
        ["b", "", "label -5 is outside the plausible range [0, 120]", str(manifest)],
        ["c", "", "label 999 is outside the plausible range [0, 120]", str(manifest)],
        ["d", "", "label inf is not finite", str(manifest)],
        ["e", "", "label missing", str(manifest)],
    ]


@pytest.mark.parametrize("name", [*sorted(CACHE_CLIS), "ukb"])
def test_each_command_checks_labels_against_the_bundle_it_feeds(name):
    module = CACHE_CLIS.get(name, ukb)
    low, high = _common.bundle_label_range(module.BUNDLE)
    assert 0 <= low < high and module.BUNDLE in bundle_names()
    pipeline = t1.PIPELINE if module is ukb else module.PIPELINE
    assert load_config(module.BUNDLE, "inference.json")["pipeline"] == pipeline  # the bundle takes this module's data
    assert module._parser().get_default("label_policy") == "refuse"
