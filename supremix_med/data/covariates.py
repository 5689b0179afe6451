"""Covariates (e.g. sex, site scanner, age) as one float tensor that the network takes beside the image.

Bone-age models condition on sex: the same radiograph means a different bone age for a girl and a boy. A bundle
names its covariate columns (``"covariates": ["sex"]``); :class:`~supremix_med.data.datasets.CachedDataset` (or
an inference CSV) puts each column's value in the item under the column's name, and :class:`EncodeCovariatesd`
turns them into ``item["covariates"]``, float32 [C] in the listed order (collated: [B, C]), which the model
concatenates to the encoder's features before its regressor (:class:`~supremix_med.networks.ContrastiveRegressor`
with ``n_covariates=C``).

Encoding, per value:

- a column listed in :data:`CATEGORY_CODES` (``sex``): its code, case and surrounding blanks ignored
  (``M``/``male`` -> 0, ``F``/``female`` -> 1);
- any other column: the number as is (a float, a one-element tensor, or a numeric string such as ``"12.5"``);
  numeric covariates are not rescaled, so give them a scale near 1 (e.g. years, not days).

A missing (empty, NaN) or unknown value is an error that names the sample: a model must not silently read a
made-up covariate.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CATEGORY_CODES", "COVARIATES_KEY", "EncodeCovariatesd", "covariate_inputs", "covariate_transforms",
           "encode_covariate"]

#: Batch key of the encoded covariates [B, C], the network's ``covariates`` argument.
COVARIATES_KEY = "covariates"
#: Codes of categorical covariates: column -> {lower-case value: code}.
CATEGORY_CODES: dict[str, dict[str, float]] = {"sex": {"m": 0.0, "male": 0.0, "f": 1.0, "female": 1.0}}


def _as_number(name: str, value: Any) -> float:
    """A numeric covariate value as a finite float."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"covariate {name!r} must be a finite number, got {value!r}.")
    return number


def encode_covariate(name: str, value: Any, codes: Mapping[str, Mapping[str, float]] = CATEGORY_CODES) -> float:
    """One covariate value as a float: its code for a categorical column in ``codes``, else the number itself.

    Args:
        name: the covariate's column name, e.g. ``"sex"``.
        value: its value for one sample (str, float, int or a one-element tensor).
        codes: ``{column: {lower-case value: code}}`` of the categorical columns.

    Raises:
        ValueError: the value is missing, not one of the column's categories, or not a finite number.
    """
    if name not in codes:
        return _as_number(name, value)
    categories = {str(k).lower(): float(v) for k, v in codes[name].items()}
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in categories:
        raise ValueError(f"covariate {name!r} must be one of {sorted(categories)} (any case), got {value!r}.")
    return categories[key]


class EncodeCovariatesd(MapTransform):
    """Dict transform: the covariate entries ``keys`` of an item -> ``item[output_key]``, float32 [C].

    Args:
        keys: covariate columns, in the order of the output (C = their number).
        output_key: where the encoded tensor goes (the batch key the trainer passes to the network).
        codes: categorical codes, see :func:`encode_covariate`; default :data:`CATEGORY_CODES`.
        id_key: item entry naming the sample in error messages.

    Raises:
        ValueError: (when called) an item lacks a covariate or has a missing or unknown value; the message
            names the sample's ``id_key`` value and the covariate.
    """

    def __init__(self, keys: KeysCollection, output_key: str = COVARIATES_KEY,
                 codes: Mapping[str, Mapping[str, float]] | None = None, id_key: str = "id") -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.output_key = output_key
        self.codes = CATEGORY_CODES if codes is None else codes
        self.id_key = id_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        sample = item.get(self.id_key, "<no id>")
        absent = [key for key in self.keys if key not in item]
        if absent:
            raise ValueError(f"sample {sample!r}: no covariate(s) {absent}; the item has {sorted(map(str, item))}.")
        try:
            values = [encode_covariate(str(key), item[key], self.codes) for key in self.keys]
        except ValueError as err:
            raise ValueError(f"sample {sample!r}: {err}") from err
        item[self.output_key] = torch.tensor(values, dtype=torch.float32)
        return item


def covariate_transforms(covariates: Sequence[str]) -> list[MapTransform]:
    """The transforms that put a model's covariates into its items: ``[EncodeCovariatesd(covariates)]``, or none."""
    return [EncodeCovariatesd(covariates)] if covariates else []


def covariate_inputs(covariates: Sequence[str]) -> dict[str, str]:
    """Extra network inputs for MONAI's ``PrepareBatchExtraInput``: ``{"covariates": "covariates"}``, or none."""
    return {COVARIATES_KEY: COVARIATES_KEY} if covariates else {}
