"""Tests for supremix_med.metrics: plain regression metrics, shot groups, bias correction, ignite metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import decollate_batch

from supremix_med.engines import RegressionEpochMetric, regression_ignite_metrics
from supremix_med.metrics import (
    REGRESSION_METRICS,
    BiasCorrection,
    gm,
    mae,
    mse,
    pearson_r,
    regression_metrics,
    shot_groups,
    shot_metrics,
    spearman_rho,
)

# errors -1, -2, 2, 4
PRED = [1.0, 2.0, 4.0, 7.0]
TARGET = [2.0, 4.0, 2.0, 3.0]


# ---------------------------------------------------------------- plain metrics


def test_hand_computed_values() -> None:
    assert mae(PRED, TARGET) == pytest.approx(9 / 4)
    assert mse(PRED, TARGET) == pytest.approx(25 / 4)
    assert gm(PRED, TARGET) == pytest.approx(16 ** 0.25)
    # centred pred (-2.5, -1.5, 0.5, 3.5), centred target (-0.75, 1.25, -0.75, 0.25)
    assert pearson_r(PRED, TARGET) == pytest.approx(0.5 / math.sqrt(21 * 2.75))
    # ranks (1, 2, 3, 4) and (1.5, 4, 1.5, 3)
    assert spearman_rho(PRED, TARGET) == pytest.approx(1 / math.sqrt(5 * 4.5))


def test_gm_floors_exact_zero_error() -> None:
    assert gm([1.0, 1.0], [1.0, 3.0]) == pytest.approx(math.sqrt(1e-8 * 2))
    assert gm([1.0, 1.0], [1.0, 3.0], floor=0.5) == pytest.approx(1.0)


def test_accepts_numpy_torch_and_column_shapes() -> None:
    expected = regression_metrics(PRED, TARGET)
    got = regression_metrics(torch.tensor(PRED)[:, None], np.array(TARGET))
    assert got == pytest.approx(expected)
    assert regression_metrics(torch.tensor(PRED, dtype=torch.bfloat16), TARGET) == pytest.approx(expected)
    assert expected["n"] == 4 and set(expected) == {*REGRESSION_METRICS, "n"}


def test_correlation_nan_only_for_constant_input() -> None:
    assert math.isnan(pearson_r([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(spearman_rho([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    assert math.isnan(pearson_r([1.0], [2.0]))
    assert pearson_r([1.0, 2.0], [3.0, 5.0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pred, target, message",
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "same number"),
        (np.zeros((3, 2)), np.zeros(3), r"\[N\] or \[N, 1\]"),
        ([], [], "empty"),
    ],
)
def test_bad_shapes_raise(pred, target, message) -> None:
    with pytest.raises(ValueError, match=message):
        mae(pred, target)


# ---------------------------------------------------------------- shots

# training bins (width 1 from the smallest label 0): bin 0 has 4 samples, bin 1 has 2, bin 2 has 1, bin 5 has 1
TRAIN = [0.0, 0.2, 0.5, 0.9, 1.0, 1.7, 2.5, 5.5]
# test bins 0, 1, 2, 3, -1, 0 -> many, medium, few, few (empty bin), few (below the range), many
SHOT_TARGET = np.array([0.5, 1.2, 2.9, 3.5, -1.0, 0.0])
SHOT_PRED = SHOT_TARGET + np.array([1.0, -2.0, 3.0, 4.0, -5.0, 1.0])


def test_shot_groups_by_training_counts() -> None:
    groups = shot_groups(SHOT_TARGET, TRAIN, bin_width=1.0, many=3, few=2)
    assert groups.tolist() == ["many", "medium", "few", "few", "few", "many"]
    # with many=2: from 0, bins 0 / 1 / 2 hold 4 / 2 / 1 training labels; from -0.5 they hold 2 / 3 / 1
    test = [0.0, 1.2, 2.0]
    assert shot_groups(test, TRAIN, many=2, few=2).tolist() == ["many", "medium", "few"]
    assert shot_groups(test, TRAIN, many=2, few=2, origin=-0.5).tolist() == ["medium", "many", "few"]


def test_shot_groups_bin_float32_labels_by_their_decimal_value() -> None:
    """2.8 stored as float32 (2.7999999523) still falls in the 0.1-wide bin [2.8, 2.9), as does the float64 one."""
    train = np.array([2.8] * 3 + [2.75] * 2)
    test = np.array([2.8, 2.75], dtype=np.float32)
    assert shot_groups(test, train.astype(np.float32), bin_width=0.1, origin=0.0, many=2, few=1).tolist() == \
        ["many", "medium"]
    assert shot_groups(test.astype(np.float64), train, bin_width=0.1, origin=0.0, many=2, few=1).tolist() == \
        ["many", "medium"]


def test_shot_metrics_hand_example() -> None:
    result = shot_metrics(SHOT_PRED, SHOT_TARGET, TRAIN, bin_width=1.0, many=3, few=2)
    assert set(result) == {"all", "many", "medium", "few"}
    assert result["all"]["n"] == 6 and result["all"]["mae"] == pytest.approx(16 / 6)
    assert result["many"] == pytest.approx({"mae": 1.0, "mse": 1.0, "gm": 1.0, "n": 2})
    assert result["medium"] == pytest.approx({"mae": 2.0, "mse": 4.0, "gm": 2.0, "n": 1})
    assert result["few"] == pytest.approx({"mae": 4.0, "mse": 50 / 3, "gm": 60 ** (1 / 3), "n": 3})


def test_shot_metrics_empty_groups_are_nan() -> None:
    result = shot_metrics([0.1, 0.2], [0.0, 0.5], TRAIN, many=3, few=2, metrics=("mae", "pearson_r"))
    assert result["many"]["n"] == 2
    for group in ("medium", "few"):
        assert result[group]["n"] == 0 and math.isnan(result[group]["mae"]) and math.isnan(result[group]["pearson_r"])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"bin_width": 0.0}, "bin_width"), ({"few": 200}, "few"), ({"metrics": ("r2",)}, "r2")],
)
def test_shot_metrics_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        shot_metrics(SHOT_PRED, SHOT_TARGET, TRAIN, **kwargs)


# ---------------------------------------------------------------- bias correction

AGE = np.linspace(20.0, 80.0, 40)  # more than MIN_SUBJECTS: a usable fit


def test_cole_recovers_linear_bias() -> None:
    correction = BiasCorrection("cole").fit(0.6 * AGE + 25.0, AGE)
    assert (correction.slope, correction.intercept) == pytest.approx((0.6, 25.0))
    new_age = np.array([30.0, 45.5, 71.0])
    np.testing.assert_allclose(correction.corrected_prediction(0.6 * new_age + 25.0, new_age), new_age)
    np.testing.assert_allclose(correction.corrected_gap(0.6 * new_age + 25.0, new_age), 0.0, atol=1e-10)


def test_beheshti_recovers_linear_bias_and_decorrelates_gap() -> None:
    biased = AGE + (-0.3 * AGE + 12.0)
    correction = BiasCorrection("beheshti").fit(biased, AGE)
    assert (correction.slope, correction.intercept) == pytest.approx((-0.3, 12.0))
    np.testing.assert_allclose(correction.corrected_gap(biased, AGE), 0.0, atol=1e-10)
    np.testing.assert_allclose(correction.corrected_prediction(biased, AGE), AGE)

    noisy = biased + np.sin(AGE)
    gap = BiasCorrection("beheshti").fit(noisy, AGE).corrected_gap(noisy, AGE)
    assert abs(np.corrcoef(gap, AGE)[0, 1]) < 1e-10 and abs(gap.mean()) < 1e-10


@pytest.mark.parametrize("method", ["cole", "beheshti"])
def test_bias_correction_save_load_round_trip(method, tmp_path) -> None:
    correction = BiasCorrection(method).fit(0.7 * AGE + 10.0 + np.cos(AGE), AGE)
    path = tmp_path / "bias.json"
    correction.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bias.json"]
    assert json.loads(path.read_text()) == correction.to_dict()
    loaded = BiasCorrection.load(path)
    assert loaded.to_dict() == correction.to_dict()
    np.testing.assert_array_equal(loaded.corrected_gap(AGE + 3.0, AGE), correction.corrected_gap(AGE + 3.0, AGE))


def test_bias_correction_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="method"):
        BiasCorrection("linear")
    with pytest.raises(ValueError, match="2 samples"):
        BiasCorrection().fit([50.0], [40.0])
    with pytest.raises(ValueError, match="different ages"):
        BiasCorrection().fit([50.0, 52.0, 49.0], [40.0, 40.0, 40.0])
    with pytest.raises(ValueError, match="slope 0"):
        BiasCorrection("cole").fit(np.full(AGE.shape, 50.0), AGE)
    with pytest.raises(ValueError, match="same number"):
        BiasCorrection().fit(AGE, AGE[:-1])
    with pytest.raises(RuntimeError, match="not fitted"):
        BiasCorrection().corrected_gap(AGE, AGE)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        BiasCorrection.load(tmp_path / "broken.json")
    (tmp_path / "partial.json").write_text(json.dumps({"method": "cole", "slope": 1.0}))
    with pytest.raises(ValueError, match=r"partial\.json.*intercept"):
        BiasCorrection.load(tmp_path / "partial.json")


def noise_free_of_age(age: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    """Deterministic noise of standard deviation ``sd`` with zero mean and zero covariance with ``age``, so a line
    fitted through ``f(age) + noise`` has exactly f's slope and intercept."""
    raw = np.random.default_rng(seed).normal(size=age.shape)
    design = np.stack([np.ones_like(age), age], axis=1)
    residual = raw - design @ np.linalg.lstsq(design, raw, rcond=None)[0]
    return residual * sd / residual.std()


