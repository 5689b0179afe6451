"""LDS and FDS as training switches: regression_loss, build_model(fds=...), the FDS forward and FDSUpdateHandler
inside a MONAI SupervisedTrainer (also under DistributedDataParallel)."""

from __future__ import annotations

import ignite.distributed as idist
import numpy as np
import pytest
import torch
import torch.distributed as dist
from monai.engines import PrepareBatchExtraInput, SupervisedEvaluator, SupervisedTrainer
from monai.inferers import SimpleInferer
from torch import nn
from torch.utils.data import DataLoader

from supremix_med.engines import FDSUpdateHandler
from supremix_med.imbalance import (
    FDS,
    FDS_DEFAULTS,
    LDSL1Loss,
    build_fds,
    regression_loss,
)
from supremix_med.networks import ContrastiveRegressor, MLPEncoder, build_model

N_FEATURES, N_BUCKETS = 4, 5
FDS_CONFIG = {"label_range": [0, N_BUCKETS], "kernel": "triangular", "kernel_size": 3, "momentum": 0.9}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------- LDS loss
def test_regression_loss_without_lds_is_l1() -> None:
    pred, target = torch.tensor([[1.0], [4.0]]), torch.tensor([[0.0], [1.0]])
    for off in (None, False):
        loss = regression_loss([0.0, 1.0], off)
        assert isinstance(loss, nn.L1Loss)
        torch.testing.assert_close(loss(pred, target), torch.tensor(2.0))


def test_regression_loss_with_lds_hand_computation() -> None:
    # bins of width 1; counts [3, 1, 1]; triangular window of size 3 = [1/2, 1, 1/2]
    loss = regression_loss([0.0, 0.5, 0.9, 1.0, 2.0], {"kernel": "triangular", "kernel_size": 3})
    assert isinstance(loss, LDSL1Loss)
    density = np.array([3 + 0.5 * 1, 0.5 * 3 + 1 + 0.5 * 1, 0.5 * 1 + 1])
    scale = 5 / (3 / density[0] + 1 / density[1] + 1 / density[2])  # mean weight 1 over the training labels
    weight = scale / density
    target = torch.tensor([[0.2], [1.7], [2.0], [5.0]])  # 5.0 is past the last bin
    pred = torch.tensor([[1.0], [1.0], [1.0], [1.0]], requires_grad=True)
    value = loss(pred, target)
    expected = (weight[0] * 0.8 + weight[1] * 0.7 + weight[2] * 1.0 + weight[2] * 4.0) / 4
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float32))
    value.backward()
    signs = np.array([1.0, -1.0, -1.0, -1.0])  # sign(pred - target)
    torch.testing.assert_close(pred.grad[:, 0], torch.tensor(signs * weight[[0, 1, 2, 2]] / 4, dtype=torch.float32))

    default = regression_loss(torch.tensor([40.0, 41.0, 41.0, 60.0]), True)
    torch.testing.assert_close(default.weights(torch.tensor([40.0, 41.0, 41.0, 60.0])).mean(), torch.tensor(1.0))


