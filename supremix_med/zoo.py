"""A bundle in MONAI model-zoo layout: ``python -m supremix_med.zoo export <bundle> --output DIR [--model MODELS]``.

The export is a self-contained MONAI bundle that runs from any working directory and from an installed wheel::

    DIR/
      configs/metadata.json, train.json, evaluate.json, inference.json, multi_gpu_train.json, logging.conf
      docs/README.md            how to run the export, then the bundle's README
      docs/data_license.txt     where the data come from and the licences of data files shipped with the bundle
      LICENSE                   supremix-med's licence (Apache-2.0)
      large_files.yml           every file of models/ with its sha256 and a URL placeholder to fill in on upload
      models/                   with --model: model.pt and what inference reads beside it (model_config.json,
                                preprocessing.json, bias_correction.json, vocab.txt, embeddings.npy, ...)
      <data files>              what the bundle folder ships besides its configs (agedb.csv, stsb's dir_split/),
                                at the same place relative to the bundle, with their licences

Each config is the bundle's file with the shared recipe's macros filled in (:func:`supremix_med.bundles.load_config`),
so nothing refers to ``bundles/_base`` any more, and its paths are the model zoo's: ``"bundle_root": "."``,
checkpoints in ``$@bundle_root + '/models'`` and everything else a run writes under ``$@bundle_root + '/eval'``
(:data:`ZOO_PATHS`). Run it from the bundle folder, or pass ``--bundle_root DIR`` (what model-zoo's checks do):
``python -m monai.bundle run --config_file configs/train.json --dataset_dir /data``. The configs call the
supremix_med package, which must be installed where the bundle runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from supremix_med import __version__
from supremix_med.bundles import BASE, MACRO, bundles_dir, load_config
from supremix_med.io import file_sha256

__all__ = ["CONFIGS", "URL_PLACEHOLDER", "ZOO_PATHS", "export_bundle", "main", "model_files", "zoo_config"]

#: The bundle configs an export carries, as MONAI model-zoo names them (evaluate and multi-GPU are overlays on
#: ``train.json``, as in the source bundle).
CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json")
#: The path knobs each exported config sets, relative to the bundle (model-zoo style): the checkpoints that
#: inference reads are the ones training writes.
ZOO_PATHS: dict[str, dict[str, str]] = {
    "train.json": {"bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
                   "ckpt_dir": "$@bundle_root + '/models'"},
    "inference.json": {"bundle_root": ".", "output_dir": "$@bundle_root + '/eval/inference'",
                       "ckpt_dir": "$@bundle_root + '/models'"},
}
#: Files of a bundle folder that are its configs and docs, not data shipped with it.
_BUNDLE_OWN = {"metadata.json", "logging.conf", "README.md"}
#: The trained model in a models folder; the other checkpoints (``*.pt``: final, pre-trained encoder) are training's.
MODEL_FILE = "model.pt"
#: Where large_files.yml says a file will be served from, until someone uploads it and fills in the address.
URL_PLACEHOLDER = "https://REPLACE-WITH-THE-DOWNLOAD-URL.invalid/{bundle}_v{version}/{path}"


def zoo_config(name: str, file: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Bundle ``name``'s config ``file`` self-contained: the shared recipe's macros filled in and the paths of
    :data:`ZOO_PATHS` relative to the bundle.

    Raises:
        ValueError: no such bundle, or a file macro is left (a macro of a macro target the resolver does not reach).
    """
    config = load_config(name, file, folder=folder)
    config.update(ZOO_PATHS.get(file, {}))
    left = sorted(set(re.findall(rf'"({re.escape(MACRO)}[^"#]*\.json#[^"]*)"', json.dumps(config))))
    if left:
        raise ValueError(f"{name}/{file}: file macros left after resolving: {left}")
    return config


