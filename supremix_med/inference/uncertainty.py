"""An interval per prediction: test-time augmentation, deep ensembles and split conformal calibration.

Three pieces, each usable on its own:

- **Spread.** :class:`TestTimeAugmentationInferer` (a MONAI ``Inferer``) runs S augmented copies of a batch (the
  unchanged input first, then random flips along chosen spatial axes and integer voxel shifts with zero fill)
  through the network, or through every member of a :class:`DeepEnsemble` (several trained models, e.g. several
  model folders read by :func:`load_ensemble`). Its output ``{"pred": mean [B, T], "spread": std [B, T]}`` is the
  mean and the standard deviation (population, ``ddof=0``) of the S x M predictions; :class:`SplitSpreadd` in the
  evaluator's postprocessing turns it into ``pred`` [B, T] and ``pred_spread`` [B, T], so metrics and collectors
  keep seeing ``pred``. The augmentations are drawn once per input rank from ``seed``, so a scan gets the same
  prediction whatever batch it is in.
- **Calibration.** :class:`ConformalInterval` is split conformal prediction fitted on the validation split
  (predictions the model never trained on; the checkpoint was chosen on them, which the guarantee ignores). With
  n validation cases and miscoverage ``alpha`` its half-width is the k-th smallest validation score,
  k = ceil((n + 1)(1 - alpha)): then a new case exchangeable with the validation cases is covered with
  probability at least 1 - alpha (and below 1 - alpha + 1 / (n + 1) for continuous scores). The score is

  * ``"absolute"`` -- ``|y - mu|`` when no spread is given: one interval width ``mu +- q`` for every case;
  * ``"normalised"`` -- ``|y - mu| / max(sigma, spread_floor)`` when a spread sigma is given (TTA, ensemble):
    ``mu +- q * sigma``, wider where the model is less sure.

  Calibrate with the very spread source used at inference (same TTA settings, same ensemble): the score is only
  exchangeable then; ``spread_source`` records it. :class:`SpreadCollector` gathers a validation run's
  predictions with their spreads. The fitted interval is stored beside the model as ``conformal.json``.
- **Checking.** :func:`coverage_report` gives the coverage reached on a test split (for ``metrics.json``).
  :func:`combine_members` pools members' stored validation predictions into an ensemble's, so an ensemble of
  model folders trained on the same splits can be calibrated without the data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import MapTransform
from torch import nn

from supremix_med.engines.reporting import PredictionCollector
from supremix_med.engines.workflow import FINGERPRINT, load_weights
from supremix_med.io import atomic_write_json
from supremix_med.networks import build_model, stored_model_config

from .scans import FINGERPRINT_IGNORED

__all__ = ["CONFORMAL_FILE", "SCORES", "ConformalInterval", "DeepEnsemble", "SplitSpreadd", "SpreadCollector",
           "TestTimeAugmentationInferer", "calibrated_inferer", "combine_members", "coverage_report", "load_ensemble",
           "spread_column"]

logger = logging.getLogger(__name__)

#: File name of the fitted interval beside the model.
CONFORMAL_FILE = "conformal.json"
#: Conformal scores: ``|y - mu|`` and ``|y - mu| / sigma``.
SCORES = ("absolute", "normalised")
_SHOWN = 5  # left-out calibration cases named in the warning


def spread_column(target: str) -> str:
    """Name of the spread column of a predictions table: ``predicted_<target>_spread``."""
    return f"predicted_{target}_spread"


# ------------------------------------------------------------------------------------------------ ensembles
class DeepEnsemble(nn.Module):
    """Several trained models as one network: ``forward`` gives their mean prediction.

    Args:
        members: M >= 1 models mapping the same inputs to [B, T] predictions in target units.

    ``forward(x, *args, **kwargs)`` -> mean [B, T]; :meth:`forward_members` -> every member's [M, B, T]. Extra
    arguments (e.g. ``covariates``) go to every member.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("DeepEnsemble: needs at least one member model.")
        self.members = nn.ModuleList(members)

    def forward_members(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Every member's predictions stacked: [M, B, T]."""
        return torch.stack([member(x, *args, **kwargs) for member in self.members])

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.forward_members(x, *args, **kwargs).mean(dim=0)


def load_ensemble(model_dirs: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> DeepEnsemble:
    """Build a :class:`DeepEnsemble` from model folders (each with ``model_config.json`` and ``model.pt``).

    Members must have been trained on identically preprocessed data: their ``preprocessing.json`` files (where
    present) must be equal, else the ensemble would mix inputs of different pipelines.

    Raises:
        FileNotFoundError: a folder lacks ``model_config.json`` or ``model.pt``.
        ValueError: no folder given, or the members' preprocessing fingerprints differ (the message names them).
    """
    if not model_dirs:
        raise ValueError("load_ensemble: no model folder given.")
    folders = [Path(d) for d in model_dirs]
    fingerprints = {str(f): json.loads((f / FINGERPRINT).read_text()) for f in folders if (f / FINGERPRINT).is_file()}
    if len({json.dumps({k: v for k, v in fp.items() if k not in FINGERPRINT_IGNORED}, sort_keys=True)
            for fp in fingerprints.values()}) > 1:
        raise ValueError(f"load_ensemble: the models were trained on differently preprocessed data; "
                         f"compare the {FINGERPRINT} of {sorted(fingerprints)}.")
    members = []
    for folder in folders:
        model = build_model(**stored_model_config(folder))
        if not load_weights(model, folder / "model.pt", device):
            raise FileNotFoundError(f"load_ensemble: {str(folder / 'model.pt')!r} does not exist.")
        members.append(model.to(device).eval())
    return DeepEnsemble(members)


# ------------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class _Augmentation:
    flips: tuple[int, ...]  # spatial axes (0-based) to flip
    shifts: tuple[int, ...]  # voxels per spatial axis, positive towards higher indices


def _shift(x: torch.Tensor, shifts: Sequence[int]) -> torch.Tensor:
    """``x`` [B, C, *spatial] moved by ``shifts`` voxels along each spatial axis, zeros moved in."""
    for axis, offset in enumerate(shifts):
        if offset == 0:
            continue
        dim, size = axis + 2, x.shape[axis + 2]
        x = torch.roll(x, offset, dims=dim)
        width = min(abs(offset), size)
        x.narrow(dim, 0 if offset > 0 else size - width, width).zero_()
    return x


class TestTimeAugmentationInferer(Inferer):
    """Mean and spread of a network's predictions over augmented copies of the input (and ensemble members).

    Args:
        n_samples: S >= 1 copies per input; the first is the input unchanged.
        flip_axes: spatial axes (0-based, e.g. ``(0,)`` for left-right of a RAS volume) each flipped with
            probability 1/2 in copies 2..S.
        max_shift: copies 2..S are shifted by a uniform integer in ``[-max_shift, max_shift]`` voxels along every
            spatial axis (zeros fill the vacated voxels).
        seed: seed of the augmentation draws (drawn once per number of spatial axes).
        inferer: the inferer run on each copy (default ``SimpleInferer``).

    ``__call__(inputs [B, C, *spatial], network, *args, **kwargs)`` returns ``{"pred": [B, T], "spread": [B, T]}``:
    mean and population standard deviation over the S (x M for a :class:`DeepEnsemble`, whose
    ``forward_members`` is used) predictions. Use :class:`SplitSpreadd` as the evaluator's postprocessing.

    Raises:
        ValueError: ``n_samples < 1``, ``max_shift < 0``, negative flip axes, or S > 1 without any augmentation;
            at call time, a flip axis beyond the input's spatial axes or augmentations for an input without
            spatial axes ([B, F] tables).
    """

    def __init__(self, n_samples: int = 8, flip_axes: Sequence[int] = (), max_shift: int = 0, seed: int = 0,
                 inferer: Inferer | None = None) -> None:
        super().__init__()
        if n_samples < 1 or max_shift < 0 or any(a < 0 for a in flip_axes):
            raise ValueError(f"TestTimeAugmentationInferer: need n_samples >= 1, max_shift >= 0 and flip axes >= 0, "
                             f"got n_samples={n_samples}, max_shift={max_shift}, flip_axes={list(flip_axes)}.")
        if n_samples > 1 and not flip_axes and max_shift == 0:
            raise ValueError("TestTimeAugmentationInferer: n_samples > 1 needs flip_axes or max_shift > 0; identical "
                             "copies give no spread.")
        self.n_samples, self.flip_axes, self.max_shift, self.seed = n_samples, tuple(flip_axes), max_shift, seed
        self.inferer = inferer or SimpleInferer()
        self._drawn: dict[int, list[_Augmentation]] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this inferer's augmentations (not the inner inferer)."""
        return {"n_samples": self.n_samples, "flip_axes": list(self.flip_axes), "max_shift": self.max_shift,
                "seed": self.seed}

    def augmentations(self, spatial_dims: int) -> list[_Augmentation]:
        """The S augmentations for inputs with ``spatial_dims`` spatial axes (the identity first)."""
        if spatial_dims not in self._drawn:
            if self.n_samples > 1 and (spatial_dims == 0 or max(self.flip_axes, default=-1) >= spatial_dims):
                raise ValueError(f"TestTimeAugmentationInferer: flip_axes {list(self.flip_axes)} / shifts need "
                                 f"spatial axes, the input has {spatial_dims}.")
            rng = np.random.default_rng(self.seed)
            drawn = [_Augmentation((), (0,) * spatial_dims)]
            for _ in range(self.n_samples - 1):
                flips = tuple(a for a in self.flip_axes if rng.random() < 0.5)
                shifts = tuple(int(s) for s in rng.integers(-self.max_shift, self.max_shift + 1, spatial_dims))
                drawn.append(_Augmentation(flips, shifts))
            self._drawn[spatial_dims] = drawn
        return self._drawn[spatial_dims]

    def samples(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """All predictions: [S * M, B, T] (M = 1 for a plain network)."""
        members = getattr(network, "forward_members", None)
        outputs = []
        for augmentation in self.augmentations(inputs.dim() - 2):
            x = torch.flip(inputs, [a + 2 for a in augmentation.flips]) if augmentation.flips else inputs
            x = _shift(x, augmentation.shifts) if any(augmentation.shifts) else x
            if members is not None:
                outputs.append(self.inferer(x, members, *args, **kwargs))
            else:
                outputs.append(self.inferer(x, network, *args, **kwargs)[None])
        return torch.cat(outputs).float()

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        predictions = self.samples(inputs, network, *args, **kwargs)
        return {"pred": predictions.mean(dim=0), "spread": predictions.std(dim=0, correction=0)}


class SplitSpreadd(MapTransform):
    """Postprocessing for :class:`TestTimeAugmentationInferer`: ``pred`` {"pred", "spread"} -> ``pred``,
    ``pred_spread``.

    Args:
        keys: the prediction key(s) (default ``"pred"``).
        spread_suffix: the spread goes to ``<key><spread_suffix>``.
    """

    def __init__(self, keys: str | Sequence[str] = "pred", spread_suffix: str = "_spread") -> None:
        super().__init__(keys)
        self.spread_suffix = spread_suffix

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], Mapping):
                d[key + self.spread_suffix] = d[key]["spread"]
                d[key] = d[key]["pred"]
        return d


class SpreadCollector(PredictionCollector):
    """A :class:`~supremix_med.engines.PredictionCollector` that also keeps the spreads (``output[spread_key]``).

    ``frame(target)`` adds ``predicted_<target>_spread`` (NaN for iterations without a spread), the table
    :func:`~supremix_med.inference.reference.save_model_reference` calibrates on.
    """

    def __init__(self, id_key: str = "id", spread_key: str = "pred_spread") -> None:
        super().__init__(id_key)
        self.spread_key = spread_key
        self._spreads: list[np.ndarray] = []

    def reset(self, engine: Any = None) -> None:
        super().reset(engine)
        self._spreads = []

    def collect(self, engine: Any) -> None:
        super().collect(engine)
        n = len(self._predictions[-1])
        spread = engine.state.output.get(self.spread_key)
        self._spreads.append(np.full(n, np.nan) if spread is None
                             else torch.as_tensor(spread).detach().float().cpu().reshape(-1).numpy())

    def frame(self, target_name: str = "age") -> pd.DataFrame:
        table = super().frame(target_name)
        table[spread_column(target_name)] = np.concatenate(self._spreads) if self._spreads else np.zeros(0)
        return table


def calibrated_inferer(model_dir: str | os.PathLike, inferer: Inferer | None = None) -> TestTimeAugmentationInferer:
    """The :class:`TestTimeAugmentationInferer` a model's interval was calibrated with (its ``conformal.json``
    ``spread_source``); one unaugmented sample when the model has no such record (no spread, absolute score)."""
    path = Path(model_dir) / CONFORMAL_FILE
    source = ConformalInterval.load(path).spread_source if path.is_file() else {}
    return TestTimeAugmentationInferer(**{"n_samples": 1, **source}, inferer=inferer)


# ------------------------------------------------------------------------------------------- conformal
def _vectors(pred: Any, truth: Any = None, spread: Any = None) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a, dtype=float).reshape(-1) for a in (pred, truth, spread) if a is not None]
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"conformal: predictions, targets and spreads need the same length, got "
                         f"{[len(a) for a in arrays]}.")
    return tuple(arrays)


