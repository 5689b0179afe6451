"""Tests of CachedDataset (supremix_med.data.datasets): items, splits, workers, MONAI transforms."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, Flipd, ScaleIntensityd

from supremix_med.data.cache import build_cache
from supremix_med.data.datasets import CachedDataset, read_records

SHAPE = (1, 6, 6, 6)
N = 20


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache of N tiny volumes; sample i is filled from seed i and has age 30 + i, sex F/M, site i % 3."""
    root = tmp_path_factory.mktemp("cached")
    rows = []
    for i in range(N):
        path = root / f"s{i}.npy"
        np.save(path, np.random.default_rng(i).normal(size=SHAPE).astype(np.float32))
        rows.append({"id": f"s{i}", "path": str(path), "age": 30.0 + i, "sex": "FM"[i % 2], "site": i % 3})
    rows[3]["sex"] = None
    build_cache(pd.DataFrame(rows), root / "cache", np.load, {"pipeline": "test"}, progress=False)
    return root / "cache"


def expected_image(sample_id: str, cache: Path) -> torch.Tensor:
    source = np.load(cache.parent / f"{sample_id}.npy")
    return torch.from_numpy(source.astype(np.float16).astype(np.float32))


def test_items_hold_image_label_id_and_covariates(cache):
    dataset = CachedDataset(cache, split="train", covariates=("sex", "site"))
    manifest = pd.read_csv(cache / "manifest.csv")
    train_ids = manifest.loc[manifest["split"] == "train", "id"].tolist()
    assert dataset.ids == train_ids and len(dataset) == len(train_ids)
    np.testing.assert_array_equal(dataset.labels, [30.0 + int(i[1:]) for i in train_ids])
    assert dataset.labels.dtype == np.float32

    for n, sample_id in enumerate(train_ids):
        item = dataset[n]
        assert set(item) == {"image", "label", "id", "sex", "site"}
        assert item["id"] == sample_id
        assert item["image"].dtype == torch.float32 and item["image"].shape == SHAPE
        torch.testing.assert_close(item["image"], expected_image(sample_id, cache), rtol=0, atol=0)
        assert item["label"].dtype == torch.float32 and item["label"].tolist() == [30.0 + int(sample_id[1:])]
        assert item["site"].tolist() == [float(int(sample_id[1:]) % 3)]
        assert item["sex"] == ("" if sample_id == "s3" else "FM"[int(sample_id[1:]) % 2])


def test_split_lists_and_all_concatenate(cache):
    parts = {s: CachedDataset(cache, split=s).ids for s in ("train", "val", "test")}
    assert CachedDataset(cache, split=["test", "val"]).ids == parts["test"] + parts["val"]
    everything = CachedDataset(cache, split="all")
    assert everything.ids == parts["train"] + parts["val"] + parts["test"]
    assert sorted(everything.ids) == sorted(f"s{i}" for i in range(N))
    assert isinstance(everything[2:5], torch.utils.data.Subset)


def test_dataloader_with_two_workers_and_monai_transform(cache):
    flip_scale = Compose([Flipd(keys="image", spatial_axis=0), ScaleIntensityd(keys="image", minv=0.0, maxv=1.0)])
    dataset = CachedDataset(cache, split="all", transform=flip_scale)
    dataset[0]  # arrays opened in the parent must not travel to the workers
    assert len(pickle.dumps(dataset)) < 20_000

    seen: dict[str, torch.Tensor] = {}
    for batch in DataLoader(dataset, batch_size=3, num_workers=2, shuffle=True):
        assert batch["image"].shape[1:] == SHAPE and batch["label"].shape[1:] == (1,)
        for sample_id, image, label in zip(batch["id"], batch["image"], batch["label"]):
            seen[sample_id] = torch.as_tensor(image)
            assert label.item() == 30.0 + int(sample_id[1:])
    assert sorted(seen) == sorted(dataset.ids)
    for sample_id, image in seen.items():
        flipped = torch.flip(expected_image(sample_id, cache), dims=[1])
        scaled = (flipped - flipped.min()) / (flipped.max() - flipped.min())
        torch.testing.assert_close(image, scaled)