def model_files(models: str | os.PathLike) -> list[Path]:
    """What inference needs from a training run's models folder: ``model.pt`` and every file beside it that is not
    a checkpoint (``model_config.json``, ``preprocessing.json``, ``bias_correction.json``, ``vocab.txt``,
    ``embeddings.npy``, ..., and the manifest ``model_set.json`` by which inference checks them), sorted by name.

    Raises:
        FileNotFoundError: ``models`` has no ``model.pt``.
    """
    models = Path(models)
    if not (models / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{models}: no {MODEL_FILE}; --model takes the models folder of a finished training "
                                f"run (its ckpt_dir, by default <output_dir>/models).")
    return sorted(path for path in models.iterdir()
                  if path.is_file() and (path.name == MODEL_FILE or path.suffix != ".pt"))


def _data_files(source: Path) -> list[Path]:
    """Files a bundle folder ships besides its configs and docs (data splits and their licences), relative."""
    return sorted(path.relative_to(source) for path in source.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts
                  and not (path.parent == source and (path.suffix == ".json" or path.name in _BUNDLE_OWN)))


def _large_files(bundle: str, version: str, root: Path, files: list[Path]) -> str:
    """``large_files.yml`` (the format of ``python -m monai.bundle download_large_files``) listing ``files``."""
    lines = ["# Files of this bundle too large for a code repository. Upload each one, replace its url (a",
             "# placeholder), then `python -m monai.bundle download_large_files --bundle_path <bundle>` fetches",
             "# them and checks their sha256."]
    if not files:
        lines.append("# No trained model was exported (--model): a bundle that ships one lists models/* here.")
        return "\n".join([*lines, "large_files: []", ""])
    lines.append("large_files:")
    for path in files:
        relative = path.relative_to(root).as_posix()
        url = URL_PLACEHOLDER.format(bundle=bundle, version=version, path=relative)
        # JSON strings are YAML double-quoted scalars
        lines += [f"  - path: {json.dumps(relative)}", f"    url: {json.dumps(url)}",
                  f"    hash_val: {json.dumps(file_sha256(path))}", '    hash_type: "sha256"']
    return "\n".join([*lines, ""])


def _data_licence(bundle: str, meta: dict[str, Any], export: Path, data: list[Path]) -> str:
    """``docs/data_license.txt``: the data source (metadata ``data_source``), then each shipped data file's licence."""
    parts = [f"Data of the {bundle} bundle", "", f"Trained and evaluated on: {meta['data_source']}", "",
             "These data are not redistributed with the bundle, except the files listed below; they stay under the "
             "licence or data-use terms of their provider, which whoever trains or evaluates the bundle obtains "
             "and follows."]
    licences = [path for path in data if path.name.startswith("LICENSE")]
    if not licences:
        parts += ["", "No data files ship with this bundle."]
    for licence in licences:
        covered = ", ".join(path.as_posix() for path in data if path.parent == licence.parent and path != licence)
        parts += ["", "-" * 78, f"{covered} ship with this bundle under the licence in {licence.as_posix()}:", "",
                  (export / licence).read_text(encoding="utf-8").strip()]
    return "\n".join([*parts, ""])


def _readme(bundle: str, source: Path) -> str:
    """``docs/README.md``: how to run the export, then the bundle's README with its config paths made the export's."""
    own = re.sub(rf"bundles/{re.escape(bundle)}/((?:{'|'.join(map(re.escape, CONFIGS))}|metadata\.json|"
                 rf"logging\.conf))", r"configs/\1", (source / "README.md").read_text(encoding="utf-8"))
    preface = f"""<!-- Exported by `python -m supremix_med.zoo export {bundle}` (supremix-med {__version__}). -->

> **This is the `{bundle}` bundle in MONAI model-zoo layout**: `configs/` holds self-contained configs (the
> shared recipe of supremix-med filled in), `models/` the trained model when there is one
> (`python -m monai.bundle download_large_files --bundle_path .` fetches what `large_files.yml` lists),
> `docs/data_license.txt` the data's terms. Paths are relative to the bundle: run from this folder or pass
> `--bundle_root <this folder>`. Training writes its checkpoints to `models/` (`--ckpt_dir`) and everything else
> to `eval/` (`--output_dir`); inference reads `models/` and writes to `eval/inference/`. The configs call the
> `supremix_med` package: install it first (`pip install supremix_med-{__version__}-py3-none-any.whl`, or from a
> clone of supremix-med, whose README says how).
>
> ```bash
> python -m monai.bundle run --config_file configs/train.json --dataset_dir /path/to/data
> python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /path/to/data
> python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/new/data
> ```
>
> The bundle's own README follows. Its default paths (`outputs/{bundle}/...`, the source repository's working
> directory) are `eval/` and `models/` here; commands that name other files of the source repository need a
> clone of it.

"""
    return preface + own


