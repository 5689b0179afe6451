"""``<output_dir>/progress.json``: where a training run is, rewritten whenever an epoch completes.

.. code-block:: json

    {"run_id": "20250101-120000-3fa9c2", "phase": "finetune", "epoch": 3, "max_epochs": 100,
     "metric": {"name": "val_mae", "last": 4.1, "best": 3.9},
     "seconds_per_epoch": 52.0, "estimated_seconds_left": 5044.0, "updated": "2025-01-01T13:02:11+00:00"}

``metric`` is the validator's key metric in an epoch that validated, else the epoch's mean training loss
(``"name": "loss"``; pre-training always). ``seconds_per_epoch`` is the mean over this process's epochs of the
phase (validation included); ``estimated_seconds_left`` counts the phase's remaining epochs and the later phases'
epochs at that pace (a rough bound for pre-training, whose epochs cost more than fine-tuning's).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ignite.engine import Engine

from supremix_med.io import atomic_write_json

__all__ = ["RunProgress"]


class RunProgress:
    """Writer of ``progress.json`` (rank 0).

    Args:
        path: ``<output_dir>/progress.json``; a file already there (a resumed run) gives the best metric so far.
        run_id: the run's id.
        phase_epochs: the epochs of every phase, in run order, e.g. ``{"pretrain": 100, "finetune": 100}``.
    """

    def __init__(self, path: str | os.PathLike, run_id: str, phase_epochs: Mapping[str, int]) -> None:
        self.path, self.run_id, self.phase_epochs = Path(path), run_id, dict(phase_epochs)
        self._seconds: dict[str, list[float]] = {}
        self._best: dict[str, float] = {}
        try:
            previous = json.loads(self.path.read_text(encoding="utf-8"))
            self._best[f"{previous['phase']}/{previous['metric']['name']}"] = float(previous["metric"]["best"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def epoch_completed(self, phase: str, engine: Engine, seconds: float, losses: Sequence[float],
                        validator: Engine | None = None) -> dict[str, Any]:
        """Record an epoch of ``phase`` (``engine`` its trainer, ``seconds`` its duration, ``losses`` its
        iterations' training losses, ``validator`` the phase's validator); rewrite the file and return its content."""
        state = engine.state
        validated = validator is not None and validator.state.epoch == state.epoch \
            and validator.state.key_metric_name in validator.state.metrics
        if validated:
            name, last = validator.state.key_metric_name, float(validator.state.metrics[validator.state.key_metric_name])
            best = float(validator.state.best_metric)
        else:
            name, key = "loss", f"{phase}/loss"
            last = sum(losses) / len(losses) if losses else None
            if last is not None:
                self._best[key] = min(self._best.get(key, math.inf), last)
            best = self._best.get(key)
        durations = self._seconds.setdefault(phase, [])
        durations.append(seconds)
        pace = sum(durations) / len(durations)
        later = list(self.phase_epochs)[list(self.phase_epochs).index(phase) + 1:] if phase in self.phase_epochs else []
        epochs_left = state.max_epochs - state.epoch + sum(self.phase_epochs[p] for p in later)
        record = {"run_id": self.run_id, "phase": phase, "epoch": state.epoch, "max_epochs": state.max_epochs,
                  "metric": {"name": name, "last": last, "best": best}, "seconds_per_epoch": pace,
                  "estimated_seconds_left": pace * epochs_left,
                  "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(record, self.path)
        return record
