"""``supremix-med``: the command line installed with the package (``[project.scripts]`` in pyproject.toml).

- ``supremix-med predict``: a trained model (or a deep ensemble) on NIfTI files, DICOM series, folders or CSV/TSV
  manifests -> ``predictions.csv`` and ``report.html`` (:mod:`.predict`);
- ``supremix-med train``: a bundle's ``train.json`` run by MONAI's bundle runner (:mod:`.train`);
- ``supremix-med compare``: methods x seeds with paired intervals (:mod:`supremix_med.compare`).

Each is a thin front-end over the bundle configs: the same runs as ``python -m monai.bundle run`` and
``python -m supremix_med.compare``. Refusals print one line and exit with status 2 (:mod:`.refusals`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

USAGE = """\
usage: supremix-med {predict,train,compare} ...

Deep regression on medical images with supervised contrastive pre-training (SupReMix), shipped as MONAI bundles.

commands:
  predict   predict with a trained model on new scans -> predictions.csv and report.html
  train     train a bundle (pre-training, fine-tuning, test report, calibrated intervals)
  compare   compare pre-training methods over seeds with paired intervals

examples:
  supremix-med train ukb_brainage --overlay demo --dataset_dir cache/ --output_dir runs/ukb
  supremix-med predict --model runs/ukb/models sub-01.nii.gz dicom/sub-02/ --output out/
  supremix-med compare --config_file bundles/airfoil/train.json --output_dir cmp/ --seeds 0,1,2

`supremix-med <command> --help` describes each command.
"""


def _compare(argv: Sequence[str]) -> int:
    from supremix_med.compare.cli import main as compare_main

    return compare_main(argv, prog="supremix-med compare")


def _predict(argv: Sequence[str]) -> int:
    from supremix_med.cli.predict import main as predict_main

    return predict_main(argv)


def _train(argv: Sequence[str]) -> int:
    from supremix_med.cli.train import main as train_main

    return train_main(argv)


COMMANDS = {"predict": _predict, "train": _train, "compare": _compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``supremix-med <command> ...``; returns the exit status (0 ok, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"{USAGE.splitlines()[0]}\nsupremix-med: error: unknown command {argv[0]!r}; choose from "
              f"{', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
