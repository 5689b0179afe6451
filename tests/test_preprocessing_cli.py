"""The command line every preprocessing module shares (preprocessing._common.run_cli): refusals are one line
naming the file and what to do, with exit status 2; ``--debug`` shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing import _common, fmri, pet, t1, ukb, ultrasound, xray
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
