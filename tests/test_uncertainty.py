"""Prediction intervals (supremix_med.inference.uncertainty): conformal coverage, TTA, ensembles."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from torch import nn

from supremix_med.inference import uncertainty
from supremix_med.inference.uncertainty import (
    ConformalInterval,
    DeepEnsemble,
    SplitSpreadd,
    SpreadCollector,
    calibrated_inferer,
    combine_members,
    coverage_report,
    load_ensemble,
    spread_column,
)

TTA = uncertainty.TestTimeAugmentationInferer  # not imported by name: pytest would collect a class named Test*


def _binomial_sd(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------------------------- conformal
@pytest.mark.parametrize("n, alpha", [(9, 0.2), (10, 0.1), (19, 0.1)])
def test_finite_sample_marginal_coverage_is_k_over_n_plus_one(n, alpha):
    """Over many calibration draws, a new exchangeable case is covered with probability k/(n+1) >= 1 - alpha."""
    rng = np.random.default_rng(n)
    repeats = 4000
    hits = 0
    for _ in range(repeats):
        truth = rng.normal(size=n + 1)
        pred = truth + rng.standard_t(3, size=n + 1)  # heavy-tailed residuals: the guarantee needs no normality
        fitted = ConformalInterval.fit(pred[:n], truth[:n], alpha=alpha)
        hits += bool(fitted.covered(pred[n:], truth[n:])[0])
    rank = math.ceil((n + 1) * (1 - alpha))
    expected = rank / (n + 1)
    assert expected >= 1 - alpha
    assert abs(hits / repeats - expected) < 4 * _binomial_sd(expected, repeats)


def test_coverage_on_a_large_test_set_within_binomial_tolerance():
    rng = np.random.default_rng(0)
    n_cal, n_test = 2000, 100_000
    truth = rng.uniform(45, 80, n_cal + n_test)
    pred = truth + rng.normal(0, 4, n_cal + n_test)
    fitted = ConformalInterval.fit(pred[:n_cal], truth[:n_cal], alpha=0.1)
    assert fitted.score == "absolute" and fitted.n == n_cal and fitted.rank == math.ceil(2001 * 0.9)
    assert fitted.quantile == pytest.approx(4 * 1.645, rel=0.08)  # the residuals' 90 % two-sided quantile
    report = coverage_report(fitted, pred[n_cal:], truth[n_cal:])
    # coverage given one calibration draw ~ Beta(k, n + 1 - k): sd ~ sqrt(0.09 / n_cal), plus the test binomial
    tolerance = 4 * math.hypot(_binomial_sd(0.9, n_cal), _binomial_sd(0.9, n_test))
    assert abs(report["coverage"] - 0.9) < tolerance
    assert report["n"] == n_test and report["coverage_target"] == pytest.approx(0.9)
    assert report["mean_width"] == pytest.approx(2 * fitted.quantile)


def test_normalised_score_adapts_the_width_to_the_spread():
    """Heteroscedastic residuals: the normalised interval covers ~90 % in both noise groups, the absolute one not."""
    rng = np.random.default_rng(1)
    n = 40_000
    sigma = np.where(rng.random(n) < 0.5, 1.0, 5.0)
    truth = rng.uniform(45, 80, n)
    pred = truth + rng.normal(0, sigma)
    spread = sigma * rng.uniform(0.8, 1.2, n)  # an estimate of the noise, as TTA or an ensemble gives
    cal, test = slice(0, 4000), slice(4000, n)
    normalised = ConformalInterval.fit(pred[cal], truth[cal], spread[cal], alpha=0.1)
    absolute = ConformalInterval.fit(pred[cal], truth[cal], alpha=0.1)
    assert normalised.score == "normalised"
    tolerance = 4 * _binomial_sd(0.9, 2000) + 4 * _binomial_sd(0.9, n // 2)
    for group in (1.0, 5.0):
        mask = sigma[test] == group
        covered = normalised.covered(pred[test][mask], truth[test][mask], spread[test][mask]).mean()
        assert abs(covered - 0.9) < tolerance
    quiet, noisy = (absolute.covered(pred[test], truth[test])[sigma[test] == g].mean() for g in (1.0, 5.0))
    assert quiet > 0.99 and noisy < 0.8  # marginal 90 %, but not where it matters
    low, high = normalised.interval(pred[test], spread[test])
    assert np.all(high - low == pytest.approx(2 * normalised.quantile * np.maximum(spread[test], 1e-6)))


def test_the_fitted_quantile_is_the_kth_smallest_score():
    scores = np.array([0.5, 3.0, 1.0, 2.0, 4.0, 0.1, 2.5, 0.7, 1.5, 3.5])
    fitted = ConformalInterval.fit(scores, np.zeros(10), alpha=0.3)  # k = ceil(11 * 0.7) = 8
    assert fitted.rank == 8 and fitted.quantile == 3.0


def test_too_few_cases_give_an_unbounded_interval_with_a_warning(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        fitted = ConformalInterval.fit([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], alpha=0.1)
    assert fitted.quantile == math.inf and "too few" in caplog.text
    low, high = fitted.interval([50.0])
    assert low[0] == -math.inf and high[0] == math.inf
    fitted.save(tmp_path / "conformal.json")
    assert ConformalInterval.load(tmp_path / "conformal.json") == fitted


def test_save_load_round_trip_and_bad_files(tmp_path):
    fitted = ConformalInterval.fit([1.0, 2.0, 3.0, 4.0], [1.1, 2.3, 2.8, 4.4], [0.5, 0.5, 1.0, 1.0], alpha=0.5,
                                   spread_source={"n_samples": 8, "flip_axes": [0], "max_shift": 2, "seed": 0})
    path = tmp_path / "conformal.json"
    fitted.save(path)
    assert json.loads(path.read_text())["coverage_target"] == 0.5
    assert ConformalInterval.load(path) == fitted
    path.write_text('{"alpha": 0.1}')
    with pytest.raises(ValueError, match="conformal.json.*not a saved conformal interval"):
        ConformalInterval.load(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ConformalInterval.load(tmp_path / "missing.json")


def test_spreads_are_required_when_calibrated_with_them():
    fitted = ConformalInterval.fit([1.0, 2.0], [1.0, 2.5], [1.0, 1.0], alpha=0.5)
    with pytest.raises(ValueError, match="calibrated with spreads"):
        fitted.interval([3.0])


def test_non_finite_cases_are_left_out_and_recorded_by_id(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        fitted = ConformalInterval.fit([1.0, np.nan, 3.0, 4.0, np.nan], [1.0, 2.0, np.inf, 4.5, None], alpha=0.5,
                                       ids=["a", "b", "c", "d", "e"])
    assert fitted.n == 2
    assert fitted.left_out == {"b": "prediction not finite", "c": "target not finite",
                               "e": "prediction and target not finite"}
    assert "left out 3 of 5 validation cases: 'b' (prediction not finite); 'c'" in caplog.text
    fitted.save(tmp_path / "conformal.json")
    assert json.loads((tmp_path / "conformal.json").read_text())["left_out"] == fitted.left_out
    assert ConformalInterval.load(tmp_path / "conformal.json") == fitted
    unnamed = ConformalInterval.fit([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, np.nan, 1.0], alpha=0.5)
    assert unnamed.left_out == {"case 1": "spread not finite"}
    report = coverage_report(fitted, [1.0, np.nan], [1.2, 3.0])
    assert report["n"] == 1 and report["coverage"] == 1.0


def test_intervals_saved_before_left_out_was_recorded_still_load(tmp_path):
    record = ConformalInterval.fit([1.0, 2.0, 3.0, 4.0], [1.1, 2.3, 2.8, 4.4], alpha=0.5).to_dict()
    del record["left_out"]
    (tmp_path / "conformal.json").write_text(json.dumps(record))
    assert ConformalInterval.load(tmp_path / "conformal.json").left_out == {}


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"spread_floor": 0.0}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="alpha"):
        ConformalInterval.fit([1.0], [1.0], **kwargs)


# ------------------------------------------------------------------------------------ test-time augmentation
class _Weighted(nn.Module):
    """Prediction = weighted voxel sum: sensitive to flips and shifts, easy to compute by hand."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1, keepdim=True)


