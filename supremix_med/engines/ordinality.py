"""Ignite handler that measures how ordered an encoder's features are after a training phase.

:class:`OrdinalityHandler` runs the encoder over a data loader (the validation split) when its event fires
(the end of pre-training, or of fine-tuning), scores the ordinality of the features
(:func:`supremix_med.metrics.ordinality.ordinality_spearman`) and draws their 2-D embedding coloured by label
(:func:`supremix_med.metrics.ordinality.embed_2d`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from supremix_med.engines.distributed import writes_files
from supremix_med.io import RUN_ID_KEY, atomic_write, atomic_write_json
from supremix_med.metrics.ordinality import MAX_PAIRS, embed_2d, ordinality_pairs, ordinality_spearman

__all__ = ["OrdinalityHandler", "plot_embedding"]

logger = logging.getLogger(__name__)


def plot_embedding(coordinates: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str = "",
                   method: str = "pca", label_name: str = "label") -> None:
    """Scatter 2-D ``coordinates`` [N, 2] coloured by ``labels`` [N] (colour bar in label units); save a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.subplots()
    points = ax.scatter(coordinates[:, 0], coordinates[:, 1], c=labels, cmap="viridis", s=10, alpha=0.8)
    figure.colorbar(points, ax=ax, label=label_name)
    axis = "PC" if method == "pca" else method.upper() + " "
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.set_title(title)
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"), suffix=".png")


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random states (CPU, and ``device`` if CUDA) on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class OrdinalityHandler:
    """Ignite handler: after a phase, the ordinality of an encoder's features on a data set, as numbers and a PNG.

    When ``event`` fires on the engine it is attached to, the handler puts ``encoder`` in eval mode, encodes
    every batch of ``data_loader`` without gradients (``inferer(inputs, encoder)`` when an inferer is given,
    e.g. a :class:`~supremix_med.engines.WindowAveragingInferer` for long series), restores the encoder's mode
    and the global random states (iterating a loader draws from torch's generator; a measurement after
    pre-training must not change the fine-tuning that follows), and writes under ``output_dir``:

    - ``ordinality_<name>.json``: :attr:`result`, with the ``run_id`` of ``run`` when one is given;
    - ``ordinality_<name>.png``: the features' 2-D embedding coloured by the (first) label.

    :attr:`result` (also returned by a call) is ``{"spearman": float or None, "n_samples", "n_pairs",
    "pairs": "all" | "sampled", "distance", "embedding", "plot": file name}``; a bundle puts it in
    ``metrics.json`` as ``metrics["ordinality"][name]``, the form ``python -m supremix_med.compare`` reads.
    Under ``torch.distributed`` only rank 0 measures and writes (the others keep ``result`` None): give it a
    loader over the whole split, not a rank's shard.

    Args:
        encoder: the module mapping inputs [B, *input] to features [B, F], e.g. ``@network.encoder``.
        data_loader: batches (dicts) with inputs under ``image_key`` and labels [B] or [B, T] under ``label_key``.
        output_dir: folder of the two files.
        name: the phase's name, e.g. ``"pretrained"`` or ``"finetuned"``; names the files and the entry.
        event: the ignite event (or its name, e.g. ``"COMPLETED"``) that triggers the measurement.
        device: where the encoder runs; default the device of its first parameter.
        image_key, label_key: batch keys of the inputs and labels.
        inferer: optional ``inferer(inputs, encoder) -> features`` (MONAI inferer convention).
        max_pairs, seed, distance: of :func:`~supremix_med.metrics.ordinality.ordinality_spearman`.
        embedding: ``"pca"`` (default), ``"umap"`` or ``"auto"`` (:func:`~supremix_med.metrics.ordinality.embed_2d`).
        run: the training run's :class:`~supremix_med.engines.RunDirectory`: the JSON file names its run, and a
            resumed run's later process takes the measurement an earlier one wrote from the file when it names
            this run (never a file another run left). Without it, :attr:`result` is this process's measurement only.

    Example (a bundle's ``train#handlers``)::

        {"_target_": "supremix_med.engines.OrdinalityHandler", "encoder": "$@network.encoder",
         "data_loader": "@validate#dataloader", "output_dir": "@output_dir", "name": "finetuned",
         "run": "@run_directory"}
    """

    def __init__(self, encoder: nn.Module, data_loader: Iterable, output_dir: str | os.PathLike, name: str,
                 event: Events | str = Events.COMPLETED, device: torch.device | str | None = None,
                 image_key: str = "image", label_key: str = "label",
                 inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None,
                 max_pairs: int = MAX_PAIRS, seed: int = 0, distance: str = "euclidean",
                 embedding: str = "pca", run=None) -> None:
        if not name or any(c in name for c in "/\\"):
            raise ValueError(f"OrdinalityHandler: name must be a non-empty file-name part, got {name!r}.")
        self.encoder = encoder
        self.data_loader = data_loader
        self.output_dir = Path(output_dir)
        self.name = name
        self.event = Events[event.upper()] if isinstance(event, str) else event
        self.device = device
        self.image_key, self.label_key = image_key, label_key
        self.inferer = inferer
        self.max_pairs, self.seed, self.distance, self.embedding = max_pairs, seed, distance, embedding
        self.run = run
        self._result: dict[str, Any] | None = None

    def _device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else next(self.encoder.parameters()).device

    def attach(self, engine: Engine) -> None:
        """Measure when ``engine`` fires :attr:`event`."""
        engine.add_event_handler(self.event, self)

    @torch.no_grad()
    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """Encode the whole loader: features [N, F] and labels [N, T], float64 (the encoder's mode is restored;
        the global random states are restored by :meth:`__call__`)."""
        device = self._device()
        was_training = self.encoder.training
        self.encoder.eval()
        features, labels = [], []
        try:
            for batch in self.data_loader:
                inputs = torch.as_tensor(batch[self.image_key]).to(device)
                out = self.inferer(inputs, self.encoder) if self.inferer is not None else self.encoder(inputs)
                features.append(out.detach().float().reshape(out.shape[0], -1).cpu().numpy())
                label = torch.as_tensor(batch[self.label_key]).detach().float().cpu().numpy()
                labels.append(label.reshape(label.shape[0], -1))
        finally:
            self.encoder.train(was_training)
        if not features:
            raise ValueError(f"OrdinalityHandler({self.name}): the data loader gave no batch.")
        return np.concatenate(features).astype(np.float64), np.concatenate(labels).astype(np.float64)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any] | None:
        """Measure, write the two files and return :attr:`result` (None on ranks other than 0)."""
        if not writes_files():  # rank 0 alone: ignite's idist.get_rank() would start a collective here
            return None
        with _random_state_kept(self._device()):
            features, labels = self.features()
            coordinates, method = embed_2d(features, self.embedding, self.seed)
        n = features.shape[0]
        score = ordinality_spearman(features, labels, self.max_pairs, self.seed, self.distance)
        plot = self.output_dir / f"ordinality_{self.name}.png"
        title = f"{self.name}: ordinality {score:.3f} (n={n})"
        plot_embedding(coordinates, labels[:, 0], plot, title, method)
        self._result = {"spearman": None if np.isnan(score) else float(score), "n_samples": n,
                       "n_pairs": ordinality_pairs(n, self.max_pairs),
                       "pairs": "all" if n * (n - 1) // 2 <= self.max_pairs else "sampled",
                       "distance": self.distance, "embedding": method, "plot": plot.name}
        run_id = self._run_id()
        atomic_write_json(self._result if run_id is None else {**self._result, RUN_ID_KEY: run_id}, self._file)
        logger.info("ordinality %s: %.4f over %d samples (%s pairs)", self.name, score, n, self._result["pairs"])
        return self._result

    @property
    def _file(self) -> Path:
        return self.output_dir / f"ordinality_{self.name}.json"

    def _run_id(self) -> str | None:
        """The id of :attr:`run` (``None``: no run given, or not started)."""
        return None if self.run is None else self.run.run_id

    @property
    def result(self) -> dict[str, Any] | None:
        """The measurement (see the class docstring): this process's, else the one an earlier process of this run
        (resumed) wrote under ``output_dir``; ``None`` when this run did not measure the phase."""
        run_id = self._run_id()
        if self._result is None and run_id is not None and self._file.is_file():
            record = json.loads(self._file.read_text(encoding="utf-8"))
            if isinstance(record, dict) and record.get(RUN_ID_KEY) == run_id:
                self._result = {key: value for key, value in record.items() if key != RUN_ID_KEY}
        return self._result
