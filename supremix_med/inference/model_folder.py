"""What inference reads from a trained model's folder (``ckpt_dir``), and the check that it is all there.

A bundle's ``inference.json`` builds its network from the bundle's declared architecture while the folder is empty
(so MONAI can check the config before any model exists) and from the folder's ``model_config.json`` once there is
one (:func:`supremix_med.networks.stored_model_config`); the preprocessing parameters come from the folder's
``preprocessing.json`` (:func:`stored_params`). :func:`check_model_folder` is the first step of the inference run:
a missing file stops it with one line naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supremix_med.engines.workflow import FINGERPRINT as FINGERPRINT_FILE

__all__ = ["MODEL_FILE", "check_model_folder", "stored_params"]

#: The trained weights (the model validation selected).
MODEL_FILE = "model.pt"


def stored_params(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The preprocessing parameters of the model in ``ckpt_dir`` (``preprocessing.json``'s ``params``), ``{}`` while
    the folder holds no model.

    Raises:
        ValueError: the file exists but is not a fingerprint (the message names it).
    """
    path = Path(ckpt_dir) / FINGERPRINT_FILE
    if not path.is_file():
        return {}
    try:
        params = json.loads(path.read_text(encoding="utf-8")).get("params", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a preprocessing fingerprint ({err}).") from err
    if not isinstance(params, dict):
        raise ValueError(f"{path}: its 'params' entry is not a JSON object.")
    return params


def check_model_folder(ckpt_dir: str | os.PathLike, files: Sequence[str] = (MODEL_FILE, "model_config.json")) -> Path:
    """Refuse a model folder that lacks any of ``files``; return the folder.

    Raises:
        FileNotFoundError: one line naming the first missing file and what to do.
    """
    folder = Path(ckpt_dir)
    for name in files:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"no {name} in {folder}: point --ckpt_dir at the models folder of a finished "
                                    f"training run (<output_dir>/models).")
    return folder
