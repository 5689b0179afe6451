"""One regression recipe, rendered into every bundle's config files.

Every bundle runs the same recipe: contrastive pre-training with the chosen ``method``, fine-tuning (or a linear
probe), validation with checkpointing, and a test report. The recipe lives once, in ``templates/`` (MONAI bundle
configs: ``train.json``, ``evaluate.json``, ``multi_gpu_train.json``, ``inference.json``, ``logging.conf``);
each bundle is a module of this package (``ukb_brainage.py``, ...) that holds MONAI-style overrides of the
templates, keyed by config id (``"pretrain#loss_kwargs#supremix#temperature"``):

- ``TRAIN``: applied to ``templates/train.json`` (data, network, label range, augmentation, losses, ...);
- ``INFERENCE``: applied to ``templates/inference.json``;
- ``EVALUATE``, ``MULTI_GPU``: applied to ``templates/evaluate.json`` / ``templates/multi_gpu_train.json``
  (optional; most bundles have none);
- ``OVERLAYS``: ``{file name: config}`` written as they are, e.g. ``{"demo.json": {...}}``: overlays a user
  merges with ``train.json`` (``--config_file "['train.json','demo.json']"``).

How each bundle's demo data are made is :data:`supremix_med.demo.DEMOS`.

``python -m supremix_med.recipes`` renders ``bundles/<name>/`` from them, so each bundle folder stays a plain,
self-contained MONAI bundle (portable, editable, checked by MONAI's tools), while the recipe is written once.
``python -m supremix_med.recipes --check`` lists stale files (the tests run it). ``metadata.json`` and
``README.md`` are written by hand in each bundle folder.

An override id must lead to an existing dict or list of the template (a typo cannot create a new section);
its last key may be new, so a bundle can add top-level settings or arguments.
"""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from supremix_med.io import atomic_write

__all__ = ["BUNDLES_DIR", "SPLITS", "apply_overrides", "bundle_names", "bundle_spec", "format_config",
           "render_bundle", "split_datasets", "stale_files", "template_imports", "write_bundle"]

#: The repository's bundle folders (this package is installed in editable mode from the repository).
BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
#: Config ids of the recipe's datasets and the split each reads.
SPLITS = {"pretrain": "train", "train": "train", "validate": "val", "test": "test"}
#: Template file (rendered under the same name) -> the spec attribute holding its overrides.
_TEMPLATES = {
    "train.json": "TRAIN",
    "evaluate.json": "EVALUATE",
    "multi_gpu_train.json": "MULTI_GPU",
    "inference.json": "INFERENCE",
}
_LINE_WIDTH = 110
_INDENT = 4


