"""Tests of the preprocessed-tensor cache, manifests and splits (supremix_med.data.cache/manifest/splits)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supremix_med.data import cache as cache_module
from supremix_med.data.cache import DiskFullError, build_cache, read_cache_info, read_fingerprint
from supremix_med.data.manifest import load_manifest, read_manifest_csv
from supremix_med.data.splits import SPLITS, assign_splits

SHAPE = (1, 8, 8, 8)
FINGERPRINT = {"pipeline": "fake", "version": 1, "params": {"spacing": [1.0, 1.0, 1.0]}}


class CountingLoad:
    """Picklable fake ``preprocess``: ``np.load(path)``, logging each call to ``log`` (one line per call).

    With ``die_after=k`` the (k+1)-th call kills its process with ``os._exit`` (like ``kill -9``: no cleanup);
    with ``interrupt_after=k`` it raises ``KeyboardInterrupt`` instead.
    """

    def __init__(self, log: Path | None = None, die_after: int | None = None,
                 interrupt_after: int | None = None) -> None:
        self.log, self.die_after, self.interrupt_after = log, die_after, interrupt_after
        self.calls = 0

    def __call__(self, path: str) -> np.ndarray:
        if self.calls == self.die_after:
            os._exit(3)
        if self.calls == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(path + "\n")
        return np.load(path)


class SleepyLoad:
    """Picklable fake ``preprocess`` that records its process id (a file named by it in ``folder``), then sleeps."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, path: str) -> np.ndarray:
        (self.folder / str(os.getpid())).touch()
        time.sleep(600)
        return np.load(path)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def source_volume(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=SHAPE).astype(np.float32)