def _left_out_cases(arrays: Sequence[np.ndarray], ids: Sequence[Any] | None) -> dict[str, str]:
    """Case -> reason of every case with a non-finite value in ``arrays`` (prediction, target[, spread]), with
    one warning naming them; a case is its id, or ``"case <i>"`` (its position) without ``ids``."""
    finite = [np.isfinite(a) for a in arrays]
    cases = [f"case {i}" for i in range(len(finite[0]))] if ids is None else [str(i) for i in ids]
    if len(cases) != len(finite[0]):
        raise ValueError(f"conformal: {len(cases)} ids for {len(finite[0])} validation cases.")
    names = ("prediction", "target", "spread")
    left_out = {cases[i]: " and ".join(name for name, ok in zip(names, finite) if not ok[i]) + " not finite"
                for i in np.flatnonzero(~np.logical_and.reduce(finite))}
    if left_out:
        shown = "; ".join(f"{case!r} ({reason})" for case, reason in list(left_out.items())[:_SHOWN])
        more = f"; and {len(left_out) - _SHOWN} more" if len(left_out) > _SHOWN else ""
        logger.warning("conformal calibration: left out %d of %d validation cases: %s%s; the interval lists them "
                       "under 'left_out' (in %s once saved)", len(left_out), len(finite[0]), shown, more,
                       CONFORMAL_FILE)
    return left_out


