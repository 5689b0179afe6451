"""DeviceCacheLoader: the cache's samples gathered on the device, epochs, shards, memory guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.transforms import Compose, ScaleIntensityd

from supremix_med.data import device_cache
from supremix_med.data.cache import build_cache
from supremix_med.data.datasets import CachedDataset
from supremix_med.data.device_cache import DeviceCacheLoader

SHAPE = (1, 5, 4, 3)
N = 14


def _volume(path: str) -> np.ndarray:
    """Sample ``s<i>``: normal noise seeded i."""
    return np.random.default_rng(int(Path(path).stem[1:])).normal(size=SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """N tiny float16 volumes, 10 in train and 4 in val; sample i has age 40 + i, site i % 3 and sex F/M."""
    root = tmp_path_factory.mktemp("device_cache")
    paths = [root / f"s{i}.raw" for i in range(N)]
    for path in paths:
        path.touch()
    manifest = pd.DataFrame({"id": [p.stem for p in paths], "path": [str(p) for p in paths],
                             "age": 40.0 + np.arange(N), "site": np.arange(N) % 3, "sex": ["F", "M"] * (N // 2),
                             "split": ["train"] * 10 + ["val"] * (N - 10)})
    build_cache(manifest, root / "cache", _volume, {"pipeline": "test"}, progress=False)
    return root / "cache"


def test_batches_hold_the_datasets_items(cache):
    dataset = CachedDataset(cache, ["train", "val"], covariates=("site", "sex"))
    loader = DeviceCacheLoader(dataset, batch_size=4, device="cpu", shuffle=False, drop_last=False)
    assert len(loader) == 4
    items = {dataset[n]["id"]: dataset[n] for n in range(len(dataset))}
    seen = []
    for batch in loader:
        assert set(batch) == {"image", "label", "id", "site", "sex"}
        assert batch["image"].dtype == torch.float32 and batch["label"].shape == (len(batch["id"]), 1)
        for row, sample_id in enumerate(batch["id"]):
            item = items[sample_id]
            assert torch.equal(batch["image"][row], item["image"])
            assert torch.equal(batch["label"][row], item["label"]) and torch.equal(batch["site"][row], item["site"])
            assert batch["sex"][row] == item["sex"]
        seen += batch["id"]
    assert seen == dataset.ids


def test_every_epoch_is_a_new_permutation_of_the_shard(cache):
    loader = DeviceCacheLoader(CachedDataset(cache, "train"), batch_size=3, device="cpu", seed=7)
    assert len(loader) == 3  # 10 samples, drop_last
    first, second = ([i for b in loader for i in b["id"]] for _ in range(2))
    assert len(set(first)) == 9 and len(set(second)) == 9 and first != second
    loader.set_epoch(0)
    assert [i for b in loader for i in b["id"]] == first


def test_a_checkpoint_restores_the_next_permutation(cache):
    """The training checkpoint's loader state (engines.checkpoints) of a DeviceCacheLoader is its epoch: a resumed
    loader gives the order the interrupted one would have given next."""
    from supremix_med.engines.checkpoints import _load_loader_state, _loader_state

    dataset = CachedDataset(cache, "train")
    loader = DeviceCacheLoader(dataset, batch_size=3, device="cpu", seed=3)
    for _ in range(2):
        list(loader)
    state = _loader_state(loader)
    expected = [i for b in loader for i in b["id"]]
    resumed = DeviceCacheLoader(dataset, batch_size=3, device="cpu", seed=3)
    _load_loader_state(resumed, state)
    assert state == {"own": {"epoch": 2}} and [i for b in resumed for i in b["id"]] == expected


def test_ranks_hold_disjoint_equal_shards(cache):
    dataset = CachedDataset(cache, ["train", "val"])
    shards = [DeviceCacheLoader(dataset, 2, "cpu", rank=r, world_size=3).ids for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert len(set().union(*shards)) == 12 and set().union(*shards) <= set(dataset.ids)
    with pytest.raises(ValueError, match="rank 3"):
        DeviceCacheLoader(dataset, 2, "cpu", rank=3, world_size=3)
    with pytest.raises(ValueError, match="no full batch"):
        DeviceCacheLoader(dataset, 5, "cpu", rank=0, world_size=3)


def test_refuses_a_dataset_with_per_sample_transforms(cache):
    dataset = CachedDataset(cache, "train", transform=Compose([ScaleIntensityd(keys="image")]))
    with pytest.raises(ValueError, match="BatchAugmentation"):
        DeviceCacheLoader(dataset, 2, "cpu")
    DeviceCacheLoader(CachedDataset(cache, "train", transform=Compose([])), 2, "cpu")  # an empty Compose is fine


def test_a_cache_that_does_not_fit_is_refused_before_loading(cache, monkeypatch):
    needed = 10 * int(np.prod(SHAPE)) * 2  # 10 float16 samples
    monkeypatch.setattr(device_cache, "device_memory", lambda device: (needed + 100, 1000))
    with pytest.raises(ValueError, match=r"need 0\.0 GiB on cpu.*reserve_fraction=0\.25.*more ranks"):
        DeviceCacheLoader(CachedDataset(cache, "train"), 2, "cpu")
    loader = DeviceCacheLoader(CachedDataset(cache, "train"), 2, "cpu", reserve_fraction=0.0)
    assert loader.images.dtype == torch.float16 and loader.images.shape == (10, *SHAPE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_live_on_the_gpu(cache):
    loader = DeviceCacheLoader(CachedDataset(cache, "train"), 4, "cuda")
    batch = next(iter(loader))
    assert batch["image"].is_cuda and batch["label"].is_cuda
