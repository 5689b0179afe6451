"""Demo data and the demo runner: ``python -m supremix_med.demo <bundle> [--output DIR]``.

The modules of this package generate seeded, resumable synthetic cohorts with a learnable target, one per input
kind (``python -m supremix_med.demo.<name> --output DIR``: ``t1``, ``fmri``, ``xray``, ``ultrasound``, ``pet``,
``faces``, ``stsb``, ``table``), on the shared machinery of :mod:`.generation`; :mod:`.dicom` writes a NIfTI
volume as a DICOM MR series.

:data:`DEMOS` says, per bundle, how its demo data are made:

- ``steps``: commands run in order, each ``[module, arg, ...]`` run as ``python -m module arg ...`` (a
  demo-cohort generator, then the modality's cache builder); ``{out}`` in an argument is the output folder.
  Every step resumes, so an interrupted demo continues where it stopped.
- ``dataset_dir``: the ``dataset_dir`` the bundle then reads (``{out}`` allowed).

Then the bundle's ``train.json`` + ``demo.json`` run with ``--dataset_dir`` and ``--output_dir DIR``, so
everything the demo writes (cohort, cache, models, ``metrics.json``, ``predictions.csv``, plot, logs) is under
``DIR``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from supremix_med.bundles import bundles_dir

__all__ = ["DEMOS", "Demo", "demo_commands", "main"]


@dataclass(frozen=True)
class Demo:
    """How a bundle's demo data are made: the ``python -m`` steps and the ``dataset_dir`` they produce."""

    steps: tuple[tuple[str, ...], ...]
    dataset_dir: str


_FACES = Demo((("supremix_med.demo.faces", "--output", "{out}/faces"),), "{out}/faces")

#: The demo of every bundle that has one, by bundle name.
DEMOS: dict[str, Demo] = {
    "ukb_brainage": Demo((
        ("supremix_med.demo.t1", "--output", "{out}/cohort", "--workers", "2"),
        ("preprocessing.t1", "--manifest", "{out}/cohort/manifest.csv", "--output", "{out}/cache", "--workers",
         "2", "--register", "never"),
        # one scan also as a DICOM MR series, to try `supremix-med predict` on DICOM input (README, Predict brain age)
        ("supremix_med.demo.dicom", "--nifti", "{out}/cohort/sub-0000/T1_brain_to_MNI.nii.gz", "--output",
         "{out}/dicom/sub-0000"),
    ), "{out}/cache"),
    "hcp_aging": Demo((
        ("supremix_med.demo.fmri", "--output", "{out}/cohort", "--n_subjects", "200", "--n_runs", "2"),
        ("preprocessing.fmri", "--manifest", "{out}/cohort/manifest.csv", "--output", "{out}/cache"),
    ), "{out}/cache"),
    "xray_boneage": Demo((
        ("supremix_med.demo.xray", "--output", "{out}/cohort"),
        ("preprocessing.xray", "--manifest", "{out}/cohort/manifest.csv", "--output", "{out}/cache", "--size",
         "128", "--target", "boneage"),
    ), "{out}/cache"),
    "us_ejection_fraction": Demo((
        ("supremix_med.demo.ultrasound", "--output", "{out}/cohort", "--workers", "2"),
        ("preprocessing.ultrasound", "--echonet_root", "{out}/cohort", "--output", "{out}/cache", "--workers", "2"),
    ), "{out}/cache"),
    "pet_brainage": Demo((
        ("supremix_med.demo.pet", "--output", "{out}/cohort", "--n_subjects", "160", "--workers", "2"),
        ("preprocessing.pet", "--manifest", "{out}/cohort/manifest.csv", "--output", "{out}/cache", "--workers",
         "2"),
    ), "{out}/cache"),
    "agedb": _FACES,
    "imdb_wiki": _FACES,
    "stsb": Demo((("supremix_med.demo.stsb", "--output", "{out}/data"),), "{out}/data"),
    "airfoil": Demo((("supremix_med.demo.table", "--output", "{out}/data"),), "{out}/data"),
}


def demo_commands(bundle: str, output_dir: str | Path, folder: str | Path | None = None) -> list[list[str]]:
    """The argv of every command the demo of ``bundle`` runs, in order, writing under ``output_dir``.

    The bundle run reads ``train.json`` + ``demo.json`` of ``folder`` (default: :func:`~supremix_med.bundles.bundles_dir`)
    and must start in ``folder``'s parent, where the configs' macros (``bundles/_base/...``) resolve.

    Raises:
        ValueError: ``bundle`` has no demo (the message lists those that have one).
    """
    if bundle not in DEMOS:
        raise ValueError(f"bundle {bundle!r} has no demo; demos exist for {sorted(DEMOS)}.")
    demo, out = DEMOS[bundle], str(output_dir)
    steps = [[sys.executable, "-m", *(arg.format(out=out) for arg in step)] for step in demo.steps]
    configs = [str(Path(folder or bundles_dir()) / bundle / name) for name in ("train.json", "demo.json")]
    train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs),
             "--dataset_dir", demo.dataset_dir.format(out=out), "--output_dir", out]
    return steps + [train]


def main(argv: list[str] | None = None) -> int:
    """Run (or with ``--dry_run`` print) a bundle's demo; returns the first failing step's exit code, else 0."""
    parser = argparse.ArgumentParser(prog="python -m supremix_med.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", choices=sorted(DEMOS))
    parser.add_argument("--output", type=Path, help="output folder (default: outputs/demo/<bundle>)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    output = args.output or Path("outputs") / "demo" / args.bundle
    root = bundles_dir().parent
    for command in demo_commands(args.bundle, output.resolve()):
        print("+ " + " ".join(command), flush=True)
        if not args.dry_run:
            code = subprocess.call(command, cwd=root)
            if code:
                print(f"demo step failed with exit code {code}; re-run to resume", file=sys.stderr)
                return code
    return 0
