"""What a model stores about its training data (inference.reference) and the named QC flags (inference.flags)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from supremix_med.inference.flags import FLAGS, named_flags
from supremix_med.inference.reference import (
    FEATURES,
    TrainingReference,
    coarse,
    input_features,
    save_model_reference,
)
from supremix_med.inference.uncertainty import ConformalInterval
from supremix_med.metrics import BiasCorrection


def _brain(shift: int = 0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """A (1, 20, 20, 20) ball of noisy intensity, zero outside (like a brain-masked, z-scored volume)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"))
    inside = ((grid - 9.5 - np.array([shift, 0, 0])[:, None, None, None]) ** 2).sum(0) < 7 ** 2
    return (inside * scale * (1 + 0.3 * rng.standard_normal((20, 20, 20))))[None].astype(np.float32)


@pytest.fixture(scope="module")
def validation() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    age = rng.uniform(45, 80, 200)
    return pd.DataFrame({"id": [f"v{i}" for i in range(200)], "age": age,
                         "predicted_age": age + rng.normal(0, 3, 200)})


@pytest.fixture(scope="module")
def reference(validation) -> TrainingReference:
    return TrainingReference.fit(np.linspace(45, 80, 50), validation,
                                 train_inputs=[_brain(seed=s) for s in range(12)])


def test_coarse_grid_pools_every_layout():
    assert coarse(np.ones((1, 100, 100, 100))).shape == (1, 32, 32, 32)
    assert coarse(np.ones((1, 32, 112, 112))).shape == (1, 32, 32, 32)
    assert coarse(np.ones((1, 512, 512))).shape == (1, 32, 32)
    assert coarse(np.ones((400, 478))).shape == (32, 32)
    assert coarse(np.ones(5)).shape == (5,)
    volume = np.arange(64, dtype=float).reshape(1, 4, 4, 4)
    np.testing.assert_allclose(coarse(volume, grid=2)[0, 0, 0, 0], volume[0, :2, :2, :2].mean())


def test_reference_statistics(reference, validation):
    assert reference.train_range == [45.0, 80.0] and reference.n_train == 50
    gaps = validation["predicted_age"] - validation["age"]
    assert reference.gap["sd"] == pytest.approx(gaps.std(ddof=1)) and reference.gap["corrected"] is False
    assert reference.n_inputs == 12 and set(reference.inputs) == set(FEATURES)
    assert reference.inputs["template_correlation"]["median"] > 0.9
    own = reference.features(_brain(seed=99))
    moved = reference.features(_brain(shift=6, seed=99))
    assert own["template_correlation"] > 0.9 > moved["template_correlation"]


def test_corrected_gap_statistics(validation):
    correction = BiasCorrection("beheshti").fit(validation["predicted_age"], validation["age"])
    ref = TrainingReference.fit([45, 80], validation, bias_correction=correction)
    corrected = correction.corrected_gap(validation["predicted_age"].to_numpy(), validation["age"].to_numpy())
    assert ref.gap["corrected"] is True and ref.gap["mean"] == pytest.approx(0.0, abs=1e-9)
    assert ref.gap["sd"] == pytest.approx(np.std(corrected, ddof=1))


def test_save_and_load(reference, tmp_path):
    reference.save(tmp_path)
    loaded = TrainingReference.load(tmp_path)
    assert loaded == reference
    np.testing.assert_allclose(loaded.template, reference.template, rtol=1e-6)
    (tmp_path / "reference.json").write_text(json.dumps({"target": "age"}))
    with pytest.raises(ValueError, match="reference.json.*not a saved training reference"):
        TrainingReference.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="reference.json"):
        TrainingReference.load(tmp_path / "nowhere")


def test_training_inputs_from_a_dataset_are_sampled(validation):
    items = [{"image": torch.as_tensor(_brain(seed=s)), "id": str(s)} for s in range(10)]
    sampled = TrainingReference.fit([45, 80], validation, train_inputs=items, max_inputs=4)
    assert sampled.n_inputs == 4  # items 0, 3, 6, 9
    np.testing.assert_allclose(sampled.template, np.mean([coarse(_brain(seed=s)) for s in (0, 3, 6, 9)], axis=0))
    with pytest.raises(ValueError, match="list or a map-style dataset"):
        TrainingReference.fit([45, 80], validation, train_inputs=(_brain(seed=s) for s in range(3)))


def test_save_model_reference_writes_the_three_files(validation, tmp_path):
    spread = validation.assign(predicted_age_spread=2.0)
    save_model_reference(tmp_path, spread, np.linspace(45, 80, 10), alpha=0.1)
    stored = pd.read_csv(tmp_path / "validation_predictions.csv")
    assert list(stored.columns) == ["id", "age", "predicted_age", "predicted_age_spread"]
    interval = ConformalInterval.load(tmp_path / "conformal.json")
    assert interval.score == "normalised" and interval.n == 200
    assert TrainingReference.load(tmp_path).n_train == 10
    save_model_reference(tmp_path, validation.assign(predicted_age_spread=0.0), [45, 80])  # one unaugmented sample
    assert ConformalInterval.load(tmp_path / "conformal.json").score == "absolute"
    assert "predicted_age_spread" not in pd.read_csv(tmp_path / "validation_predictions.csv")


