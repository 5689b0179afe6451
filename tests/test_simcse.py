"""SimCSELoss against a per-anchor float64 reference, its gradients and edge cases, and the ``simcse`` method."""

from __future__ import annotations

import math

import pytest
import torch
from monai.engines import SupervisedTrainer

from supremix_med.engines import METHODS, pretraining_setup
from supremix_med.engines.pretraining import SentenceEmbedder
from supremix_med.losses import SimCSELoss, get_loss
from supremix_med.networks import build_model


def reference_simcse(features: torch.Tensor, labels: torch.Tensor, temperature: float,
                     threshold: float) -> torch.Tensor:
    """The module docstring's formula, one anchor at a time, with a plain sum of exponentials."""
    batch = features.shape[0]
    rows = torch.cat([features[:, 0], features[:, 1]])
    rows = rows / rows.norm(dim=1, keepdim=True)
    losses = []
    for i in range(2 * batch):
        if labels[i % batch] <= threshold:
            continue
        partner = (i + batch) % (2 * batch)
        denominator = sum(torch.exp(rows[i] @ rows[a] / temperature) for a in range(2 * batch) if a != i)
        losses.append(-(rows[i] @ rows[partner] / temperature - torch.log(denominator)))
    return torch.stack(losses).mean() if losses else features.sum() * 0


def _batch(batch: int = 6, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 2, dim, generator=gen, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([0.5, 2.0, 2.5, 4.8, 1.0, 3.3], dtype=torch.float64)[:batch]
    return features, labels


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_matches_reference(temperature):
    features, labels = _batch()
    value = SimCSELoss(temperature=temperature)(features, labels)
    reference = reference_simcse(features, labels, temperature, 2.0)
    assert value.dtype == torch.float64 and value > 0
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(value, features)
    (ref_grad,) = torch.autograd.grad(reference, features)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-10)


def test_gradcheck():
    features, labels = _batch(batch=4)
    assert torch.autograd.gradcheck(lambda f: SimCSELoss(temperature=0.5)(f, labels), (features,))


def test_threshold_is_strict_and_configurable():
    """A pair scoring exactly the threshold is not a positive; labels [B, 1] work like [B]."""
    features, labels = _batch()
    strict = SimCSELoss(threshold=2.0)(features, labels)
    torch.testing.assert_close(strict, reference_simcse(features, labels, 0.05, 2.0))
    torch.testing.assert_close(SimCSELoss(threshold=1.9)(features, labels[:, None]),
                               reference_simcse(features, labels, 0.05, 1.9))
    assert not torch.allclose(strict, SimCSELoss(threshold=1.9)(features, labels))


