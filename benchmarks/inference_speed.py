"""Inference speed: seconds per scan of ``bundles/ukb_brainage/inference.json`` with the full-size network.

Two inputs, both nilearn's MNI152 template (1 mm, 197 x 233 x 189):

- ``mni``: written as is, so ``register="auto"`` keeps it unregistered (a UK Biobank ``T1_brain_to_MNI``-like
  scan); target <= 5 s per scan on CPU;
- ``scanner``: the same voxels under a header that rotates the brain by (6, -4, 8) degrees, shifts it by
  (10, -14, 8) mm and stretches the voxels to 1.15 x 1.0 x 1.1 mm, so ``"auto"`` registers it affinely to
  MNI152; target <= 30 s per scan on CPU. Its similarity after registration shows whether it was recovered.

For each: the bundle end to end on ``--n_*`` copies (``monai.bundle.run``: model build and load, DataLoader
workers that build the template grids cold, CSV) divided by the number of scans, then ``preprocess_with_qc``
alone in this process (template grids warm); and once the network forward (``resnet18_3d`` as in
``train.json``, batch 1 and ``--batch_size``, AMP on CUDA).
Prints one JSON object as the last thing on stdout (the bundle's logs go to stderr, but MONAI's own loggers
write to stdout; ``--output`` writes the JSON alone to a file).

    python benchmarks/inference_speed.py [--n_mni 4] [--n_scanner 2] [--batch_size 4] [--num_workers 2] [--output f]

(on a GPU machine ``--batch_size`` defaults to 16 and ``--num_workers`` to all cores but one)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import run
from nilearn.datasets import load_mni152_template
from scipy.spatial.transform import Rotation

from preprocessing.t1 import fingerprint, preprocess_with_qc
from supremix_med.metrics import BiasCorrection
from supremix_med.networks import build_model

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ukb_brainage" / "inference.json"
NETWORK_CONFIG = {"encoder": "resnet18_3d", "projection_dim": 128, "n_targets": 1}  # train.json's
TARGET_S = {"mni": 5.0, "scanner": 30.0}


def write_scans(folder: Path) -> dict[str, Path]:
    """The MNI-space template and its scanner-space version (same voxels, moved header)."""
    template = load_mni152_template(resolution=1)
    data = template.get_fdata(dtype=np.float32)
    move = np.eye(4)
    move[:3, :3] = Rotation.from_euler("xyz", [6, -4, 8], degrees=True).as_matrix()
    move[:3, 3] = [10.0, -14.0, 8.0]
    scanner_affine = move @ template.affine @ np.diag([1.15, 1.0, 1.1, 1.0])
    paths = {"mni": folder / "mni.nii.gz", "scanner": folder / "scanner.nii.gz"}
    nib.save(nib.Nifti1Image(data, template.affine), paths["mni"])
    nib.save(nib.Nifti1Image(data, scanner_affine), paths["scanner"])
    return paths


def write_model_dir(folder: Path) -> Path:
    """A randomly initialised full-size model with everything inference.json reads from ``ckpt_dir``."""
    folder.mkdir(parents=True)
    model = build_model(**NETWORK_CONFIG).set_target_statistics(np.linspace(45.0, 82.0, 100))
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model_config.json").write_text(json.dumps(NETWORK_CONFIG))
    (folder / "preprocessing.json").write_text(json.dumps(fingerprint()))
    BiasCorrection("beheshti").fit([55.0, 60.0, 70.0], [50.0, 60.0, 75.0]).save(folder / "bias_correction.json")
    return folder


def time_preprocessing(path: Path, repeats: int) -> dict[str, object]:
    preprocess_with_qc(path)  # builds the template grids once per process
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, qc = preprocess_with_qc(path)
        times.append(time.perf_counter() - start)
    return {"preprocess_s": float(np.median(times)), "registered": qc["registered"],
            "registration_similarity": qc["registration_similarity"], "register_decision": qc["register_decision"]}


def time_forward(device: torch.device, batch_size: int, repeats: int) -> dict[str, float]:
    model = build_model(**NETWORK_CONFIG).to(device).eval()
    result = {}
    for batch in sorted({1, batch_size}):
        x = torch.randn(batch, 1, 100, 100, 100, device=device)
        times = []
        with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
            for i in range(repeats + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first pass warms up allocators and kernels
                    times.append(time.perf_counter() - start)
        result[f"forward_s_per_scan_batch_{batch}"] = float(np.median(times)) / batch
    return result


def time_bundle(scan: Path, copies: int, ckpt_dir: Path, work: Path, batch_size: int, num_workers: int) -> float:
    """Seconds per scan of the whole bundle run on ``copies`` copies of ``scan``."""
    scans = work / "scans"
    scans.mkdir(parents=True)
    for i in range(copies):
        os.link(scan, scans / f"scan{i}.nii.gz")
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        run(config_file=str(BUNDLE), dataset_dir=str(scans), ckpt_dir=str(ckpt_dir), output_dir=str(work / "out"),
            batch_size=batch_size, num_workers=num_workers)
    return (time.perf_counter() - start) / copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_mni", type=int, default=4, help="MNI-space scans in the bundle run")
    parser.add_argument("--n_scanner", type=int, default=2, help="scanner-space scans in the bundle run (0: skip)")
    cuda = torch.cuda.is_available()
    parser.add_argument("--batch_size", type=int, default=16 if cuda else 4, help="scans per forward (16 on a GPU)")
    parser.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) - 1) if cuda else 2,
                        help="preprocessing worker processes (all cores but one on a GPU machine)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the preprocessing/forward timings")
    parser.add_argument("--output", type=Path, help="also write the JSON here (MONAI's own loggers print to stdout)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": os.getloadavg()[0], "network": NETWORK_CONFIG,
        "batch_size": args.batch_size, "num_workers": args.num_workers,
    }
    result.update(time_forward(device, args.batch_size, args.repeats))
    copies = {"mni": args.n_mni, "scanner": args.n_scanner}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_scans(tmp)
        ckpt_dir = write_model_dir(tmp / "models")
        for kind, path in paths.items():
            if copies[kind] < 1:
                continue
            # the bundle first, so its workers start cold (template grids built in each) as in a real run
            entry: dict[str, object] = {"bundle_s_per_scan": time_bundle(
                path, copies[kind], ckpt_dir, tmp / kind, args.batch_size, args.num_workers)}
            entry.update(time_preprocessing(path, args.repeats if kind == "mni" else 1))
            entry["target_s_per_scan"] = TARGET_S[kind]
            entry["meets_target"] = entry["bundle_s_per_scan"] <= TARGET_S[kind]
            result[kind] = entry
    text = json.dumps(result, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