def _table(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"id": [f"s{i}" for i in range(n)], "error": [""] * n}
    return pd.DataFrame({**base, **columns})


def test_each_flag_is_raised_alone(reference):
    sd = reference.gap["sd"]
    table = _table(predicted_age=[60.0, 85.0, 60.0, 60.0, 60.0, 60.0],
                   age=[60.0, 79.0, 90.0, 60.0 - 4 * sd - reference.gap["mean"], 60.0, 60.0],
                   registration_similarity=[0.9, 0.9, 0.9, 0.9, 0.3, 0.9])
    table["age_gap"] = table["predicted_age"] - table["age"]
    features = pd.DataFrame([reference.features(_brain(seed=50 + i)) for i in range(5)]
                            + [reference.features(_brain(shift=6, scale=3.0, seed=60))])
    flags = named_flags(table, reference, features, qc_limits={"registration_similarity": (0.5, None)}, k_sd=3.0)
    expected = {0: [], 1: ["prediction_outside_training_range"], 2: ["target_outside_training_range", "large_gap"],
                3: ["large_gap"], 4: ["low_registration_similarity"], 5: ["unlike_training_data"]}
    for row, names in expected.items():
        assert [f for f in FLAGS if flags.loc[row, f]] == names, row
    assert flags.loc[0, "qc_flag"] == ""
    assert flags.loc[2, "qc_flag"].startswith("age 90 outside the training range [45, 80]; gap -30.0 beyond the "
                                              "validation gaps'")
    assert flags.loc[4, "qc_flag"] == "registration similarity 0.3 below 0.5"
    assert "template correlation" in flags.loc[5, "qc_flag"]
    assert flags["large_gap"].sum() == 2


def test_qc_limits_implausible_targets_and_their_owners(reference):
    table = _table(predicted_age=[60.0, 60.0, 60.0], age=[999.0, 60.0, 60.0], non_brain_fraction=[0.0, 0.2, np.nan],
                   registration_similarity=[0.9, 0.9, 0.9])
    flags = named_flags(table, reference, qc_limits={"registration_similarity": (0.5, None),
                                                     "non_brain_fraction": (None, 0.05)}, plausible_range=(0, 120))
    assert [f for f in FLAGS if flags.loc[0, f]] == ["implausible_target"]  # not also outside the training range
    assert flags.loc[0, "qc_flag"] == "implausible age: 999 is outside the plausible range [0, 120] (gap left empty)"
    assert [f for f in FLAGS if flags.loc[1, f]] == ["qc_outside_limits"]
    assert flags.loc[1, "qc_flag"] == "non brain fraction 0.2 above 0.05"
    assert not flags.loc[2, list(FLAGS)].any()  # not measured: not flagged


def test_failed_scans_and_missing_columns_raise_nothing(reference):
    table = _table(predicted_age=[np.nan, 99.0])
    table.loc[0, "error"] = "scan.nii: cannot be read"
    table.loc[1, "error"] = "covariate unknown"
    flags = named_flags(table, reference)
    assert not flags[list(FLAGS)].to_numpy().any() and flags["qc_flag"].tolist() == ["", ""]
    no_age = named_flags(_table(predicted_age=[50.0, 99.0]), reference,
                         qc_limits={"registration_similarity": (0.5, None)})
    assert no_age["prediction_outside_training_range"].tolist() == [False, True]
    assert not no_age["low_registration_similarity"].any()  # no similarity column: not measured, not flagged


def test_corrected_gap_is_used_when_the_reference_is_corrected(validation):
    correction = BiasCorrection("beheshti").fit(validation["predicted_age"], validation["age"])
    ref = TrainingReference.fit([45, 80], validation, bias_correction=correction)
    table = _table(predicted_age=[60.0], age=[60.0], brain_age_gap=[0.0], brain_age_gap_corrected=[50.0])
    assert named_flags(table, ref, gap_name="brain_age_gap")["large_gap"].tolist() == [True]


def test_bad_arguments(reference):
    with pytest.raises(ValueError, match="k_sd and z_limit"):
        named_flags(_table(predicted_age=[1.0]), reference, k_sd=0)
    with pytest.raises(ValueError, match="2 feature rows for 1"):
        named_flags(_table(predicted_age=[1.0]), reference, pd.DataFrame({"mean": [0, 1]}))
    with pytest.raises(ValueError, match="coarse grid"):
        input_features(np.ones((1, 8, 8)), reference.template)
