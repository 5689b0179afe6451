"""Tests of CachedDataset (supremix_med.data.datasets): items, splits, workers, MONAI transforms."""

from __future__ import annotations

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
from supremix_med.data.datasets import CachedDataset

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
        CachedDataset(copy)
    with pytest.raises(ValueError, match="not a supremix-med cache"):
        CachedDataset(tmp_path)

    (copy / "complete").write_text("")
    np.save(copy / "train.npy", np.zeros((2, *SHAPE), np.float16))
    with pytest.raises(ValueError, match="train.npy.*damaged"):
        CachedDataset(copy)


def test_argument_errors(cache, tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        CachedDataset(cache, split="validation")
    with pytest.raises(ValueError, match=r"no column\(s\) \['bmi'\]"):
        CachedDataset(cache, covariates=("bmi",))
    with pytest.raises(ValueError, match="numeric 'sex'"):
        CachedDataset(cache, target="sex")