@dataclass(frozen=True)
class ConformalInterval:
    """A split-conformal interval fitted on validation predictions (see the module docstring).

    Attributes:
        alpha: miscoverage; the interval aims at ``1 - alpha`` coverage.
        score: ``"absolute"`` (half-width ``quantile``) or ``"normalised"`` (half-width ``quantile * sigma``).
        quantile: the k-th smallest validation score, ``inf`` when n < 1/alpha - 1 (too few cases for alpha).
        n: validation cases used; ``rank``: k = ceil((n + 1)(1 - alpha)).
        spread_floor: sigma below this (target units) counts as this (normalised score only).
        target: the predicted quantity's name.
        spread_source: how the calibration spreads were made (e.g. :attr:`TestTimeAugmentationInferer.settings`
            plus the ensemble size); inference must make its spreads the same way, so a config builds its
            inferer from this record.
        left_out: the validation cases :meth:`fit` left out, case -> reason (e.g. ``{"sub-07": "prediction not
            finite"}``); a case is named by its id, or ``"case <i>"`` (0-based position) when no ids were given.
    """

    alpha: float
    score: str
    quantile: float
    n: int
    rank: int
    spread_floor: float = 1e-6
    target: str = "age"
    spread_source: dict = field(default_factory=dict)
    left_out: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, pred: Any, truth: Any, spread: Any = None, alpha: float = 0.1, spread_floor: float = 1e-6,
            target: str = "age", spread_source: Mapping[str, Any] | None = None,
            ids: Sequence[Any] | None = None) -> ConformalInterval:
        """Fit on validation predictions [N], targets [N] and, for the normalised score, spreads [N].

        Cases with a non-finite (NaN, missing, infinite) prediction, target or spread are left out: one warning
        counts and names them, and :attr:`left_out` records each with its reason (saved in ``conformal.json``).

        Args:
            ids: the cases' ids [N], naming the left-out cases; None names them by position.

        Raises:
            ValueError: ``alpha`` not in (0, 1), ``spread_floor <= 0``, mismatched lengths, no usable case.
        """
        if not 0.0 < alpha < 1.0 or spread_floor <= 0:
            raise ValueError(f"ConformalInterval.fit: need 0 < alpha < 1 and spread_floor > 0, got alpha={alpha}, "
                             f"spread_floor={spread_floor}.")
        arrays = _vectors(pred, truth, spread)
        usable = np.logical_and.reduce([np.isfinite(a) for a in arrays])
        if not usable.any():
            raise ValueError("ConformalInterval.fit: no validation case with a finite prediction and target.")
        left_out = _left_out_cases(arrays, ids)
        score = "absolute" if spread is None else "normalised"
        calibration = cls(alpha, score, math.inf, int(usable.sum()), 0, spread_floor, target,
                          dict(spread_source or {}))
        scores = np.sort(calibration.scores(*(a[usable] for a in arrays)))
        rank = math.ceil((len(scores) + 1) * (1.0 - alpha))
        if rank > len(scores):
            logger.warning("conformal calibration: %d validation cases are too few for alpha=%g (need >= %d); the "
                           "interval is unbounded", len(scores), alpha, math.ceil(1 / alpha - 1))
        quantile = float(scores[rank - 1]) if rank <= len(scores) else math.inf
        return cls(alpha, score, quantile, len(scores), rank, spread_floor, target, calibration.spread_source,
                   left_out)

    def _sigma(self, spread: Any, n: int) -> np.ndarray:
        if self.score == "absolute":
            return np.ones(n)
        if spread is None:
            raise ValueError("ConformalInterval: this interval was calibrated with spreads (normalised score); "
                             "give the spread of every prediction (same TTA/ensemble settings as calibration).")
        return np.maximum(np.asarray(spread, dtype=float).reshape(-1), self.spread_floor)

    def scores(self, pred: Any, truth: Any, spread: Any = None) -> np.ndarray:
        """Conformal scores [N]: ``|y - mu|`` or ``|y - mu| / max(sigma, spread_floor)``."""
        pred, truth, *rest = _vectors(pred, truth, spread if self.score == "normalised" else None)
        return np.abs(truth - pred) / self._sigma(rest[0] if rest else spread, len(pred))

    def interval(self, pred: Any, spread: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(low [N], high [N]) for predictions [N] (and their spreads [N] for the normalised score)."""
        pred = _vectors(pred)[0]
        half = self.quantile * self._sigma(spread, len(pred))
        return pred - half, pred + half

    def covered(self, pred: Any, truth: Any, spread: Any = None) -> np.ndarray:
        """Boolean [N]: the target lies in the closed interval."""
        low, high = self.interval(pred, spread)
        truth = _vectors(truth)[0]
        return (low <= truth) & (truth <= high)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coverage_target": 1.0 - self.alpha}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``conformal.json`` (``quantile`` ``Infinity`` when unbounded)."""
        atomic_write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConformalInterval:
        """Read a saved interval.

        Raises:
            FileNotFoundError: no such file. ValueError: not a saved interval (names the file and the problem).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ConformalInterval: {str(path)!r} does not exist (the model was trained without "
                                    "conformal calibration?).")
        try:
            record = json.loads(path.read_text())
            fields = {k: record[k] for k in ("alpha", "score", "quantile", "n", "rank", "spread_floor", "target")}
            fields["spread_source"] = dict(record.get("spread_source", {}))
            fields["left_out"] = dict(record.get("left_out", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"ConformalInterval: {str(path)!r} is not a saved conformal interval ({err!r}).") from err
        if fields["score"] not in SCORES:
            raise ValueError(f"ConformalInterval: {str(path)!r} has score {fields['score']!r}; expected one of "
                             f"{SCORES}.")
        return cls(**fields)


def coverage_report(calibration: ConformalInterval, pred: Any, truth: Any, spread: Any = None) -> dict[str, Any]:
    """The coverage an interval reaches on a (test) split, for ``metrics.json``.

    Returns:
        ``{"coverage", "coverage_target", "n", "mean_width", "score", "alpha", "n_calibration"}``; cases with a
        non-finite prediction or target are not counted (``coverage`` None when none is left; ``mean_width`` None
        also for an unbounded interval, too few calibration cases for ``alpha``).
    """
    arrays = _vectors(pred, truth, spread if calibration.score == "normalised" else None)
    usable = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    pred, truth, *rest = (a[usable] for a in arrays)
    sigma = rest[0] if rest else None
    low, high = calibration.interval(pred, sigma)
    covered = (low <= truth) & (truth <= high)
    width = float(np.mean(high - low)) if len(covered) else math.nan
    return {
        "coverage": float(covered.mean()) if len(covered) else None,
        "coverage_target": 1.0 - calibration.alpha,
        "n": int(len(covered)),
        "mean_width": width if math.isfinite(width) else None,
        "score": calibration.score,
        "alpha": calibration.alpha,
        "n_calibration": calibration.n,
    }


def combine_members(frames: Sequence[pd.DataFrame], target: str = "age") -> pd.DataFrame:
    """Pool members' prediction tables (``id, <target>, predicted_<target>[, predicted_<target>_spread]``) by id.

    The ensemble's prediction is the members' mean; its spread the standard deviation of the pooled samples
    (law of total variance, equal samples per member): ``sqrt(mean(sigma_m^2) + var_m(mu_m))``. A member without
    a spread column counts as one sample (sigma_m = 0). Matches :class:`TestTimeAugmentationInferer` on a
    :class:`DeepEnsemble` with the same augmentations.

    Raises:
        ValueError: no frame, or the members do not predict the same ids (e.g. different validation splits).
    """
    if not frames:
        raise ValueError("combine_members: no member predictions given.")
    predicted, spread = f"predicted_{target}", spread_column(target)
    ids = [sorted(map(str, f["id"])) for f in frames]
    if any(i != ids[0] for i in ids[1:]):
        raise ValueError("combine_members: the members' predictions cover different ids; an ensemble can only be "
                         "calibrated on a validation split that all its members share.")
    aligned = [f.assign(id=f["id"].astype(str)).set_index("id").loc[ids[0]] for f in frames]
    means = np.stack([f[predicted].to_numpy(float) for f in aligned])
    variances = np.stack([f[spread].to_numpy(float) ** 2 if spread in f else np.zeros(len(f)) for f in aligned])
    return pd.DataFrame({"id": ids[0], target: aligned[0][target].to_numpy(float), predicted: means.mean(0),
                         spread: np.sqrt(variances.mean(0) + means.var(0))})
