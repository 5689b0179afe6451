"""preprocessing.registration: RAS+ SimpleITK images, the similarity, and affine registration to MNI152."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing import t1
from preprocessing.registration import (
    RegistrationParams,
    image_from_array,
    mni152_template,
    normalised_cross_correlation,
    register_affine,
)


def test_image_from_array_keeps_the_nifti_geometry():
    """Voxel (i, j, k) of the array is at the same RAS+ point in SimpleITK as in nibabel, shear included."""
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.array([[0.9, 0.1, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 3.0]])
    affine[:3, 3] = [-80.0, 20.0, 5.5]
    data = rng.random((7, 8, 9), dtype=np.float32)
    image = image_from_array(data, affine)
    assert image.GetSize() == (7, 8, 9)
    for index in [(0, 0, 0), (6, 1, 3), (2, 7, 8)]:
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), nib.affines.apply_affine(affine, index))
        assert image[index] == data[index]


def test_normalised_cross_correlation():
    rng = np.random.default_rng(0)
    a = rng.random((6, 6, 6))
    mask = np.zeros(a.shape, dtype=bool)
    mask[1:5, 1:5, 1:5] = True
    b = np.where(mask, 3 * a + 2, rng.random(a.shape))  # equal up to scale and offset inside the mask only
    assert normalised_cross_correlation(a, b, mask) == pytest.approx(1.0)
    assert normalised_cross_correlation(a, -b, mask) == pytest.approx(-1.0)
    assert normalised_cross_correlation(a, b, np.ones(a.shape, dtype=bool)) < 0.99
    assert normalised_cross_correlation(a, np.ones(a.shape), mask) == 0.0


def test_params_are_validated():
    with pytest.raises(ValueError, match="one entry per pyramid level"):
        RegistrationParams(shrink_factors=(4, 2), smoothing_sigmas_voxels=(2.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="sampling_fractions"):
        RegistrationParams(sampling_fractions=(0.5, 0.0, 0.1))
    with pytest.raises(ValueError, match="wall clock"):
        RegistrationParams(seed=0)


def test_register_affine_recovers_a_known_transform():
    """The template, scaled 5 %, rotated 10 degrees and shifted 8 mm on a 1.2 mm grid, is mapped back, and
    the same way on every run."""
    data, _, affine = mni152_template()
    truth = sitk.AffineTransform(3)  # fixed (MNI) point -> moving (scan) point
    truth.SetCenter((0.0, -17.0, 5.0))
    rotation = np.asarray(sitk.Euler3DTransform((0, 0, 0), 0.0, np.deg2rad(10), 0.0).GetMatrix()).reshape(3, 3)
    truth.SetMatrix((rotation * 1.05).ravel().tolist())
    truth.SetTranslation((8.0, -6.0, 4.0))
    moving = sitk.Resample(
        image_from_array(data, affine), [150, 180, 150], truth.GetInverse(), sitk.sitkLinear,
        (-90.0, -125.0, -85.0), (1.2, 1.2, 1.2), np.eye(3).ravel().tolist(), 0.0, sitk.sitkFloat32,
    )
    template = t1._template_on_grid(t1.T1Params())
    result = register_affine(template.image, moving, template.metric_mask)

    brain_points = nib.affines.apply_affine(np.diag([2.0, 2.0, 2.0, 1.0]), np.argwhere(template.brain)[::50])
    brain_points += template.origin
    error = [np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p)))
             for p in brain_points]
    assert np.max(error) < 1.0  # mm, half an output voxel
    assert result.mutual_information > 0 and len(result.stop_conditions) == 2
    again = register_affine(template.image, moving, template.metric_mask)  # seeded sampling: same transform
    assert again.transform.GetParameters() == result.transform.GetParameters()
