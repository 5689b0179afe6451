"""Ordinality of features (Spearman of feature vs label distances), its 2-D embedding and its ignite handler."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader

from supremix_med.engines.ordinality import OrdinalityHandler
from supremix_med.metrics.ordinality import embed_2d, ordinality_pairs, ordinality_spearman, pair_indices

PNG = b"\x89PNG\r\n\x1a\n"


def _ordered_set(n: int = 300, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels in [0, 10) and 8-D features that move along one direction with the label, plus small noise."""
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 10, size=n)
    direction = rng.normal(size=8)
    return labels[:, None] * direction + noise * rng.normal(size=(n, 8)), labels


def test_known_order_scores_near_one_and_shuffled_labels_near_zero():
    features, labels = _ordered_set()
    assert ordinality_spearman(features, labels) > 0.98
    shuffled = np.random.default_rng(1).permutation(labels)
    assert abs(ordinality_spearman(features, shuffled)) < 0.05
    # a monotone but curved map (features = exp(label / 5) along a direction) keeps most of the order
    curved = np.exp(labels / 5)[:, None] * np.ones(4)
    assert ordinality_spearman(curved, labels) > 0.8


def test_against_a_slow_reference_over_every_pair():
    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(12, 5)), np.round(rng.uniform(0, 3, size=(12, 1)), 1)  # label ties
    pairs = list(itertools.combinations(range(12), 2))
    feature_distance = [math.dist(features[i], features[j]) for i, j in pairs]
    label_distance = [abs(float(labels[i, 0] - labels[j, 0])) for i, j in pairs]
    expected = stats.spearmanr(feature_distance, label_distance).statistic
    assert ordinality_spearman(features, labels) == pytest.approx(expected, abs=1e-12)
    cosine = [1 - np.dot(features[i], features[j]) / np.linalg.norm(features[i]) / np.linalg.norm(features[j])
              for i, j in pairs]
    expected = stats.spearmanr(cosine, label_distance).statistic
    assert ordinality_spearman(features, labels, distance="cosine") == pytest.approx(expected, abs=1e-12)
    # cosine ignores each sample's scale; two targets give a Euclidean label distance
    assert ordinality_spearman(features * rng.uniform(1, 5, size=(12, 1)), labels, distance="cosine") == \
        pytest.approx(expected, abs=1e-12)
    two = np.hstack([labels, labels])
    assert ordinality_spearman(features, two) == pytest.approx(ordinality_spearman(features, labels), abs=1e-12)


def test_sampled_pairs_for_large_sets():
    assert ordinality_pairs(10, 100) == 45 and ordinality_pairs(1000, 5000) == 5000
    i, j = pair_indices(10, 100)
    assert len(i) == 45 and set(zip(i.tolist(), j.tolist())) == set(itertools.combinations(range(10), 2))
    i, j = pair_indices(50, 20000, seed=4)  # 1225 pairs: all of them, not a sample
    assert len(i) == 1225
    i, j = pair_indices(1000, 50000, seed=4)
    assert len(i) == 50000 and not np.any(i == j) and i.min() == 0 and j.max() == 999
    assert abs(np.mean(j > i) - 0.5) < 0.01  # unordered pairs, no side favoured
    again = pair_indices(1000, 50000, seed=4)
    assert np.array_equal(i, again[0]) and np.array_equal(j, again[1])

    features, labels = _ordered_set(n=800, noise=3.0, seed=5)  # a noisy set: a score well inside (0, 1)
    full = ordinality_spearman(features, labels, max_pairs=10**6)  # 319,600 pairs: all
    sampled = ordinality_spearman(features, labels, max_pairs=20000, seed=1)
    assert 0.2 < full < 0.9 and abs(sampled - full) < 0.02


def test_undefined_and_bad_inputs():
    features = np.random.default_rng(0).normal(size=(6, 3))
    assert math.isnan(ordinality_spearman(features, np.ones(6)))  # every label distance is 0
    assert math.isnan(ordinality_spearman(np.ones((6, 3)), np.arange(6.0)))  # every feature distance is 0
    assert ordinality_spearman(torch.tensor(features, dtype=torch.bfloat16), torch.arange(6.0)) > -1
    with pytest.raises(ValueError, match="at least 2 samples"):
        ordinality_spearman(features[:1], [1.0])
    with pytest.raises(ValueError, match="same samples"):
        ordinality_spearman(features, np.arange(5.0))
    with pytest.raises(ValueError, match="distance"):
        ordinality_spearman(features, np.arange(6.0), distance="manhattan")
    with pytest.raises(ValueError, match=r"\[N\] or \[N, D\]"):
        ordinality_spearman(np.zeros((6, 2, 2)), np.arange(6.0))


