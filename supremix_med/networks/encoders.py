"""Encoders: networks that map one input sample to a feature vector [B, F].

Every encoder here exposes ``out_features`` (F) so heads can be sized without a dry run:

- :class:`ResNetEncoder` and its presets :func:`resnet18_3d` (T1 volumes [B, 1, 100, 100, 100]),
  :func:`resnet18_1d` (parcellated fMRI time series [B, 400, T], parcels as channels) and :func:`resnet50_2d`
  (images [B, 3, H, W]), all built from MONAI's :class:`monai.networks.nets.ResNet`;
- :class:`MLPEncoder` for tabular inputs [B, d] (the airfoil benchmark);
- :class:`BiLSTMPairEncoder` for sentence pairs [B, 2, L] of token ids (the STS-B benchmark).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args, get_pretrained_resnet_medicalnet
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["ResNetEncoder", "resnet18_3d", "resnet18_1d", "resnet50_2d", "MLPEncoder", "BiLSTMPairEncoder"]

# depth -> (MONAI block name, blocks per stage); the four stages have 64, 128, 256, 512 planes (times widen).
_RESNET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}
_STAGE_PLANES = [64, 128, 256, 512]
_BOTTLENECK_EXPANSION = 4


class ResNetEncoder(ResNet):
    """MONAI ResNet without its classification layer: [B, C, *S] -> pooled features [B, out_features].

    Parameter names are MONAI's (``conv1.weight``, ``layer1.0.conv1.weight``, ...), so state dicts of
    :class:`monai.networks.nets.ResNet` with ``feed_forward=False`` load directly.

    Args:
        spatial_dims: 1 (signals [B, C, T]), 2 (images [B, C, H, W]) or 3 (volumes [B, C, D, H, W]).
        depth: 10, 18, 34 (basic blocks, ``out_features = int(512 * widen_factor)``) or 50 (bottleneck blocks,
            ``out_features = 4 * int(512 * widen_factor)``).
        in_channels: input channels C.
        conv1_stride: stride of the first 7-wide convolution. Use 2 for the 3-D brain ResNet: at stride 1 a
            100^3 volume keeps a 64-channel 100^3 conv1 output and every later stage runs at 8x the voxels, so
            ResNet-18 costs 248 instead of 34 GFLOP and 837 instead of 107 MiB of conv/BN activations per sample
            (measured on a 2-core CPU: 10.7 s instead of 2.9 s per sample forward+backward), while at 2 mm
            voxels the finer first layer brings no accuracy.
        widen_factor: multiplies the planes of every stage (0.25 makes small test networks).
        input_downsample: average-pool the input by this factor before conv1 (1: off). The CPU demo uses 2
            (2 mm volumes seen at 4 mm, 1/8 of the voxels); inference then pools the same way automatically.
        pretrained: load MedicalNet weights (Chen et al. 2019, 23 datasets) through MONAI. Only for 3-D,
            ``in_channels=1`` and ``widen_factor=1``; needs ``huggingface_hub`` and network access. The network
            then uses MedicalNet's shortcut type (parameter-free "A" for depth 18/34, 1x1 conv "B" otherwise);
            from scratch it always uses the 1x1-conv "B" shortcut, as torchvision's ResNets do.

    Raises:
        ValueError: unknown ``depth`` or ``spatial_dims``, or ``pretrained`` outside 3-D/1-channel/width 1.
    """

    def __init__(
        self,
        spatial_dims: int,
        depth: int = 18,
        in_channels: int = 1,
        conv1_stride: int = 2,
        widen_factor: float = 1.0,
        input_downsample: int = 1,
        pretrained: bool = False,
    ) -> None:
        if int(input_downsample) != input_downsample or input_downsample < 1:
            raise ValueError(f"ResNetEncoder: input_downsample must be a positive integer, got {input_downsample}.")
        if depth not in _RESNET_LAYOUTS:
            raise ValueError(f"ResNetEncoder: depth must be one of {sorted(_RESNET_LAYOUTS)}, got {depth}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"ResNetEncoder: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if pretrained and (spatial_dims != 3 or in_channels != 1 or widen_factor != 1.0):
            raise ValueError(
                "ResNetEncoder: MedicalNet weights exist only for spatial_dims=3, in_channels=1, widen_factor=1; "
                f"got spatial_dims={spatial_dims}, in_channels={in_channels}, widen_factor={widen_factor}."
            )
        block, layers = _RESNET_LAYOUTS[depth]
        bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(depth) if pretrained else (False, "B")
        super().__init__(
            block=block,
            layers=layers,
            block_inplanes=_STAGE_PLANES,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=conv1_stride,
            shortcut_type=shortcut_type,
            bias_downsample=bias_downsample,
            widen_factor=widen_factor,
            feed_forward=False,
        )
        pool = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[spatial_dims - 1]
        self.input_pool = pool(int(input_downsample)) if input_downsample > 1 else nn.Identity()
        expansion = _BOTTLENECK_EXPANSION if block == "bottleneck" else 1
        self.out_features = int(_STAGE_PLANES[-1] * widen_factor) * expansion
        if pretrained:
            state = get_pretrained_resnet_medicalnet(depth, device="cpu", datasets23=True)
            self.load_state_dict({k.replace("module.", ""): v for k, v in state.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, *S] -> [B, out_features]: MONAI's ResNet forward (no fc) after the optional input pooling.

        Spelled out rather than calling ``super().forward`` so that TorchScript (``ckpt_export``) compiles it.
        """
        x = self.act(self.bn1(self.conv1(self.input_pool(x))))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def resnet18_3d(in_channels: int = 1, widen_factor: float = 1.0, conv1_stride: int = 2,
                input_downsample: int = 1) -> ResNetEncoder:
    """ResNet-18 for brain volumes [B, in_channels, 100, 100, 100] -> [B, 512 * widen_factor]."""
    return ResNetEncoder(3, depth=18, in_channels=in_channels, conv1_stride=conv1_stride, widen_factor=widen_factor,
                         input_downsample=input_downsample)


