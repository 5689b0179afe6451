"""Engines: batch preparation, multi-view transforms, per-method pre-training set-up, reporting."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from monai.data import MetaTensor, list_data_collate
from monai.transforms import RandAffined, RandGaussianNoised

from supremix_med.engines import (
    METHODS,
    PRETRAINING_METHODS,
    ContrastiveBatch,
    PredictionCollector,
    multi_view_transform,
    pretraining_setup,
    write_report,
)
from supremix_med.metrics import BiasCorrection
from supremix_med.networks import MultiViewProjector, build_model


def _batch(b: int = 6, d: int = 5) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"image": torch.randn(b, d, generator=gen), "image_1": torch.randn(b, d, generator=gen),
            "label": torch.arange(b, dtype=torch.float32).reshape(b, 1) % 3, "id": [f"s{i}" for i in range(b)]}


def test_contrastive_batch_of_augmented_meta_tensors_gives_plain_tensors():
    """Views augmented apart (RandAffined) carry different MetaTensor metadata; the batch drops it."""
    views = multi_view_transform([RandAffined(keys="image", prob=1.0, rotate_range=0.3)], ("image", "image_1"))
    batch = list_data_collate([views({"image": MetaTensor(torch.rand(1, 6, 6, 6)), "label": float(i)})
                               for i in range(3)])
    stacked, labels = ContrastiveBatch(("image", "image_1"))(batch, "cpu")
    assert type(stacked) is torch.Tensor and type(labels) is torch.Tensor
    assert stacked.shape == (3, 2, 1, 6, 6, 6) and labels.tolist() == [0.0, 1.0, 2.0]


def test_contrastive_batch_stacks_views_view_axis_second():
    batch = _batch()
    views, labels = ContrastiveBatch(("image", "image_1"))(batch, "cpu")
    assert views.shape == (6, 2, 5)
    torch.testing.assert_close(views[:, 1], batch["image_1"])
    torch.testing.assert_close(labels, batch["label"][:, 0])


def test_token_ids_are_mixed_as_encoder_features():
    """MixSupCon on token ids: the batch passes (lambda, partners) on and the projector mixes the features."""
    tokens = torch.randint(1, 50, (4, 14))
    batch = {"image": tokens, "label": torch.tensor([0.0, 1.0, 2.0, 3.0])}
    torch.manual_seed(3)
    views, labels, args, kwargs = ContrastiveBatch(("image",), mixup_alpha=1.0)(batch, "cpu")
    lam, perm = kwargs["mixup"]
    assert torch.equal(views[:, 0], tokens) and args == ()
    torch.testing.assert_close(labels, lam * batch["label"] + (1 - lam) * batch["label"][perm])
    model = build_model("mlp", in_features=14, hidden=[8], projection_dim=4)
    projector = MultiViewProjector(model)
    floats = views.float()
    features = model.encode(floats[:, 0]).reshape(4, 1, -1)
    mixed = lam.reshape(4, 1, 1) * features + (1 - lam.reshape(4, 1, 1)) * features[perm]
    expected = model.project_features(mixed.reshape(4, -1)).reshape(4, 1, -1)
    torch.testing.assert_close(projector(floats, mixup=(lam, perm)), expected)
    assert not torch.allclose(projector(floats), expected)


def test_contrastive_batch_mixup_mixes_labels_within_range():
    torch.manual_seed(0)
    batch = _batch()
    views, labels = ContrastiveBatch(("image",), mixup_alpha=1.0)(batch, "cpu")
    assert views.shape == (6, 1, 5)
    assert labels.min() >= 0 and labels.max() <= 2
    assert not torch.equal(views[:, 0], batch["image"])


def test_contrastive_batch_missing_key_names_it():
    with pytest.raises(KeyError, match="image_2"):
        ContrastiveBatch(("image", "image_2"))(_batch(), "cpu")


def test_multi_view_transform_makes_independent_views():
    transform = multi_view_transform([RandGaussianNoised(keys="image", prob=1.0, std=1.0)], ("image", "image_1"))
    out = transform({"image": torch.zeros(1, 4, 4)})
    assert set(out) == {"image", "image_1"}
    assert not torch.equal(out["image"], out["image_1"])
    with pytest.raises(ValueError, match="must act on 'image' only"):
        multi_view_transform([RandGaussianNoised(keys="label")], ("image", "image_1"))


@pytest.mark.parametrize("method", PRETRAINING_METHODS)
def test_every_method_pretrains_a_step(method):
    """One SupervisedTrainer epoch per method on a tiny MLP: finite loss, encoder weights move."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=5, projection_dim=8)
    setup = pretraining_setup(method, model, {}, view_keys=("image", "image_1"))
    before = [p.detach().clone() for p in model.encoder.parameters()]
    data = [_batch() for _ in range(2)]
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=setup.network,
                                optimizer=torch.optim.Adam(setup.network.parameters(), 1e-2),
                                loss_function=setup.loss_function, prepare_batch=setup.prepare_batch,
                                decollate=False)
    trainer.run()
    assert np.isfinite(trainer.state.output["loss"].item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))


