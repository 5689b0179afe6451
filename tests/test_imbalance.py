"""LDS weights, the weighted L1 loss and FDS against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from supremix_med.imbalance import FDS, KERNELS, LDSWeights, WeightedL1Loss, kernel_window, lds_weights

A = math.exp(-0.5)  # Gaussian window value one bin from the centre for sigma = 1


# ---------------------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_kernel_window_shape(kernel: str, size: int) -> None:
    window = kernel_window(kernel, size, sigma=1.5)
    half = size // 2
    assert window.shape == (size,)
    np.testing.assert_allclose(window, window[::-1])
    assert window[half] == 1.0 and window.max() == 1.0
    assert (np.diff(window[half:]) < 0).all()  # strictly decreasing away from the centre


def test_kernel_window_values() -> None:
    x = np.arange(-2, 3)
    np.testing.assert_allclose(kernel_window("gaussian", 5, 2.0), np.exp(-x ** 2 / 8.0))
    np.testing.assert_allclose(kernel_window("triangular", 5, 2.0), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    np.testing.assert_allclose(kernel_window("laplace", 5, 2.0), np.exp(-np.abs(x) / 2.0))


@pytest.mark.parametrize("kernel, size, sigma", [("box", 3, 1.0), ("gaussian", 4, 1.0), ("gaussian", 0, 1.0),
                                                 ("gaussian", -1, 1.0), ("gaussian", 3.0, 1.0),
                                                 ("gaussian", 3, 0.0), ("laplace", 3, float("nan"))])
def test_kernel_window_rejects(kernel: str, size: int, sigma: float) -> None:
    with pytest.raises(ValueError):
        kernel_window(kernel, size, sigma)


# ---------------------------------------------------------------------------------------------------- LDS
def _hand_density() -> dict[int, float]:
    """Labels 0, 0, 1, 3 -> counts [2, 1, 0, 1] on bins 0..3; Gaussian window [A, 1, A] (sigma 1, size 3);
    zero counts beyond the range."""
    return {0: 2 + A * 1, 1: 1 + A * 2 + A * 0, 2: A * 1 + 0 + A * 1, 3: A * 0 + 1}


def test_lds_weights_match_hand_computation() -> None:
    labels = [0.0, 0.0, 1.0, 3.0]
    d = _hand_density()
    raw = np.array([1 / d[0], 1 / d[0], 1 / d[1], 1 / d[3]])
    expected = raw * 4 / raw.sum()
    got = lds_weights(labels, kernel="gaussian", kernel_size=3, sigma=1.0)
    np.testing.assert_allclose(got, expected)
    lds = LDSWeights(kernel="gaussian", kernel_size=3, sigma=1.0).fit(labels)
    np.testing.assert_allclose(lds.density, [d[0], d[1], d[2], d[3]])
    scale = 4 / raw.sum()
    # an unseen label inside the range uses its bin's smoothed density; outside, the nearest edge bin's
    np.testing.assert_allclose(lds([2.5, -3.0, 10.0]), [scale / d[2], scale / d[0], scale / d[3]])


def test_lds_sqrt_inverse() -> None:
    d = _hand_density()
    raw = np.array([d[0], d[0], d[1], d[3]]) ** -0.5
    got = lds_weights([0, 0, 1, 3], kernel="gaussian", kernel_size=3, sigma=1.0, reweight="sqrt_inverse")
    np.testing.assert_allclose(got, raw * 4 / raw.sum())


def test_lds_gap_wider_than_kernel_takes_largest_weight() -> None:
    lds = LDSWeights(kernel="triangular", kernel_size=3).fit([0, 0, 10])
    # bins 0..10 smooth to [2, 1, 0, ..., 0, 0.5, 1]: the gap's 0 is floored at the smallest positive, 0.5
    assert lds.density_of([5.0])[0] == 0.5
    assert lds([5.0])[0] == lds([9.0])[0] > lds([0, 0, 10]).max()


def test_lds_continuous_labels_are_binned() -> None:
    labels = np.array([-0.3, 0.2, 0.4, 0.7, 1.4, 1.45, 2.9])
    bins = np.floor(labels / 0.5)  # -1, 0, 0, 1, 2, 2, 5
    kwargs = dict(kernel="laplace", kernel_size=5, sigma=1.0)
    np.testing.assert_allclose(lds_weights(labels, bin_width=0.5, **kwargs), lds_weights(bins, **kwargs))
    np.testing.assert_allclose(lds_weights(labels, [0.01, 0.49], bin_width=0.5, **kwargs),
                               lds_weights(bins, [0, 0], **kwargs))


@pytest.mark.parametrize("reweight", ["inverse", "sqrt_inverse"])
@pytest.mark.parametrize("clip_max", [None, 1.5, 1.0])
def test_lds_mean_weight_is_one(reweight: str, clip_max: float | None) -> None:
    labels = np.random.default_rng(0).gamma(2.0, 10.0, size=500)
    weights = lds_weights(labels, bin_width=2.0, reweight=reweight, clip_max=clip_max)
    assert weights.mean() == pytest.approx(1.0)
    if clip_max is not None:
        assert weights.max() <= clip_max + 1e-12
    # rarer labels weigh at least as much
    density = LDSWeights(bin_width=2.0).fit(labels).density_of(labels)
    order = np.argsort(density)
    assert (np.diff(weights[order]) <= 1e-12).all()


def test_lds_clip_max_hand_computation() -> None:
    # raw weights 1/d: labels 0,0,0 (d = 3) and 5 (d = 1) with no smoothing -> [1/3, 1/3, 1/3, 1] * s;
    # uncapped s = 4 / 2 -> 2/3 and 2; a cap of 1.6 pins the rare one: 3 * s / 3 + 1.6 = 4 -> s = 2.4
    weights = lds_weights([0, 0, 0, 5], kernel_size=1, clip_max=1.6)
    np.testing.assert_allclose(weights, [0.8, 0.8, 0.8, 1.6])


def test_lds_tensor_lookup_and_round_trip() -> None:
    labels = np.random.default_rng(1).normal(60, 8, size=200)
    lds = LDSWeights(bin_width=1.0, kernel="triangular", kernel_size=7, reweight="sqrt_inverse",
                     clip_max=3.0).fit(labels)
    batch = torch.tensor([[45.2], [60.0], [90.0]], dtype=torch.float64)
    weights = lds(batch)
    assert isinstance(weights, torch.Tensor) and weights.dtype == torch.float32 and weights.shape == (3,)
    restored = LDSWeights.from_dict(json.loads(json.dumps(lds.to_dict())))
    np.testing.assert_array_equal(restored(labels), lds(labels))
    torch.testing.assert_close(restored(batch), weights)


@pytest.mark.parametrize("labels, kwargs", [([], {}), ([1.0, float("nan")], {}), ([1.0, float("inf")], {}),
                                            ([[1.0, 2.0]], {}), ([1.0], {"kernel": "cosine"}),
                                            ([1.0], {"kernel_size": 4}), ([1.0], {"kernel_size": 0}),
                                            ([1.0], {"bin_width": 0.0}), ([1.0], {"bin_width": -1.0}),
                                            ([1.0], {"reweight": "log"}), ([1.0], {"clip_max": 0.5})])
def test_lds_rejects_bad_input(labels: list, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        lds_weights(labels, **kwargs)


def test_lds_unfitted_and_bad_state() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        LDSWeights()([1.0])
    state = LDSWeights().fit([1.0, 2.0]).to_dict()
    with pytest.raises(ValueError, match="missing keys"):
        LDSWeights.from_dict({k: v for k, v in state.items() if k != "scale"})
    with pytest.raises(ValueError, match="density"):
        LDSWeights.from_dict({**state, "density": [0.0, 0.0]})


# ---------------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_l1_with_unit_weights_is_l1(reduction: str) -> None:
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    expected = torch.nn.L1Loss(reduction=reduction)(pred, target)
    torch.testing.assert_close(WeightedL1Loss(reduction)(pred, target, torch.ones(6)), expected)
    torch.testing.assert_close(WeightedL1Loss(reduction)(pred, target), expected)


def test_weighted_l1_hand_computation_and_errors() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = WeightedL1Loss()(pred, torch.zeros(2, 2), torch.tensor([1.0, 2.0]))
    assert loss.item() == pytest.approx((1 + 2 + 6 + 8) / 4)
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[0.25, 0.25], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="target shape"):
        WeightedL1Loss()(pred, torch.zeros(2))
    with pytest.raises(ValueError, match="weight must have shape"):
        WeightedL1Loss()(pred, torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError):
        WeightedL1Loss("average")


# ---------------------------------------------------------------------------------------------------- FDS
def _two_epochs(fds: FDS) -> None:
    """Epoch 0: bucket 0 <- [1, 2], [3, 6] (mean [2, 4], var [2, 8]); bucket 1 <- [5, 5] (var 0).
    Epoch 1: bucket 0 <- [0, 0] (label -2, below the range), [2, 2] (mean [1, 1], var [2, 2]);
    bucket 2 first seen <- [7, 1], [9, 3] (label 99, above the range), [8, 2] (mean [8, 2], var [1, 1])."""
    fds.update_running_stats(torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 5.0]]), torch.tensor([0.5, 0.0, 1.2]), 0)
    fds.update_running_stats(torch.tensor([[0.0, 0.0], [2.0, 2.0], [7.0, 1.0], [9.0, 3.0], [8.0, 2.0]]),
                             torch.tensor([[-2.0], [0.9], [2.0], [99.0], [2.5]]), 1)


def test_fds_running_stats_with_momentum() -> None:
    fds = FDS(2, bucket_num=3, bucket_start=0.0, bin_width=1.0, momentum=0.9)
    _two_epochs(fds)
    expected_mean = [[0.1 * 1 + 0.9 * 2, 0.1 * 1 + 0.9 * 4], [5, 5], [8, 2]]
    expected_var = [[0.1 * 2 + 0.9 * 2, 0.1 * 2 + 0.9 * 8], [0, 0], [1, 1]]
    torch.testing.assert_close(fds.running_mean, torch.tensor(expected_mean))
    torch.testing.assert_close(fds.running_var, torch.tensor(expected_var))
    torch.testing.assert_close(fds.num_samples_tracked, torch.tensor([4.0, 1.0, 3.0]))


def test_fds_cumulative_average_and_start_update() -> None:
    fds = FDS(2, bucket_num=3, momentum=None, start_update=1)
    _two_epochs(fds)  # epoch 0 is before start_update and ignored: bucket 0 sees only epoch 1
    torch.testing.assert_close(fds.running_mean[0], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(fds.num_samples_tracked, torch.tensor([2.0, 0.0, 3.0]))
    fds = FDS(2, bucket_num=3, momentum=None)
    _two_epochs(fds)  # bucket 0: 2 new of 4 tracked -> factor 1/2
    torch.testing.assert_close(fds.running_mean[0], torch.tensor([1.5, 2.5]))
    torch.testing.assert_close(fds.running_var[0], torch.tensor([2.0, 5.0]))


def test_fds_one_bucket_kernel_is_identity_and_freeze_once_per_epoch() -> None:
    fds = FDS(2, bucket_num=3, kernel_size=1)
    _two_epochs(fds)
    fds.update_last_epoch_stats(0)  # epoch == start_update: nothing frozen yet
    assert not fds.last_observed.any()
    fds.update_last_epoch_stats(2)
    torch.testing.assert_close(fds.smoothed_mean, fds.running_mean)
    torch.testing.assert_close(fds.smoothed_var, fds.running_var)
    fds.update_running_stats(torch.zeros(1, 2), torch.zeros(1), 2)
    fds.update_last_epoch_stats(2)  # a second call in the same epoch keeps the frozen stats
    assert not torch.equal(fds.last_mean, fds.running_mean)


def test_fds_smoothing_hand_computation() -> None:
    # triangular window of size 3 normalised to sum 1: [1/4, 1/2, 1/4]; mirror padding at the ends
    fds = FDS(1, bucket_num=4, kernel="triangular", kernel_size=3)
    means = torch.tensor([[1.0], [2.0], [4.0]])
    fds.update_running_stats(means, torch.tensor([0.0, 1.0, 2.0]), 0)  # bucket 3 never observed
    fds.update_last_epoch_stats(1)
    expected = [0.5 * 1 + 0.5 * 2,  # padded [2, 1, 2]
                0.25 * 1 + 0.5 * 2 + 0.25 * 4,
                (0.25 * 2 + 0.5 * 4) / 0.75,  # the unobserved neighbour neither adds nor counts
                0.0]  # unobserved: keeps its initial value
    torch.testing.assert_close(fds.smoothed_mean[:, 0], torch.tensor(expected))
    torch.testing.assert_close(fds.last_observed, torch.tensor([True, True, True, False]))


def test_fds_calibration_gives_smoothed_moments() -> None:
    gen = torch.Generator().manual_seed(0)
    fds = FDS(3, bucket_num=5, kernel="gaussian", kernel_size=3, sigma=1.0, var_ratio_clip=None)
    labels = torch.arange(5.0).repeat_interleave(8)
    features = torch.randn(40, 3, generator=gen) * (1 + labels[:, None]) + 3 * labels[:, None]
    fds.update_running_stats(features, labels, 0)
    fds.update_last_epoch_stats(1)
    out = fds.smooth(features, labels, epoch=1)
    for b in range(5):
        rows = out[labels == b]
        torch.testing.assert_close(rows.mean(0), fds.smoothed_mean[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rows.var(0), fds.smoothed_var[b], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fds.smoothed_var, fds.last_var)  # so the check above is not trivial


def test_fds_leaves_unknown_buckets_zero_variance_and_eval_alone() -> None:
    fds = FDS(2, bucket_num=3, kernel_size=3)
    _two_epochs(fds)
    fds.update_last_epoch_stats(2)
    features = torch.tensor([[5.0, 6.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([1.0, 0.0])  # bucket 1 has variance 0 in both dimensions
    out = fds.smooth(features, labels, epoch=2)
    torch.testing.assert_close(out[0], features[0])
    assert not torch.allclose(out[1], features[1])
    out.sum().backward()
    assert features.grad is not None
    assert fds.smooth(features, labels, epoch=0) is features  # before start_smooth
    fds.eval()
    assert fds.smooth(features, labels, epoch=2) is features
    fresh = FDS(2, bucket_num=3).train()
    fresh.update_last_epoch_stats(1)  # nothing observed yet: no bucket is calibrated
    assert torch.equal(fresh.smooth(features, labels, epoch=1), features)


def test_fds_state_dict_round_trip() -> None:
    fds = FDS(2, bucket_num=3, kernel_size=3)
    _two_epochs(fds)
    fds.update_last_epoch_stats(2)
    copy = FDS(2, bucket_num=3, kernel_size=3)
    copy.load_state_dict(fds.state_dict())
    for name, buffer in fds.state_dict().items():
        assert torch.equal(copy.state_dict()[name], buffer), name
    features, labels = torch.randn(6, 2), torch.tensor([0.0, 0.5, 1.0, 2.0, 2.2, 0.1])
    torch.testing.assert_close(copy.smooth(features, labels, 3), fds.smooth(features, labels, 3))
    copy.update_last_epoch_stats(2)  # the frozen epoch travels with the state dict
    assert int(copy.epoch) == 2


@pytest.mark.parametrize("features, labels", [(torch.zeros(3, 4), torch.zeros(3)), (torch.zeros(3), torch.zeros(3)),
                                              (torch.zeros(3, 2), torch.zeros(2)),
                                              (torch.zeros(2, 2), torch.tensor([0.0, float("nan")]))])
def test_fds_rejects_bad_input(features: torch.Tensor, labels: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        FDS(2, bucket_num=3).update_running_stats(features, labels, 0)


@pytest.mark.parametrize("kwargs", [{"bucket_num": 0}, {"bin_width": 0.0}, {"momentum": 1.0},
                                    {"var_ratio_clip": (2.0, 1.0)}, {"kernel_size": 2}])
def test_fds_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FDS(2, **{"bucket_num": 3, **kwargs})
