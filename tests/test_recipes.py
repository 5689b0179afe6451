"""The recipe renderer (supremix_med.recipes): overrides, formatting, and that every bundle is rendered up to date."""

import json
from pathlib import Path

import pytest

from supremix_med.recipes import (SPLITS, apply_overrides, bundle_names, format_config, render_bundle,
                                  split_datasets, stale_files, template_imports, write_bundle)
from supremix_med.recipes.__main__ import main

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_apply_overrides_sets_nested_ids_without_touching_the_input():
    config = {"a": {"b": [1, {"c": 2}]}, "d": 0}
    result = apply_overrides(config, {"a#b#1#c": 3, "a#new": "x", "e": [1]})
    assert result == {"a": {"b": [1, {"c": 3}], "new": "x"}, "d": 0, "e": [1]}
    assert config == {"a": {"b": [1, {"c": 2}]}, "d": 0}


@pytest.mark.parametrize("config_id", ["a#typo#c", "a#b#5", "d#x", "a#b#2"])
def test_apply_overrides_refuses_ids_the_template_does_not_have(config_id):
    with pytest.raises(KeyError, match="override"):
        apply_overrides({"a": {"b": [1, 2]}, "d": 0}, {config_id: 1})


def test_split_datasets_gives_each_stage_its_split_and_transform():
    overrides = split_datasets({"_target_": "Dataset", "data": "@x"}, split_key="part")
    assert set(overrides) == {f"{stage}#dataset" for stage in SPLITS}
    assert overrides["validate#dataset"] == {"_target_": "Dataset", "data": "@x", "part": "val",
                                             "transform": "@validate#preprocessing"}
    assert overrides["test#dataset"]["transform"] == "@validate#preprocessing"
    assert overrides["pretrain#dataset"]["part"] == "train"


def test_format_config_is_json_and_folds_only_long_containers():
    config = {"short": [1, 2], "long": ["x" * 60, "y" * 60], "nested": {"k": {"v": 1}}}
    text = format_config(config)
    assert json.loads(text) == config
    assert '"short": [1, 2],' in text and '"nested": {"k": {"v": 1}}' in text
    assert '"long": [\n' in text


@pytest.mark.parametrize("name", bundle_names())
def test_rendered_bundle_is_up_to_date(name):
    """Committed bundle files equal what the recipe renders (re-render: python -m supremix_med.recipes)."""
    assert stale_files(BUNDLES, [name]) == []
    for file_name, text in render_bundle(name).items():
        if file_name.endswith(".json"):
            assert isinstance(json.loads(text), dict)


def test_cli_writes_then_checks(tmp_path, capsys):
    name = bundle_names()[0]
    assert main(["--check", "--bundles_dir", str(tmp_path), name]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["--bundles_dir", str(tmp_path), name]) == 0
    assert main(["--check", "--bundles_dir", str(tmp_path), name]) == 0
    assert write_bundle(name, tmp_path) == []


def test_unknown_bundle_is_named():
    with pytest.raises(ValueError, match="unknown bundle 'nope'"):
        render_bundle("nope")


def test_template_imports_extend_the_templates_own():
    imports = template_imports("$import supremix_med.data.sources.faces")
    assert imports[:-1] == json.loads(render_bundle("ukb_brainage")["train.json"])["imports"]
    assert imports[-1] == "$import supremix_med.data.sources.faces"
