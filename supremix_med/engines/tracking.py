"""Experiment tracking of a whole training workflow: one MLflow run, and the test metrics in TensorBoard.

Why not MONAI's ``--tracking mlflow`` alone (MONAI 1.6, MLflow 3.17):

- it patches ``MLFlowHandler`` onto ``train#trainer``, ``validate#evaluator`` and ``evaluator`` only, so the
  pre-training loss is never recorded, the test metrics (written by the test report after the engines ran)
  neither, and the only artifact is the executed config; every handler joins "the latest unfinished run" and the
  trainer's closes it when fine-tuning completes;
- a ``file:`` tracking URI fails: MLflow >= 3.13 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE=true``,
  and MONAI 1.6's ``MLFlowHandler`` rejects ``file:`` URIs and plain paths in its constructor before MLflow is asked.

Here a :class:`MLflowRun` owns one run for the whole workflow (created on first use, by rank 0 only), every engine
logs into it through an :class:`MLflowLogger` handler, and :meth:`MLflowRun.log_report` records the test metrics
(``metrics.json``, as ``test_<name>``), the run's files and the model folder's, then ends the run. ``sqlite:``
URIs keep their artifacts in ``mlartifacts`` beside the database; a ``file:`` URI (or a plain folder) is the file
store, opted into with ``MLFLOW_ALLOW_FILE_STORE=true`` for this process, with a warning that MLflow no longer
develops it. :func:`tensorboard_report` writes the test metrics as TensorBoard scalars (the pre-training and
fine-tuning losses already go there through MONAI's ``TensorBoardStatsHandler``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.utils import path_to_sqlite_uri

from supremix_med.engines.step_options import loss_from_output

__all__ = ["MLflowLogger", "MLflowRun", "flat_metrics", "sqlite_tracking_uri", "tensorboard_report"]

logger = logging.getLogger(__name__)

#: Files of ``output_dir`` and of the model folder that :meth:`MLflowRun.log_report` records (glob patterns).
REPORT_FILES = ("*.json", "*.csv", "*.png", "*.html")
MODEL_FILES = ("model.pt", "*.json", "*.csv", "*.npy")
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def sqlite_tracking_uri(output_dir: str | os.PathLike) -> str:
    """``sqlite:///<output_dir>/mlruns.db`` (absolute): the default store, inside the run's folder."""
    return path_to_sqlite_uri(Path(output_dir) / "mlruns.db")


def _is_file_store(uri: str) -> bool:
    """A ``file:`` URI or a plain path: MLflow's file store."""
    return urlparse(uri).scheme in ("", "file")