def test_single_positive_pair_has_the_closed_form():
    """B = 1: the partner is the only contrast, so the loss is -log(1) = 0; B = 2 with one positive pair
    is -log(e^{s12/t} / (e^{s12/t} + e^{s13/t} + e^{s14/t})) averaged over both sentences."""
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    assert SimCSELoss()(z, torch.tensor([5.0], dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)
    pair = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
    value = SimCSELoss(temperature=1.0)(pair, torch.tensor([4.0, 0.0], dtype=torch.float64))
    # rows: a = (1, 0), b = (0, 1), c = (0.6, 0.8), d = (-1, 0); anchors a (partner c) and c (partner a)
    loss_a = -(0.6 - math.log(math.exp(0.6) + math.exp(0.0) + math.exp(-1.0)))
    loss_c = -(0.6 - math.log(math.exp(0.6) + math.exp(0.8) + math.exp(-0.6)))
    assert value.item() == pytest.approx((loss_a + loss_c) / 2, rel=1e-12)


@pytest.mark.parametrize("labels", [[0.0, 1.0, 2.0], [1.0]])
def test_no_positive_pair_gives_attached_zero(labels):
    features = torch.randn(len(labels), 2, 4, requires_grad=True)
    value = SimCSELoss()(features, torch.tensor(labels))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_no_nan_for_identical_or_tiny_embeddings():
    features = torch.full((4, 2, 3), 1e-20, requires_grad=True)
    value = SimCSELoss()(features, torch.tensor([3.0, 3.0, 4.0, 0.0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(features.grad).all()


def test_invariant_to_feature_scale_and_float32_under_half_precision():
    features, labels = _batch()
    torch.testing.assert_close(SimCSELoss()(3.5 * features, labels), SimCSELoss()(features, labels))
    value = SimCSELoss(temperature=1.0)(features.detach().half(), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), SimCSELoss(temperature=1.0)(features, labels), rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=float("nan")),
                                    dict(threshold=float("inf"))])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SimCSELoss(**kwargs)


@pytest.mark.parametrize("features,labels,match", [
    (torch.randn(4, 3), torch.zeros(4), r"\[B, 2, D\].*got \(4, 3\)"),
    (torch.randn(4, 3, 5), torch.zeros(4), r"\[B, 2, D\].*got \(4, 3, 5\)"),
    ([[1.0]], torch.zeros(1), r"\[B, 2, D\].*got list"),
    (torch.randn(4, 2, 3), torch.zeros(3), "expected 4 labels"),
    (torch.full((2, 2, 3), float("nan")), torch.zeros(2), "NaN or Inf"),
])
def test_bad_inputs(features, labels, match):
    with pytest.raises(ValueError, match=match):
        SimCSELoss()(features, labels)


def _tokens() -> torch.Tensor:
    """Four right-padded pairs [4, 2, 5] over a vocabulary of 10 ids."""
    return torch.tensor([
        [[2, 3, 4, 0, 0], [2, 3, 5, 6, 0]],
        [[7, 8, 0, 0, 0], [9, 8, 4, 0, 0]],
        [[2, 9, 4, 5, 6], [3, 0, 0, 0, 0]],
        [[6, 6, 7, 0, 0], [6, 7, 0, 0, 0]],
    ])


def test_simcse_method_pretrains_a_sentence_pair_encoder():
    """``pretraining_setup("simcse")``: sentences are embedded one by one, the loss trains the LSTM."""
    assert "simcse" in METHODS and isinstance(get_loss("simcse", temperature=0.1), SimCSELoss)
    torch.manual_seed(0)
    model = build_model("bilstm_pair", embeddings=torch.randn(10, 6), hidden_size=4, projection_dim=8)
    setup = pretraining_setup("simcse", model, {"simcse": {"temperature": 0.5}}, view_keys=("tokens",))
    assert isinstance(setup.network, SentenceEmbedder) and setup.loss_function.temperature == 0.5
    embedded = setup.network(_tokens()[:, None])
    assert embedded.shape == (4, 2, 8)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(4, 2))
    before = [p.detach().clone() for p in model.encoder.lstm.parameters()]
    data = [{"tokens": _tokens(), "label": torch.tensor([[4.0], [3.0], [1.0], [2.5]])}]
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=setup.network,
                                optimizer=torch.optim.Adam(setup.network.parameters(), 1e-2),
                                loss_function=setup.loss_function, prepare_batch=setup.prepare_batch,
                                decollate=False)
    trainer.run()
    assert trainer.state.output["loss"].item() > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.encoder.lstm.parameters()))


def test_simcse_method_needs_a_sentence_pair_encoder_and_pair_tokens():
    with pytest.raises(ValueError, match="no encode_sentences"):
        pretraining_setup("simcse", build_model("mlp", in_features=5, projection_dim=8))
    model = build_model("bilstm_pair", embeddings=torch.randn(10, 6), hidden_size=4)
    with pytest.raises(ValueError, match=r"\[B, 2, L\] or \[B, 1, 2, L\], got \(4, 2, 2, 5\)"):
        SentenceEmbedder(model)(torch.stack([_tokens(), _tokens()], dim=1))
