"""``python -m supremix_med.zoo export``: every bundle in MONAI model-zoo layout, checked as model-zoo checks it.

Every bundle is exported without a model and put through the zoo's checks (``_model_zoo``). The airfoil bundle
then goes the whole way: trained from its export on a tiny demo table, exported again with that model, and
checked with the model (properties with data, data shape and TorchScript of ``inference.json``, inference run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser

import _model_zoo as zoo_checks
from _bundle_runs import run_workflow
from conftest import BUNDLES
from supremix_med.bundles import bundle_names
from supremix_med.demo.table import TABLE_FILE, generate_table
from supremix_med.zoo import CONFIGS, URL_PLACEHOLDER, ZOO_PATHS, export_bundle, main, model_files

NAMES = bundle_names(BUNDLES)
TINY = {"pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 16}

# Checks a bundle's network cannot take (what model-zoo's own exclude lists are for), by reason; the marks are strict,
# so a check that starts passing fails and says so.
TOKENS = ("verify_net_in_out draws its input with torch.rand, which cannot make int64 token ids "
          "(model-zoo's exclude_verify_shape_list)")
XFAIL = {"train_properties": {}, "infer_properties": {}, "data_shape": {"stsb": TOKENS}, "torchscript": {}}


def bundles_for(check: str) -> list:
    """Every bundle as a test parameter, strict-xfail where ``XFAIL[check]`` gives a reason."""
    reasons = XFAIL[check]
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reasons[name])) if name in reasons
            else name for name in NAMES]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Every bundle exported without a model."""
    root = tmp_path_factory.mktemp("zoo")
    return {name: export_bundle(name, root / name) for name in NAMES}


def untrained_checkpoint(bundle: Path, config: str, path: Path) -> Path:
    """The freshly built ``network_def`` of ``configs/<config>`` saved as a state dict (a stand-in for model.pt)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------------
# Every bundle, exported without a model


@pytest.mark.parametrize("name", NAMES)
def test_export_passes_the_directory_version_and_metadata_checks(exports, name):
    bundle = exports[name]
    zoo_checks.verify_directory(bundle)
    zoo_checks.verify_version(bundle)
    zoo_checks.verify_metadata_format(bundle)
    assert zoo_checks.large_files(bundle) == [] and not (bundle / "models").exists()
    for file in ("metadata.json", "logging.conf"):
        assert (bundle / "configs" / file).read_text() == (BUNDLES / name / file).read_text()
    assert "Apache License" in (bundle / "LICENSE").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_configs_are_self_contained_with_paths_relative_to_the_bundle(exports, name):
    for file in CONFIGS:
        text = (exports[name] / "configs" / file).read_text()
        for source_path in ("%bundles/", f"bundles/{name}", "outputs/"):
            assert source_path not in text, f"{name}/{file} still names {source_path}"
        config = json.loads(text)
        assert {key: config[key] for key in ZOO_PATHS.get(file, {})} == ZOO_PATHS.get(file, {})


@pytest.mark.parametrize("name", bundles_for("train_properties"))
def test_train_properties(exports, name):
    zoo_checks.verify_properties(exports[name], "train", "train.json")


@pytest.mark.parametrize("name", bundles_for("infer_properties"))
def test_infer_properties(exports, name):
    zoo_checks.verify_properties(exports[name], "infer", "inference.json")


@pytest.mark.parametrize("name", bundles_for("data_shape"))
def test_data_shape_of_inference(exports, name):
    zoo_checks.verify_data_shape(exports[name])


@pytest.mark.parametrize("name", bundles_for("torchscript"))
def test_torchscript_of_the_declared_network(exports, name, tmp_path):
    """Model-zoo exports models/model.pt; without a trained model, the declared network's initial weights stand in."""
    bundle = exports[name]
    checkpoint = untrained_checkpoint(bundle, "train.json", tmp_path / "untrained.pt")
    zoo_checks.verify_torchscript(bundle, tmp_path / "model.ts", "train.json", ckpt_file=checkpoint)


@pytest.mark.parametrize("name", ["agedb", "stsb"])
def test_shipped_data_come_with_their_licence(exports, name):
    bundle = exports[name]
    licence = bundle / "docs" / "data_license.txt"
    data = {"agedb": ["agedb.csv"], "stsb": ["dir_split/dev_new.tsv", "dir_split/test_new.tsv",
                                             "dir_split/train_new.tsv"]}[name]
    for path in data:
        assert (bundle / path).read_bytes() == (BUNDLES / name / path).read_bytes()
        assert path in licence.read_text()
    assert "MIT License" in licence.read_text()


def test_bundles_without_data_files_say_so(exports):
    text = (exports["ukb_brainage"] / "docs" / "data_license.txt").read_text()
    assert "UK Biobank" in text and "No data files ship with this bundle." in text


