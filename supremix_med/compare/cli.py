"""Command line of :mod:`supremix_med.compare` (``python -m supremix_med.compare``; see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from supremix_med.compare.report import check_shot_metrics, write_comparison
from supremix_med.compare.runs import compare_methods, override_pairs, parse_variant
from supremix_med.compare.stats import BOOTSTRAP_RESAMPLES, CONFIDENCE

__all__ = ["main"]

logger = logging.getLogger("supremix_med.compare")


EXAMPLES = """\
examples:
  # every method the airfoil bundle configures, 3 seeds, a short budget
  supremix-med compare --config_file bundles/airfoil/train.json --output_dir runs/airfoil_cmp \\
      --seeds 0,1,2 --dataset_dir /data/airfoil --pretrain_epochs 20 --finetune_epochs 30
  # vanilla against SupReMix probed and fine-tuned, as named rows, on the brain-age demo settings
  supremix-med compare --config_file bundles/ukb_brainage/train.json --config_file bundles/ukb_brainage/demo.json \\
      --output_dir runs/ukb_cmp --seeds 0,1 --methods vanilla,supremix_probe,supremix_ft \\
      --variant supremix_probe=supremix:linear_probe=True --variant supremix_ft=supremix:linear_probe=False \\
      --dataset_dir cache/
Re-running the same command resumes: finished cells are kept (--overwrite re-runs them).
"""


def _parser(prog: str = "python -m supremix_med.compare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a bundle once per row (a method, or a named variant of one) and seed (the same seeds and "
                    "budget for every row) and write comparison.md / .json / .png: mean ± sd over seeds and paired "
                    "differences against vanilla with a t-interval over seeds and a bootstrap interval within each "
                    "seed. Unknown '--key value' arguments are passed to every run.")
    parser.add_argument("--config_file", action="append", required=True,
                        help="bundle config file; repeat for overlays (train.json first)")
    parser.add_argument("--output_dir", required=True,
                        help="the comparison's folder (one sub-folder <row>/seed<S> per cell)")
    parser.add_argument("--methods", help="comma-separated methods in row order (default: every method the "
                                          "bundle configures); a --variant's name here places that row")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD[:KEY=VALUE,...]",
                        help="a row NAME that runs METHOD with these bundle overrides besides the common ones, e.g. "
                             "supremix_ft=supremix:linear_probe=False; repeat for more rows (after --methods' rows "
                             "unless --methods names them)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every row runs once with each "
                                                     "(default 0)")
    parser.add_argument("--overwrite", action="store_true", help="re-run cells whose metrics.json exists")
    parser.add_argument("--shot_metrics", default="mae,gm", help="metrics shown per shot group (default mae,gm)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the markdown tables (default 3)")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE,
                        help=f"level of both intervals (default {CONFIDENCE})")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES,
                        help=f"bootstrap resamples per seed (default {BOOTSTRAP_RESAMPLES})")
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    return parser


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(item) for item in _split(text)]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}.") from None


def main(argv: Sequence[str] | None = None, prog: str = "python -m supremix_med.compare") -> int:
    """Run the grid and write the report; returns 1 when a cell failed, else 0 (2: bad arguments). ``prog`` names
    the command in messages (``supremix-med compare`` runs this)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    parser = _parser(prog)
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = override_pairs(extra)
        shot_metrics = _split(args.shot_metrics)
        check_shot_metrics(shot_metrics)
        if args.bootstrap < 1 or not 0 < args.confidence < 1:
            raise ValueError("--bootstrap must be >= 1 and --confidence between 0 and 1.")
        variants = [parse_variant(text) for text in args.variant]
        runs = compare_methods(args.config_file, args.output_dir, _split(args.methods), _seeds(args.seeds),
                               overrides, args.overwrite, echo=sys.stdout, variants=variants)
    except ValueError as err:
        parser.error(str(err))
    write_comparison(runs, args.output_dir, args.config_file, overrides, shot_metrics, args.digits,
                     args.confidence, args.bootstrap, args.bootstrap_seed, variants=variants)
    logger.info("wrote %s", Path(args.output_dir) / "comparison.md")
    failed = [f"{run.row} seed {run.seed}" for run in runs if run.failed]
    if failed:
        logger.error("failed: %s (see their run.log)", ", ".join(failed))
    return 1 if failed else 0