def test_the_setup_owns_what_each_method_means():
    model = build_model("mlp", in_features=5, projection_dim=8)
    vanilla = pretraining_setup("vanilla", model, epochs=5, linear_probe=True)
    assert (vanilla.epochs, vanilla.frozen_encoder, vanilla.protocol) == (0, False, "end to end")
    probe = pretraining_setup("supremix", model, {}, epochs=5, linear_probe=True)
    assert (probe.epochs, probe.frozen_encoder, probe.protocol) == (5, True, "pre-train, then linear probe")
    assert probe.finetune_network is model and probe.finetune_loss(torch.nn.L1Loss()).__class__ is torch.nn.L1Loss
    conr = pretraining_setup("conr", model, {}, epochs=2)
    assert conr.protocol == "joint pre-train (L1 + ConR), then fine-tune"
    regularised = pretraining_setup("conr_regularizer", model, {"conr": {"temperature": 0.3}}, epochs=5,
                                    linear_probe=True)
    assert (regularised.epochs, regularised.frozen_encoder) == (0, False)
    assert regularised.protocol == "end to end + conr regulariser" and regularised.regulariser.temperature == 0.3


def test_regularised_fine_tuning_adds_the_weighted_contrastive_term():
    """L1 + weight * ConR on the projections of the very forward pass that made the predictions."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=5, projection_dim=8).train()
    setup = pretraining_setup("conr_regularizer", model, {"conr": {"window": 0.5}}, conr_weight=0.5)
    loss = setup.finetune_loss(torch.nn.L1Loss())
    x, y = torch.randn(6, 5), torch.tensor([[1.0], [1.2], [2.0], [2.1], [3.0], [3.3]])
    pred = setup.finetune_network(x)
    torch.testing.assert_close(pred, model(x))
    projections = model.project_features(model.encode(x))
    expected = torch.nn.L1Loss()(pred, y) + 0.5 * setup.regulariser(projections[:, None], y.reshape(-1), pred.reshape(-1))
    torch.testing.assert_close(loss(pred, y), expected)
    loss(pred, y).backward()
    assert all(p.grad is not None for p in model.projector.parameters())  # the regulariser trains the head too
    setup.finetune_network.eval()(x)
    with pytest.raises(RuntimeError, match="kept no projections"):
        loss(pred, y)


def test_vanilla_has_no_pretraining_loss_and_unknown_method_fails():
    assert "vanilla" in METHODS
    model = build_model("mlp", in_features=5, projection_dim=8)
    assert pretraining_setup("vanilla", model).loss_function is None
    with pytest.raises(ValueError, match="unknown method"):
        pretraining_setup("simclr", model)


def test_collector_and_report(tmp_path):
    collector = PredictionCollector()
    engine = Engine(lambda e, batch: {"pred": batch["pred"], "label": batch["label"]})
    collector.attach(engine)
    ages = np.array([50.0, 60.0, 70.0, 80.0])
    preds = np.array([54.0, 61.0, 68.0, 75.0])
    batches = [{"pred": torch.tensor(preds[i:i + 2]).reshape(2, 1), "label": torch.tensor(ages[i:i + 2]).reshape(2, 1),
                "id": [f"s{i}", f"s{i + 1}"]} for i in (0, 2)]
    engine.run(batches)
    frame = collector.frame()
    assert list(frame["id"]) == ["s0", "s1", "s2", "s3"]
    np.testing.assert_allclose(frame["predicted_age"], preds)
    correction = BiasCorrection("beheshti", min_subjects=4).fit(preds, ages)  # accepted knowingly: 4 subjects
    assert correction.usable
    metrics = write_report(frame, tmp_path, train_targets=[60.0, 70.0], bias_correction=correction,
                           extra={"method": "supremix"})
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(preds - ages)))
    assert metrics["baseline_mae"] == pytest.approx(np.mean(np.abs(ages - 65.0)))
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "supremix"
    written = pd.read_csv(tmp_path / "predictions.csv")
    assert list(written.columns) == ["id", "age", "predicted_age", "brain_age_gap", "brain_age_gap_corrected"]
    np.testing.assert_allclose(written["brain_age_gap_corrected"], correction.corrected_gap(preds, ages))
    assert (tmp_path / "predictions.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no predictions"):
        write_report(frame.iloc[:0], tmp_path, train_targets=[1.0])


def test_report_shot_metrics(tmp_path):
    """Shot groups by training samples per 10-year bin: [50, 60) has 3 (many > 2), [60, 70) 2 (medium), 70+ none."""
    frame = pd.DataFrame({"id": ["a", "b", "c"], "age": [55.0, 65.0, 75.0], "predicted_age": [57.0, 60.0, 75.0]})
    rule = {"bin_width": 10.0, "many": 2, "few": 1}
    metrics = write_report(frame, tmp_path, train_targets=[50.0, 52.0, 58.0, 61.0, 69.0], shots=rule)
    shots = metrics["shots"]
    assert shots["rule"] == rule
    assert shots["many"]["mae"] == pytest.approx(2.0) and shots["many"]["n"] == 1
    assert shots["medium"]["mse"] == pytest.approx(25.0) and shots["medium"]["n"] == 1
    assert shots["few"]["mae"] == pytest.approx(0.0) and shots["few"]["n"] == 1
    no_few = write_report(frame.iloc[:2], tmp_path, train_targets=[50.0, 52.0, 58.0, 61.0, 69.0], shots=rule)
    assert no_few["shots"]["few"] == {"mae": None, "mse": None, "gm": None, "n": 0}
    assert json.loads((tmp_path / "metrics.json").read_text())["shots"]["few"]["mae"] is None
