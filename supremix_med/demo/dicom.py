"""A NIfTI volume written as a DICOM MR series, for demos and tests of the DICOM inputs of T1 inference.

``python -m supremix_med.demo.dicom --nifti scan.nii.gz --output DIR [--description T1w] [--uid UID]`` writes one
DICOM file per slice (along the volume's third axis; a left-handed voxel grid is read back in the opposite slice
order, with the same voxel-to-world mapping) with SimpleITK/GDCM: the geometry tags (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness) carry the NIfTI's affine, converted from RAS+ to DICOM's LPS
patient coordinates; the voxels are stored as int16 with a RescaleSlope when they are not integers. Reading the
folder back with ``preprocessing.t1.load_t1`` gives the NIfTI's voxels and affine (to the int16 rounding).

The UIDs are derived from ``--uid`` (or the file's name), so writing the same scan twice gives the same series.
"""

from __future__ import annotations

import argparse
import locale
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

__all__ = ["main", "write_dicom_series"]

_INT16_MAX = 32000.0
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
#: BitsAllocated, BitsStored, HighBit, PixelRepresentation (signed) and RescaleIntercept of a rescaled int16 slice.
_RESCALED_INT16 = {"0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1", "0028|1052": "0"}


def _tags(image: sitk.Image, series_uid: str, description: str, patient_id: str) -> dict[str, str]:
    """Tags shared by every slice (DICOM group|element as GDCM names them)."""
    d = image.GetDirection()
    return {
        "0008|0060": "MR",
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|103e": description,
        "0010|0020": patient_id,
        "0020|000d": generate_uid(entropy_srcs=[series_uid, "study"]),
        "0020|000e": series_uid,
        "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": f"{image.GetSpacing()[2]:.6f}",
    }


def write_dicom_series(nifti: str | os.PathLike, folder: str | os.PathLike, series_uid: str | None = None,
                       description: str = "T1w", patient_id: str | None = None) -> str:
    """Write the 3-D volume of ``nifti`` as a DICOM MR series, one file ``<name>_<k>.dcm`` per slice (``<name>``: the
    NIfTI's file name without its suffix), into ``folder``.

    Args:
        nifti: a 3-D ``.nii``/``.nii.gz`` file.
        folder: the series folder (created; existing slices of the same names are replaced, other files kept: the
            series of two NIfTI files of different names written into one folder make a folder of two series).
        series_uid: the SeriesInstanceUID; default derived from the file's name.
        description: SeriesDescription.
        patient_id: PatientID; default the file's name without its suffix.

    Returns:
        the SeriesInstanceUID written.

    Raises:
        ValueError: the image is not 3-D.
    """
    nifti = Path(nifti)
    image_nib = nib.load(nifti)
    if len(image_nib.shape) != 3:
        raise ValueError(f"{nifti}: expected a 3-D image, got shape {image_nib.shape}.")
    data = np.asarray(image_nib.get_fdata(dtype=np.float32))
    slope = 1.0
    if not np.array_equal(data, np.round(data)) or np.abs(data).max() > _INT16_MAX:
        slope = float(np.abs(data).max()) / _INT16_MAX or 1.0
    stored = np.round(data / slope).astype(np.int16) if slope == 1.0 else np.round(data / slope) * np.float32(slope)
    affine = image_nib.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(stored.T))  # (K, J, I) array -> size (I, J, K)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((_LPS_FROM_RAS @ affine[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin((_LPS_FROM_RAS @ affine[:3, 3]).tolist())
    name = nifti.name.removesuffix(".gz").removesuffix(".nii")
    series_uid = series_uid or generate_uid(entropy_srcs=[str(nifti.resolve()), description])
    shared = _tags(image, series_uid, description, patient_id or name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    process_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer leaves the process in the "C" locale
    try:
        _write_slices(writer, image, shared, series_uid, slope, folder, name)
    finally:
        locale.setlocale(locale.LC_ALL, process_locale)
    return series_uid


def _write_slices(writer: sitk.ImageFileWriter, image: sitk.Image, shared: dict[str, str], series_uid: str,
                  slope: float, folder: Path, name: str) -> None:
    """One DICOM file per slice of ``image`` (see :func:`write_dicom_series`)."""
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in shared.items():
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0008|0018", generate_uid(entropy_srcs=[series_uid, str(k)]))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        if slope != 1.0:  # GDCM stores the float buffer as signed 16-bit values with this rescale
            for tag, value in _RESCALED_INT16.items():
                plane.SetMetaData(tag, value)
            plane.SetMetaData("0028|1053", f"{slope:.10g}")
        writer.SetFileName(str(folder / f"{name}_{k:04d}.dcm"))
        writer.Execute(plane)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of :func:`write_dicom_series` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m supremix_med.demo.dicom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nifti", type=Path, required=True, help="the 3-D NIfTI volume")
    parser.add_argument("--output", type=Path, required=True, help="the series folder to write")
    parser.add_argument("--description", default="T1w", help="SeriesDescription (default T1w)")
    parser.add_argument("--uid", help="SeriesInstanceUID (default: derived from the file's name)")
    args = parser.parse_args(argv)
    uid = write_dicom_series(args.nifti, args.output, args.uid, args.description)
    print(f"wrote DICOM series {uid} to {args.output}")


if __name__ == "__main__":
    main()
