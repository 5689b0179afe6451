"""Run a bundle's demo end to end: ``python -m supremix_med.demo <bundle> [--output DIR]``.

Each bundle's recipe spec (:mod:`supremix_med.recipes`) says how its demo data are made:

- ``DEMO_STEPS``: commands run in order, each ``[module, arg, ...]`` run as ``python -m module arg ...`` (a
  demo-cohort generator, then the modality's cache builder); ``{out}`` in an argument is the output folder.
  Every step resumes, so an interrupted demo continues where it stopped.
- ``DEMO_DATASET``: the ``dataset_dir`` the bundle then reads (``{out}`` allowed).

Then ``train.json`` + ``demo.json`` run with ``--dataset_dir`` and ``--output_dir DIR``, so everything the demo
writes (cohort, cache, models, ``metrics.json``, ``predictions.csv``, plot, logs) is under ``DIR``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from supremix_med.recipes import BUNDLES_DIR, bundle_names, bundle_spec

__all__ = ["demo_commands", "main"]


def demo_commands(bundle: str, output_dir: str | Path, bundles_dir: str | Path = BUNDLES_DIR) -> list[list[str]]:
    """The argv of every command the demo of ``bundle`` runs, in order, writing under ``output_dir``.

    Raises:
        ValueError: the bundle is unknown or its spec has no ``DEMO_STEPS`` / ``DEMO_DATASET``.
    """
    spec = bundle_spec(bundle)
    missing = [name for name in ("DEMO_STEPS", "DEMO_DATASET") if not hasattr(spec, name)]
    if missing:
        raise ValueError(f"bundle {bundle!r} has no demo: its recipe spec lacks {missing}.")
    out = str(output_dir)
    steps = [[sys.executable, "-m", *(arg.format(out=out) for arg in step)] for step in spec.DEMO_STEPS]
    configs = [str(Path(bundles_dir) / bundle / name) for name in ("train.json", "demo.json")]
    train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs),
             "--dataset_dir", spec.DEMO_DATASET.format(out=out), "--output_dir", out]
    return steps + [train]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supremix_med.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", choices=bundle_names())
    parser.add_argument("--output", type=Path, help="output folder (default: outputs/demo/<bundle>)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    output = args.output or Path("outputs") / "demo" / args.bundle
    for command in demo_commands(args.bundle, output):
        print("+ " + " ".join(command), flush=True)
        if not args.dry_run:
            code = subprocess.call(command)
            if code:
                print(f"demo step failed with exit code {code}; re-run to resume", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