def bundle_names() -> list[str]:
    """Names of the bundles that have a spec module in this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def bundle_spec(name: str) -> ModuleType:
    """The spec module of bundle ``name`` (its overrides, overlays and demo steps)."""
    if name not in bundle_names():
        raise ValueError(f"unknown bundle {name!r}; the recipes know {bundle_names()}.")
    return importlib.import_module(f"{__name__}.{name}")


def _template(file_name: str) -> str:
    return resources.files(__name__).joinpath("templates", file_name).read_text(encoding="utf-8")


def _child(node: Any, key: str, config_id: str) -> Any:
    if isinstance(node, dict) and key in node:
        return node[key]
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    raise KeyError(f"override {config_id!r}: the template has no {key!r} there.")


def template_imports(*extra: str, file_name: str = "train.json") -> list[str]:
    """The ``imports`` of template ``file_name`` followed by ``extra`` ones, for a spec that needs more modules.

    Example: ``"imports": template_imports("$import supremix_med.data.sources.faces")``.
    """
    return [*json.loads(_template(file_name))["imports"], *extra]


def apply_overrides(config: dict, overrides: Mapping[str, Any]) -> dict:
    """Copy of ``config`` with each ``id -> value`` of ``overrides`` set (ids as in MONAI: ``a#b#0#c``).

    Raises:
        KeyError: an id whose parent is not a dict or list of ``config`` (the message names the id and key).
    """
    result = copy.deepcopy(config)
    for config_id, value in overrides.items():
        *path, last = config_id.split("#")
        node = result
        for key in path:
            node = _child(node, key, config_id)
        if isinstance(node, list):
            _child(node, last, config_id)  # lists are only replaced item by item, never extended
            node[int(last)] = copy.deepcopy(value)
        elif isinstance(node, dict):
            node[last] = copy.deepcopy(value)
        else:
            raise KeyError(f"override {config_id!r}: {'#'.join(path)!r} is a value, not a section.")
    return result


def split_datasets(component: Mapping[str, Any], split_key: str = "split") -> dict[str, dict]:
    """Overrides giving every stage of the recipe the dataset ``component`` with its split and transform.

    Args:
        component: a MONAI component (``{"_target_": ..., args}``) without split or transform.
        split_key: the component's argument naming the split.

    Returns:
        ``{"pretrain#dataset": ..., "train#dataset": ..., "validate#dataset": ..., "test#dataset": ...}``;
        pre-training and training read ``train``, validation ``val``, test ``test``, each with its stage's
        ``#preprocessing`` transform (the test stage uses validation's).
    """
    return {
        f"{stage}#dataset": {**component, split_key: split,
                             "transform": f"@{'validate' if stage == 'test' else stage}#preprocessing"}
        for stage, split in SPLITS.items()
    }


def format_config(config: Any, indent: int = 0, prefix: int = 0) -> str:
    """JSON text of ``config`` with 4-space indents, keeping a container on one line when it fits.

    ``indent`` is the current indent and ``prefix`` the width of what precedes the value on its line (a key).
    """
    flat = json.dumps(config)
    if not isinstance(config, (dict, list)) or not config or indent + prefix + len(flat) <= _LINE_WIDTH:
        return flat
    pad = " " * (indent + _INDENT)
    if isinstance(config, dict):
        keys = {k: json.dumps(k) + ": " for k in config}
        items = [pad + keys[k] + format_config(v, indent + _INDENT, len(keys[k])) for k, v in config.items()]
        brackets = "{}"
    else:
        items = [pad + format_config(v, indent + _INDENT) for v in config]
        brackets = "[]"
    return brackets[0] + "\n" + ",\n".join(items) + "\n" + " " * indent + brackets[1]


def _bundle_defaults(name: str) -> dict[str, dict[str, str]]:
    return {
        "train.json": {"bundle_root": f"bundles/{name}", "output_dir": f"outputs/{name}"},
        "inference.json": {"bundle_root": f"bundles/{name}", "ckpt_dir": f"outputs/{name}/models",
                           "output_dir": f"outputs/{name}/inference"},
    }


def render_bundle(name: str) -> dict[str, str]:
    """Text of every file the recipe writes into ``bundles/<name>/``: ``{file name: text}``."""
    spec = bundle_spec(name)
    defaults = _bundle_defaults(name)
    files = {}
    for file_name, attribute in _TEMPLATES.items():
        overrides = {**defaults.get(file_name, {}), **getattr(spec, attribute, {})}
        files[file_name] = format_config(apply_overrides(json.loads(_template(file_name)), overrides)) + "\n"
    for file_name, overlay in getattr(spec, "OVERLAYS", {}).items():
        files[file_name] = format_config(overlay) + "\n"
    files["logging.conf"] = _template("logging.conf")
    return files


def stale_files(bundles_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Rendered files under ``bundles_dir`` that are missing or differ from what the recipe renders now."""
    root = Path(bundles_dir)
    return [root / name / file_name
            for name in (names or bundle_names())
            for file_name, text in render_bundle(name).items()
            if not (root / name / file_name).is_file() or (root / name / file_name).read_text() != text]


def write_bundle(name: str, bundles_dir: str | Path) -> list[Path]:
    """Render ``bundles/<name>/`` into ``bundles_dir``; returns the files that changed."""
    folder = Path(bundles_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for file_name, text in render_bundle(name).items():
        path = folder / file_name
        if not path.is_file() or path.read_text() != text:
            atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
            changed.append(path)
    return changed
