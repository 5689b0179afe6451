"""``supremix-med predict``: a trained model (or an ensemble of them) on new scans -> predictions.csv, report.html.

A thin front-end over the model's bundle: the models folder's ``bundle.json`` names the bundle that trained it
(:func:`~supremix_med.inference.read_bundle_record`), whose ``inference.json`` runs with the inputs as
``dataset_dir``, the models folder as ``ckpt_dir`` (further ``--model`` folders as its ``ensemble``) and
``--output`` as ``output_dir``; every other option is one of that config's knobs. Nothing here preprocesses,
predicts or writes a file itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supremix_med.cli.refusals import EXIT_FAILED, add_debug_argument, run_cli

__all__ = ["main", "parser", "resolve_models"]

PROG = "supremix-med predict"
_MODEL = "model.pt"
_SHOWN = 5  # failed scans named on the console

EXAMPLES = """\
examples:
  # one NIfTI scan and one DICOM series folder, with the demo's model
  supremix-med predict --model outputs/demo/ukb_brainage/models sub-01.nii.gz dicom/sub-02 --output out/

  # a folder of scans (searched recursively) and a manifest with ages (CSV or TSV: id,path[,age,sex])
  supremix-med predict --model models/ scans/ more_scans.tsv --output out/

  # a deep ensemble: the mean of three models, its interval calibrated on their pooled validation predictions
  supremix-med predict --model run0/models --model run1/models --model run2/models scans/ --output out/

  # a DICOM folder holding several series: pick one by its SeriesInstanceUID
  supremix-med predict --model models/ dicom/sub-03 --series 1.2.840.113619.2.1 --output out/

Writes <output>/predictions.csv (prediction, interval, gaps, QC, flags, error per scan) and
<output>/report.html; an --output holding an earlier prediction run is refused unless --overwrite moves it to
<output>/previous/. Exit status: 0 when every scan was predicted (or with failures, without --strict),
1 when some failed and --strict is given, 2 when all failed or the run was refused (one line says why).
"""


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Predict with a trained model on new scans: NIfTI files, DICOM series folders, folders of "
                    "scans, or CSV/TSV manifests (id,path[,age,sex]).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a scan file, a DICOM series folder, a folder of scans, or a CSV/TSV manifest")
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="a models folder of a finished training run (or the run's folder holding models/); "
                        "repeat for a deep ensemble")
    p.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for predictions.csv and "
                                                                             "report.html")
    p.add_argument("--bundle", help="the bundle that trained the model (default: the model folder's bundle.json)")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read from DICOM folders holding several "
                                                   "series")
    p.add_argument("--batch_size", type=int, help="scans per batch (default: the bundle's, 16 on a GPU)")
    p.add_argument("--num_workers", type=int, help="preprocessing worker processes (default: the bundle's)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="when --output holds an earlier prediction run, move it "
                                                             "to <output>/previous/<time>/ and predict anew")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any scan failed")
    p.add_argument("--verbose", action="store_true", help="log the run's progress messages")
    return add_debug_argument(p)


def resolve_models(folders: Sequence[str | os.PathLike]) -> list[Path]:
    """The absolute models folders: each given folder, or its ``models`` subfolder when the folder is a training
    run's ``output_dir`` (holding ``models/model.pt`` but no ``model.pt``).

    Raises:
        FileNotFoundError: a folder that does not exist or holds no trained model (the message names it).
    """
    resolved = []
    for folder in map(lambda f: Path(f).expanduser().resolve(), folders):
        if not (folder / _MODEL).is_file() and (folder / "models" / _MODEL).is_file():
            folder = folder / "models"
        if not (folder / _MODEL).is_file():
            what = "does not exist" if not folder.exists() else f"holds no {_MODEL}"
            raise FileNotFoundError(f"--model {folder} {what}: give the models folder of a finished training run "
                                    f"(<output_dir>/models).")
        resolved.append(folder)
    return resolved


def _bundle(args: argparse.Namespace, models: Sequence[Path]) -> str:
    """The bundle that runs the models: ``--bundle``, else the one every model folder records."""
    from supremix_med.inference import read_bundle_record

    if args.bundle:
        return args.bundle
    names = {str(m): read_bundle_record(m) for m in models}
    if len(set(names.values())) > 1:
        raise ValueError(f"the --model folders were trained by different bundles ({names}); an ensemble's members "
                         f"must come from one bundle.")
    return next(iter(names.values()))


def _overrides(args: argparse.Namespace, config: dict[str, Any], models: Sequence[Path]) -> dict[str, Any]:
    """The inference config's knobs this command sets."""
    inputs = [str(Path(i).expanduser().resolve()) for i in args.inputs]
    lists_scans = str(config.get("dataset", {}).get("records", {}).get("_target_", "")).endswith("list_scans")
    if len(inputs) > 1 and not lists_scans:
        raise ValueError(f"bundle {Path(config['bundle_root']).name!r} reads one data folder; give one INPUT.")
    overrides: dict[str, Any] = {"dataset_dir": inputs[0] if len(inputs) == 1 else inputs,
                                 "ckpt_dir": str(models[0]), "ensemble": [str(m) for m in models[1:]],
                                 "output_dir": str(args.output.expanduser().resolve()), "overwrite": args.overwrite}
    if args.series is not None:
        if "series_uid" not in config:
            raise ValueError(f"--series: bundle {Path(config['bundle_root']).name!r} reads no DICOM series.")
        overrides["series_uid"] = args.series
    for knob in ("batch_size", "num_workers"):
        value = getattr(args, knob)
        if value is not None:
            if value < (1 if knob == "batch_size" else 0):
                raise ValueError(f"--{knob} must be {'>= 1' if knob == 'batch_size' else '>= 0'}, got {value}.")
            overrides[knob] = value
    if args.device is not None:
        overrides.update(device=f"$torch.device({args.device!r})", amp=args.device.startswith("cuda"))
    return overrides


