"""Time windows of parcel series: random training windows (MONAI), window-averaged and subject-averaged evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import RandSpatialCropd

from supremix_med.engines import (
    BiasCorrectionHandler, SelectedModelLoader, SubjectAveragingCollector, TestReport, WindowAveragingInferer,
    sliding_windows,
)
from supremix_med.networks import build_model


class CountingNetwork(torch.nn.Module):
    """[N, C, W] -> [N, 2]: (mean of channel 0, window's first frame value of channel 1); counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return torch.stack([x[:, 0].mean(dim=-1), x[:, 1, 0]], dim=1)


def _series(b: int = 3, c: int = 4, t: int = 23) -> torch.Tensor:
    return torch.randn(b, c, t, generator=torch.Generator().manual_seed(0))


def test_rand_spatial_crop_cuts_a_contiguous_time_window():
    """The training recipe's MONAI crop over a [C, T] item: parcels kept, W consecutive frames, random start."""
    series = torch.arange(3 * 40, dtype=torch.float32).reshape(3, 40)
    crop = RandSpatialCropd(keys="image", roi_size=[8], random_size=False)
    crop.set_random_state(0)
    starts = set()
    for _ in range(20):
        window = crop({"image": series})["image"]
        assert window.shape == (3, 8)
        start = int(window[0, 0])
        torch.testing.assert_close(window.as_tensor(), series[:, start:start + 8])
        starts.add(start)
    assert len(starts) > 5


@pytest.mark.parametrize("stride", [1, 5, 7, 30])
def test_inferer_averages_the_sliding_windows_of_each_sample(stride):
    series, network = _series(), CountingNetwork()
    pred = WindowAveragingInferer(window=6, stride=stride)(series, network)
    expected = torch.stack([network(sliding_windows(s, 6, stride)).mean(dim=0) for s in series])
    torch.testing.assert_close(pred, expected)
    assert pred.shape == (3, 2)
    n_windows = len(sliding_windows(series[0], 6, stride))
    assert network.calls[0] == 3 * n_windows  # the whole batch's windows in one call


def test_inferer_chunks_windows_and_passes_network_arguments():
    series = _series()
    calls: list[int] = []

    def network(x: torch.Tensor, scale: float) -> torch.Tensor:
        calls.append(len(x))
        return scale * x.mean(dim=(1, 2))[:, None]

    whole = WindowAveragingInferer(window=5, stride=3)(series, network, scale=2.0)
    chunked = WindowAveragingInferer(window=5, stride=3, sw_batch_size=4)(series, network, scale=2.0)
    torch.testing.assert_close(chunked, whole)
    assert calls == [21, 4, 4, 4, 4, 4, 1]  # 3 samples x 7 windows (starts 0, 3, ..., 18): at once, then by 4


def test_inferer_windows_match_sliding_windows_and_full_length_is_one_window():
    series = _series(t=10)
    inferer = WindowAveragingInferer(window=4, stride=3)
    windows = inferer.windows(series)
    for b in range(len(series)):
        torch.testing.assert_close(windows[b], sliding_windows(series[b], 4, 3))
    network = CountingNetwork()
    torch.testing.assert_close(WindowAveragingInferer(window=10)(MetaTensor(series), network), network(series))


def test_inferer_errors_name_the_problem():
    with pytest.raises(ValueError, match="fewer than the window of 30 frames"):
        WindowAveragingInferer(window=30)(_series(t=23), CountingNetwork())
    with pytest.raises(ValueError, match=r"expected series \[B, C, T\].*\(4, 23\)"):
        WindowAveragingInferer(window=5)(_series()[0], CountingNetwork())
    with pytest.raises(ValueError, match="stride=0"):
        WindowAveragingInferer(window=5, stride=0)


def _run_batches(collector: SubjectAveragingCollector, batches: list[dict]) -> None:
    """One epoch of an engine whose output is each batch's ``pred`` and ``label``."""
    engine = Engine(lambda engine, batch: {"pred": batch["pred"], "label": batch["label"]})
    collector.attach(engine)
    engine.run(batches, max_epochs=1)


def test_subject_collector_averages_runs_per_subject():
    batches = [
        {"id": ["a1", "b1", "a2"], "subject": ["A", "B", "A"], "label": torch.tensor([[50.0], [70.0], [50.0]]),
         "pred": torch.tensor([[48.0], [71.0], [54.0]])},
        {"id": ["c1", "b2"], "subject": ["", "B"], "label": torch.tensor([[60.0], [70.0]]),
         "pred": torch.tensor([[61.0], [75.0]])},
    ]
    collector = SubjectAveragingCollector()
    _run_batches(collector, batches)
    subjects = collector.frame()
    expected = pd.DataFrame({"subject": ["A", "B", "c1"], "n_runs": [2, 2, 1], "age": [50.0, 70.0, 60.0],
                             "predicted_age": [51.0, 73.0, 61.0]})
    pd.testing.assert_frame_equal(subjects, expected, check_dtype=False)
    assert collector.run_frame()["subject"].tolist() == ["A", "B", "A", "c1", "B"]
    _run_batches(collector, batches[1:])  # a new epoch starts afresh
    assert collector.frame()["n_runs"].tolist() == [1, 1]


def test_subject_collector_numeric_subjects_and_errors():
    batch = {"id": ["r1", "r2"], "subject": torch.tensor([[100307.0], [100307.0]]),
             "label": torch.tensor([[40.0], [41.0]]), "pred": torch.tensor([[40.0], [42.0]])}
    collector = SubjectAveragingCollector()
    _run_batches(collector, [batch])
    with pytest.raises(ValueError, match=r"subject\(s\) \['100307'\] have different 'age' values"):
        collector.frame()
    with pytest.raises(ValueError, match="no 'subject' key.*covariates=\\['subject'\\]"):
        _run_batches(collector, [{k: v for k, v in batch.items() if k != "subject"}])


def test_window_and_subject_averaging_drive_the_test_report(tmp_path):
    """A 1-D ResNet in SupervisedEvaluators with both pieces: the report handlers write per-subject results."""
    rng = np.random.default_rng(0)
    items = [{"image": torch.as_tensor(rng.standard_normal((8, 24)), dtype=torch.float32),
              "label": torch.tensor([30.0 + 10 * s]), "id": f"sub-{s}_run-{r}", "subject": f"sub-{s}"}
             for s in range(3) for r in range(2)]
    network = build_model("resnet18_1d", in_channels=8, widen_factor=0.125, projection_dim=4)

    def evaluator(handlers=()) -> tuple[SupervisedEvaluator, SubjectAveragingCollector]:
        collector = SubjectAveragingCollector()
        engine = SupervisedEvaluator(device="cpu", val_data_loader=DataLoader(Dataset(items), batch_size=4),
                                     network=network, inferer=WindowAveragingInferer(window=16, stride=4),
                                     val_handlers=[*handlers, collector], decollate=False)
        return engine, collector

    val, val_collector = evaluator()
    bias = BiasCorrectionHandler("beheshti", tmp_path / "bias_correction.json", val, val_collector)
    test, test_collector = evaluator([SelectedModelLoader(network, tmp_path / "missing.pt"), bias])
    report = TestReport(test_collector, tmp_path / "out", SimpleNamespace(labels=[30.0, 40.0, 50.0]), bias)
    report.attach(test)
    test.run()
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert predictions["subject"].tolist() == ["sub-0", "sub-1", "sub-2"]
    assert predictions["n_runs"].tolist() == [2, 2, 2]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["mae"] == pytest.approx(report.metrics["mae"])
    assert (tmp_path / "bias_correction.json").is_file()


def test_sliding_windows_cover_the_series_numpy_and_torch():
    series = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    windows = sliding_windows(series, length=4, stride=4)
    assert windows.shape == (3, 2, 4)  # starts 0, 4 and the last window 6..9
    np.testing.assert_array_equal(windows[:, 0, 0], [0, 4, 6])
    np.testing.assert_array_equal(windows[1], series[:, 4:8])
    assert sliding_windows(series, length=4, stride=3).shape == (3, 2, 4)  # 0, 3, 6: already ends at frame 9
    as_tensor = sliding_windows(torch.from_numpy(series), length=4, stride=4)
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), windows)
    with pytest.raises(ValueError, match="length <= T=10"):
        sliding_windows(series, length=11, stride=1)
