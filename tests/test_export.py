"""TorchScript and ONNX export of a trained brain-age model with MONAI's bundle tools (the README's commands).

The model folder holds what training writes (model_config.json, model.pt) for a 1/8-width 3-D ResNet-18; the
exports are compared with the PyTorch model on one input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, onnx_export

from conftest import BUNDLES
from supremix_med.networks import build_model

BUNDLE = BUNDLES / "ukb_brainage"
CONFIGS = [str(BUNDLE / "train.json"), str(BUNDLE / "evaluate.json")]
MODEL_CONFIG = {"encoder": "resnet18_3d", "widen_factor": 0.125, "projection_dim": 8}
SHAPE = [1, 1, 40, 40, 40]  # the README exports [1, 1, 100, 100, 100]; any size the encoder pools works


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = build_model(**MODEL_CONFIG).set_target_statistics([45.0, 82.0])
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model_config.json").write_text(json.dumps(MODEL_CONFIG))
    return folder


def _reference(model_dir: Path, x: torch.Tensor) -> np.ndarray:
    model = build_model(**MODEL_CONFIG)
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_torchscript_export_matches_pytorch(model_dir, tmp_path):
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(model_dir / "model.pt"),
                meta_file=str(BUNDLE / "metadata.json"), config_file=CONFIGS, ckpt_dir=str(model_dir))
    x = torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scripted = torch.jit.load(str(exported))(x).numpy()
    np.testing.assert_allclose(scripted, _reference(model_dir, x), rtol=1e-5, atol=1e-4)


def test_onnx_export_matches_pytorch(model_dir, tmp_path):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package, reason=f"{package} is in the export extra: pip install -e .[export]")
    import onnxruntime

    exported = tmp_path / "model.onnx"
    onnx_export(net_id="network_def", filepath=str(exported), ckpt_file=str(model_dir / "model.pt"),
                meta_file=str(BUNDLE / "metadata.json"), config_file=CONFIGS, ckpt_dir=str(model_dir),
                input_shape=SHAPE, converter_kwargs={
                    "input_names": ["image"], "output_names": ["pred"],
                    "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}}})
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    x = torch.randn(3, *SHAPE[1:], generator=torch.Generator().manual_seed(2))  # another batch size than exported
    (pred,) = session.run(["pred"], {"image": x.numpy()})
    np.testing.assert_allclose(pred, _reference(model_dir, x), rtol=1e-5, atol=1e-4)