def _unwrapped(error: RuntimeError) -> BaseException:
    """The refusal inside MONAI's "Failed to evaluate ..." wrappers, else ``error`` itself."""
    cause: BaseException | None = error
    while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause if isinstance(cause, (ValueError, FileNotFoundError, OSError)) else error


def _run_config(config: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Run ``initialize``, ``run`` and ``finalize`` of the config (as ``monai.bundle run`` does); return its writer."""
    from monai.bundle import ConfigParser

    config_parser = ConfigParser(config)
    config_parser.update(overrides)
    try:
        config_parser.parse(reset=True)
        for step in ("initialize", "run", "finalize"):
            for i in range(len(config_parser.get(step, []))):
                config_parser.get_parsed_content(f"{step}#{i}")
    except RuntimeError as error:
        raise _unwrapped(error) from error
    return config_parser.get_parsed_content("writer")


def _summary(table: Any, output: Path) -> int:
    """Print the failed scans (a few) and the closing line; return how many failed."""
    from supremix_med.inference import failed_inputs

    errors, failed = table["error"], failed_inputs(table)
    flagged = int((table["qc_flag"].fillna("").astype(str) != "").sum()) if "qc_flag" in table else 0
    for scan_id, error in list(zip(table["id"][failed], errors[failed]))[:_SHOWN]:
        print(f"{PROG}: failed: {scan_id}: {error}", file=sys.stderr)
    if failed.sum() > _SHOWN:
        print(f"{PROG}: ... and {int(failed.sum()) - _SHOWN} more failed scans (see predictions.csv)", file=sys.stderr)
    print(f"predicted {int((~failed).sum())} of {len(table)} scans ({int(failed.sum())} failed, {flagged} flagged); "
          f"see {output / 'predictions.csv'} and {output / 'report.html'}")
    return int(failed.sum())


def _predict(args: argparse.Namespace) -> None:
    """Run the bundle's inference; a run in which every scan failed ends as a refusal (the recipe raises
    :class:`~supremix_med.inference.NothingPredicted`: status 2), one with some failed scans exits 1 with
    ``--strict``."""
    from supremix_med.bundles import load_config
    from supremix_med.inference import NothingPredicted

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    models = resolve_models(args.model)
    config = load_config(_bundle(args, models), "inference.json")
    overrides = _overrides(args, config, models)
    output = Path(overrides["output_dir"])
    try:
        writer = _run_config(config, overrides)
    except NothingPredicted as error:
        _summary(error.table, output)
        raise
    if _summary(writer.table, output) and args.strict:
        raise SystemExit(EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; see the module docstring. Returns 0 (other statuses exit through ``SystemExit``)."""
    run_cli(parser(), argv, _predict)
    return 0
