"""Encoders (3D/1D/2D ResNets, MLP, BiLSTM), projection head, regressor and the model wrapper."""

from .builders import ENCODERS, MODEL_CONFIG, build_encoder, build_model, stored_model_config
from .encoders import BiLSTMPairEncoder, MLPEncoder, ResNetEncoder, resnet18_1d, resnet18_3d, resnet50_2d
from .heads import ProjectionHead, Regressor
from .model import (
    CHECKPOINT_KEYS, ContrastiveRegressor, JointProjectorRegressor, MultiViewProjector, ProjectingRegressor,
)

__all__ = [
    "ResNetEncoder",
    "resnet18_3d",
    "resnet18_1d",
    "resnet50_2d",
    "MLPEncoder",
    "BiLSTMPairEncoder",
    "ProjectionHead",
    "Regressor",
    "ContrastiveRegressor",
    "MultiViewProjector",
    "JointProjectorRegressor",
    "ProjectingRegressor",
    "CHECKPOINT_KEYS",
    "ENCODERS",
    "build_encoder",
    "build_model",
    "MODEL_CONFIG",
    "stored_model_config",
]