def resnet18_1d(in_channels: int = 400, widen_factor: float = 1.0, conv1_stride: int = 1) -> ResNetEncoder:
    """ResNet-18 over time for parcel time series [B, n_parcels, T] -> [B, 512 * widen_factor].

    Parcels are channels and convolutions run along time (T frames). ``conv1_stride`` defaults to 1 because
    the series are short (a few hundred frames) and 1-D convolutions are cheap; the network still
    downsamples T by 16 (max-pool and three strided stages) before global average pooling.
    """
    return ResNetEncoder(1, depth=18, in_channels=in_channels, conv1_stride=conv1_stride, widen_factor=widen_factor)


def resnet50_2d(in_channels: int = 3, widen_factor: float = 1.0) -> ResNetEncoder:
    """ResNet-50 (ImageNet layout: stride-2 conv1 and max-pool) for images [B, in_channels, H, W] -> [B, 2048 * w]."""
    return ResNetEncoder(2, depth=50, in_channels=in_channels, conv1_stride=2, widen_factor=widen_factor)


class MLPEncoder(nn.Sequential):
    """Fully connected encoder for tabular inputs: [B, in_features] -> [B, hidden[-1]].

    Each width in ``hidden`` is a Linear layer followed by ReLU (default d-20-30-10, so ``out_features = 10``).
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (20, 30, 10)) -> None:
        if not hidden:
            raise ValueError("MLPEncoder: hidden must list at least one layer width, got an empty sequence.")
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        super().__init__(*layers)
        self.out_features = widths[-1]


def _load_embeddings(embeddings: torch.Tensor | np.ndarray | str | os.PathLike) -> torch.Tensor:
    """Return a [V, E] float tensor from a tensor, an array, or a ``.npy`` / ``.pt`` file."""
    if isinstance(embeddings, (str, os.PathLike)):
        path = os.fspath(embeddings)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"BiLSTMPairEncoder: embedding file {path!r} does not exist.")
        embeddings = np.load(path) if path.endswith(".npy") else torch.load(path, map_location="cpu", weights_only=True)
        source = path
    else:
        source = type(embeddings).__name__
    table = torch.as_tensor(embeddings, dtype=torch.float32)
    if table.dim() != 2 or table.shape[0] < 2:
        raise ValueError(f"BiLSTMPairEncoder: embeddings ({source}) must be [V >= 2, E], got {tuple(table.shape)}.")
    return table


class BiLSTMPairEncoder(nn.Module):
    """Sentence-pair encoder (the InferSent / GLUE BiLSTM baseline): tokens [B, 2, L] -> [B, 8 * hidden_size].

    Each sentence goes through frozen (or trainable) word vectors and one bidirectional LSTM; the hidden states
    are max-pooled over the real (non-padding) time steps to u, v [B, 2 * hidden_size], and the pair feature is
    ``cat(u, v, |u - v|, u * v)``. Padding is handled with packed sequences, so appending more padding never
    changes the output.

    Args:
        embeddings: pre-trained word vectors [V, E] (tensor, array, or a ``.npy`` / ``.pt`` file); row 0 is the
            padding token and is kept out of the gradient. ``None``: a placeholder table of ``embedding_dim``
            zeros for the padding and unknown words, to be replaced by :meth:`set_embeddings` (the word vectors
            of the training data) or by loading a trained model's state dict.
        hidden_size: LSTM hidden units per direction H.
        freeze_embeddings: keep the word vectors fixed.
        embedding_dim: E, when ``embeddings`` is None.

    The vocabulary size is data, not architecture: the table takes the shape of the vectors it is given, also when
    a state dict is loaded, so a network built from its declared sizes loads any trained model of the same E and H.
    Input tokens are int64 ids with 0 = padding, right-padded (real tokens first); every sentence must have at
    least one real token.
    """

    def __init__(
        self,
        embeddings: torch.Tensor | np.ndarray | str | os.PathLike | None = None,
        hidden_size: int = 300,
        freeze_embeddings: bool = True,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        if embeddings is None:
            if not isinstance(embedding_dim, int) or embedding_dim < 1:
                raise ValueError(f"BiLSTMPairEncoder: give embeddings or an embedding_dim >= 1, got {embedding_dim!r}.")
            embeddings = torch.zeros(2, embedding_dim)
        table = _load_embeddings(embeddings)
        if embedding_dim is not None and table.shape[1] != embedding_dim:
            raise ValueError(f"BiLSTMPairEncoder: embeddings of dimension {table.shape[1]} given with "
                             f"embedding_dim={embedding_dim}.")
        self.freeze_embeddings = freeze_embeddings
        self.embedding = nn.Embedding.from_pretrained(table, freeze=freeze_embeddings, padding_idx=0)
        self.lstm = nn.LSTM(table.shape[1], hidden_size, batch_first=True, bidirectional=True)
        self.out_features = 8 * hidden_size

    def set_embeddings(self, embeddings: torch.Tensor | np.ndarray | str | os.PathLike) -> None:
        """Replace the word vectors by ``embeddings`` [V, E] (any V; E must stay), on the current device.

        Raises:
            ValueError: a table of another dimension E.
        """
        table = _load_embeddings(embeddings)
        if table.shape[1] != self.embedding.embedding_dim:
            raise ValueError(f"BiLSTMPairEncoder: embeddings of dimension {table.shape[1]}, the network's is "
                             f"{self.embedding.embedding_dim}.")
        device = self.embedding.weight.device
        self.embedding = nn.Embedding.from_pretrained(table.to(device), freeze=self.freeze_embeddings, padding_idx=0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Take the vocabulary size of the table being loaded (see the class docstring)."""
        table = state_dict.get(f"{prefix}embedding.weight")
        if table is not None and table.shape != self.embedding.weight.shape:
            self.set_embeddings(torch.zeros(table.shape[0], self.embedding.embedding_dim))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode_sentences(self, tokens: torch.Tensor) -> torch.Tensor:
        """Max-pooled BiLSTM states of right-padded sentences: tokens [N, L] -> [N, 2 * hidden_size]."""
        real = tokens != 0
        lengths = real.sum(dim=1)
        if bool((lengths == 0).any()):
            empty: list[int] = torch.nonzero(lengths == 0).flatten().tolist()
            raise ValueError(f"BiLSTMPairEncoder: sentence rows {empty} contain only padding (token id 0).")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        if not torch.equal(real, positions < lengths[:, None]):
            raise ValueError("BiLSTMPairEncoder: tokens must be right-padded (real tokens first, then zeros).")
        packed = pack_padded_sequence(self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, padding_value=float("-inf"))
        return states.amax(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 2, L] int64 -> pair features [B, 8 * hidden_size]."""
        if tokens.dim() != 3 or tokens.shape[1] != 2:
            raise ValueError(f"BiLSTMPairEncoder: tokens must be [B, 2, L], got {list(tokens.shape)}.")
        batch = tokens.shape[0]
        u, v = self.encode_sentences(tokens.reshape(2 * batch, -1).long()).reshape(batch, 2, -1).unbind(dim=1)
        return torch.cat([u, v, (u - v).abs(), u * v], dim=1)