def _project_licence() -> str:
    """supremix-med's LICENSE: the source checkout's, else the one installed with the distribution."""
    checkout = Path(__file__).resolve().parents[1] / "LICENSE"
    if checkout.is_file() and (checkout.parent / "bundles" / BASE).is_dir():
        return checkout.read_text(encoding="utf-8")
    try:
        text = package_metadata.distribution("supremix-med").read_text("licenses/LICENSE")
    except package_metadata.PackageNotFoundError:
        text = None
    if text is None:
        raise FileNotFoundError(f"supremix-med's LICENSE is neither at {checkout} nor in the installed distribution's "
                                f"licenses/; reinstall supremix-med.")
    return text


def export_bundle(name: str, output: str | os.PathLike, model: str | os.PathLike | None = None,
                  folder: str | os.PathLike | None = None) -> Path:
    """Write bundle ``name`` of ``folder`` (default :func:`~supremix_med.bundles.bundles_dir`) in model-zoo layout
    (module docstring) to ``output``, with the trained model of the models folder ``model`` when given.

    The export is assembled in a hidden folder beside ``output`` and renamed into place, so a failure leaves no
    half-written bundle. Returns ``output``.

    Raises:
        FileExistsError: ``output`` exists and is not an empty folder.
        FileNotFoundError: ``model`` has no ``model.pt``.
        ValueError: no such bundle.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output}: exists and is not an empty folder; export into a new one.")
    root = Path(folder) if folder is not None else bundles_dir()
    configs = {file: zoo_config(name, file, folder=root) for file in CONFIGS}  # ValueError for an unknown bundle
    models = model_files(model) if model is not None else []
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial"))
    try:
        _assemble(name, root / name, configs, models, staging)
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _assemble(name: str, source: Path, configs: dict[str, dict], models: list[Path], export: Path) -> None:
    """Write the export's files into the (empty) folder ``export``."""
    for sub in ("configs", "docs"):
        (export / sub).mkdir()
    meta = json.loads((source / "metadata.json").read_text(encoding="utf-8"))
    for file, config in configs.items():
        (export / "configs" / file).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    for file in ("metadata.json", "logging.conf"):
        shutil.copyfile(source / file, export / "configs" / file)
    data = _data_files(source)
    for relative in data:
        (export / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, export / relative)
    if models:
        (export / "models").mkdir()
        for path in models:
            shutil.copyfile(path, export / "models" / path.name)
    (export / "LICENSE").write_text(_project_licence(), encoding="utf-8")
    (export / "docs" / "README.md").write_text(_readme(name, source), encoding="utf-8")
    (export / "docs" / "data_license.txt").write_text(_data_licence(name, meta, export, data), encoding="utf-8")
    shipped = sorted((export / "models").iterdir()) if models else []
    (export / "large_files.yml").write_text(_large_files(name, meta["version"], export, shipped), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python -m supremix_med.zoo export <bundle> --output DIR [--model MODELS]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m supremix_med.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a bundle in MONAI model-zoo layout")
    export.add_argument("bundle", help="bundle name (a folder of the bundles folder, e.g. ukb_brainage)")
    export.add_argument("--output", type=Path, required=True, help="the new bundle folder (must not exist, or be empty)")
    export.add_argument("--model", type=Path, help="models folder of a training run (holding model.pt) to ship")
    args = parser.parse_args(argv)
    try:
        path = export_bundle(args.bundle, args.output, model=args.model)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