def make_manifest(folder: Path, n: int = 12) -> pd.DataFrame:
    """``n`` tiny float32 volumes saved as .npy, and their manifest (id, path, age, sex, site)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"sub{i:02d}.npy"
        np.save(path, source_volume(i))
        rows.append({"id": f"sub{i:02d}", "path": str(path), "age": 40.0 + 3 * i, "sex": "FM"[i % 2],
                     "site": i % 3})
    return pd.DataFrame(rows)


def stored(cache: Path, row: pd.Series) -> np.ndarray:
    return np.load(cache / f"{row['split']}.npy", mmap_mode="r")[row["index"]]


def assert_cache_matches_sources(cache: Path, dtype: str = "float16") -> pd.DataFrame:
    """Every row of manifest.csv reads back as its source volume rounded to ``dtype``; returns manifest.csv."""
    manifest = read_manifest_csv(cache / "manifest.csv")
    for _, row in manifest.iterrows():
        expected = np.load(row["path"]).astype(dtype)
        np.testing.assert_array_equal(stored(cache, row), expected)
    return manifest


def build(manifest: pd.DataFrame, cache: Path, preprocess=np.load, **kwargs) -> pd.DataFrame:
    return build_cache(manifest, cache, preprocess, FINGERPRINT, progress=False, **kwargs)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_build_reads_back_exact_values(tmp_path, dtype):
    manifest = make_manifest(tmp_path / "raw")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean build warns about nothing
        result = build(manifest, tmp_path / "cache", dtype=dtype)
    cache = tmp_path / "cache"

    written = assert_cache_matches_sources(cache, dtype)
    assert list(written.columns) == ["id", "path", "age", "sex", "site", "split", "index"]
    pd.testing.assert_frame_equal(written, result, check_dtype=False)
    assert written["id"].tolist() == manifest["id"].tolist()
    for split, rows in written.groupby("split"):
        assert sorted(rows["index"]) == list(range(len(rows)))
        assert np.load(cache / f"{split}.npy", mmap_mode="r").dtype == np.dtype(dtype)

    info = json.loads((cache / "preprocessing.json").read_text())
    assert info["fingerprint"] == FINGERPRINT
    assert info["sample_shape"] == list(SHAPE) and info["dtype"] == dtype
    assert info["samples"] == written["split"].value_counts().to_dict() and info["failed"] == 0
    assert info["created"] <= info["updated"]
    assert read_fingerprint(cache) == FINGERPRINT
    assert read_cache_info(cache).complete
    assert pd.read_csv(cache / "failures.csv").empty


def test_float16_overflow_and_bad_dtypes_are_bad_items(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=3)
    np.save(manifest.loc[1, "path"], np.full(SHAPE, 1e6, np.float32))
    np.save(manifest.loc[2, "path"], np.ones(SHAPE, np.int16))
    with pytest.warns(UserWarning, match="2 of 3 samples"):
        build(manifest, tmp_path / "cache")
    errors = pd.read_csv(tmp_path / "cache" / "failures.csv").set_index("id")["error"]
    assert "overflow float16" in errors["sub01"] and "dtype='float32'" in errors["sub01"]
    assert "int16" in errors["sub02"]
    assert build(manifest.iloc[1:2], tmp_path / "cache32", dtype="float32")["id"].tolist() == ["sub01"]


def test_bad_items_are_skipped_reported_and_retried(tmp_path):
    manifest = make_manifest(tmp_path / "raw")
    paths = manifest.set_index("id")["path"]
    (tmp_path / "raw" / "sub01.npy").write_text("not an array")  # preprocess raises
    np.save(paths["sub02"], np.zeros((1, 8, 8, 9), np.float32))  # wrong shape
    nan = source_volume(3)
    nan[0, 1, 2, 3] = np.nan
    np.save(paths["sub03"], nan)
    os.remove(paths["sub04"])  # missing file
    bad = ["sub01", "sub02", "sub03", "sub04"]

    with pytest.warns(UserWarning, match="4 of 12 samples") as record:
        result = build(manifest, tmp_path / "cache")
    assert "failures.csv" in str(record[0].message) and "sub01" in str(record[0].message)
    cache = tmp_path / "cache"
    failures = pd.read_csv(cache / "failures.csv").set_index("id")
    assert sorted(failures.index) == bad
    assert failures.loc["sub01", "path"] == paths["sub01"]
    assert "shape (1, 8, 8, 9)" in failures.loc["sub02", "error"]
    assert "non-finite" in failures.loc["sub03", "error"]
    assert failures.loc["sub04", "error"].startswith("FileNotFoundError")
    assert set(result["id"]) == set(manifest["id"]) - set(bad)
    assert_cache_matches_sources(cache)
    assert read_cache_info(cache).failed == 4

    np.save(paths["sub04"], source_volume(4))  # the user restores the file and re-runs
    log = tmp_path / "calls.log"
    with pytest.warns(UserWarning, match="3 of 12 samples"):
        result = build(manifest, cache, CountingLoad(log))
    assert sorted(Path(p).stem for p in calls(log)) == bad  # only the failed samples are retried
    assert "sub04" in set(result["id"])
    assert_cache_matches_sources(cache)


def test_no_valid_sample_raises(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=2).assign(path=lambda m: m["path"] + ".missing")
    with pytest.raises(ValueError, match="no sample could be preprocessed.*FileNotFoundError"):
        build(manifest, tmp_path / "cache")
    assert not read_cache_info(tmp_path / "cache").complete
    assert len(pd.read_csv(tmp_path / "cache" / "failures.csv")) == 2


def test_resume_after_kill(tmp_path):
    manifest_csv = tmp_path / "manifest.csv"
    make_manifest(tmp_path / "raw").to_csv(manifest_csv, index=False)
    cache = tmp_path / "cache"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from test_cache import CountingLoad, FINGERPRINT\n"
              "from supremix_med.data import cache\n"
              "cache.COMMIT_SECONDS = 0.0  # commit every sample, so the kill finds 5 committed\n"
              "from supremix_med.data.manifest import load_manifest\n"
              f"cache.build_cache(load_manifest({str(manifest_csv)!r}), {str(cache)!r}, CountingLoad(die_after=5), "
              "FINGERPRINT, progress=False)\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 3, killed.stderr
    assert not (cache / "complete").exists() and not (cache / "manifest.csv").exists()
    assert not read_cache_info(cache).complete
    journal = (cache / "progress.jsonl").read_text().splitlines()
    assert len(journal) == 5

    # simulate a kill in the middle of the next write: garbage in an unjournalled slot, a torn journal line
    plan = read_manifest_csv(cache / "plan.csv").set_index("id")
    pending = next(i for i in plan.index if i not in {json.loads(line)["id"] for line in journal})
    array = np.load(cache / f"{plan.loc[pending, 'split']}.npy", mmap_mode="r+")
    array[plan.loc[pending, "index"]] = 7.0
    array.flush()
    with open(cache / "progress.jsonl", "a") as f:
        f.write('{"id": "sub1')

    log = tmp_path / "calls.log"
    result = build(load_manifest(manifest_csv), cache, CountingLoad(log))
    assert len(calls(log)) == 12 - 5
    assert len(result) == 12 and (cache / "complete").exists()
    assert_cache_matches_sources(cache)


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_full_disk_is_refused_before_allocating_and_the_build_resumes(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path / "raw")
    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setattr(cache_module.shutil, "disk_usage", lambda path: DiskUsage(10**12, 10**12 - 10**6, 10**6))
        with pytest.raises(DiskFullError) as error:
            build(manifest, cache)
    assert error.value.errno == errno.ENOSPC
    assert str(error.value).startswith(f"disk full at {cache}: need 16.79 MB, have 1.00 MB;")
    assert not (cache / "train.npy").exists() and not read_cache_info(cache).complete
    build(manifest, cache)
    assert_cache_matches_sources(cache)


def test_fallocate_enospc_is_a_disk_full_error_and_the_build_resumes(tmp_path, monkeypatch):
    """The blocks are reserved up front: a file system that cannot give them says so before any write."""
    manifest = make_manifest(tmp_path / "raw")
    cache = tmp_path / "cache"

    def no_space(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module.os, "posix_fallocate", no_space, raising=False)
        with pytest.raises(DiskFullError, match=rf"disk full at {cache}/\w+\.npy: need [\d.]+ MB, have"):
            build(manifest, cache)
    log = tmp_path / "calls.log"
    build(manifest, cache, CountingLoad(log))
    assert len(calls(log)) == 12
    assert_cache_matches_sources(cache)
    for split in ("train", "val", "test"):  # the arrays hold real blocks, not holes a memmap write could SIGBUS on
        assert cache_module._unallocated_bytes(cache / f"{split}.npy") == 0


def test_disk_full_mid_build_keeps_committed_samples_and_resumes_bit_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "COMMIT_SECONDS", 0.0)  # commit every sample
    manifest = make_manifest(tmp_path / "raw")
    cache = tmp_path / "cache"
    append = cache_module._Store._append
    appended = []

    def fills_up(store, text):
        if len(appended) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        appended.append(text)
        append(store, text)

    with monkeypatch.context() as patch:
        patch.setattr(cache_module._Store, "_append", fills_up)
        with pytest.raises(DiskFullError, match=rf"disk full at {cache}/progress\.jsonl: need \d"):
            build(manifest, cache)
    assert len((cache / "progress.jsonl").read_text().splitlines()) == 5
    log = tmp_path / "calls.log"
    build(manifest, cache, CountingLoad(log))
    assert len(calls(log)) == 12 - 5  # the committed samples are kept
    assert_cache_matches_sources(cache)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_build_process_is_killed(tmp_path):
    manifest_csv = tmp_path / "manifest.csv"
    make_manifest(tmp_path / "raw", n=6).to_csv(manifest_csv, index=False)
    pids = tmp_path / "pids"
    pids.mkdir()
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from test_cache import SleepyLoad, FINGERPRINT\n"
              "from supremix_med.data import cache\n"
              "from supremix_med.data.manifest import load_manifest\n"
              f"cache.build_cache(load_manifest({str(manifest_csv)!r}), {str(tmp_path / 'cache')!r}, "
              f"SleepyLoad(__import__('pathlib').Path({str(pids)!r})), FINGERPRINT, workers=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and parent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2 and all(map(_running, workers)), parent.stderr.read() if parent.poll() else workers
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, workers))
    finally:
        parent.kill()
        for pid in filter(_running, workers):  # only if the test failed: do not leave them behind
            os.kill(pid, signal.SIGKILL)


def test_changed_fingerprint_or_manifest_is_refused(tmp_path):
    manifest = make_manifest(tmp_path / "raw")
    cache = tmp_path / "cache"
    build(manifest, cache)
    before = (cache / "manifest.csv").read_bytes(), (cache / "train.npy").read_bytes()

    changed = {**FINGERPRINT, "params": {"spacing": [2.0, 2.0, 2.0]}}
    with pytest.raises(ValueError, match=r"fingerprint\['params.spacing'\].*overwrite"):
        build_cache(manifest, cache, np.load, changed, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        build(manifest, cache, dtype="float32")
    with pytest.raises(ValueError, match="1 id.*not in the cache.*'new'"):
        build(pd.concat([manifest, manifest.iloc[:1].assign(id="new")]), cache)
    with pytest.raises(ValueError, match="another path"):
        build(manifest.assign(path=manifest["path"].str.replace("raw", "raw/.")), cache)
    with pytest.raises(ValueError, match="another split"):
        build(manifest, cache, seed=1)
    assert ((cache / "manifest.csv").read_bytes(), (cache / "train.npy").read_bytes()) == before


def test_metadata_change_updates_manifest_without_reprocessing(tmp_path):
    manifest = make_manifest(tmp_path / "raw")
    cache = tmp_path / "cache"
    build(manifest, cache)
    log = tmp_path / "calls.log"
    relabelled = manifest.assign(age=manifest["age"] + 1, scanner="x").iloc[::-1]
    result = build(relabelled, cache, CountingLoad(log))
    assert calls(log) == []
    assert result["age"].tolist() == relabelled["age"].tolist()
    assert read_manifest_csv(cache / "manifest.csv")["scanner"].eq("x").all()


def test_not_a_cache_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a supremix-med cache"):
        build(make_manifest(tmp_path / "raw"), tmp_path, overwrite=True)


def test_overwrite_replaces_cache_only_when_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "COMMIT_SECONDS", 0.0)  # commit every sample
    manifest = make_manifest(tmp_path / "raw")
    cache = tmp_path / "cache"
    build(manifest, cache)
    old_manifest = (cache / "manifest.csv").read_bytes()
    changed = {**FINGERPRINT, "version": 2}

    with pytest.raises(KeyboardInterrupt):
        build_cache(manifest, cache, CountingLoad(interrupt_after=4), changed, overwrite=True, progress=False)
    assert read_fingerprint(cache) == FINGERPRINT and (cache / "manifest.csv").read_bytes() == old_manifest
    assert_cache_matches_sources(cache)

    log = tmp_path / "calls.log"
    build_cache(manifest, cache, CountingLoad(log), changed, overwrite=True, progress=False)
    assert len(calls(log)) == 12 - 4  # the interrupted rebuild was continued
    assert read_fingerprint(cache) == changed
    assert_cache_matches_sources(cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "calls.log", "raw"]


def test_two_workers_match_one(tmp_path):
    manifest = make_manifest(tmp_path / "raw")
    os.remove(manifest.loc[5, "path"])
    log = tmp_path / "calls.log"
    with pytest.warns(UserWarning, match="1 of 12"):
        one = build(manifest, tmp_path / "one", workers=1)
        two = build(manifest, tmp_path / "two", CountingLoad(log), workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert len(calls(log)) == 11
    for split in SPLITS:
        assert (tmp_path / "one" / f"{split}.npy").read_bytes() == (tmp_path / "two" / f"{split}.npy").read_bytes()


def test_given_split_is_kept(tmp_path):
    manifest = make_manifest(tmp_path / "raw").assign(split=["train"] * 10 + ["test"] * 2)
    result = build(manifest, tmp_path / "cache")
    assert result["split"].tolist() == manifest["split"].tolist()
    assert not (tmp_path / "cache" / "val.npy").exists()
    with pytest.raises(ValueError, match="'split' must be one of.*'validation'.*row 0"):
        build(manifest.assign(split="validation"), tmp_path / "other")


def test_build_cache_argument_errors(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=2)
    with pytest.raises(ValueError, match="dtype must be one of"):
        build(manifest, tmp_path / "c", dtype="uint8")
    with pytest.raises(ValueError, match="must be picklable"):
        build_cache(manifest, tmp_path / "c", lambda path: np.load(path), FINGERPRINT, workers=2)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        build_cache(manifest, tmp_path / "c", np.load, {"f": np.load}, progress=False)
    with pytest.raises(ValueError, match="missing required column.*'path'"):
        build(manifest.drop(columns="path"), tmp_path / "c")
    with pytest.raises(ValueError, match="cannot stratify.*'age'.*stratify=None"):
        build(manifest.drop(columns="age"), tmp_path / "c")
    assert len(build(manifest.drop(columns="age"), tmp_path / "c", stratify=None)) == 2


def test_assign_splits_seeded_stratified_and_proportional():
    ages = pd.DataFrame({"age": np.random.default_rng(0).uniform(20, 80, 400)})
    splits = assign_splits(ages, seed=3)
    assert splits.index.equals(ages.index)
    assert splits.value_counts().to_dict() == {"train": 280, "val": 60, "test": 60}
    assert splits.equals(assign_splits(ages, seed=3))
    assert (splits != assign_splits(ages, seed=4)).mean() > 0.2
    decile = pd.qcut(ages["age"], 10, labels=False)
    per_decile = pd.crosstab(decile, splits)
    assert per_decile["train"].between(27, 29).all() and per_decile["test"].between(5, 7).all()

    odd = assign_splits(ages.iloc[:11], fractions=(0.5, 0.5, 0.0), seed=0)
    assert odd.value_counts().to_dict() == {"train": 6, "val": 5}


def test_assign_splits_errors():
    df = pd.DataFrame({"age": [1.0, 2.0]})
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(df, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="3 non-negative"):
        assign_splits(df, fractions=(1.2, -0.2))
    with pytest.raises(ValueError, match="no such column"):
        assign_splits(df, stratify="bmi")


def test_load_manifest_resolves_paths_and_strips(tmp_path):
    (tmp_path / "scans").mkdir()
    csv = tmp_path / "scans" / "manifest.csv"
    csv.write_text("id , path, age ,sex\n a , a.nii.gz ,61.5, F \nNA,/abs/b.nii.gz,,M\n")
    manifest = load_manifest(csv)
    assert manifest["id"].tolist() == ["a", "NA"]
    assert manifest["path"].tolist() == [str(tmp_path / "scans" / "a.nii.gz"), "/abs/b.nii.gz"]
    assert manifest["age"].iloc[0] == 61.5 and np.isnan(manifest["age"].iloc[1])
    assert manifest["sex"].tolist() == ["F", "M"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,file\na,x\n", r"missing required column\(s\) \['path'\]"),
        ("id,path\na,x\nb,y\na,z\n", "duplicated at line 2 .*line 4"),
        ("id,path\na,x\nb,\n", "empty 'path' at line 3"),
        ("id,path,age\na,x,70\nb,y,seventy\n", "'age' must be a finite number.*'seventy' is not a number at line 3"),
        ("id,path,split\na,x,train\nb,y,dev\n", "'split' must be one of.*'dev'"),
        ("id,path,index\na,x,1\n", "written by the cache"),
    ],
)
def test_load_manifest_errors_name_file_and_line(tmp_path, text, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_manifest(csv)
    assert str(csv) in str(error.value)


class LoadWithQC:
    """Picklable fake ``preprocess_with_qc``: ``(np.load(path), QC record)``; the record mixes numpy scalars, None
    and a nested entry (a transform matrix) that the cache does not store."""

    def __call__(self, path: str) -> tuple[np.ndarray, dict]:
        number = int(Path(path).stem[3:])
        record = {"similarity": np.float32(number / 10), "registered": np.bool_(number % 2 == 0),
                  "decision": f"scan {number}", "mutual_information": None, "matrix": [[1.0, 0.0], [0.0, 1.0]]}
        return np.load(path), record


def test_qc_records_are_stored_per_row_and_survive_a_resume(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=6)
    cache = tmp_path / "cache"
    build(manifest, cache, LoadWithQC(), workers=2)
    qc = cache_module.read_cache_qc(cache)
    assert list(qc.columns) == ["id", "similarity", "registered", "decision", "mutual_information"]
    assert qc["id"].tolist() == manifest["id"].tolist()
    np.testing.assert_allclose(qc["similarity"], np.float32(np.arange(6) / 10))
    assert qc["registered"].tolist() == [True, False] * 3 and qc["decision"][5] == "scan 5"
    assert qc["mutual_information"].isna().all()

    for name in ("manifest.csv", "qc.csv", "complete"):  # a build interrupted after the last sample
        (cache / name).unlink()
    log = tmp_path / "calls.log"
    build(manifest, cache, CountingLoad(log))
    assert calls(log) == []  # nothing recomputed: the QC records come back from the journal
    pd.testing.assert_frame_equal(cache_module.read_cache_qc(cache), qc)


def test_cache_without_qc_records_ids_only(tmp_path):
    build(make_manifest(tmp_path / "raw", n=3), tmp_path / "cache")
    assert list(cache_module.read_cache_qc(tmp_path / "cache").columns) == ["id"]
    (tmp_path / "cache" / "qc.csv").unlink()  # a cache built before QC was stored
    assert cache_module.read_cache_qc(tmp_path / "cache") is None


def test_preprocess_returning_a_non_dict_record_is_a_bad_item(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=2)
    with pytest.raises(ValueError, match=r"expected \(image, dict\) with the QC record second"):
        build(manifest, tmp_path / "cache", lambda path: (np.load(path), [0.5]))
