"""report.html (supremix_med.inference.report): built during an inference run, rendered by headless Chromium.

The run is a MONAI ``SupervisedEvaluator`` over ready-made T1-like volumes on the model's 2 mm MNI grid (the
preprocessing is not under test here), with test-time augmentation, the ``PredictionWriter`` and the report
handler, against a model folder holding what training stores (``save_model_reference``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from monai.engines import SupervisedEvaluator
from torch import nn

from preprocessing.t1 import fingerprint as t1_fingerprint
from supremix_med.inference import PredictionWriter, StoredModel
from supremix_med.inference import uncertainty
from supremix_med.inference.flags import FLAGS
from supremix_med.inference.reference import save_model_reference
from supremix_med.inference.report import InferenceReport, PreviewSpec, make_preview, template_brain_mask
from supremix_med.metrics import BiasCorrection
from supremix_med.pipelines import get_pipeline

CHROMIUM = Path("/usr/bin/chromium")
FINGERPRINT = t1_fingerprint()
GRID = tuple(FINGERPRINT["output"]["shape"][1:])
AGES = [50.0, 63.0, float("nan"), 70.0, 95.0, 58.0]


def _volume(mask: np.ndarray, seed: int, shift: int = 0) -> torch.Tensor:
    """A z-scored brain-like volume [1, X, Y, Z]: the template mask (optionally moved) filled with noise."""
    rng = np.random.default_rng(seed)
    inside = np.roll(mask, shift, axis=1)
    return torch.as_tensor((inside * (1.0 + 0.5 * rng.standard_normal(mask.shape)))[None], dtype=torch.float32)


class _AgeFromIntensity(nn.Module):
    """A stand-in brain-age model: 60 + 40 x (mean intensity - 0.35) + 100 x (left - right mean intensity), so
    that flips and shifts change its prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[2] // 2
        asymmetry = x[:, :, :half].flatten(1).mean(1) - x[:, :, half:].flatten(1).mean(1)
        return 60.0 + 40.0 * (x.flatten(1).mean(1, keepdim=True) - 0.35) + 100.0 * asymmetry[:, None]


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    output = FINGERPRINT["output"]
    return template_brain_mask(output["first_voxel_centre_mm"], output["spacing_mm"], GRID)


@pytest.fixture(scope="module")
def model_dir(mask, tmp_path_factory) -> Path:
    """What training stores beside the model, for validation spreads from the same TTA as inference."""
    folder = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(0)
    age = rng.uniform(45, 80, 60)
    pred = age + rng.normal(0, 4, 60)
    validation = pd.DataFrame({"id": [f"v{i}" for i in range(60)], "age": age, "predicted_age": pred,
                               "predicted_age_spread": rng.uniform(2, 4, 60)})
    correction = BiasCorrection("beheshti").fit(pred, age)
    correction.save(folder / "bias_correction.json")
    save_model_reference(folder, validation, np.linspace(45, 82, 40), bias_correction=correction,
                         train_inputs=[_volume(mask, seed=100 + s).numpy() for s in range(6)])
    return folder


@pytest.fixture(scope="module")
def run(mask, model_dir, tmp_path_factory) -> Path:
    """An inference run over six scans: four good, one moved out of the outline, one failed."""
    out = tmp_path_factory.mktemp("inference")
    items = []
    for i, age in enumerate(AGES):
        failed = i == 5
        items.append({"id": f"sub-{i:02d}", "path": f"/data/sub-{i:02d}.nii.gz", "label": age,
                      "image": torch.zeros(1, *GRID) if failed else _volume(mask, seed=i, shift=12 if i == 3 else 0),
                      "registered": not failed, "register_decision": "auto", "error": "corrupt file" if failed else "",
                      "registration_similarity": float("nan") if failed else (0.3 if i == 3 else 0.8),
                      "brain_masked": not failed, "non_brain_fraction": float("nan") if failed else 0.01})
    model = StoredModel.read(model_dir)
    writer = PredictionWriter(out / "predictions.csv", model.bias_correction, gap_name="brain_age_gap",
                              qc_limits={"registration_similarity": (0.5, None)}, calibration=model.calibration,
                              reference=model.reference)
    report = InferenceReport(writer, out / "report.html", model, FINGERPRINT, title="Brain age")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=torch.utils.data.DataLoader(items, batch_size=4),
        network=_AgeFromIntensity(), decollate=False, postprocessing=uncertainty.SplitSpreadd(),
        inferer=uncertainty.TestTimeAugmentationInferer(n_samples=3, flip_axes=(0,), max_shift=2),
        val_handlers=[writer, report])
    evaluator.run()
    return out


def test_predictions_gain_spread_interval_and_named_flags(run):
    table = pd.read_csv(run / "predictions.csv")
    assert table.columns[:6].tolist() == ["id", "path", "predicted_age", "predicted_age_low", "predicted_age_high",
                                          "predicted_age_spread"]
    assert table.columns[-(len(FLAGS) + 2):].tolist() == [*FLAGS, "qc_flag", "error"]
    good = table["error"].isna()
    assert (table.loc[good, "predicted_age_low"] < table.loc[good, "predicted_age"]).all()
    assert table.loc[~good, ["predicted_age_low", "predicted_age_spread"]].isna().all().all()
    flagged = table.set_index("id")
    assert flagged.loc["sub-04", "target_outside_training_range"]  # 95 years; the training range ends at 82
    assert flagged.loc["sub-03", "low_registration_similarity"] and flagged.loc["sub-03", "unlike_training_data"]
    assert not flagged.loc["sub-00", list(FLAGS)].any() and not flagged.loc["sub-05", list(FLAGS)].any()


