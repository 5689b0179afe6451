"""End to end: the us_ejection_fraction bundle on a tiny EchoNet-layout folder (cache CLI -> train -> infer), MONAI
checks.

The cohort is 10 AVI clips (16 frames of 32 x 32, a pulsing disc) with a FileList.csv, cached by
``python -m preprocessing.ultrasound --echonet_root`` with ``US_PARAMS`` (8 frames of 16 x 16; given to inference
too, as its fingerprint check demands); the network is a 1/8-width ResNet-18. The full-size demo is
``bundles/us_ejection_fraction/README.md``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _bundle_runs import bundle_configs, one_torch_thread, run_workflow  # noqa: F401 (autouse fixture)
from conftest import BUNDLES
from monai.bundle import verify_metadata, verify_net_in_out

from preprocessing import ultrasound
from supremix_med.demo.ultrasound import write_avi
from supremix_med.inference import FLAGS

BUNDLE = BUNDLES / "us_ejection_fraction"
TRAIN_DEMO = bundle_configs(BUNDLE, "train", "demo")
INFERENCE = bundle_configs(BUNDLE, "inference")
US_PARAMS = {"frames": 8, "size": 16}
TINY = {"pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 3, "num_workers": 0,
        "network_config": {"encoder": "resnet18_3d", "widen_factor": 0.125, "projection_dim": 8, "n_targets": 1}}


def _clip(path: Path, ef: float, seed: int) -> None:
    """A disc whose area shrinks by ``ef`` % over a beat, with noise, as a 16-frame AVI of 32 x 32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:32, :32] - 15.5
    phase = (1 - np.cos(np.linspace(0, 2 * np.pi, 16))) / 2
    radius = 10 * np.sqrt(1 - ef / 100 * phase)
    frames = np.stack([np.where(np.hypot(x, y) < r, 60, 180) + rng.normal(0, 10, (32, 32)) for r in radius])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_avi(np.clip(frames, 0, 255).astype(np.uint8), path)


@pytest.fixture(scope="module")
def echonet(tmp_path_factory) -> Path:
    """EchoNet layout: FileList.csv (FileName, EF, Split: 6 TRAIN, 2 VAL, 2 TEST) and Videos/echo-0..9.avi."""
    root = tmp_path_factory.mktemp("echonet")
    efs = np.linspace(20.0, 70.0, 10)
    for i, ef in enumerate(efs):
        _clip(root / "Videos" / f"echo-{i}.avi", ef, i)
    pd.DataFrame({"FileName": [f"echo-{i}" for i in range(10)], "EF": efs,
                  "Split": ["TRAIN", "VAL", "TEST", "TRAIN", "TRAIN"] * 2}).to_csv(root / "FileList.csv", index=False)
    return root


@pytest.fixture(scope="module")
def cache(echonet, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("us_cache") / "cache"
    ultrasound.main(["--echonet_root", str(echonet), "--output", str(folder), "--frames", "8", "--size", "16"])
    return folder


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    """One SupReMix train.json + demo.json run on the cache; its output_dir."""
    out = tmp_path_factory.mktemp("us_run") / "supremix"
    run_workflow(TRAIN_DEMO, dataset_dir=str(cache), output_dir=str(out), **TINY)
    return out


def test_train_reports_ef_without_bias_correction(trained):
    for name in ("model.pt", "pretrained_encoder.pt", "model_config.json", "preprocessing.json"):
        assert (trained / "models" / name).is_file(), name
    assert not (trained / "models" / "bias_correction.json").exists()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["method"] == "supremix" and "shots" in metrics and "baseline_mae" in metrics
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns) == ["id", "ef", "predicted_ef"]
    assert json.loads((trained / "models" / "preprocessing.json").read_text())["params"]["frames"] == 8


def test_inference_on_a_clip_folder_and_a_csv(trained, echonet, tmp_path):
    clips = tmp_path / "clips"
    _clip(clips / "new.avi", 50.0, 99)
    (clips / "broken.avi").write_bytes(b"RIFF not really a video")
    out = tmp_path / "out"
    run_workflow(INFERENCE, workflow_type="infer", dataset_dir=str(clips), ckpt_dir=str(trained / "models"),
                 output_dir=str(out), preprocessing_params=US_PARAMS, num_workers=0)
    table = pd.read_csv(out / "predictions.csv").set_index("id")
    assert list(table.index) == ["broken", "new"]
    assert list(table.columns) == ["path", "predicted_ef", "predicted_ef_low", "predicted_ef_high",
                                   *ultrasound.QC_FIELDS, *FLAGS, "qc_flag", "error"]  # one sample: no spread
    assert np.isfinite(table.loc["new", "predicted_ef"]) and table.loc["new", "input_frames"] == 16
    assert "broken.avi" in table.loc["broken", "error"] and np.isnan(table.loc["broken", "predicted_ef"])

    (tmp_path / "known.csv").write_text(f"id,path,ef\nknown,{echonet / 'Videos' / 'echo-3.avi'},36.7\n")
    run_workflow(INFERENCE, workflow_type="infer", dataset_dir=str(tmp_path / "known.csv"),
                 ckpt_dir=str(trained / "models"), output_dir=str(out), preprocessing_params=US_PARAMS, num_workers=0,
                 overwrite=True)  # the first predictions move to out/previous/
    known = pd.read_csv(out / "predictions.csv").iloc[0]
    assert known["ef_error"] == pytest.approx(known["predicted_ef"] - 36.7)


def test_monai_bundle_tools(trained):
    meta = str(BUNDLE / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=TRAIN_DEMO, n=1)


def test_vanilla_method_skips_pretraining(cache, tmp_path):
    run_workflow(TRAIN_DEMO, dataset_dir=str(cache), output_dir=str(tmp_path), **TINY, method="vanilla")
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "vanilla"
    assert (tmp_path / "models" / "model.pt").is_file() and not (tmp_path / "models" / "pretrained_encoder.pt").exists()
