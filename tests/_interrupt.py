"""Deterministic interruptions of a bundle run for the resume tests: a SIGKILL right after a checkpoint, a signal at
a chosen iteration. They patch :class:`~supremix_med.engines.PhaseCheckpoint` in the process that runs the bundle
(a forked child, or the command line below), so the run's config stays the one a resume compares with.

As a script it runs ``python -m monai.bundle`` with the rest of the command line after patching::

    python tests/_interrupt.py signal finetune 3 SIGTERM run --config_file ... --output_dir ...
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import traceback
from collections.abc import Callable

from supremix_med.engines import PhaseCheckpoint


def kill_after_checkpoint(phase: str, epoch: int) -> None:
    """SIGKILL this process right after ``phase`` writes its checkpoint of ``epoch`` (an epoch boundary)."""
    save = PhaseCheckpoint.save

    def save_then_die(self, complete: bool = False) -> None:
        save(self, complete)
        if self.phase == phase and self.engine.state.epoch == epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    PhaseCheckpoint.save = save_then_die


def signal_at_iteration(phase: str, iteration: int, signum: int) -> None:
    """Send ``signum`` to this process when ``phase``'s trainer completes its ``iteration``-th iteration."""
    completed = PhaseCheckpoint._iteration_completed

    def signal_then_complete(self, engine) -> None:
        if self.phase == phase and engine.state.iteration == iteration:
            os.kill(os.getpid(), signum)
        completed(self, engine)

    PhaseCheckpoint._iteration_completed = signal_then_complete


def exit_status_in_fork(work: Callable[[], object]) -> int:
    """Run ``work`` in a forked child and return its exit status (``-N`` when signal N ended it, as subprocess)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into the test runner
        code = 0
        try:
            work()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    _, how, phase, iteration, name, *bundle_args = sys.argv
    assert how == "signal", how
    signal_at_iteration(phase, int(iteration), getattr(signal, name))
    sys.argv = ["monai.bundle", *bundle_args]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