def test_degenerate_fit_is_refused_not_applied(caplog) -> None:
    """The issue's case: 6 subjects and a near-flat model (Beheshti slope -0.98) gave a corrected MAE of 1.18."""
    age = np.array([45.0, 52.0, 58.0, 63.0, 71.0, 80.0])
    pred = 62.0 + 0.02 * age + noise_free_of_age(age, 1.0)
    with caplog.at_level("WARNING", logger="supremix_med.metrics.bias_correction"):
        correction = BiasCorrection("beheshti").fit(pred, age)
    assert correction.slope == pytest.approx(-0.98) and correction.n_fit == 6 and not correction.usable
    assert correction.problems == [
        "fitted on 6 subjects, fewer than 30",
        "predictions rise 0.02 years per year of age (beheshti slope -0.98), outside [0.3, 1.5]",
        f"predictions correlate with age at r = {correction.r:.3g}, below 0.5",
    ]
    assert "unusable and will not be applied: fitted on 6 subjects" in caplog.text
    assert np.isnan(correction.corrected_gap(pred, age)).all()
    assert np.isnan(correction.corrected_prediction(pred, age)).all()
    saved = correction.to_dict()
    assert (saved["n_fit"], saved["usable"], saved["problems"]) == (6, False, correction.problems)
    assert saved["slope"] == pytest.approx(-0.98) and saved["r"] == pytest.approx(correction.r)


