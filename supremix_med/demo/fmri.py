"""Embedded demo cohort: synthetic resting-state parcel time series whose network structure changes with age.

HCP Aging data cannot ship with the project, so the demo generates a stand-in for its parcellated resting
state: per run, an array [n_parcels, n_frames] (default 400 x 480, TR 0.8 s, as HCP Aging's 478-frame
runs), stored as float32 ``.npy`` -- the "already extracted" input of ``preprocessing.fmri``.

Layout written by :func:`generate_cohort`::

    <output_dir>/cohort.json                       generator parameters (seed, sizes, age range, model version)
    <output_dir>/manifest.csv                      id, path (relative to output_dir), subject, run, age, sex, site
    <output_dir>/sub-0000/run-1_parcels.npy        one folder per subject, one file per run

Model
-----
Parcels are split into 7 networks of unequal size (as Yeo's 7 networks in Schaefer's atlas: visual,
somatomotor, dorsal attention, ventral attention, limbic, control, default). Each network ``k`` has a latent
signal ``s_k(t)``: AR(1) with coefficient 0.6 at the TR (slow fluctuations), mixed across networks so their
correlation matrix is ``R(u) = (1 - u) R_young + u R_old``, where ``R_young`` has the between-network structure
of young adults (default mode anticorrelated with dorsal and ventral attention, visual with somatomotor and
control with dorsal attention positively coupled) and ``R_old`` is a uniform weak coupling of 0.25 (no
segregation). Parcel ``p`` of network ``k`` is ``a_p s_k(t) + sqrt(1 - a_p**2) e_p(t)`` with unit-variance
AR(1) noise ``e_p`` (coefficient 0.3, plus the site's), and a loading ``a_p = a(u) + N(0, 0.05)`` clipped to
[0.05, 0.95], ``a(u) = 0.7 - 0.3 u``. The ageing variable is ``u = (B - 36) / 64`` with a biological age
``B = A + N(0, 6 years)``, so with age

- within-network coupling falls (mean within-network correlation ~ a(u)**2: 0.49 at 36, 0.16 at 100);
- between-network segregation falls (anticorrelations fade, everything drifts to a weak positive coupling),

as reported in ageing studies of resting-state networks (Betzel et al. 2014; Chan et al. 2014; Geerligs et al.
2015). Sites differ in the noise's autocorrelation (coefficient +0, +0.1, +0.2) and in a global signal
(shared by all parcels) of relative power 0, 0.05 and 0.1; sex has no effect. Runs of one subject share the
subject's loadings and ageing variable, with independent signals and noise. Each series is z-scored per
parcel (mean 0, sample SD 1).

Every subject's covariates and loadings come from ``numpy.random.default_rng([seed, index])`` and the signals of
run ``r`` from ``default_rng([seed, index, r])``: files are byte-identical for the same arguments whatever the
order or the number of subjects.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from supremix_med.demo.generation import add_cohort_arguments, cohort_options, map_indices, write_table
from supremix_med.io import atomic_write, check_generator_record

__all__ = ["NETWORKS", "SITES", "CohortParams", "generate_cohort", "main", "network_of_parcels", "synthesize_run"]

MODEL_VERSION = 1
MANIFEST_NAME = "manifest.csv"
COHORT_NAME = "cohort.json"
MANIFEST_COLUMNS = ("id", "path", "subject", "run", "age", "sex", "site")
NETWORKS = ("visual", "somatomotor", "dorsal_attention", "ventral_attention", "limbic", "control", "default")
"""The 7 networks, in the order of their parcels."""
_NETWORK_SHARES = np.array([0.15, 0.17, 0.12, 0.12, 0.06, 0.13, 0.25])  # ~ Schaefer 400's 7-network sizes
_YOUNG_COUPLING = {  # between-network correlations of young adults (network indices in NETWORKS)
    (0, 1): 0.25, (2, 3): 0.2, (2, 5): 0.2, (4, 6): 0.15, (2, 6): -0.35, (3, 6): -0.25,
}
_OLD_COUPLING = 0.25
AGE_ORIGIN, AGE_SPAN = 36.0, 64.0
BIOLOGICAL_AGE_SD = 6.0
LOADING_YOUNG, LOADING_LOSS, LOADING_SD = 0.7, 0.3, 0.05
SIGNAL_AR, NOISE_AR = 0.6, 0.3
SITES = {"siteA": (0.0, 0.0), "siteB": (0.1, 0.05), "siteC": (0.2, 0.1)}
"""Site -> (extra noise AR coefficient, relative power of a global signal)."""


@dataclass(frozen=True)
class CohortParams:
    """Generator settings recorded in ``cohort.json`` (a folder holds one cohort).

    Args:
        seed: cohort seed.
        n_parcels: parcels per series (>= 7).
        n_frames: frames per run.
        n_runs: runs per subject.
        t_r: repetition time, s (recorded in cohort.json; the model is defined per frame).
        age_range: (youngest, oldest), years; ages are uniform in it.
    """

    seed: int = 0
    n_parcels: int = 400
    n_frames: int = 480
    n_runs: int = 1
    t_r: float = 0.8
    age_range: tuple[float, float] = (36.0, 100.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "age_range", (float(self.age_range[0]), float(self.age_range[1])))
        if self.n_parcels < len(NETWORKS) or self.n_frames < 2 or self.n_runs < 1:
            raise ValueError(f"need n_parcels >= {len(NETWORKS)}, n_frames >= 2 and n_runs >= 1, got "
                             f"{self.n_parcels}, {self.n_frames} and {self.n_runs}.")
        if not self.age_range[0] < self.age_range[1]:
            raise ValueError(f"age_range must be (youngest, oldest) with youngest < oldest, got {self.age_range}.")


def network_of_parcels(n_parcels: int) -> np.ndarray:
    """Network index (0..6, see NETWORKS) of every parcel: contiguous blocks sized like Schaefer's networks."""
    bounds = np.round(np.cumsum(_NETWORK_SHARES) / _NETWORK_SHARES.sum() * n_parcels).astype(int)
    return np.searchsorted(bounds, np.arange(n_parcels), side="right")


