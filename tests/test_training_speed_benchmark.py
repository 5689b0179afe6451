"""benchmarks/training_speed.py: every figure in its JSON, its guards, and a timer that never sees a pre-filled
queue (checked by when the batches were made, not by how long anything took)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("training_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


speed = _load()

TINY = ["--device", "cpu", "--size", "12", "--widen", "0.0625", "--batch_size", "2", "--steps", "2", "--warmup", "1",
        "--profile_steps", "1", "--workers", "0"]


def test_tiny_cpu_run_reports_every_measurement_without_imaging_libraries():
    """A tiny CPU run in a process where SimpleITK, nibabel and nilearn cannot be imported (the GPU session may
    lack them) prints one JSON object with every measurement."""
    code = ("import sys; sys.modules.update(SimpleITK=None, nibabel=None, nilearn=None); import runpy; "
            f"sys.argv = {[str(SCRIPT), *TINY, '--cases', 'bundle,device_cache']!r}; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], check=True, timeout=600, capture_output=True, text=True)
    result = json.loads(run.stdout)
    assert result["epoch_batches"] == 2 and result["views"] == 2 and result["device"] == "cpu"
    assert [c["case"] for c in result["cases"]] == ["bundle", "device_cache"]
    for case in result["cases"]:
        assert set(case) == {"case", "options", "backbone", "compute", "loader", "end_to_end", "loader_keeps_up"}
        for part in ("backbone", "compute", "loader", "end_to_end"):
            assert case[part]["volumes_per_s"] > 0 and case[part]["samples_per_s"] > 0
        profiles = (case["backbone"]["profile"], case["compute"]["profile"], case["loader"]["prepare_batch_profile"])
        for profile in profiles:
            assert profile["aten_ops_per_step"] > 0 and profile["top_ops_ms_per_step"]
            assert profile["kernel_launches_per_step"] is None and profile["cuda_syncs_per_step"] is None
        assert case["end_to_end"]["steps"] == 2
        assert case["end_to_end"]["gpu_step_time_fraction"] is None
        assert case["end_to_end"]["gpu_utilization_nvml"] is None
        assert {"vs_compute", "vs_backbone"} <= set(case["end_to_end"])
    # decollating reads every label and the loss with .item(): the bundle case makes B + 1 more calls per step
    bundle, fast = (c["compute"]["profile"]["item_calls_per_step"] for c in result["cases"])
    assert bundle >= fast + 2 + 1


def test_epochs_too_small_for_the_prefetch_depth_are_refused():
    assert speed.epoch_batches(50, workers=14, prefetch_factor=2) == 112
    assert speed.epoch_batches(50, workers=0, prefetch_factor=2) == 50
    assert speed.epoch_batches(50, workers=2, prefetch_factor=2, requested=60) == 60
    with pytest.raises(ValueError, match=r"prefetch depth \(14 workers x prefetch_factor 2 = 28 batches\)"):
        speed.epoch_batches(50, workers=14, prefetch_factor=2, requested=100)
    with pytest.raises(ValueError, match="at least 50 timed steps"):
        speed.epoch_batches(50, workers=0, prefetch_factor=2, requested=49)
    with pytest.raises(SystemExit):
        speed.parse_args([*TINY[:-2], "--workers", "2", "--epoch_batches", "15"])


def test_loaders_that_cannot_be_primed_or_were_not_are_refused():
    loader = DataLoader(list(range(8)), num_workers=1)
    with pytest.raises(ValueError, match="persistent_workers=True"):
        speed.time_loader(loader, lambda batch, device, non_blocking: (batch,), torch.device("cpu"), False)
    with pytest.raises(ValueError, match="time the loader first"):
        speed.time_end_to_end(speed.CASES["bundle"], None, torch.device("cpu"), DataLoader(list(range(8))), 1)


class _Stamped(Dataset):
    """Items that append the moment they were made (system-wide monotonic clock) to a file."""

    def __init__(self, log: Path, n: int) -> None:
        self.log, self.n = log, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        with open(self.log, "a", encoding="ascii") as log:
            log.write(f"{time.monotonic()!r}\n")
        return torch.zeros(1)


def test_timed_epoch_only_sees_batches_made_after_the_clock_started(tmp_path, monkeypatch):
    """Workers that ran ahead would have made timed-epoch batches before the clock started: none did."""
    n, log = 16, tmp_path / "made.txt"
    loader = DataLoader(_Stamped(log, n), batch_size=1, num_workers=2, prefetch_factor=2, persistent_workers=True)
    assert speed.epoch_batches(n, workers=2, prefetch_factor=2, requested=n) == n
    starts = []
    original = speed._Clock.start

    def start(self, *args):
        original(self, *args)
        starts.append(time.monotonic())

    monkeypatch.setattr(speed._Clock, "start", start)
    result = speed.time_loader(loader, lambda batch, device, non_blocking: (batch,), torch.device("cpu"), False)
    made = [float(line) for line in log.read_text(encoding="ascii").split()]
    assert result["samples_per_s"] > 0 and len(starts) == 1 and len(made) == 2 * n
    assert sum(t < starts[0] for t in made) == n  # the priming epoch
    assert sum(t > starts[0] for t in made) == n  # the timed epoch, all made while the clock ran
