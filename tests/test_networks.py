"""Tests for supremix_med.networks: encoder shapes, the model wrapper, freezing, checkpoint loading, builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from supremix_med.networks import (
    ENCODERS,
    BiLSTMPairEncoder,
    ContrastiveRegressor,
    JointProjectorRegressor,
    MLPEncoder,
    MultiViewProjector,
    ProjectionHead,
    Regressor,
    ResNetEncoder,
    build_encoder,
    build_model,
    resnet18_1d,
    resnet18_3d,
    resnet50_2d,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_encoder() -> ResNetEncoder:
    """A tiny 1-D ResNet with BatchNorm: [B, 3, 32] -> [B, 64]."""
    return ResNetEncoder(1, depth=10, in_channels=3, widen_factor=0.125)


def small_model() -> ContrastiveRegressor:
    return ContrastiveRegressor(small_encoder(), projection_dim=16, n_targets=2)


# ---------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    "encoder, shape, features",
    [
        (lambda: resnet18_3d(widen_factor=0.25), (2, 1, 32, 32, 32), 128),
        (lambda: resnet18_1d(), (2, 400, 64), 512),
        (lambda: resnet50_2d(widen_factor=0.25), (2, 3, 64, 64), 512),
        (lambda: ResNetEncoder(2, depth=10, in_channels=1, widen_factor=0.25), (2, 1, 32, 32), 128),
        (lambda: ResNetEncoder(2, depth=34, in_channels=2, widen_factor=0.125), (2, 2, 32, 32), 64),
        (lambda: MLPEncoder(5), (4, 5), 10),
    ],
)
def test_encoder_output_shape(encoder, shape, features) -> None:
    net = encoder()
    out = net(torch.randn(*shape))
    assert net.out_features == features
    assert out.shape == (shape[0], features)


def test_resnet18_3d_at_full_resolution() -> None:
    net = resnet18_3d().eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 100, 100, 100))
    assert out.shape == (1, 512)
    assert net.conv1.stride == (2, 2, 2)


def test_resnet_state_dict_uses_monai_names() -> None:
    from monai.networks.nets import ResNet

    ours = ResNetEncoder(2, depth=18, in_channels=1, widen_factor=0.25)
    monai_net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1,
                       widen_factor=0.25, feed_forward=False, shortcut_type="B", bias_downsample=False)
    monai_net.load_state_dict(ours.state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 3, "depth": 20}, "depth"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"spatial_dims": 2, "pretrained": True}, "MedicalNet"),
    ],
)
def test_resnet_rejects_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ResNetEncoder(**kwargs)


def test_mlp_layers_and_relu() -> None:
    net = MLPEncoder(7, hidden=(20, 30, 10))
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [20, 30, 10]
    assert (net(torch.randn(16, 7)) >= 0).all()
    with pytest.raises(ValueError, match="hidden"):
        MLPEncoder(7, hidden=())


def embedding_table(vocab: int = 12, dim: int = 6) -> torch.Tensor:
    table = torch.randn(vocab, dim)
    table[0] = 0.0
    return table


def test_bilstm_pair_features_ignore_extra_padding() -> None:
    net = BiLSTMPairEncoder(embedding_table(), hidden_size=5).eval()
    tokens = torch.tensor([[[3, 4, 5, 0], [6, 7, 0, 0]], [[1, 2, 3, 4], [8, 0, 0, 0]]])
    padded = torch.cat([tokens, torch.zeros(2, 2, 7, dtype=torch.long)], dim=2)
    out = net(tokens)
    assert out.shape == (2, 40) and net.out_features == 40
    torch.testing.assert_close(net(padded), out)
    # one pair alone gives the same features as inside a batch with a longer pair
    torch.testing.assert_close(net(tokens[1:, :, :4]), out[1:])


def test_bilstm_pair_feature_layout() -> None:
    net = BiLSTMPairEncoder(embedding_table(), hidden_size=4).eval()
    tokens = torch.tensor([[[3, 4, 0], [5, 0, 0]]])
    u, v = net.encode_sentences(tokens[0])
    torch.testing.assert_close(net(tokens)[0], torch.cat([u, v, (u - v).abs(), u * v]))


def test_bilstm_embeddings_frozen_and_from_file(tmp_path) -> None:
    table = embedding_table()
    np.save(tmp_path / "vectors.npy", table.numpy())
    net = BiLSTMPairEncoder(tmp_path / "vectors.npy", hidden_size=3)
    torch.testing.assert_close(net.embedding.weight, table)
    assert not net.embedding.weight.requires_grad
    assert BiLSTMPairEncoder(table, hidden_size=3, freeze_embeddings=False).embedding.weight.requires_grad
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        BiLSTMPairEncoder(tmp_path / "missing.npy")


@pytest.mark.parametrize(
    "tokens, message",
    [
        (torch.tensor([[[0, 3], [4, 0]]]), "right-padded"),
        (torch.tensor([[[3, 4], [0, 0]]]), "only padding"),
        (torch.tensor([[3, 4], [5, 0]]), r"\[B, 2, L\]"),
    ],
)
def test_bilstm_rejects_bad_tokens(tokens, message) -> None:
    with pytest.raises(ValueError, match=message):
        BiLSTMPairEncoder(embedding_table(), hidden_size=3)(tokens)


# ---------------------------------------------------------------- heads and model


def test_heads() -> None:
    head = ProjectionHead(32, 8)
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear] and head[0].out_features == 32
    assert ProjectionHead(32, 8, hidden_features=16)(torch.randn(3, 32)).shape == (3, 8)
    assert Regressor(32, 2)(torch.randn(3, 32)).shape == (3, 2)


def test_model_outputs() -> None:
    model = small_model().eval()
    x = torch.randn(4, 3, 32)
    z = model.project(x)
    assert z.shape == (4, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert model.encode(x).shape == (4, 64)
    torch.testing.assert_close(model(x), model.predict(x))
    assert model(x).shape == (4, 2)


def test_model_needs_feature_size() -> None:
    with pytest.raises(ValueError, match="out_features"):
        ContrastiveRegressor(nn.Flatten())
    assert ContrastiveRegressor(nn.Flatten(), in_features=6)(torch.randn(2, 2, 3)).shape == (2, 1)


def test_freeze_encoder_keeps_batchnorm_and_weights() -> None:
    model = small_model().freeze_encoder()
    model.train()
    assert not model.encoder.training and model.projector.training
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(8, 3, 32)).square().mean() + model.project(torch.randn(8, 3, 32)).sum()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.regressor.weight.grad is not None and model.projector[0].weight.grad is not None
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder_before[key], msg=key)

    model.freeze_encoder(False)
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())


def test_multiview_projector_matches_per_view_projection() -> None:
    model = small_model().eval()
    x = torch.randn(3, 2, 3, 32)
    z = MultiViewProjector(model)(x)
    assert z.shape == (3, 2, 16)
    for view in range(2):
        torch.testing.assert_close(z[:, view], model.project(x[:, view]))
    joint = JointProjectorRegressor(model)(x)
    torch.testing.assert_close(joint["features"], z)
    assert joint["predictions"].shape == (3, 2, 2)
    torch.testing.assert_close(joint["predictions"][:, 1], model.predict(x[:, 1]))
    with pytest.raises(ValueError, match="views"):
        MultiViewProjector(model)(torch.randn(3, 32))


# ---------------------------------------------------------------- checkpoints


def _layouts(source: ContrastiveRegressor) -> dict[str, dict]:
    return {
        "encoder only": source.encoder.state_dict(),
        "full model": source.state_dict(),
        "checkpoint saver": {"network": source.state_dict(), "optimizer": {"state": {}, "param_groups": []}},
        "model key": {"model": source.encoder.state_dict(), "epoch": 3},
        "pre-training wrapper": MultiViewProjector(source).state_dict(),
        "ddp": {f"module.{k}": v for k, v in source.state_dict().items()},
    }


@pytest.mark.parametrize("layout", list(_layouts(small_model())))
@pytest.mark.parametrize("via_file", [False, True])
def test_load_encoder_round_trip(layout, via_file, tmp_path) -> None:
    source = small_model()
    state = _layouts(source)[layout]
    if via_file:
        torch.save(state, tmp_path / "ckpt.pt")
        state = tmp_path / "ckpt.pt"
    target = small_model()
    heads_before = target.regressor.weight.clone()
    assert target.load_encoder(state) is target
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(target.encoder.state_dict()[key], value)
    torch.testing.assert_close(target.regressor.weight, heads_before)


def test_load_encoder_errors_name_the_file(tmp_path) -> None:
    other = ContrastiveRegressor(ResNetEncoder(1, depth=18, in_channels=3, widen_factor=0.125))
    torch.save({"network": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt.*unexpected: layer1\.1\.conv1\.weight"):
        small_model().load_encoder(tmp_path / "other.pt")

    wider = ContrastiveRegressor(ResNetEncoder(1, depth=10, in_channels=3, widen_factor=0.25))
    with pytest.raises(ValueError, match=r"wrong shape: conv1\.weight \(16, 3, 7\) \(expected \(8, 3, 7\)\)"):
        small_model().load_encoder(wider.state_dict())

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        small_model().load_encoder(tmp_path / "notes.txt")

    torch.save({"epoch": 3, "optimizer": {"state": {}}}, tmp_path / "trainer.pt")
    with pytest.raises(ValueError, match=r"trainer\.pt.*epoch"):
        small_model().load_encoder(tmp_path / "trainer.pt")

    with pytest.raises(FileNotFoundError, match="absent.pt"):
        small_model().load_encoder(tmp_path / "absent.pt")


# ---------------------------------------------------------------- builders


def test_build_encoder_by_name() -> None:
    assert set(ENCODERS) == {"resnet18_3d", "resnet18_1d", "resnet50_2d", "resnet", "mlp", "bilstm_pair"}
    assert isinstance(build_encoder("mlp", in_features=4), MLPEncoder)
    assert build_encoder("resnet", spatial_dims=2, depth=10, widen_factor=0.25).out_features == 128
    with pytest.raises(ValueError, match="resnet18_3d"):
        build_encoder("vit")


def test_build_model_loads_and_freezes(tmp_path) -> None:
    source = build_model("resnet", spatial_dims=1, depth=10, in_channels=3, widen_factor=0.125, projection_dim=8)
    torch.save({"network": MultiViewProjector(source).state_dict()}, tmp_path / "pretrain.pt")
    model = build_model("resnet", spatial_dims=1, depth=10, in_channels=3, widen_factor=0.125, projection_dim=8,
                        n_targets=3, encoder_checkpoint=str(tmp_path / "pretrain.pt"), freeze_encoder=True)
    assert model.encoder_frozen and model.regressor.out_features == 3
    torch.testing.assert_close(model.encoder.conv1.weight, source.encoder.conv1.weight)
    with pytest.raises(ValueError, match="in_features"):
        build_model(MLPEncoder(4), in_features=4)


def test_input_downsample_pools_before_conv1() -> None:
    torch.manual_seed(0)
    pooled = ResNetEncoder(3, widen_factor=0.25, input_downsample=2).eval()
    plain = ResNetEncoder(3, widen_factor=0.25).eval()
    plain.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pooled(x), plain(nn.functional.avg_pool3d(x, 2)))
    with pytest.raises(ValueError, match="input_downsample"):
        ResNetEncoder(3, input_downsample=0)


def test_target_statistics_scale_predictions_and_travel_in_state_dict() -> None:
    torch.manual_seed(0)
    model = ContrastiveRegressor(MLPEncoder(4), projection_dim=8)
    x = torch.randn(5, 4)
    raw = model.regressor(model.encode(x))
    ages = np.array([40.0, 50.0, 60.0, 70.0])
    model.set_target_statistics(ages)
    torch.testing.assert_close(model.predict(x), raw * ages.std() + ages.mean(), check_dtype=False)
    joint = JointProjectorRegressor(model)(x.reshape(5, 1, 4))["predictions"][:, 0]
    torch.testing.assert_close(joint, model.predict(x))
    copy = ContrastiveRegressor(MLPEncoder(4), projection_dim=8)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="finite targets"):
        model.set_target_statistics([1.0, float("nan")])
