"""Embedded demo table: generated airfoil-like self-noise measurements with a sound-pressure target (dB).

The UCI Airfoil Self-Noise table is not shipped with the project, so the demo draws a table with its columns
(:data:`~supremix_med.data.sources.tables.AIRFOIL_COLUMNS`) from a cartoon of trailing-edge noise, written as a CSV that
:func:`supremix_med.data.sources.tables.load_table` reads with ``target_column="scaled_sound_pressure"``.

Model (per row, all draws independent):

- frequency ``f``: one of the 21 one-third-octave band centres from 200 Hz to 20 kHz, uniformly;
- free-stream velocity ``U``: 31.7, 39.6, 55.5 or 71.3 m/s; chord ``c``: 2.54 to 30.48 cm (six values);
- angle of attack ``a``: exponential with mean 4 degrees, capped at 22.2 and rounded to 0.1 (most rows near
  zero incidence, few at high angles);
- displacement thickness ``d = 0.012 c exp(0.09 a) (U / 71.3) ** -0.2`` (m): thicker at incidence and on
  larger chords;
- sound pressure level (dB): ``10 log10(d M^5)`` (M = U / 340, the fifth-power velocity law of trailing-edge
  noise) plus a spectral shape ``-7 log10(St / St_peak) ** 2`` in the Strouhal number ``St = f d / U``
  (``St_peak = 0.02 M ** -0.6 (1 + 0.05 a)``), shifted to a mean of 125 dB, plus Gaussian noise of ``noise_db``.

The target is a smooth nonlinear function of the features (with the defaults, least squares on the standardised
features explains only about 70 % of its variance on held-out rows), and its distribution is imbalanced: a bulk
between about 112 and 137 dB, a long sparse tail of quiet rows (frequencies far from the spectral peak) down
to about 96 dB and a thin loud tail.

Rows are drawn from ``numpy.random.default_rng(seed)``: the same seed and size give a byte-identical file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from supremix_med.demo.generation import write_table
from supremix_med.data.sources.tables import AIRFOIL_COLUMNS

__all__ = ["TABLE_FILE", "generate_table", "synthesize_table"]

TABLE_FILE = "demo_table.csv"
BAND_CENTRES_HZ = (200, 250, 315, 400, 500, 630, 800, 1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000,
                   10000, 12500, 16000, 20000)
VELOCITIES_M_S = (31.7, 39.6, 55.5, 71.3)
CHORDS_M = (0.0254, 0.0508, 0.1016, 0.1524, 0.2286, 0.3048)
MEAN_ANGLE_DEG, MAX_ANGLE_DEG = 4.0, 22.2
SPEED_OF_SOUND_M_S = 340.0
MEAN_LEVEL_DB = 125.0


def _sound_pressure(frequency: np.ndarray, angle: np.ndarray, velocity: np.ndarray,
                    thickness: np.ndarray) -> np.ndarray:
    """Noise-free level (dB, before centring) of rows [N] of frequency (Hz), angle (deg), U (m/s), d (m)."""
    mach = velocity / SPEED_OF_SOUND_M_S
    strouhal = frequency * thickness / velocity
    peak = 0.02 * mach ** -0.6 * (1.0 + 0.05 * angle)
    return 10.0 * np.log10(thickness * mach ** 5) - 7.0 * np.log10(strouhal / peak) ** 2


def synthesize_table(n_rows: int = 1503, seed: int = 0, noise_db: float = 1.0) -> pd.DataFrame:
    """Draw ``n_rows`` rows of the model in the module docstring.

    Args:
        n_rows: number of rows (the UCI table has 1503).
        seed: seed of the random generator.
        noise_db: standard deviation of the measurement noise on the target (dB).

    Returns:
        float64 frame [n_rows, 6] with the columns :data:`~supremix_med.data.sources.tables.AIRFOIL_COLUMNS`.

    Raises:
        ValueError: ``n_rows`` < 1 or ``noise_db`` negative.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    if not noise_db >= 0:
        raise ValueError(f"noise_db must be >= 0 (dB), got {noise_db}")
    rng = np.random.default_rng(seed)
    frequency = rng.choice(np.asarray(BAND_CENTRES_HZ, dtype=float), n_rows)
    velocity = rng.choice(np.asarray(VELOCITIES_M_S), n_rows)
    chord = rng.choice(np.asarray(CHORDS_M), n_rows)
    angle = np.round(np.minimum(rng.exponential(MEAN_ANGLE_DEG, n_rows), MAX_ANGLE_DEG), 1)
    thickness = 0.012 * chord * np.exp(0.09 * angle) * (velocity / VELOCITIES_M_S[-1]) ** -0.2
    level = _sound_pressure(frequency, angle, velocity, thickness)
    level = level - level.mean() + MEAN_LEVEL_DB + rng.normal(0.0, noise_db, n_rows)
    # the precision of the UCI file: 1e-8 m (10 nm) of thickness, millidecibels
    columns = (frequency, angle, chord, velocity, np.round(thickness, 8), np.round(level, 3))
    return pd.DataFrame(dict(zip(AIRFOIL_COLUMNS, columns)))


def generate_table(output_dir: str | Path, n_rows: int = 1503, seed: int = 0, noise_db: float = 1.0) -> pd.DataFrame:
    """Write :func:`synthesize_table`'s rows to ``<output_dir>/demo_table.csv`` (atomically) and return them."""
    table = synthesize_table(n_rows, seed, noise_db)
    write_table(table, Path(output_dir) / TABLE_FILE)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m supremix_med.demo.table --output DIR [--n_rows N] [--seed S] [--noise_db DB]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="folder of demo_table.csv")
    parser.add_argument("--n_rows", type=int, default=1503)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise_db", type=float, default=1.0, help="SD of the target's noise (dB)")
    args = parser.parse_args(argv)
    table = generate_table(args.output, args.n_rows, args.seed, args.noise_db)
    print(f"wrote {len(table)} rows to {args.output / TABLE_FILE}")


if __name__ == "__main__":
    main()