def test_embed_2d_pca_and_umap_choice():
    features, labels = _ordered_set(n=40)
    coordinates, method = embed_2d(features)
    assert method == "pca" and coordinates.shape == (40, 2)
    # the first principal component of a set spread along one direction follows the label
    assert abs(stats.spearmanr(coordinates[:, 0], labels).statistic) > 0.99
    single, _ = embed_2d(labels)  # one feature: the second coordinate is 0
    assert single.shape == (40, 2) and np.all(single[:, 1] == 0)
    with pytest.raises(ValueError, match="embedding must be one of"):
        embed_2d(features, "tsne")
    try:
        import umap  # noqa: F401
    except ImportError:
        assert embed_2d(features, "auto")[1] == "pca"
        with pytest.raises(ImportError, match="umap-learn"):
            embed_2d(features, "umap")
    else:
        assert embed_2d(features, "auto")[1] == "umap"


def test_handler_writes_numbers_and_plot_after_the_phase(tmp_path):
    features, labels = _ordered_set(n=60, seed=2)
    samples = [{"image": torch.tensor(f, dtype=torch.float32), "label": torch.tensor([y], dtype=torch.float32)}
               for f, y in zip(features, labels)]
    batches = DataLoader(samples, batch_size=16, shuffle=True)  # iterating it draws from torch's generator
    encoder = nn.Linear(8, 4)
    encoder.train()
    handler = OrdinalityHandler(encoder, batches, tmp_path / "out", "finetuned", event="COMPLETED")
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    assert handler.result is None
    torch.manual_seed(0)
    np.random.seed(0)
    expected_draws = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    engine.run([0, 1], max_epochs=2)
    # measuring draws nothing from the global generators: what trains next is what would have trained anyway
    assert torch.equal(torch.rand(3), expected_draws[0]) and np.array_equal(np.random.rand(3), expected_draws[1])

    result = handler.result
    with torch.no_grad():
        expected = ordinality_spearman(encoder(torch.tensor(features, dtype=torch.float32)).numpy(), labels)
    assert result["spearman"] == pytest.approx(expected, abs=1e-6) and result["spearman"] > 0.9
    assert result == {"spearman": result["spearman"], "n_samples": 60, "n_pairs": 1770, "pairs": "all",
                      "distance": "euclidean", "embedding": "pca", "plot": "ordinality_finetuned.png"}
    assert json.loads((tmp_path / "out" / "ordinality_finetuned.json").read_text()) == result
    assert (tmp_path / "out" / "ordinality_finetuned.png").read_bytes()[:8] == PNG
    assert encoder.training  # its mode is restored


def test_handler_with_an_inferer_and_on_an_empty_loader(tmp_path):
    class Doubling:  # an inferer in MONAI's convention: inferer(inputs, network)
        def __call__(self, inputs, network):
            return network(inputs) * 2

    x = torch.linspace(0, 1, 10)[:, None]
    encoder = nn.Identity()
    encoder.register_parameter("anchor", nn.Parameter(torch.zeros(1)))  # the handler reads the device from it
    handler = OrdinalityHandler(encoder, [{"image": x, "label": x[:, 0]}], tmp_path, "pretrained",
                                inferer=Doubling())
    result = handler()
    assert result["spearman"] == pytest.approx(1.0) and result["pairs"] == "all" and result["n_pairs"] == 45
    with pytest.raises(ValueError, match="no batch"):
        OrdinalityHandler(encoder, [], tmp_path, "empty")()
    with pytest.raises(ValueError, match="file-name part"):
        OrdinalityHandler(encoder, [], tmp_path, "a/b")


def test_a_later_process_reads_back_only_a_measurement_of_its_own_run(tmp_path):
    x = torch.linspace(0, 1, 10)[:, None]
    encoder = nn.Identity()
    encoder.register_parameter("anchor", nn.Parameter(torch.zeros(1)))
    batches = [{"image": x, "label": x[:, 0]}]
    result = OrdinalityHandler(encoder, batches, tmp_path, "pretrained", run=SimpleNamespace(run_id="run-a"))()
    assert json.loads((tmp_path / "ordinality_pretrained.json").read_text()) == {**result, "run_id": "run-a"}
    resumed = OrdinalityHandler(encoder, batches, tmp_path, "pretrained", run=SimpleNamespace(run_id="run-a"))
    assert resumed.result == result  # a resumed run's later process: the phase was measured before it started
    another = OrdinalityHandler(encoder, batches, tmp_path, "pretrained", run=SimpleNamespace(run_id="run-b"))
    assert another.result is None  # a file another run left is never this run's measurement
    assert OrdinalityHandler(encoder, batches, tmp_path, "pretrained").result is None  # no run: this process's only