def test_report_is_self_contained(run):
    page = (run / "report.html").read_text()
    assert page.count('<tr class="scan') == len(AGES)
    assert len(re.findall(r'<img class="preview"', page)) == len(AGES) - 1  # none for the failed scan
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must fetch nothing"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert "corrupt file" in page and "90 % split-conformal" in page


def test_missing_model_files_are_stated(tmp_path):
    model = StoredModel.read(tmp_path / "empty_model")
    assert model.calibration is None and model.reference is None and model.validation is None
    assert any("conformal.json" in n for n in model.notes) and any("reference.json" in n for n in model.notes)


def test_an_ensemble_is_calibrated_on_its_pooled_validation_predictions(model_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    validation = pd.read_csv(other / "validation_predictions.csv")
    validation["predicted_age"] += 2.0  # a member biased by two years
    validation.to_csv(other / "validation_predictions.csv", index=False)
    single, ensemble = StoredModel.read(model_dir), StoredModel.read([model_dir, other])
    assert ensemble.folders == (model_dir, other) and "Ensemble of 2 models" in ensemble.notes[0]
    pooled = ensemble.validation.set_index("id")
    member = single.validation.set_index("id").loc[pooled.index]  # pooled rows are sorted by id
    np.testing.assert_allclose(pooled["predicted_age"], member["predicted_age"] + 1.0)
    # the members disagree by 2 years: the pooled spread is sqrt(sigma^2 + 1), wider than each member's
    np.testing.assert_allclose(pooled["predicted_age_spread"], np.hypot(member["predicted_age_spread"], 1.0))
    assert ensemble.calibration.n == single.calibration.n and ensemble.calibration.score == "normalised"
    assert ensemble.reference.gap["mean"] == pytest.approx(single.reference.gap["mean"], abs=0.2)  # corrected gaps
    assert ensemble.bias_correction.method == "beheshti" and ensemble.fingerprint == single.fingerprint
    (other / "conformal.json").unlink()
    incomplete = StoredModel.read([model_dir, other])
    assert incomplete.calibration is None and incomplete.bias_correction is None
    assert "No intervals, bias correction or gap check" in incomplete.notes[0]
    assert np.isnan(incomplete.reference.gap["sd"]) and incomplete.reference.train_range == single.reference.train_range


@pytest.mark.parametrize("pipeline, shape, kind, panels", [
    ("ultrasound", (1, 32, 112, 112), "frames", 3), ("xray", (1, 512, 512), "image", 1),
    ("faces", (3, 224, 224), "image", 1), ("fmri_parcels", (400, 478), "matrix", 1),
])
def test_previews_of_other_modalities(pipeline, shape, kind, panels):
    spec = PreviewSpec.from_fingerprint(get_pipeline(pipeline).fingerprint())
    preview = make_preview(np.random.default_rng(0).standard_normal(shape), spec)
    assert spec.kind == kind and len(preview.panels) == panels
    assert all(max(p.shape[:2]) <= 96 and p.dtype == np.uint8 for p in preview.panels)
    assert preview.panels[0].ndim == (3 if pipeline == "faces" else 2)


def test_no_preview_for_tables_says_why():
    spec = PreviewSpec.from_fingerprint({"output": {"shape": [5]}})
    assert spec.kind == "none" and "not images" in spec.caption
    assert make_preview(np.zeros(5), spec) is None


def test_orthogonal_preview_outlines_the_mask(mask):
    spec = PreviewSpec.from_fingerprint(FINGERPRINT)
    preview = make_preview(_volume(mask, seed=0), spec)
    assert len(preview.panels) == 3 and all(o is not None and o.any() for o in preview.outlines)
    assert preview.panels[0].shape == (96, 96)  # 100 x 100 grid shrunk to the preview size
    with pytest.raises(ValueError, match="4-axis input"):
        make_preview(np.zeros((5, 5)), spec)


# ----------------------------------------------------------------------------------------- headless Chromium
@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (skipped, with the reason, where it cannot be)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed and cannot be: apt-get needs root on a Debian-like system")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "chromium"]):
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
            if done.returncode != 0:
                pytest.skip(f"chromium could not be installed ({' '.join(command)}): {done.stderr.strip()[-300:]}")
    return CHROMIUM


def _chromium(binary: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


_PROBE = """<script>window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", decoded + "/" + images.length);
  document.body.setAttribute("data-rows", document.querySelectorAll("tr.scan").length);
});</script></body>"""


def test_chromium_renders_rows_and_images(run, chromium, tmp_path):
    probe = tmp_path / "probe.html"  # a copy with a probe script: the report itself runs no script
    probe.write_text((run / "report.html").read_text().replace("</body>", _PROBE))
    dom = _chromium(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_images = len(AGES) - 1 + 1  # previews + the plot
    assert f'data-images="{n_images}/{n_images}"' in dom.stdout, dom.stdout[:500]
    assert f'data-rows="{len(AGES)}"' in dom.stdout
    screenshot = tmp_path / "report.png"
    shot = _chromium(chromium, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,2000",
                     "--hide-scrollbars", (run / "report.html").as_uri())
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    pixels = imread(screenshot)[..., :3].reshape(-1, 3)  # RGB in [0, 1]
    assert len(pixels) == 2000 * 1200
    assert (pixels.min(axis=1) < 0.9).mean() > 0.05  # not blank: text, plot and previews cover the page
    outline = np.abs(pixels - np.array([255, 140, 0]) / 255).max(axis=1) < 0.1
    assert outline.sum() > 200  # the previews' brain-mask outlines were drawn
