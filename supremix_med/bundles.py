"""Where the bundles are, and their configs with the shared recipe filled in.

Every bundle folder (``bundles/<name>/``) is a MONAI bundle whose config files hold what is specific to it (data,
network, label range, losses, run settings) and take the shared recipe -- the engines, handlers and run steps in
``bundles/_base/`` -- through MONAI macros: ``"pretrain": "%bundles/_base/train.json#pretrain"``. MONAI reads a
macro's file path relative to the working directory, so ``python -m monai.bundle run --config_file
bundles/<name>/train.json`` runs from the folder that holds ``bundles/`` (the repository root, or the container's
working directory). :func:`load_config` resolves the same macros relative to :func:`bundles_dir`'s parent for use
from anywhere (the comparison tool, tests, exports).

The bundles folder is found, in order, from the ``SUPREMIX_MED_BUNDLES`` environment variable or the ``bundles``
folder of the source checkout this package runs from.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["BASE", "ENV_VAR", "MACRO", "bundle_names", "bundles_dir", "load_config", "resolve_macros"]

#: Environment variable naming the bundles folder explicitly.
ENV_VAR = "SUPREMIX_MED_BUNDLES"
#: The folder of the shared recipe inside the bundles folder (not a bundle itself).
BASE = "_base"
#: MONAI's macro sigil: ``"%<file>#<id>"`` is replaced by that part of another config file.
MACRO = "%"


def bundles_dir() -> Path:
    """The folder holding the bundle folders and the shared recipe (``_base``).

    Raises:
        FileNotFoundError: neither ``$SUPREMIX_MED_BUNDLES`` nor the source checkout has one (the message says how to
            point at it).
    """
    explicit = os.environ.get(ENV_VAR)
    folder = Path(explicit).expanduser() if explicit else Path(__file__).resolve().parents[1] / "bundles"
    if not (folder / BASE).is_dir():
        where = f"${ENV_VAR}={explicit}" if explicit else f"the source checkout ({folder})"
        raise FileNotFoundError(f"no bundles folder with {BASE}/ at {where}; set {ENV_VAR} to the folder that holds "
                                f"the bundle folders (bundles/ of a supremix-med checkout).")
    return folder


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