def _reference_shift(x: np.ndarray, shifts) -> np.ndarray:
    """Zero-filled shift of x [B, C, *spatial] by slicing (float64)."""
    out = np.zeros_like(x)
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    for s, n in zip(shifts, x.shape[2:]):
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def test_tta_mean_and_spread_match_a_float64_reference():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 6, 5, 4, dtype=torch.float64)
    net = _Weighted((1, 6, 5, 4)).double()
    tta = TTA(n_samples=6, flip_axes=(0, 2), max_shift=2, seed=4)
    out = tta(x, net)
    augmentations = tta.augmentations(3)
    assert augmentations[0].flips == () and augmentations[0].shifts == (0, 0, 0)
    assert len({(a.flips, a.shifts) for a in augmentations}) > 2
    reference = []
    for a in augmentations:
        xa = np.flip(x.numpy(), [d + 2 for d in a.flips]) if a.flips else x.numpy()
        xa = _reference_shift(xa, a.shifts)
        reference.append((xa * net.weight.numpy()).reshape(3, -1).sum(1))
    reference = np.stack(reference)
    assert out["pred"].shape == (3, 1) and out["spread"].shape == (3, 1)
    np.testing.assert_allclose(out["pred"][:, 0].numpy(), reference.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["spread"][:, 0].numpy(), reference.std(0), rtol=1e-6)


def test_tta_predictions_do_not_depend_on_the_batch():
    x = torch.randn(4, 1, 8, 8)
    net = _Weighted((1, 8, 8))
    tta = TTA(n_samples=5, flip_axes=(1,), max_shift=1)
    together = tta(x, net)
    alone = [tta(x[i:i + 1], net) for i in range(4)]
    torch.testing.assert_close(together["pred"], torch.cat([a["pred"] for a in alone]))
    torch.testing.assert_close(together["spread"], torch.cat([a["spread"] for a in alone]))