def flat_metrics(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested record as ``{"<prefix><a>.<b>": float}`` (bools, strings and None left out)."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat_params(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[f"{prefix}{key}"] = text[:_MAX_PARAM_LENGTH]
    return flat


class MLflowRun:
    """One MLflow run for a whole workflow: pre-training, fine-tuning, validation and the test report.

    Args:
        tracking_uri: ``sqlite:///...`` (recommended; :func:`sqlite_tracking_uri`), ``file:///...`` or a folder
            (MLflow's file store), or a server's ``http(s)://`` address; None: tracking off (every method does
            nothing), so a config can always attach the handlers.
        experiment_name: created when missing.
        run_name: the run's name (MLflow makes one up when None).
        params: parameters logged when the run starts (nested mappings flattened to ``a.b`` keys, values as JSON
            text, cut at MLflow's 6000 characters), e.g. the resolved top-level knobs of the config.
        tags: run tags.
        artifact_location: where a new experiment keeps artifacts; default ``mlartifacts`` beside a sqlite
            database, MLflow's choice otherwise.

    Only the process that writes a run's files (the only one, or rank 0 under torch.distributed) talks to MLflow;
    on the others, as with tracking off, every method does nothing. A run still open when the interpreter exits
    is marked FAILED.
    """

    def __init__(self, tracking_uri: str | os.PathLike | None, experiment_name: str = "supremix_med",
                 run_name: str | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None, artifact_location: str | None = None) -> None:
        uri = "" if tracking_uri is None else str(tracking_uri)
        if tracking_uri is not None and _is_file_store(uri):  # a folder or file: URI -> absolute file: URI
            uri = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri).absolute().as_uri()
        if uri.startswith("sqlite:///") and artifact_location is None:
            artifact_location = (Path(unquote(uri[len("sqlite:///"):])).parent / "mlartifacts").as_uri()
        self.tracking_uri, self.experiment_name, self.run_name = uri, experiment_name, run_name
        self.params, self.tags = dict(params or {}), dict(tags or {})
        self.artifact_location = artifact_location
        rank0 = not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0)
        self.enabled = tracking_uri is not None and rank0
        self._client = None
        self._run_id: str | None = None

    @property
    def client(self):
        """The ``mlflow.MlflowClient`` on ``tracking_uri`` (file stores allowed for this process)."""
        if self._client is None:
            import mlflow

            if _is_file_store(self.tracking_uri):
                logger.warning("MLflow tracking to the file store %s: MLflow no longer develops it (set for this "
                               "process: MLFLOW_ALLOW_FILE_STORE=true); prefer a sqlite:/// URI",
                               self.tracking_uri)
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def run_id(self) -> str | None:
        """The run's id, starting the run on first use (None on ranks other than 0)."""
        if self.enabled and self._run_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            experiment_id = (experiment.experiment_id if experiment is not None else
                             self.client.create_experiment(self.experiment_name, self.artifact_location))
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self._run_id = run.info.run_id
            atexit.register(self._fail_if_open)
            self.log_params(self.params)
            logger.info("MLflow run %s in experiment %r at %s", self._run_id, self.experiment_name, self.tracking_uri)
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (see the class docstring for the flattening)."""
        from mlflow.entities import Param

        if self.enabled and params:
            flat = _flat_params(params)
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Log the numbers of ``metrics`` (nested mappings flattened, see :func:`flat_metrics`) at ``step``."""
        import time

        from mlflow.entities import Metric

        flat = flat_metrics(metrics)
        if self.enabled and flat:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in flat.items()])

    def log_files(self, folder: str | os.PathLike, patterns: Iterable[str],
                  artifact_path: str | None = None) -> list[str]:
        """Record the files of ``folder`` (not recursive) matching any of ``patterns``; return their names."""
        folder = Path(folder)
        names = sorted({p.name for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
        if self.enabled:
            for name in names:
                self.client.log_artifact(self.run_id, str(folder / name), artifact_path)
        return names

    def log_report(self, output_dir: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None,
                   config: Mapping[str, Any] | str | os.PathLike | None = None, end: bool = True) -> None:
        """Record the finished workflow: test metrics, the run's and the model's files, the config; end the run.

        Args:
            output_dir: the run's folder: ``metrics.json`` is logged as metrics ``test_<name>`` (nested entries
                as ``test_<a>.<b>``) and its ``*.json``, ``*.csv``, ``*.png``, ``*.html`` files as artifacts under
                ``report/``.
            ckpt_dir: the model folder: ``model.pt`` and its ``*.json``, ``*.csv``, ``*.npy`` files under ``model/``.
            config: the resolved config as a mapping (logged as ``config/config.json``) or a file (e.g. MONAI's
                executed config, ``run.json``), logged under ``config/``.
            end: end the run as FINISHED.
        """
        if not self.enabled:
            return
        metrics_file = Path(output_dir) / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            self.log_metrics({f"test_{name}": value for name, value in metrics.items()})
        else:
            logger.warning("no %s to record in MLflow", metrics_file)
        self.log_files(output_dir, REPORT_FILES, "report")
        if ckpt_dir is not None:
            self.log_files(ckpt_dir, MODEL_FILES, "model")
        if isinstance(config, Mapping):
            self.client.log_dict(self.run_id, dict(config), "config/config.json")
        elif config is not None:
            self.client.log_artifact(self.run_id, str(config), "config")
        if end:
            self.end()

    def end(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED`` or ``KILLED``); nothing when none was started."""
        if self.enabled and self._run_id is not None:
            self.client.set_terminated(self._run_id, status)
            atexit.unregister(self._fail_if_open)
            self._run_id = None

    def _fail_if_open(self) -> None:
        try:
            self.end("FAILED")
        except Exception:  # the interpreter is exiting: report, never raise
            logger.exception("could not mark MLflow run %s as failed", self._run_id)


class MLflowLogger:
    """Ignite handler logging one engine into an :class:`MLflowRun`.

    Every ``every`` iterations it logs ``loss_tag`` (the engine's ``output_transform`` output; step = the
    engine's iteration); at every epoch end it logs ``engine.state.metrics`` (e.g. ``train_mae``, ``val_mae``) and,
    with an ``optimizer``, its first group's learning rate as ``<lr_tag>`` (step = the engine's epoch, which for
    an evaluator run by MONAI's ``ValidationHandler`` is the trainer's epoch).

    Args:
        run: the workflow's run.
        loss_tag: name of the iteration loss (e.g. ``pretrain_loss``, ``train_loss``); None: no iteration log.
        output_transform: ``engine.state.output`` -> the loss (default: its ``loss`` entry, decollated or not).
        optimizer: the engine's optimizer, for the learning rate.
        lr_tag: name of the learning rate metric.
        every: iteration logging interval.

    Example (a bundle's ``pretrain#handlers``)::

        {"_target_": "supremix_med.engines.MLflowLogger", "run": "@mlflow_run", "loss_tag": "pretrain_loss",
         "optimizer": "@pretrain#optimizer", "lr_tag": "pretrain_lr"}
    """

    def __init__(self, run: MLflowRun, loss_tag: str | None = None,
                 output_transform: Callable[[Any], Any] = loss_from_output,
                 optimizer: Any = None, lr_tag: str = "lr", every: int = 1) -> None:
        self.run, self.loss_tag, self.output_transform = run, loss_tag, output_transform
        self.optimizer, self.lr_tag, self.every = optimizer, lr_tag, max(1, int(every))

    def attach(self, engine: Engine) -> None:
        if self.loss_tag is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def iteration_completed(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        loss = loss.detach() if hasattr(loss, "detach") else loss
        self.run.log_metrics({self.loss_tag: float(loss)}, engine.state.iteration)

    def epoch_completed(self, engine: Engine) -> None:
        metrics = dict(engine.state.metrics)
        if self.optimizer is not None:
            metrics[self.lr_tag] = self.optimizer.param_groups[0]["lr"]
        self.run.log_metrics(metrics, engine.state.epoch)


def tensorboard_report(output_dir: str | os.PathLike, log_dir: str | os.PathLike | None = None,
                       prefix: str = "test/") -> dict[str, float]:
    """Write the numbers of ``<output_dir>/metrics.json`` as TensorBoard scalars (step 0).

    Args:
        output_dir: the run's folder.
        log_dir: the event folder; default ``<output_dir>/tensorboard/test`` (beside the bundles' ``pretrain``,
            ``train`` and ``validate`` folders).
        prefix: tag prefix, e.g. ``test/mae``, ``test/shots.many.mae``.

    Returns:
        the scalars written (``{}`` on ranks other than 0).

    Raises:
        FileNotFoundError: no ``metrics.json`` in ``output_dir``.
    """
    from torch.utils.tensorboard import SummaryWriter

    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        return {}
    path = Path(output_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"tensorboard_report: {str(path)!r} does not exist (did the test evaluation run?).")
    scalars = flat_metrics(json.loads(path.read_text()), prefix)
    with SummaryWriter(log_dir=str(log_dir or Path(output_dir) / "tensorboard" / "test")) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, 0)
    return scalars
