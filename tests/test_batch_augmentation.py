"""Batch augmentation on the device: MONAI's semantics per sample, independent views, exact pass-through."""

from __future__ import annotations

import pytest
import torch
from monai.engines import PrepareBatchExtraInput
from monai.transforms import (
    Affine, Flip, RandAffined, RandFlipd, RandGaussianNoised, RandScaleIntensity, RandScaleIntensityd,
    RandShiftIntensityd,
)

from supremix_med.engines import (
    AugmentedBatch, BatchAugmentation, BatchRandAffine, BatchRandFlip, BatchRandScaleIntensity, BatchRandShiftIntensity,
    ContrastiveBatch,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spatial_dims, shape", [(3, (1, 9, 11, 8)), (2, (2, 13, 10))])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_affine_matches_monai_affine_per_sample(device, spatial_dims, shape, padding_mode):
    """Each sample equals MONAI's Affine with that sample's drawn rotation, shear, translation and scale."""
    transform = BatchRandAffine(1.0, rotate_range=[0.4] * 3, shear_range=[0.1] * 6, translate_range=[2.0] * 3,
                                scale_range=[0.2] * 3, padding_mode=padding_mode, spatial_dims=spatial_dims, seed=3)
    images = torch.rand(5, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    params = transform.randomize(5)
    out = transform.apply(images, params).cpu()
    for b in range(5):
        reference = Affine(rotate_params=params["rotate"][b].tolist(), shear_params=params["shear"][b].tolist(),
                           translate_params=params["translate"][b].tolist(),
                           scale_params=params["scale"][b].tolist(), padding_mode=padding_mode,
                           image_only=True)(images[b].cpu())
        torch.testing.assert_close(out[b], reference.as_tensor(), atol=1e-5, rtol=1e-5)


def test_affine_parameters_follow_the_ranges_and_probability():
    transform = BatchRandAffine(0.3, rotate_range=[(0.1, 0.2), 0.05], translate_range=[4.0, 4.0, 4.0],
                                scale_range=[0.1, 0.1, 0.1], seed=0)
    params = transform.randomize(20000)
    assert params["rotate"].shape == (20000, 2) and params["shear"].shape == (20000, 0)
    assert params["rotate"][:, 0].min() >= 0.1 and params["rotate"][:, 0].max() < 0.2
    assert params["rotate"][:, 1].abs().max() <= 0.05 and params["translate"].abs().max() <= 4.0
    assert (params["scale"] - 1).abs().max() <= 0.1
    assert abs(params["applied"].float().mean().item() - 0.3) < 0.02


def test_samples_not_drawn_pass_through_bit_for_bit():
    images = torch.randn(64, 1, 6, 7, 5)
    for transform in (BatchRandAffine(0.5, rotate_range=0.3, seed=1), BatchRandFlip(0.5, seed=1),
                      BatchRandScaleIntensity(0.2, prob=0.5, seed=1), BatchRandShiftIntensity(0.2, prob=0.5, seed=1)):
        params = transform.randomize(64)
        out = transform.apply(images, params)
        kept = ~params["applied"]
        assert 0 < kept.sum() < 64
        assert torch.equal(out[kept], images[kept])
        assert not torch.equal(out[~kept], images[~kept])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_seed_gives_the_same_augmentation_on_the_gpu():
    images = torch.rand(6, 2, 1, 10, 9, 8)
    augmentation = BatchAugmentation([BatchRandAffine(0.7, rotate_range=0.3, translate_range=[2.0] * 3),
                                      BatchRandFlip(0.5), BatchRandScaleIntensity(0.2, 0.5)])
    on_cpu = augmentation.set_random_state(4)(images)
    on_gpu = augmentation.set_random_state(4)(images.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-5, rtol=1e-5)


def test_flip_matches_monai_flip():
    images = torch.randn(6, 2, 5, 4, 3)
    transform = BatchRandFlip(1.0, spatial_axis=[0, -1], seed=0)
    out = transform(images)
    for b in range(6):
        torch.testing.assert_close(out[b], Flip(spatial_axis=[0, -1])(images[b]).as_tensor(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        BatchRandFlip(1.0, spatial_axis=3, spatial_dims=3)


def test_intensity_scale_and_shift_per_sample():
    images = torch.rand(8, 1, 4, 4, 4) + 1
    scale = BatchRandScaleIntensity((0.1, 0.3), prob=1.0, seed=0)
    params = scale.randomize(8)
    factors = 1 + params["value"].float().reshape(8, 1, 1, 1, 1)
    torch.testing.assert_close(scale.apply(images, params), images * factors)
    assert params["value"].min() >= 0.1 and params["value"].max() < 0.3
    shift = BatchRandShiftIntensity(0.5, prob=1.0, seed=0)
    params = shift.randomize(8)
    torch.testing.assert_close(shift.apply(images, params), images + params["value"].float().reshape(8, 1, 1, 1, 1))
    assert params["value"].abs().max() <= 0.5


def test_leading_view_axis_gets_independent_draws():
    """[B, V, C, *S]: every view of every sample has its own parameters, like multi_view_transform's views."""
    image = torch.rand(3, 1, 1, 8, 8, 8).expand(3, 2, 1, 8, 8, 8)
    out = BatchRandAffine(1.0, rotate_range=0.5, seed=0)(image)
    assert out.shape == (3, 2, 1, 8, 8, 8)
    assert all(not torch.equal(out[b, 0], out[b, 1]) for b in range(3))


def test_seeded_draws_repeat_and_reseed():
    images = torch.rand(4, 1, 6, 6, 6)
    augmentation = BatchAugmentation([BatchRandAffine(1.0, rotate_range=0.3), BatchRandScaleIntensity(0.2, 1.0)],
                                     seed=5)
    first = augmentation(images)
    assert not torch.equal(augmentation(images), first)  # the generators moved on
    assert torch.equal(augmentation.set_random_state(5)(images), first)


def test_from_monai_reads_the_bundles_augmentation():
    ukb = [RandAffined(keys="image", prob=0.8, rotate_range=[0.05] * 3, translate_range=[3] * 3,
                       scale_range=[0.05] * 3, padding_mode="zeros"),
           RandScaleIntensityd(keys="image", factors=0.1, prob=0.5)]
    affine, scale = BatchAugmentation.from_monai(ukb, spatial_dims=3).transforms
    assert isinstance(affine, BatchRandAffine) and affine.prob == 0.8 and affine.padding_mode == "zeros"
    assert affine.mode == "bilinear" and affine.ranges["translate"] == [(-3.0, 3.0)] * 3
    assert isinstance(scale, BatchRandScaleIntensity) and scale.prob == 0.5 and (scale.low, scale.high) == (-0.1, 0.1)
    xray = [RandAffined(keys="image", prob=0.8, rotate_range=[0.26], translate_range=[20, 20], scale_range=[0.1, 0.1],
                        padding_mode="border"),
            RandFlipd(keys="image", prob=0.5, spatial_axis=1), RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandScaleIntensity(factors=0.2, prob=0.4)]
    augmentation = BatchAugmentation.from_monai(xray, spatial_dims=2)
    assert [type(t).__name__ for t in augmentation.transforms] == [
        "BatchRandAffine", "BatchRandFlip", "BatchRandShiftIntensity", "BatchRandScaleIntensity"]
    assert augmentation.transforms[1].dims == [3] and augmentation.transforms[3].prob == 0.4
    assert augmentation(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)


def test_from_monai_refuses_what_it_cannot_do_in_batch():
    with pytest.raises(ValueError, match="RandGaussianNoised has no batch counterpart"):
        BatchAugmentation.from_monai([RandGaussianNoised(keys="image")])
    with pytest.raises(ValueError, match="spatial_size"):
        BatchAugmentation.from_monai([RandAffined(keys="image", spatial_size=(8, 8, 8))])
    with pytest.raises(ValueError, match="channel_wise"):
        BatchAugmentation.from_monai([RandScaleIntensityd(keys="image", factors=0.1, channel_wise=True)])
    with pytest.raises(ValueError, match="padding_mode"):
        BatchRandAffine(padding_mode="wrap")


def test_contrastive_batch_makes_augmented_views_of_one_key():
    batch = {"image": torch.rand(4, 1, 6, 6, 6), "label": torch.arange(4.0).reshape(4, 1)}
    prepare = ContrastiveBatch(("image", "image"), augmentation=BatchRandAffine(1.0, rotate_range=0.4, seed=0))
    views, labels = prepare(batch, "cpu", non_blocking=True)
    assert views.shape == (4, 2, 1, 6, 6, 6) and labels.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert not torch.equal(views[:, 0], views[:, 1])
    with pytest.raises(ValueError, match="identical views"):
        ContrastiveBatch(("image", "image"))


def test_augmented_batch_augments_the_inputs_of_any_batch_preparation():
    batch = {"image": torch.rand(3, 1, 5, 5, 5), "label": torch.arange(3.0).reshape(3, 1), "sex": torch.ones(3, 1)}
    flip = BatchRandFlip(1.0, spatial_axis=0, seed=0)
    images, labels = AugmentedBatch(flip)(batch, "cpu")
    assert torch.equal(images, batch["image"].flip(2)) and torch.equal(labels, batch["label"])
    images, labels, args, kwargs = AugmentedBatch(flip, PrepareBatchExtraInput(extra_keys={"covariates": "sex"}))(
        batch, "cpu", non_blocking=True)
    assert torch.equal(images, batch["image"].flip(2)) and torch.equal(kwargs["covariates"], batch["sex"])