def test_incomplete_or_damaged_cache_is_refused(cache, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    (copy / "complete").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        len(CachedDataset(copy))
    with pytest.raises(ValueError, match="not a supremix-med cache"):
        len(CachedDataset(tmp_path))

    (copy / "complete").write_text("")
    np.save(copy / "train.npy", np.zeros((2, *SHAPE), np.float16))
    with pytest.raises(ValueError, match="train.npy.*damaged"):
        len(CachedDataset(copy))


def test_argument_errors(cache, tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        CachedDataset(cache, split="validation")
    with pytest.raises(ValueError, match=r"no column\(s\) \['bmi'\]"):
        len(CachedDataset(cache, covariates=("bmi",)))
    with pytest.raises(ValueError, match=r"manifest.csv: \d+ unusable 'sex' label\(s\): line \d+ \(id 's\d+'\): '[FM]' is not a number"):
        len(CachedDataset(cache, target="sex"))


# ------------------------------------------------------------------------------ screening: QC and labels
QC_SIMILARITY = {"ok0": 0.9, "ok1": 0.8, "ok2": 0.7, "bad-reg": -0.15, "ok3": 0.85, "ok4": 0.6}


def with_qc(path: str) -> tuple[np.ndarray, dict]:
    """Fake T1 ``preprocess_with_qc``: the saved volume and a QC record whose similarity is set per id."""
    sample_id = Path(path).stem
    return np.load(path), {"registered": True, "register_decision": "registered",
                           "registration_similarity": QC_SIMILARITY[sample_id], "non_brain_fraction": 0.01}


@pytest.fixture(scope="module")
def qc_cache(tmp_path_factory) -> Path:
    """A cache named after the T1 pipeline (whose QC_LIMITS apply by default): 'bad-reg' failed registration."""
    root = tmp_path_factory.mktemp("qc")
    rows = []
    for i, sample_id in enumerate(QC_SIMILARITY):
        np.save(root / f"{sample_id}.npy", np.full(SHAPE, float(i), np.float32))
        rows.append({"id": sample_id, "path": str(root / f"{sample_id}.npy"), "age": 50.0 + i,
                     "split": "train" if i < 4 else "val"})
    build_cache(pd.DataFrame(rows), root / "cache", with_qc, {"pipeline": "t1"}, progress=False)
    return root / "cache"


def excluded(output_dir: Path) -> pd.DataFrame:
    return pd.read_csv(output_dir / "excluded.csv", dtype=str, keep_default_na=False)


def test_failed_qc_is_excluded_by_default_and_reported(qc_cache, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = CachedDataset(qc_cache, split="train", output_dir=tmp_path)
    assert dataset.ids == ["ok0", "ok1", "ok2"]
    assert "left out 1 of 4 sample(s)" in caplog.text and "'bad-reg' (QC: registration similarity -0.15 below 0.5)" \
        in caplog.text
    report = excluded(tmp_path)
    assert report.to_dict("records") == [{"id": "bad-reg", "split": "train",
                                          "reason": "QC: registration similarity -0.15 below 0.5",
                                          "source": str(qc_cache)}]


def test_qc_policies_keep_and_fail_and_explicit_limits(qc_cache, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        kept = CachedDataset(qc_cache, split="train", qc_policy="keep", output_dir=tmp_path)
    assert "bad-reg" in kept.ids and "keeping 1 sample(s) that fail QC" in caplog.text
    assert excluded(tmp_path).empty  # nothing left out: the report says so
    with pytest.raises(ValueError, match=r"1 sample\(s\) fail QC: 'bad-reg' \(registration similarity -0.15 below "
                                         r"0.5\).*qc_policy='exclude'"):
        len(CachedDataset(qc_cache, split="train", qc_policy="fail"))
    strict = CachedDataset(qc_cache, split="all", qc_limits={"registration_similarity": (0.75, None)})
    assert strict.ids == ["ok0", "ok1", "ok3"]
    assert len(CachedDataset(qc_cache, split="all", qc_limits={})) == 6
    with pytest.raises(ValueError, match="qc_policy must be one of"):
        CachedDataset(qc_cache, qc_policy="drop")


def test_cache_without_qc_keeps_every_row_and_says_so(qc_cache, tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(qc_cache, old)
    (old / "qc.csv").unlink()  # built before QC was stored
    with caplog.at_level(logging.WARNING):
        assert len(CachedDataset(old, split="train")) == 4
    assert "['registration_similarity', 'non_brain_fraction'] were not recorded" in caplog.text
    with pytest.raises(ValueError, match="were not recorded.*into a new folder with the pipeline.s preprocess_with_qc"):
        len(CachedDataset(old, split="train", qc_policy="fail"))


def test_exclusion_report_collects_every_split_once(qc_cache, tmp_path):
    read_records(CachedDataset(qc_cache, split="val", output_dir=tmp_path,
                               qc_limits={"registration_similarity": (0.65, None)}),
                 CachedDataset(qc_cache, split="train", output_dir=tmp_path),
                 CachedDataset(qc_cache, split="train", output_dir=tmp_path))  # pre-training and training: one split
    assert sorted(zip(excluded(tmp_path)["id"], excluded(tmp_path)["split"])) == [("bad-reg", "train"),
                                                                                  ("ok4", "val")]


@pytest.fixture()
def labelled_cache(qc_cache, tmp_path) -> Path:
    """A copy of ``qc_cache`` whose manifest holds the bad ages a user may type: -5, 999, inf and empty."""
    copy = tmp_path / "labelled"
    shutil.copytree(qc_cache, copy)
    manifest = pd.read_csv(copy / "manifest.csv", dtype=str)
    manifest["age"] = ["-5", "61", "999", "inf", "", "70"]
    manifest.to_csv(copy / "manifest.csv", index=False)
    return copy


def test_unusable_labels_are_refused_naming_ids_and_lines(labelled_cache):
    with pytest.raises(ValueError) as error:
        len(CachedDataset(labelled_cache, split="all", label_range=(0, 120), qc_limits={}))
    message = str(error.value)
    assert "\n" not in message and "manifest.csv: 4 unusable 'age' label(s), plausible range [0, 120]" in message
    for text in ("line 2 (id 'ok0'): -5 is outside the plausible range [0, 120]",
                 "line 4 (id 'ok2'): 999 is outside", "line 5 (id 'bad-reg'): inf is not finite",
                 "line 6 (id 'ok3'): missing", "label_policy='drop'"):
        assert text in message
    with pytest.raises(ValueError, match=r"2 unusable 'age' label\(s\): line 5 \(id 'bad-reg'\): inf is not finite; line 6 \(id 'ok3'\): missing\. "):
        len(CachedDataset(labelled_cache, split="all"))  # without a range: still no inf and no empty label


def test_label_policy_drop_leaves_them_out_with_a_report(labelled_cache, tmp_path):
    dataset = CachedDataset(labelled_cache, split="all", label_range=(0, 120), label_policy="drop",
                            output_dir=tmp_path)
    assert dataset.ids == ["ok1", "ok4"]  # bad-reg's age is inf: failing QC too, it is reported once
    np.testing.assert_array_equal(dataset.labels, [61.0, 70.0])
    reasons = excluded(tmp_path).set_index("id")["reason"].to_dict()
    assert reasons == {"ok0": "label -5 is outside the plausible range [0, 120]",
                       "ok2": "label 999 is outside the plausible range [0, 120]",
                       "bad-reg": "label inf is not finite", "ok3": "label missing"}
    with pytest.raises(ValueError, match="no sample of split.*left after screening"):
        len(CachedDataset(labelled_cache, split="train", label_range=(100, 120), label_policy="drop"))
