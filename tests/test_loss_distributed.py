"""Distributed losses: two gloo ranks on CPU, each holding half of a batch, reproduce the one-process loss.

Rank ``r`` holds samples ``r * B/2 .. (r + 1) * B/2 - 1``; its anchors contrast against the rows gathered from
both ranks (rank-major, view-major within a rank). A rank's value is ``W * (sum of its anchor losses) /
(valid anchors on all ranks)``, or with anchor weights (SupReMix's ``label_balanced``) ``W * (weighted sum) /
(sum of the weights on all ranks)`` (see ``supremix_med.losses._utils``), so

- the mean of the ranks' values equals the loss of the whole batch on one process, and
- once every rank has run backward, the gradient w.r.t. a rank's features is W times the one-process
  gradient w.r.t. those samples (DDP's averaging over W ranks then gives the one-process gradient).

Each loss is one entry of ``LOSS_CASES``; the two processes are spawned once for all of them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from supremix_med.losses import ConRLoss, MixSupConLoss, RnCLoss, SimCSELoss, SupConLoss, SupReMixLoss

WORLD = 2
BATCH, VIEWS, DIM = 6, 2, 4


def full_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [B, V, D], integer labels [B] (with ties) and Mix-neg coefficients [N, N] (one-process order)."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(BATCH, VIEWS, DIM, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (BATCH,), generator=gen).to(torch.float64)
    lam = torch.rand(BATCH * VIEWS, BATCH * VIEWS, generator=gen, dtype=torch.float64)
    return features, labels, lam


def rank_samples(rank: int) -> range:
    per_rank = BATCH // WORLD
    return range(rank * per_rank, (rank + 1) * per_rank)


def rank_rows(rank: int) -> list[int]:
    """One-process row indices (``v * B + b``) of a rank's flattened rows, in the rank's own order."""
    return [view * BATCH + sample for view in range(VIEWS) for sample in rank_samples(rank)]


def gathered_rows() -> list[int]:
    """One-process row indices of the rows gathered from all ranks, in gathered (rank-major) order."""
    return [row for rank in range(WORLD) for row in rank_rows(rank)]


def run_supremix(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return SupReMixLoss(temperature=0.3, window=2.0, label_range=(0.0, 4.0))(features, labels, lam)


def run_supremix_balanced(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Eq. 6: k_m and |P_i| count the gathered rows, the sum of the weights is summed over ranks."""
    return SupReMixLoss(temperature=0.3, window=2.0, label_range=(0.0, 4.0), reduction="label_balanced")(
        features, labels, lam)


def run_supcon(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return SupConLoss(temperature=0.3)(features, labels)


def run_rnc(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return RnCLoss()(features, labels)


def run_conr(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    predictions = labels + torch.sin(3 * labels)  # per sample, so every rank sees the same values
    return ConRLoss(window=0.5, prediction_window=2.0)(features, labels, predictions)


def run_mixsupcon(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return MixSupConLoss()(features, labels)


def run_simcse(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return SimCSELoss(temperature=0.3, threshold=1.5)(features, labels)  # the 2 views as a pair's 2 sentences


#: name -> function(features [b, V, D], labels [b], mix_neg_lambda [rows, gathered rows]) -> loss.
LOSS_CASES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "supremix": run_supremix,
    "supremix_balanced": run_supremix_balanced,
    "supcon": run_supcon,
    "rnc": run_rnc,
    "conr": run_conr,
    "mixsupcon": run_mixsupcon,
    "simcse": run_simcse,
}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: evaluate every case on its half of the batch, backward, save values and gradients."""
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep the ranks' traffic on the loopback interface
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        features, labels, lam = full_batch()
        samples = list(rank_samples(rank))
        local_lam = lam[rank_rows(rank)][:, gathered_rows()]
        results = {}
        for name, case in LOSS_CASES.items():
            local = features[samples].clone().requires_grad_(True)
            value = case(local, labels[samples], local_lam)
            value.backward()
            results[name] = (value.detach(), local.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    out_dir = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(out_dir / "rendezvous"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_ranks_reproduce_single_process_loss(rank_results, name):
    features, labels, lam = full_batch()
    features.requires_grad_(True)
    value = LOSS_CASES[name](features, labels, lam)
    (grad,) = torch.autograd.grad(value, features)
    assert value.item() != 0.0
    rank_values = torch.stack([result[name][0] for result in rank_results])
    torch.testing.assert_close(rank_values.mean(), value.detach(), rtol=1e-10, atol=1e-12)
    for rank, result in enumerate(rank_results):
        torch.testing.assert_close(result[name][1], WORLD * grad[list(rank_samples(rank))],
                                   rtol=1e-10, atol=1e-12)