def test_one_sample_is_the_plain_prediction_with_zero_spread():
    x = torch.randn(2, 5)
    net = nn.Linear(5, 1)
    out = TTA(n_samples=1)(x, net)
    torch.testing.assert_close(out["pred"], net(x))
    assert torch.all(out["spread"] == 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 0}, "n_samples >= 1"), ({"n_samples": 4}, "no spread"), ({"max_shift": -1}, "max_shift"),
])
def test_tta_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TTA(**kwargs)


def test_tta_refuses_augmenting_a_table():
    with pytest.raises(ValueError, match="spatial axes, the input has 0"):
        TTA(n_samples=3, max_shift=1)(torch.randn(2, 5), nn.Linear(5, 1))


def test_ensemble_spread_pools_members_and_augmentations():
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    members = [_Weighted((1, 6, 6), seed=s).double() for s in range(3)]
    ensemble = DeepEnsemble(members)
    tta = TTA(n_samples=4, flip_axes=(0,), max_shift=1, seed=2)
    out = tta(x, ensemble)
    singles = [tta(x, m) for m in members]
    pooled = torch.stack([tta.samples(x, m) for m in members]).reshape(-1, 2, 1)
    torch.testing.assert_close(out["pred"], pooled.mean(0))
    torch.testing.assert_close(out["spread"], pooled.std(0, correction=0))
    torch.testing.assert_close(ensemble(x), torch.stack([m(x) for m in members]).mean(0))
    frames = [pd.DataFrame({"id": ["b", "a"], "age": [1.0, 2.0], "predicted_age": s["pred"][:, 0].numpy(),
                            spread_column("age"): s["spread"][:, 0].numpy()}) for s in singles]
    frames[1] = frames[1].iloc[::-1]  # row order does not matter, ids do
    combined = combine_members(frames).set_index("id").loc[["b", "a"]]
    np.testing.assert_allclose(combined["predicted_age"], out["pred"][:, 0].numpy())
    np.testing.assert_allclose(combined[spread_column("age")], out["spread"][:, 0].numpy())


def test_combine_members_refuses_different_ids():
    frame = pd.DataFrame({"id": ["a"], "age": [1.0], "predicted_age": [1.0]})
    with pytest.raises(ValueError, match="different ids"):
        combine_members([frame, frame.assign(id=["b"])])


def test_evaluator_with_tta_and_split_spread():
    """MONAI wiring: the evaluator's output holds pred [B, 1] and pred_spread [B, 1] for the handlers."""
    data = [{"image": torch.randn(1, 6, 6), "label": torch.tensor([1.0]), "id": f"s{i}"} for i in range(5)]
    seen = []
    collector = SpreadCollector()
    tta = TTA(n_samples=3, flip_axes=(0,), max_shift=1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=torch.utils.data.DataLoader(data, 2),
                                    network=_Weighted((1, 6, 6)), decollate=False, postprocessing=SplitSpreadd(),
                                    inferer=tta, val_handlers=[collector])
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        (e.state.output["pred"].shape, e.state.output["pred_spread"].shape)))
    evaluator.run()
    assert [p[0] for p in seen] == [p[1] for p in seen] == [(2, 1), (2, 1), (1, 1)]
    table = collector.frame("age")
    assert list(table.columns) == ["id", "age", "predicted_age", "predicted_age_spread"] and len(table) == 5
    assert (table["predicted_age_spread"] > 0).all()
    assert TTA(**tta.settings).augmentations(2) == tta.augmentations(2)  # settings rebuild the same draws


def test_load_ensemble_reads_model_folders(tmp_path):
    from supremix_med.networks import build_model

    config = {"encoder": "mlp", "in_features": 3, "hidden": [4], "projection_dim": 4}
    for i in range(2):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        torch.manual_seed(i)
        torch.save(build_model(**config).state_dict(), folder / "model.pt")
        (folder / "model_config.json").write_text(json.dumps(config))
        (folder / "preprocessing.json").write_text(json.dumps({"pipeline": "tables", "version": str(i)}))
    with pytest.raises(ValueError, match="differently preprocessed"):
        load_ensemble([tmp_path / "m0", tmp_path / "m1"])
    (tmp_path / "m1" / "preprocessing.json").write_text((tmp_path / "m0" / "preprocessing.json").read_text())
    ensemble = load_ensemble([tmp_path / "m0", tmp_path / "m1"])
    assert ensemble.forward_members(torch.zeros(2, 3)).shape == (2, 2, 1)
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        load_ensemble([tmp_path])


def test_calibrated_inferer_rebuilds_the_calibration_augmentations(tmp_path):
    assert calibrated_inferer(tmp_path).settings["n_samples"] == 1  # no conformal.json: one plain sample
    tta = TTA(n_samples=5, flip_axes=(0,), max_shift=3, seed=7)
    ConformalInterval.fit([1.0, 2.0], [1.5, 2.0], [1.0, 1.0], alpha=0.5, spread_source=tta.settings).save(
        tmp_path / "conformal.json")
    assert calibrated_inferer(tmp_path).augmentations(3) == tta.augmentations(3)