@pytest.mark.parametrize(
    "lds, targets, message",
    [
        ({"kernel": "gaussian", "window": 3}, torch.zeros(2, 1), r"unknown settings \['window'\]"),
        ("true", torch.zeros(2, 1), "mapping of settings"),
        (True, torch.zeros(2, 2), r"targets \[B\] or \[B, 1\]"),
    ],
)
def test_regression_loss_rejects(lds, targets: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        regression_loss([0.0, 1.0], lds)(targets, targets)


# ---------------------------------------------------------------------------------------------- FDS layer
def test_build_fds_settings() -> None:
    assert build_fds(8, None) is None and build_fds(8, False) is None
    default = build_fds(8, True)
    assert (default.feature_dim, default.bucket_num, default.bucket_start) == (8, FDS_DEFAULTS["bucket_num"], 0.0)
    ranged = build_fds(8, {"label_range": [45, 82], "bin_width": 2.0, "kernel": "laplace"})
    assert (ranged.bucket_start, ranged.bucket_num, ranged.bin_width) == (45.0, 19, 2.0)
    assert int(ranged.buckets(torch.tensor([45.0, 82.0, 90.0])).max()) == 18
    # the task's range places the buckets unless the settings do
    assert build_fds(8, {"kernel": "laplace"}, label_range=[45, 82]).bucket_num == 37
    assert build_fds(8, True, label_range=(-1.0, 1.0)).bucket_start == -1.0
    assert build_fds(8, {"bucket_num": 7}, label_range=[45, 82]).bucket_start == FDS_DEFAULTS["bucket_start"]
    assert build_model("mlp", in_features=3, fds=True, label_range=[0, 10]).fds.bucket_num == 10
    assert build_model("mlp", in_features=3, label_range=[0, 10]).fds is None
    for bad, message in [({"label_range": [0, 1], "bucket_num": 3}, "not both"),
                         ({"label_range": [2, 1]}, "lo < hi"),
                         ({"label_range": 3}, r"\[lo, hi\]"),
                         ({"label_range": [0, 1], "bin_width": 0}, "bin_width must be a number > 0"),
                         ({"label_range": [0, 1], "bin_width": "1"}, "bin_width must be a number > 0"),
                         ({"buckets": 3}, r"unknown settings \['buckets'\]")]:
        with pytest.raises(ValueError, match=message):
            build_fds(8, bad)
    with pytest.raises(ValueError, match="smooths 8 features"):
        ContrastiveRegressor(MLPEncoder(3), fds=FDS(8, bucket_num=3))


def _fitted_fds_model() -> ContrastiveRegressor:
    """A model whose FDS layer has frozen, smoothed statistics, so calibration changes features."""
    model = build_model("mlp", in_features=N_FEATURES, projection_dim=4, fds=FDS_CONFIG)
    labels = torch.arange(N_BUCKETS, dtype=torch.float32).repeat(4)
    with torch.no_grad():
        features = model.encode(torch.randn(len(labels), N_FEATURES)) * (1 + labels[:, None])
    model.fds.update_running_stats(features, labels, 0)
    model.fds.update_last_epoch_stats(1)
    model.fds.current_epoch = 1
    return model


def test_fds_forward_smooths_only_in_training_with_labels() -> None:
    model = _fitted_fds_model()
    x, labels = torch.randn(6, N_FEATURES), torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [1.5]])
    plain = model.predict(x)
    assert not model.fds.pop_collected().any()
    torch.testing.assert_close(model(x), plain)  # no labels
    assert not model.fds.pop_collected().any()
    smoothed = model(x, labels=labels)
    features = model.encode(x)
    torch.testing.assert_close(smoothed, model.predict_features(model.fds.smooth(features, labels, 1)))
    assert not torch.allclose(smoothed, plain)
    sums = model.fds.pop_collected()  # the batch's raw (uncalibrated) features, per bucket
    torch.testing.assert_close(sums[:, 0], torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(sums[1, 1:1 + model.fds.feature_dim], (features[1] + features[5]).double())
    model.eval()
    torch.testing.assert_close(model(x, labels=labels), plain)
    assert not model.fds.pop_collected().any()


def test_fds_model_state_dict_round_trip_and_torchscript() -> None:
    config = {"encoder": "mlp", "in_features": N_FEATURES, "projection_dim": 4, "fds": FDS_CONFIG}
    model = _fitted_fds_model()
    model.set_target_statistics([1.0, 3.0])
    copy = build_model(**config)
    copy.load_state_dict(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(copy.state_dict()[name], value), name
    assert "fds.smoothed_var" in model.state_dict()
    x, labels = torch.randn(5, N_FEATURES), torch.arange(5.0)
    copy.fds.current_epoch = 1
    torch.testing.assert_close(copy(x, labels=labels), model(x, labels=labels))
    scripted = torch.jit.script(copy.eval())
    torch.testing.assert_close(scripted(x), copy.predict(x))


@pytest.mark.parametrize("labels", [torch.full((6,), 2.0), torch.tensor([2.0])])
def test_fds_one_label_or_one_sample_gives_no_nan(labels: torch.Tensor) -> None:
    model = build_model("mlp", in_features=N_FEATURES, projection_dim=4, fds=FDS_CONFIG)
    fds = model.fds
    x = torch.randn(len(labels), N_FEATURES)
    for epoch in range(3):
        fds.current_epoch = epoch
        out = model(x, labels=labels)
        assert torch.isfinite(out).all()
        fds.update_last_epoch_stats(epoch)
        fds.update_running_stats_from_sums(fds.pop_collected(), epoch)
    for name, buffer in fds.state_dict().items():
        assert not buffer.is_floating_point() or torch.isfinite(buffer).all(), name
    assert bool(fds.last_observed[2]) and torch.isfinite(model(x, labels=labels)).all()


# ---------------------------------------------------------------------------------------------- trainer
def _tabular_loader(n: int = 24, batch_size: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, N_FEATURES, generator=gen)
    y = torch.randint(0, N_BUCKETS, (n,), generator=gen).float()
    items = [{"image": x[i], "label": y[i : i + 1]} for i in range(n)]
    return DataLoader(items, batch_size=batch_size, shuffle=False)


def _train(network: nn.Module, model: ContrastiveRegressor, epochs: int, lr: float = 0.05) -> list[dict]:
    """Fine-tune like the recipe; return per forward call the kwargs keys, encoder outputs, regressor inputs and
    labels."""
    loader = _tabular_loader()
    calls: list[dict] = []
    model.register_forward_pre_hook(lambda _, args, kwargs: calls.append({"kwargs": set(kwargs)}), with_kwargs=True)
    model.encoder.register_forward_hook(lambda _, args, out: calls[-1].update(features=out.detach().clone()))
    model.regressor.register_forward_hook(lambda _, args, out: calls[-1].update(smoothed=args[0].detach().clone()))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=network,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr), inferer=SimpleInferer(),
        loss_function=regression_loss(torch.cat([b["label"] for b in loader]), True),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"labels": "label"}),
        train_handlers=[FDSUpdateHandler(network)])
    trainer.run()
    for call, batch in zip(calls, [b for _ in range(epochs) for b in loader]):
        call["labels"] = batch["label"]
    return calls