def test_readme_names_the_exported_configs(exports):
    text = (exports["airfoil"] / "docs" / "README.md").read_text()
    assert "--config_file configs/train.json" in text and "bundles/airfoil/train.json" not in text
    assert text.count("# UCI Airfoil Self-Noise") == 1  # the bundle's README follows the preface


# --------------------------------------------------------------------------------------------------
# airfoil: trained from its export, shipped with the model


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A 150-row demo airfoil table."""
    folder = tmp_path_factory.mktemp("airfoil_table")
    generate_table(folder, n_rows=150, seed=0)
    return folder / TABLE_FILE


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory) -> Path:
    """An airfoil export trained in place (tiny) with its own configs, run from another working directory."""
    bundle = export_bundle("airfoil", tmp_path_factory.mktemp("airfoil_trained") / "airfoil")
    run_workflow([str(bundle / "configs" / "train.json")], bundle_root=str(bundle), data_file=str(table), **TINY)
    return bundle


@pytest.fixture(scope="module")
def shipped(trained, tmp_path_factory) -> Path:
    return export_bundle("airfoil", tmp_path_factory.mktemp("airfoil_shipped") / "airfoil", model=trained / "models")


def test_training_an_export_writes_under_its_eval_and_models(trained, exports):
    before = {path.relative_to(exports["airfoil"]) for path in exports["airfoil"].rglob("*")}
    written = {path.relative_to(trained) for path in trained.rglob("*")} - before
    assert {path.parts[0] for path in written} == {"eval", "models"}
    assert (trained / "eval" / "metrics.json").is_file() and (trained / "models" / "model.pt").is_file()


def test_shipped_model_is_what_inference_needs_listed_with_its_sha256(trained, shipped):
    # the weights, how to build and feed the network, and what the interval, flags and report need
    needed = ["bundle.json", "conformal.json", "input_reference.npy", "model.pt", "model_config.json",
              "model_set.json", "preprocessing.json", "reference.json", "validation_predictions.csv"]
    assert [path.name for path in model_files(trained / "models")] == needed
    assert sorted(path.name for path in (shipped / "models").iterdir()) == needed
    entries = {entry["path"]: entry for entry in zoo_checks.large_files(shipped)}
    assert sorted(entries) == [f"models/{name}" for name in needed]
    assert entries["models/model.pt"]["url"] == URL_PLACEHOLDER.format(bundle="airfoil", version="0.1.0",
                                                                       path="models/model.pt")
    assert {entry["hash_type"] for entry in entries.values()} == {"sha256"}
    zoo_checks.verify_directory(shipped)  # every listed file present with its sha256


def test_shipped_bundle_passes_every_model_zoo_check(shipped, table, tmp_path):
    zoo_checks.verify_metadata_format(shipped)
    zoo_checks.verify_properties(shipped, "train", "train.json", data_file=str(table))
    zoo_checks.verify_properties(shipped, "infer", "inference.json", data_file=str(table))
    zoo_checks.verify_data_shape(shipped)
    scripted = zoo_checks.verify_torchscript(shipped, tmp_path / "model.ts")
    parser = ConfigParser()
    parser.read_config(str(shipped / "configs" / "inference.json"))
    parser["bundle_root"] = str(shipped)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(shipped / "models" / "model.pt", map_location="cpu"))
    rows = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.allclose(scripted(rows), network.eval()(rows), atol=1e-6)


def test_shipped_bundle_predicts_from_any_working_directory(shipped, table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    new_rows = tmp_path / "new_rows.csv"
    pd.read_csv(table).head(5).to_csv(new_rows, index=False)
    run_workflow([str(shipped / "configs" / "inference.json")], workflow_type="infer", bundle_root=str(shipped),
                 data_file=str(new_rows))
    predictions = pd.read_csv(shipped / "eval" / "inference" / "predictions.csv")
    assert predictions["id"].tolist() == [1, 2, 3, 4, 5]
    assert predictions["predicted_scaled_sound_pressure"].notna().all()
    assert list(tmp_path.iterdir()) == [new_rows]


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_exports_and_refuses_to_overwrite(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["export", "airfoil", "--output", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    assert main(["export", "airfoil", "--output", str(output)]) == 1
    assert capsys.readouterr().err == f"export failed: {output}: exists and is not an empty folder; export into a new one.\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_cli_names_a_models_folder_without_a_model(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "model_config.json").write_text("{}")
    assert main(["export", "airfoil", "--output", str(tmp_path / "out"), "--model", str(models)]) == 1
    assert capsys.readouterr().err.startswith(f"export failed: {models}: no model.pt; --model takes the models folder")
    assert not (tmp_path / "out").exists()


def test_cli_lists_the_bundles_for_an_unknown_name(tmp_path, capsys):
    assert main(["export", "nope", "--output", str(tmp_path / "out")]) == 1
    assert "unknown bundle 'nope'; the bundles in" in capsys.readouterr().err
