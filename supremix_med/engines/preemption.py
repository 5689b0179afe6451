"""Pre-emption: SIGTERM / SIGUSR1 become a checkpoint and a clean exit instead of a lost run.

SLURM (``#SBATCH --signal=USR1@120``), ``docker stop`` and spot-instance reclaimers send one of these signals some
time before they kill a job. :class:`PreemptionSignals` turns the signal into a request; the trainers honour it at
the next iteration boundary (:class:`~supremix_med.engines.checkpoints.PhaseCheckpoint`): they finish the current
iteration, write a checkpoint, mark ``run.json`` interrupted and the process exits with :data:`EXIT_INTERRUPTED`.
``--resume True`` then continues from that checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from supremix_med.engines.distributed import any_rank

__all__ = ["EXIT_INTERRUPTED", "PREEMPTION_SIGNALS", "Preempted", "PreemptionSignals"]

logger = logging.getLogger(__name__)

#: Exit status of a run that stopped on a pre-emption signal after writing its checkpoint (``EX_TEMPFAIL`` of
#: sysexits.h: a temporary failure, try again). A job script requeues on it.
EXIT_INTERRUPTED = 75
#: The signals that request a checkpoint and a clean exit (those this platform has).
PREEMPTION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Preempted(SystemExit):
    """Raised after the checkpoint of a pre-empted run is written; exits the process with :data:`EXIT_INTERRUPTED`."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_INTERRUPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionSignals:
    """While installed, :data:`PREEMPTION_SIGNALS` set a flag that :meth:`requested` reports.

    The first signal is logged; later ones (torchrun forwards a signal to every worker, schedulers repeat it) only
    keep the flag set, so the checkpoint being written is not cut short. DataLoader workers forked while the
    handlers are installed inherit them, so a signal to the whole process group does not kill the workers either.
    Installing is possible from the main thread only; elsewhere (a run started from a worker thread) the signals
    keep their default action and a warning says so.

    Attributes:
        received: name of the first signal received, or ``None``.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle :data:`PREEMPTION_SIGNALS` from now on (until :meth:`uninstall`)."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("not in the main thread: SIGTERM/SIGUSR1 will end the run without a checkpoint")
            return
        for signum in PREEMPTION_SIGNALS:
            self._previous.setdefault(signum, signal.signal(signum, self._handle))

    def uninstall(self) -> None:
        """Give the signals back the handlers they had before :meth:`install`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            logger.warning("%s received: the run stops after this iteration and writes a checkpoint",
                           self.received)

    def requested(self) -> bool:
        """Whether any rank received a signal (one all-reduce under ``torch.distributed``: every rank must ask at
        the same point)."""
        return any_rank(self.received is not None)