LONG_AGE = np.linspace(20.0, 80.0, 40)


@pytest.mark.parametrize(
    "method, pred, problem",
    [
        ("cole", 0.8 * AGE[:10] + 12.0, "fitted on 10 subjects, fewer than 30"),
        ("beheshti", 0.1 * LONG_AGE + 50.0, "predictions rise 0.1 years per year of age (beheshti slope -0.9), "
                                            "outside [0.3, 1.5]"),
        ("cole", 2.0 * LONG_AGE - 50.0, "predictions rise 2 years per year of age (cole slope 2), outside [0.3, 1.5]"),
        ("beheshti", 0.6 * LONG_AGE + 20.0 + noise_free_of_age(LONG_AGE, 25.0),
         "predictions correlate with age at r = 0.392, below 0.5"),  # 0.6 * SD(age) / SD(pred)
    ],
    ids=["too-few-subjects", "slope-too-flat", "slope-too-steep", "r-too-low"],
)
def test_each_limit_alone_makes_a_fit_unusable(method, pred, problem) -> None:
    age = AGE[:10] if len(pred) == 10 else LONG_AGE
    correction = BiasCorrection(method).fit(pred, age)
    assert correction.problems == [problem] and not correction.usable
    assert np.isnan(correction.corrected_gap(pred, age)).all()


def test_usable_fit_records_n_slope_and_r_in_its_file(tmp_path) -> None:
    pred = 0.7 * LONG_AGE + 18.0 + noise_free_of_age(LONG_AGE, 3.0)
    correction = BiasCorrection("beheshti").fit(pred, LONG_AGE)
    assert correction.usable and correction.problems == []
    correction.save(tmp_path / "bias_correction.json")
    saved = json.loads((tmp_path / "bias_correction.json").read_text())
    assert saved["n_fit"] == 40 and saved["slope"] == pytest.approx(-0.3) and saved["age_slope"] == pytest.approx(0.7)
    assert saved["r"] == pytest.approx(np.corrcoef(pred, LONG_AGE)[0, 1]) and saved["usable"] is True
    assert saved["limits"] == {"min_subjects": 30, "age_slope_range": [0.3, 1.5], "min_r": 0.5}


