"""Where the bundles are, and their configs with the shared recipe filled in.

Every bundle folder (``bundles/<name>/``) is a MONAI bundle whose config files hold what is specific to it (data,
network, label range, losses, run settings) and take the shared recipe -- the engines, handlers and run steps in
``bundles/_base/`` -- through MONAI macros: ``"pretrain": "%bundles/_base/train.json#pretrain"``. MONAI reads a
macro's file path relative to the working directory, so ``python -m monai.bundle run --config_file
bundles/<name>/train.json`` runs from the folder that holds ``bundles/`` (the repository root, or the container's
working directory). :func:`load_config` resolves the same macros relative to :func:`bundles_dir`'s parent for use
from anywhere (the comparison tool, tests, exports).

The bundles folder is found, in order (:func:`bundles_dir`):

1. ``$SUPREMIX_MED_BUNDLES``, when set (an edited copy, or the container's ``/opt/supremix-med/bundles``);
2. the ``bundles`` folder of the source checkout this package runs from (``pip install -e .``, ``PYTHONPATH``);
3. the copy installed with the package (``supremix_med/resources/bundles``: a wheel or ``pip install .`` maps the
   repository's ``bundles/`` there, see ``setup.py``).

From an installed wheel, ``python -m supremix_med.zoo export <name> --output DIR`` writes a self-contained bundle
(macros filled in, paths relative to the bundle) that MONAI runs from any working directory.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["BASE", "ENV_VAR", "INSTALLED", "MACRO", "bundle_names", "bundles_dir", "load_config", "resolve_macros"]

#: Environment variable naming the bundles folder explicitly.
ENV_VAR = "SUPREMIX_MED_BUNDLES"
#: Where a wheel or a plain ``pip install .`` puts the bundles folder (``setup.py`` maps ``bundles/`` there).
INSTALLED = Path(__file__).resolve().parent / "resources" / "bundles"
#: The folder of the shared recipe inside the bundles folder (not a bundle itself).
BASE = "_base"
#: MONAI's macro sigil: ``"%<file>#<id>"`` is replaced by that part of another config file.
MACRO = "%"


def bundles_dir() -> Path:
    """The folder holding the bundle folders and the shared recipe (``_base``): ``$SUPREMIX_MED_BUNDLES`` when set,
    else the source checkout's ``bundles``, else the copy installed with the package (module docstring).

    Raises:
        FileNotFoundError: the folder named by ``$SUPREMIX_MED_BUNDLES``, or else both the checkout's and the
            installed one, lack ``_base/`` (the message says how to point at one).
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        folder = Path(explicit).expanduser()
        if not (folder / BASE).is_dir():
            raise FileNotFoundError(f"no bundles folder with {BASE}/ at ${ENV_VAR}={explicit}; point it at the "
                                    f"folder that holds the bundle folders, or unset it.")
        return folder
    checkout = Path(__file__).resolve().parents[1] / "bundles"
    for folder in (checkout, INSTALLED):
        if (folder / BASE).is_dir():
            return folder
    raise FileNotFoundError(f"no bundles folder with {BASE}/ in the source checkout ({checkout}) nor installed with "
                            f"the package ({INSTALLED}); reinstall supremix-med, or set {ENV_VAR} to the folder that "
                            f"holds the bundle folders (bundles/ of a supremix-med checkout).")


def bundle_names(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of the bundles (folders with a ``train.json``) in ``folder`` (default :func:`bundles_dir`), sorted."""
    root = Path(folder) if folder is not None else bundles_dir()
    return sorted(p.parent.name for p in root.glob("*/train.json") if p.parent.name != BASE)


def _macro_target(value: str, root: Path) -> Any:
    path, _, config_id = value[len(MACRO):].partition("#")
    node = json.loads((root / path).read_text(encoding="utf-8"))
    for key in filter(None, config_id.split("#")):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return copy.deepcopy(node)


def resolve_macros(config: Any, root: str | os.PathLike) -> Any:
    """``config`` with every file macro (``"%<path>#<id>"``) replaced by its target, paths relative to ``root``.

    The same replacement MONAI's ``ConfigParser`` makes, independent of the working directory; macros within one
    file (``"%#id"``, ``"%id"``) are left to MONAI.
    """
    root = Path(root)
    if isinstance(config, dict):
        return {key: resolve_macros(value, root) for key, value in config.items()}
    if isinstance(config, list):
        return [resolve_macros(value, root) for value in config]
    if isinstance(config, str) and config.startswith(MACRO) and ".json#" in config:
        return _macro_target(config, root)
    return config


def load_config(name: str, *files: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The merged config of bundle ``name``'s ``files`` (default ``train.json``; later files override earlier ones
    id by id, as MONAI merges ``--config_file`` lists), with the shared recipe's macros resolved.

    Raises:
        ValueError: no such bundle (the message lists the bundles).
    """
    root = Path(folder) if folder is not None else bundles_dir()
    if name not in bundle_names(root):
        raise ValueError(f"unknown bundle {name!r}; the bundles in {root} are {bundle_names(root)}.")
    from monai.bundle import ConfigParser  # MONAI merges '#'-keyed overrides exactly as its runner does

    merged = ConfigParser.load_config_files([str(root / name / f) for f in (files or ("train.json",))])
    return resolve_macros(merged, root.parent)
