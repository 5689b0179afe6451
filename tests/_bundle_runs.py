"""Helpers of the small end-to-end bundle tests (tests/test_bundle_*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow


def bundle_configs(bundle: Path, *names: str) -> list[str]:
    """Paths of ``<bundle>/<name>.json`` for each name, in order (MONAI merges them left to right)."""
    return [str(bundle / f"{name}.json") for name in names]


def run_workflow(configs: list[str], workflow_type: str = "train", **override) -> None:
    """Initialise a MONAI ``ConfigWorkflow``, run and finalise it, and check its required properties are all there.

    The check comes last: it builds the engines, and a run opens its output folder (``run_directory.start()``, the
    first step of ``run``) before anything is written there.
    """
    workflow = ConfigWorkflow(config_file=configs, workflow_type=workflow_type, **override)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert workflow.check_properties() == []


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the module's tiny networks on one intra-op thread, then restore the setting.

    Tiny convolutions gain nothing from threads, and on a CPU shared with other jobs the spinning worker threads
    cost 10-25x (a 1/8-width 3D ResNet-18 step on 24^3 voxels: 0.1 s on one thread, 2.6 s on two).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