def _bucket_moments(features: torch.Tensor, labels: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Hand computation: per observed bucket (label b in [b, b + 1)), mean and unbiased variance (0 if alone)."""
    buckets = labels.reshape(-1).floor().long()
    moments = {}
    for b in buckets.unique().tolist():
        rows = features[buckets == b].double()
        moments[b] = (rows.mean(0), rows.var(0) if len(rows) > 1 else torch.zeros(rows.shape[1]))
    return moments


def test_handler_updates_statistics_over_epochs_in_a_trainer() -> None:
    epochs, batches = 3, 3
    model = build_model("mlp", in_features=N_FEATURES, hidden=(8, 6), projection_dim=4, fds=FDS_CONFIG)
    model.set_target_statistics(torch.cat([b["label"] for b in _tabular_loader()]))
    calls = _train(model, model, epochs)
    assert len(calls) == epochs * batches and all(c["kwargs"] == {"labels"} for c in calls)
    per_epoch = [{key: torch.cat([c[key] for c in calls[e * batches:(e + 1) * batches]])
                  for key in ("features", "labels", "smoothed")} for e in range(epochs)]

    # epochs 0 and 1 run before any statistics are frozen; epoch 2 calibrates with those of epoch 0
    for epoch in (0, 1):
        torch.testing.assert_close(per_epoch[epoch]["smoothed"], per_epoch[epoch]["features"])
    reference = build_fds(model.fds.feature_dim, FDS_CONFIG).train()
    reference.update_running_stats(per_epoch[0]["features"], per_epoch[0]["labels"], 0)
    reference.update_last_epoch_stats(1)
    expected = reference.smooth(per_epoch[2]["features"], per_epoch[2]["labels"], 2)
    torch.testing.assert_close(per_epoch[2]["smoothed"], expected)
    assert not torch.allclose(expected, per_epoch[2]["features"])

    running: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for epoch, seen in enumerate(per_epoch):
        if epoch == epochs - 1:
            frozen = dict(running)  # frozen at the end of the last epoch: running stats of the epochs before
        for b, (mean, var) in _bucket_moments(seen["features"], seen["labels"]).items():
            old = running.get(b)
            running[b] = (mean, var) if old is None else (0.1 * mean + 0.9 * old[0], 0.1 * var + 0.9 * old[1])
    fds = model.fds
    assert fds.current_epoch == epochs - 1 and int(fds.epoch) == epochs - 1
    counts = torch.bincount(per_epoch[0]["labels"].reshape(-1).long(), minlength=N_BUCKETS).float()
    torch.testing.assert_close(fds.num_samples_tracked, epochs * counts)
    for b, (mean, var) in running.items():
        torch.testing.assert_close(fds.running_mean[b], mean.float())
        torch.testing.assert_close(fds.running_var[b], var.float())
    assert fds.last_observed.tolist() == [b in frozen for b in range(N_BUCKETS)]
    for b, (mean, var) in frozen.items():
        torch.testing.assert_close(fds.last_mean[b], mean.float())
        torch.testing.assert_close(fds.last_var[b], var.float())
    assert not fds.pop_collected().any()  # the handler emptied the store

    calls.clear()  # an evaluator (default prepare_batch) calls forward(x) only
    SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=_tabular_loader(), network=model).run()
    assert calls and all(c["kwargs"] == set() for c in calls) and not fds.pop_collected().any()


def test_handler_is_a_no_op_without_fds_and_unwraps_ddp(tmp_path, monkeypatch) -> None:
    plain = build_model("mlp", in_features=N_FEATURES, projection_dim=4)
    assert FDSUpdateHandler(plain).fds is None
    _train(plain, plain, epochs=1)

    model = build_model("mlp", in_features=N_FEATURES, projection_dim=4, fds=FDS_CONFIG)
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # as multi_gpu_train.json
        assert FDSUpdateHandler(ddp).fds is model.fds
        calls = _train(ddp, model, epochs=2, lr=0.0)  # fixed weights: both epochs see the same features
    finally:
        dist.destroy_process_group()
        idist.sync()  # ignite forgets the process group again
    features = torch.cat([c["features"] for c in calls[:3]])
    labels = torch.cat([c["labels"] for c in calls[:3]])
    for b, (mean, var) in _bucket_moments(features, labels).items():
        torch.testing.assert_close(model.fds.running_mean[b], mean.float())
        torch.testing.assert_close(model.fds.running_var[b], var.float())
