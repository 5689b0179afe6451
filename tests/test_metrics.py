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

AGE = np.linspace(20.0, 80.0, 25)


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