def _network_correlation(u: float) -> np.ndarray:
    """(7, 7) correlation of the network signals at ageing variable ``u`` (a convex mix: always valid)."""
    n = len(NETWORKS)
    young = np.eye(n)
    for (i, j), value in _YOUNG_COUPLING.items():
        young[i, j] = young[j, i] = value
    old = np.full((n, n), _OLD_COUPLING) + (1.0 - _OLD_COUPLING) * np.eye(n)
    return (1.0 - u) * young + u * old


def _ar1(rng: np.random.Generator, coefficient: float | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Unit-variance AR(1) series along the last axis (stationary start); ``coefficient`` per row or scalar."""
    coefficient = np.broadcast_to(np.asarray(coefficient, dtype=float), (shape[0],))
    innovations = rng.standard_normal(shape)
    series = np.empty(shape)
    for value in np.unique(coefficient):  # lfilter takes one coefficient at a time
        rows = coefficient == value
        x = innovations[rows] * np.sqrt(1.0 - value**2)
        x[:, 0] = innovations[rows, 0]
        series[rows] = lfilter([1.0], [1.0, -value], x, axis=-1)
    return series


@dataclass(frozen=True)
class _Subject:
    age: float
    sex: str
    site: str
    ageing: float  # u = (B - 36) / 64 for the biological age B
    loadings: np.ndarray  # (n_parcels,)


def _draw_subject(params: CohortParams, index: int) -> _Subject:
    rng = np.random.default_rng([params.seed, index])
    age = round(float(rng.uniform(*params.age_range)), 1)
    sex = ("F", "M")[int(rng.integers(2))]
    site = list(SITES)[int(rng.integers(len(SITES)))]
    ageing = float(np.clip((age + rng.normal(0.0, BIOLOGICAL_AGE_SD) - AGE_ORIGIN) / AGE_SPAN, 0.0, 1.0))
    mean_loading = LOADING_YOUNG - LOADING_LOSS * ageing
    loadings = np.clip(mean_loading + rng.normal(0.0, LOADING_SD, params.n_parcels), 0.05, 0.95)
    return _Subject(age, sex, site, ageing, loadings)


def synthesize_run(params: CohortParams, index: int, run: int) -> np.ndarray:
    """Parcel series of run ``run`` (1-based) of subject ``index``.

    Returns:
        float32 array (n_parcels, n_frames), z-scored per parcel.
    """
    subject = _draw_subject(params, index)
    rng = np.random.default_rng([params.seed, index, run])
    extra_ar, global_power = SITES[subject.site]
    shape = (len(NETWORKS), params.n_frames)
    networks = np.linalg.cholesky(_network_correlation(subject.ageing)) @ _ar1(rng, SIGNAL_AR, shape)
    a = subject.loadings[:, None]
    noise = _ar1(rng, NOISE_AR + extra_ar, (params.n_parcels, params.n_frames))
    series = a * networks[network_of_parcels(params.n_parcels)] + np.sqrt(1.0 - a**2) * noise
    series += np.sqrt(global_power) * _ar1(rng, SIGNAL_AR, (1, params.n_frames))
    series = (series - series.mean(axis=1, keepdims=True)) / series.std(axis=1, ddof=1, keepdims=True)
    return series.astype(np.float32)


def _save_npy(array: np.ndarray, path: Path) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:  # np.save on a name would append ".npy"
            np.save(handle, array)

    atomic_write(path, write)


def _generate_subject(output_dir: Path, params: CohortParams, index: int) -> list[dict[str, object]]:
    """Write the runs of subject ``index`` that do not exist yet; return its manifest rows, one per run."""
    subject, subject_id = _draw_subject(params, index), f"sub-{index:04d}"
    (output_dir / subject_id).mkdir(exist_ok=True)
    rows = []
    for run in range(1, params.n_runs + 1):
        path = f"{subject_id}/run-{run}_parcels.npy"
        if not (output_dir / path).exists():
            _save_npy(synthesize_run(params, index, run), output_dir / path)
        rows.append({"id": f"{subject_id}_run-{run}", "path": path, "subject": subject_id, "run": run,
                     "age": subject.age, "sex": subject.sex, "site": subject.site})
    return rows


def generate_cohort(output_dir: str | Path, n_subjects: int = 200, seed: int = 0, n_parcels: int = 400,
                    n_frames: int = 480, n_runs: int = 1, t_r: float = 0.8,
                    age_range: tuple[float, float] = (36.0, 100.0), progress: bool = True) -> pd.DataFrame:
    """Generate (or complete) the synthetic resting-state cohort under ``output_dir``.

    Files already present are kept (they are only ever written whole, through a temporary file and
    ``os.replace``), so an interrupted run resumes, and a larger ``n_subjects`` extends a smaller cohort.
    About 10 ms per 400 x 480 run on one core, so no worker pool.

    Args:
        output_dir: cohort folder, created if needed.
        n_subjects: number of subjects.
        seed, n_parcels, n_frames, n_runs, t_r, age_range: see ``CohortParams``.
        progress: show a tqdm progress bar.

    Returns:
        The manifest, also written to ``<output_dir>/manifest.csv``: one row per run with ``id``
        ("sub-0000_run-1"), ``path`` (relative to ``output_dir``), ``subject``, ``run`` (1-based), ``age``
        (years), ``sex`` ("F"/"M") and ``site``.

    Raises:
        ValueError: bad sizes or age range, or ``output_dir`` holds a cohort generated with other parameters.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}.")
    params = CohortParams(seed=seed, n_parcels=n_parcels, n_frames=n_frames, n_runs=n_runs, t_r=t_r,
                          age_range=age_range)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_generator_record(output_dir / COHORT_NAME, {"model_version": MODEL_VERSION, **asdict(params)})
    write = functools.partial(_generate_subject, output_dir, params)
    subjects = map_indices(write, range(n_subjects), progress=progress, desc="demo fMRI cohort")
    manifest = pd.DataFrame([row for rows in subjects for row in rows], columns=list(MANIFEST_COLUMNS))
    write_table(manifest, output_dir / MANIFEST_NAME)
    return manifest


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: ``python -m supremix_med.demo.fmri --output DIR [--n_subjects N] [--n_runs R] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_arguments(parser, 200, workers=False, age_range=(36.0, 100.0))
    parser.add_argument("--n_parcels", type=int, default=400)
    parser.add_argument("--n_frames", type=int, default=480)
    parser.add_argument("--n_runs", type=int, default=1)
    args = parser.parse_args(argv)
    return generate_cohort(args.output, n_parcels=args.n_parcels, n_frames=args.n_frames, n_runs=args.n_runs,
                           **cohort_options(args))


if __name__ == "__main__":
    main()
