"""Covariates as model inputs: encoding (supremix_med.data.covariates), the model's [features, covariates]
regressor (ContrastiveRegressor / build_model), and inference's per-scan covariates (list_scans, PreprocessScan)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import DataLoader
from monai.engines import PrepareBatchExtraInput
from PIL import Image

from supremix_med.data.cache import build_cache
from supremix_med.data.covariates import COVARIATES_KEY, EncodeCovariatesd, encode_covariate
from supremix_med.data.datasets import CachedDataset
from supremix_med.inference import PreprocessScan, list_scans
from supremix_med.networks import ContrastiveRegressor, JointProjectorRegressor, build_model

IN_FEATURES = 5


# ----------------------------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("value, code", [("M", 0.0), ("male", 0.0), (" f ", 1.0), ("Female", 1.0)])
def test_sex_is_coded_m0_f1_in_any_case(value, code):
    assert encode_covariate("sex", value) == code


@pytest.mark.parametrize("value, number", [(12.5, 12.5), (3, 3.0), ("2.5", 2.5), (torch.tensor([4.0]), 4.0)])
def test_numeric_covariates_are_used_as_they_are(value, number):
    assert encode_covariate("site_score", value) == number


@pytest.mark.parametrize("name, value, expected", [
    ("sex", "X", r"covariate 'sex' must be one of \['f', 'female', 'm', 'male'\].*got 'X'"),
    ("sex", "", r"covariate 'sex' must be one of .* got ''"),
    ("sex", 1.0, r"covariate 'sex' must be one of .* got 1.0"),
    ("age", "", r"covariate 'age' must be a finite number, got ''"),
    ("age", math.nan, r"covariate 'age' must be a finite number, got nan"),
    ("age", torch.tensor([math.nan]), r"covariate 'age' must be a finite number"),
])
def test_missing_or_unknown_values_are_refused(name, value, expected):
    with pytest.raises(ValueError, match=expected):
        encode_covariate(name, value)


def test_transform_stacks_covariates_in_order_and_keeps_the_item():
    item = {"id": "s1", "image": torch.zeros(1, 2), "sex": "F", "age": torch.tensor([7.0])}
    out = EncodeCovariatesd(["age", "sex"])(item)
    assert out[COVARIATES_KEY].dtype == torch.float32 and out[COVARIATES_KEY].tolist() == [7.0, 1.0]
    assert out["sex"] == "F" and COVARIATES_KEY not in item


def test_transform_errors_name_the_sample():
    with pytest.raises(ValueError, match=r"sample 's7': covariate 'sex' must be one of .* got 'U'"):
        EncodeCovariatesd(["sex"])({"id": "s7", "sex": "U"})
    with pytest.raises(ValueError, match=r"sample 's8': no covariate\(s\) \['sex'\]; the item has \['id'\]"):
        EncodeCovariatesd(["sex"])({"id": "s8"})


def test_cached_items_collate_to_a_covariate_batch(tmp_path):
    rows = []
    for i in range(6):
        np.save(tmp_path / f"s{i}.npy", np.full((1, 3, 3), i, np.float32))
        rows.append({"id": f"s{i}", "path": str(tmp_path / f"s{i}.npy"), "age": float(i), "sex": "MF"[i % 2],
                     "split": "train"})
    build_cache(pd.DataFrame(rows), tmp_path / "cache", np.load, {"pipeline": "test"}, progress=False, stratify=None)
    dataset = CachedDataset(tmp_path / "cache", "train", transform=EncodeCovariatesd(["sex"]), covariates=["sex"])
    batch = next(iter(DataLoader(dataset, batch_size=6)))
    assert batch[COVARIATES_KEY].shape == (6, 1)
    assert batch[COVARIATES_KEY][:, 0].tolist() == [float(sex == "F") for sex in batch["sex"]]


# ------------------------------------------------------------------------------------------------- model
def _model(covariates: list[str], **kwargs) -> ContrastiveRegressor:
    torch.manual_seed(0)
    return build_model("mlp", in_features=IN_FEATURES, hidden=[8], projection_dim=4, covariates=covariates, **kwargs)


def test_regressor_sees_features_and_covariates():
    model = _model(["sex", "age"]).eval()
    assert model.n_covariates == 2 and model.regressor.in_features == 8 + 2
    x, covariates = torch.randn(3, IN_FEATURES), torch.tensor([[0.0, 5.0], [1.0, 5.0], [1.0, 9.0]])
    expected = model.regressor(torch.cat([model.encode(x), covariates], dim=1))
    torch.testing.assert_close(model(x, covariates=covariates), expected)
    torch.testing.assert_close(model.predict(x, covariates), expected)
    assert model.project(x).shape == (3, 4)  # the contrastive embedding ignores covariates


def test_one_covariate_may_come_as_a_vector():
    model = _model(["sex"]).eval()
    x, sex = torch.randn(4, IN_FEATURES), torch.tensor([0.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(model(x, covariates=sex), model(x, covariates=sex[:, None]))


def test_missing_or_misshaped_covariates_are_refused():
    model = _model(["sex"]).eval()
    x = torch.randn(2, IN_FEATURES)
    with pytest.raises(ValueError, match=r"takes 1 covariate\(s\) per sample beside the image; pass covariates"):
        model(x)
    with pytest.raises(ValueError, match=r"expected covariates \[2, 1\], got \[2, 3\]"):
        model(x, covariates=torch.zeros(2, 3))


def test_models_without_covariates_are_unchanged_and_ignore_none():
    model = _model([]).eval()
    assert model.n_covariates == 0 and model.regressor.in_features == 8
    x = torch.randn(2, IN_FEATURES)
    torch.testing.assert_close(model(x), model.regressor(model.encode(x)))


@pytest.mark.parametrize("covariates", ["sex", ["sex", "sex"], [""]])
def test_build_model_needs_distinct_covariate_names(covariates):
    with pytest.raises(ValueError, match="covariates must be a list of distinct column names"):
        _model(covariates)


def test_negative_covariate_count_is_refused():
    with pytest.raises(ValueError, match="n_covariates must be an integer >= 0, got -1"):
        ContrastiveRegressor(torch.nn.Linear(3, 3), in_features=3, n_covariates=-1)


def test_fds_training_forward_takes_labels_and_covariates():
    model = _model(["sex"], fds={"bin_width": 1.0}, label_range=[0.0, 10.0]).train()
    x, labels, sex = torch.randn(4, IN_FEATURES), torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[0.0], [1.0]] * 2)
    image, label, args, kwargs = PrepareBatchExtraInput({"labels": "label", COVARIATES_KEY: COVARIATES_KEY})(
        {"image": x, "label": labels, COVARIATES_KEY: sex})
    assert model(image, *args, **kwargs).shape == (4, 1)


def test_torchscript_export_takes_covariates():
    model = _model(["sex"]).eval()
    scripted = torch.jit.script(model)
    x, sex = torch.randn(3, IN_FEATURES), torch.tensor([[0.0], [1.0], [1.0]])
    torch.testing.assert_close(scripted(x, covariates=sex), model(x, covariates=sex))
    with pytest.raises(Exception, match="pass covariates"):
        scripted(x)


def test_conr_pretraining_refuses_a_model_with_covariates():
    with pytest.raises(ValueError, match="contrastive pre-training sees images only"):
        JointProjectorRegressor(_model(["sex"]))


# --------------------------------------------------------------------------------------------- inference
@pytest.fixture
def scans_csv(tmp_path) -> Path:
    """Three radiographs listed with sex: F, an unknown value and an empty one."""
    for name in ("a", "b", "c"):
        Image.fromarray(np.tile(np.arange(0, 240, 8, dtype=np.uint8), (40, 1))).save(tmp_path / f"{name}.png")
    csv = tmp_path / "scans.csv"
    csv.write_text("id,path,sex\na,a.png,F\nb,b.png,unknown\nc,c.png,\n")
    return csv


def test_list_scans_passes_csv_covariates_on(scans_csv):
    items = list_scans(scans_csv, covariates=["sex"])
    assert [(i["id"], i["sex"]) for i in items] == [("a", "F"), ("b", "unknown"), ("c", "")]


def test_list_scans_needs_the_covariate_columns(scans_csv, tmp_path):
    with pytest.raises(ValueError, match=r"needs columns id,path,sex,site\[,age\]; missing \['site'\]"):
        list_scans(scans_csv, covariates=["sex", "site"])
    with pytest.raises(ValueError, match=r"takes the covariate\(s\) \['sex'\] per scan, which a folder .* CSV with "
                                         r"columns id,path,sex"):
        list_scans(tmp_path, suffixes=(".png",), covariates=["sex"])


def test_preprocess_scan_reports_bad_covariates_per_file(scans_csv):
    transform = PreprocessScan("xray", covariates=["sex"], size=16)
    good, unknown, empty = (transform(item) for item in list_scans(scans_csv, covariates=["sex"]))
    assert good["error"] == "" and good[COVARIATES_KEY].tolist() == [1.0] and good["image"].abs().sum() > 0
    for failed, value in ((unknown, "'unknown'"), (empty, "''")):
        assert failed["error"].startswith(failed["path"] + ": sample ")
        assert "covariate 'sex' must be one of" in failed["error"] and value in failed["error"]
        assert failed[COVARIATES_KEY].tolist() == [0.0] and failed["image"].shape == (1, 16, 16)
