"""T1 preprocessing speed: seconds per scan with and without registration, and where the time goes.

Without registration the input is the MNI152 template on UK Biobank's ``T1_brain_to_MNI`` grid (FSL 1 mm,
182 x 218 x 182, LAS), stored as float32 ``.nii.gz`` (worst case), int16 ``.nii.gz`` and float32 ``.nii``;
SimpleITK is limited to one thread (the pipeline uses no torch; scipy.ndimage and numpy use one). The
steps are also timed one by one, calling the pipeline's internal (private) functions: reading
(``load_t1``: decompression, validation), anti-aliasing, resampling with the similarity check,
normalisation. With registration the input is the template given a fake skull and a random pose (rotation
up to 15 degrees, shift up to 15 mm, scale within 5 %) on a 1 x 1 x 1.2 mm LPS grid. The one-off
preparation of the template per process is reported apart. Times are medians; CPU seconds of this process
are given beside wall seconds, as they do not depend on other load on the machine.

    python benchmarks/preprocessing_speed.py [--repeats 5] [--registrations 3]
"""

from __future__ import annotations

import os
import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from preprocessing import t1
from preprocessing.registration import image_from_array, mni152_template

UKB_SHAPE = (182, 218, 182)
UKB_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])


def timed(function: Callable[[], object], repeats: int) -> tuple[dict[str, float], object]:
    """Median wall and CPU seconds of ``repeats`` calls, and the last result."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return {"wall_s": round(float(np.median(wall)), 4), "cpu_s": round(float(np.median(cpu)), 4)}, result


def resample_template(shape: tuple[int, ...], affine: np.ndarray, transform: sitk.Transform, skull: bool) -> np.ndarray:
    """The MNI152 template (optionally with a fake skull) sampled on a grid through ``transform``."""
    data, mask, template_affine = mni152_template()
    if skull:
        distance = ndi.distance_transform_edt(~mask)
        data = data + 0.9 * ((distance > 5) & (distance < 11))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    resampled = sitk.Resample(
        image_from_array(data.astype(np.float32), template_affine), list(shape), transform, sitk.sitkLinear,
        affine[:3, 3].tolist(), spacing.tolist(), (affine[:3, :3] / spacing).ravel().tolist(), 0.0, sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled).T


def scanner_like_scan(path: Path, seed: int) -> Path:
    """Template with skull in a random pose on a 1 x 1 x 1.2 mm LPS grid, int16, as a scanner might give."""
    rng = np.random.default_rng(seed)
    pose = sitk.AffineTransform(3)
    pose.SetCenter((0.0, -17.0, 5.0))
    rotation = sitk.Euler3DTransform((0, 0, 0), *np.deg2rad(rng.uniform(-15, 15, 3)))
    pose.SetMatrix((np.asarray(rotation.GetMatrix()).reshape(3, 3) * rng.uniform(0.95, 1.05)).ravel().tolist())
    pose.SetTranslation(rng.uniform(-15, 15, 3).tolist())
    shape = (200, 240, 180)
    affine = np.diag([-1.0, -1.0, 1.2, 1.0])
    affine[:3, 3] = [100.0, 103.0, -110.0]
    data = resample_template(shape, affine, pose, skull=True)
    nib.save(nib.Nifti1Image((data * 800).astype(np.int16), affine), path)
    return path


def without_registration(folder: Path, repeats: int) -> dict[str, object]:
    data = resample_template(UKB_SHAPE, UKB_AFFINE, sitk.Transform(), skull=False)
    files = {
        "float32_nii_gz": (data, ".nii.gz"),
        "int16_nii_gz": ((data * 1000).astype(np.int16), ".nii.gz"),
        "float32_nii": (data, ".nii"),
    }
    params = t1.T1Params(register="auto")
    results: dict[str, object] = {}
    for name, (array, suffix) in files.items():
        path = folder / f"ukb_{name}{suffix}"
        nib.save(nib.Nifti1Image(array, UKB_AFFINE), path)
        total, (_, qc) = timed(lambda p=path: t1.preprocess_with_qc(p), repeats)
        assert not qc["registered"], qc["register_decision"]
        loading, (volume, affine) = timed(lambda p=path: t1.load_t1(p), repeats)
        antialias, image = timed(lambda: t1.antialiased_image(volume, affine, params), repeats)
        template = t1._template_on_grid(params)
        decision, (_, _, resampled) = timed(lambda: t1._decide(params, None, image, template), repeats)
        normalise, _ = timed(lambda: t1._normalise(resampled, template.core, template.region, params, path), repeats)
        results[name] = {
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "total": total,
            "load_t1": loading,
            "antialias": antialias,
            "resample_and_similarity": decision,
            "normalise": normalise,
        }
    return results


def with_registration(folder: Path, registrations: int) -> dict[str, object]:
    paths = [scanner_like_scan(folder / f"scanner_{seed}.nii.gz", seed) for seed in range(registrations)]
    runs, similarities = [], []
    for path in paths:
        run, (_, qc) = timed(lambda p=path: t1.preprocess_with_qc(p), 1)
        assert qc["registered"], qc["register_decision"]
        runs.append(run)
        similarities.append(round(qc["registration_similarity"], 3))
    return {
        "scans": registrations,
        "input_shape": list(nib.load(paths[0]).shape),
        "per_scan_wall_s": round(float(np.mean([r["wall_s"] for r in runs])), 2),
        "per_scan_cpu_s": round(float(np.mean([r["cpu_s"] for r in runs])), 2),
        "similarity_to_template": similarities,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per step without registration")
    parser.add_argument("--registrations", type=int, default=3, help="scans registered")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    preparation, _ = timed(lambda: t1._template_on_grid(t1.T1Params()), 1)
    with tempfile.TemporaryDirectory() as folder:
        report = {
            "cpu": os.cpu_count(),
            "threads": 1,
            "template_preparation_once_per_process": preparation,
            "without_registration": without_registration(Path(folder), args.repeats),
            "with_registration": with_registration(Path(folder), args.registrations),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