def test_saved_corrections_are_judged_again_on_load(tmp_path) -> None:
    path = tmp_path / "bias_correction.json"
    path.write_text(json.dumps({"method": "beheshti", "slope": -0.3, "intercept": 12.0, "n_fit": 40}))
    assert BiasCorrection.load(path).usable  # saved before r was recorded: r is not checked
    path.write_text(json.dumps({"method": "beheshti", "slope": -0.3, "intercept": 12.0, "n_fit": 6, "r": 0.9,
                                "usable": True, "problems": []}))  # a stored verdict is never trusted
    assert BiasCorrection.load(path).problems == ["fitted on 6 subjects, fewer than 30"]
    path.write_text(json.dumps({"method": "cole", "slope": 0.7, "intercept": 12.0, "r": None, "n_fit": 40}))
    assert BiasCorrection.load(path).problems == ["predictions correlate with age at r = nan, below 0.5"]
    path.write_text(json.dumps({"method": "cole", "slope": 0.7, "intercept": 1.0, "limits": {"min_n": 3}}))
    with pytest.raises(ValueError, match="limits must be a dict of min_subjects"):
        BiasCorrection.load(path)


def test_other_limits_accept_a_small_fit_knowingly(tmp_path) -> None:
    correction = BiasCorrection("cole", min_subjects=8).fit(0.8 * AGE[:10] + 12.0, AGE[:10])
    assert correction.usable
    correction.save(tmp_path / "c.json")
    assert BiasCorrection.load(tmp_path / "c.json").usable
    with pytest.raises(ValueError, match="min_subjects >= 2"):
        BiasCorrection(min_subjects=1)
    with pytest.raises(ValueError, match="low < high"):
        BiasCorrection(age_slope_range=(1.5, 0.3))


# ---------------------------------------------------------------- ignite metrics


def _batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    label = torch.rand(12, 1, generator=generator) * 60 + 20
    pred = label + torch.randn(12, 1, generator=generator) * 5
    return [{"pred": pred[i:i + 4], "label": label[i:i + 4]} for i in range(0, 12, 4)]


def _run(metrics, step) -> dict[str, float]:
    engine = Engine(lambda engine, batch: step(batch))
    for name, metric in metrics.items():
        metric.attach(engine, name)
    return engine.run(_batches(), max_epochs=1).metrics


@pytest.mark.parametrize(
    "step",
    [
        lambda batch: batch,  # a batch dict with [B, 1] tensors
        lambda batch: decollate_batch(batch),  # MONAI's decollated list of per-sample dicts
        lambda batch: {k: v[:, 0] for k, v in batch.items()},  # [B] tensors
    ],
    ids=["dict", "decollated", "flat"],
)
def test_ignite_metrics_match_plain_functions(step) -> None:
    names = ("mae", "mse", "gm", "pearson_r", "spearman_rho")
    got = _run(regression_ignite_metrics(names), step)
    pred = torch.cat([b["pred"] for b in _batches()])
    label = torch.cat([b["label"] for b in _batches()])
    for name in names:
        assert got[name] == pytest.approx(REGRESSION_METRICS[name](pred, label), rel=1e-6), name


def test_ignite_metrics_custom_output_transform_and_errors() -> None:
    metric = RegressionEpochMetric("gm", output_transform=lambda out: (out["y_hat"], out["y"]))
    got = _run({"gm": metric}, lambda batch: {"y_hat": batch["pred"], "y": batch["label"]})
    pred = torch.cat([b["pred"] for b in _batches()])
    label = torch.cat([b["label"] for b in _batches()])
    assert got["gm"] == pytest.approx(gm(pred, label))
    with pytest.raises(ValueError, match="r2"):
        RegressionEpochMetric("r2")
    with pytest.raises(ValueError, match=r"\[B\] or \[B, 1\]"):
        _run(regression_ignite_metrics(["mae"]), lambda batch: {k: v.repeat(1, 2) for k, v in batch.items()})
