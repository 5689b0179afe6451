"""The bundles' composition: every bundle takes the shared recipe (bundles/_base) through MONAI macros."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out

from supremix_med.bundles import BASE, ENV_VAR, bundle_names, bundles_dir, load_config, resolve_macros
from supremix_med.cli.refusals import DEBUG_ENV, EXIT_REFUSED

from conftest import BUNDLES, REPO

NAMES = bundle_names(BUNDLES)
#: Files every bundle folder has (MONAI's layout plus the demo overlay and the README).
STANDARD = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "demo.json", "metadata.json",
            "logging.conf", "README.md")
_MACRO = re.compile(r"^%(bundles/[^#]+\.json)#(.+)$")
_REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _top_level_references(node) -> set[str]:
    """Top-level ids that ``node`` references (``@id`` or ``@id#...``)."""
    return {match for text in _strings(node) for match in _REFERENCE.findall(text)}


def test_the_nine_bundles_and_their_standard_files():
    assert NAMES == ["agedb", "airfoil", "hcp_aging", "imdb_wiki", "pet_brainage", "stsb", "ukb_brainage",
                     "us_ejection_fraction", "xray_boneage"]
    for name in NAMES:
        missing = [f for f in STANDARD if not (BUNDLES / name / f).is_file()]
        assert not missing, f"{name} lacks {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_every_macro_points_at_the_shared_recipe_or_the_bundle_itself(name):
    for path in sorted((BUNDLES / name).glob("*.json")):
        for text in _strings(json.loads(path.read_text())):
            match = _MACRO.match(text)
            if match:
                resolve_macros(text, REPO)  # raises KeyError/IndexError/FileNotFoundError when the target is missing
                assert match.group(1).startswith((f"bundles/{BASE}/", f"bundles/{name}/")), \
                    f"{path.name}: {text} is neither the shared recipe nor this bundle's own"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("workflow", ["train.json", "inference.json"])
def test_every_knob_the_recipe_reads_is_declared_by_the_bundle(name, workflow):
    """A knob the shared recipe references (``@id``) but the bundle does not declare would fail at parse time."""
    config = load_config(name, workflow, folder=BUNDLES)
    missing = sorted(_top_level_references(config) - set(config))
    assert not missing, f"{name}/{workflow} does not declare {missing}"


def test_macros_resolve_as_monai_resolves_them(monkeypatch):
    monkeypatch.chdir(REPO)  # MONAI reads macro paths relative to the working directory
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "ukb_brainage" / "train.json"), str(BUNDLES / "ukb_brainage" / "demo.json")])
    parser.resolve_macro_and_relative_ids()
    resolved = {k: v for k, v in parser.get().items() if k != "_meta_"}
    assert load_config("ukb_brainage", "train.json", "demo.json", folder=BUNDLES) == resolved


def test_load_config_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("airfoil", "train.json", "demo.json")
    assert config["pretrain"]["trainer"]["_target_"] == "SupervisedTrainer"
    assert config["view_keys"] == ["image"]
    with pytest.raises(ValueError, match="unknown bundle 'nope'; the bundles in .* are \\['agedb'"):
        load_config("nope")


def test_bundles_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(BUNDLES))
    assert bundles_dir() == BUNDLES
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"no bundles folder with {BASE}/ at \\${ENV_VAR}="):
        bundles_dir()


def test_the_base_is_not_a_bundle():
    assert BASE not in NAMES and (BUNDLES / BASE / "train.json").is_file()
    assert Path(bundles_dir()) == BUNDLES


# ------------------------------------------------------------------- configs open without data or a model
_IN_OUT = {"n": 1, "any": 100}  # values for the wildcard sizes of the bundles' metadata


@pytest.mark.parametrize("name", NAMES)
def test_train_config_opens_and_checks_without_data(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    workflow = ConfigWorkflow(config_file=str(BUNDLES / name / "train.json"), workflow_type="train",
                              dataset_dir=str(tmp_path / "no_data"), output_dir=str(tmp_path / "out"))
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("name", NAMES)
def test_inference_config_opens_and_checks_without_a_model(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    workflow = ConfigWorkflow(config_file=str(BUNDLES / name / "inference.json"), workflow_type="infer",
                              dataset_dir=str(tmp_path / "no_scans"), ckpt_dir=str(tmp_path / "no_model"),
                              output_dir=str(tmp_path / "out"))
    workflow.initialize()
    assert workflow.check_properties() == []
    with pytest.raises(RuntimeError) as missing:
        workflow.run()
    assert f"no model.pt in {tmp_path / 'no_model'}" in str(missing.value.__cause__)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "stsb"])  # stsb: token ids, checked below
@pytest.mark.parametrize("workflow", ["train.json", "inference.json"])
def test_network_shapes_from_declared_sizes(name, workflow, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLES / name / "metadata.json"),
                      config_file=str(BUNDLES / name / workflow), dataset_dir=str(tmp_path / "none"),
                      ckpt_dir=str(tmp_path / "none"), **_IN_OUT)


@pytest.mark.parametrize("workflow", ["train.json", "inference.json"])
def test_stsb_network_shapes_from_declared_sizes_with_token_ids(workflow, tmp_path, monkeypatch):
    """verify_net_in_out's check for stsb, whose int64 token ids ``torch.rand`` cannot draw: random right-padded
    ids of the metadata's shape [1, 2, L] through ``network_def`` give the declared output [1, 1]."""
    monkeypatch.chdir(REPO)
    meta = json.loads((BUNDLES / "stsb" / "metadata.json").read_text())["network_data_format"]
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "stsb" / workflow))
    parser.update({"dataset_dir": str(tmp_path / "none"), "ckpt_dir": str(tmp_path / "none")})
    network = parser.get_parsed_content("network_def").eval()
    channels = meta["inputs"]["image"]["num_channels"]
    ids = torch.randint(1, network.encoder.embedding.num_embeddings, (1, channels, 7), dtype=torch.int64)
    ids[..., 5:] = 0  # right-padded, as the metadata's channel_def says
    with torch.no_grad():
        out = network(ids)
    assert tuple(out.shape) == (1, meta["outputs"]["pred"]["num_channels"]) and out.dtype == torch.float32


def test_training_without_data_names_the_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    workflow = ConfigWorkflow(config_file=str(BUNDLES / "ukb_brainage" / "train.json"), workflow_type="train",
                              dataset_dir=str(tmp_path / "no_cache"), output_dir=str(tmp_path / "out"))
    workflow.initialize()
    with pytest.raises(RuntimeError) as missing:
        workflow.run()
    assert str(tmp_path / "no_cache") in str(missing.value.__cause__)


def _bundle_run(config: str, tmp_path: Path, debug: bool = False, **overrides: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of bundles/<config> in a fresh process, as a user runs it."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLES / config)]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    env = {**os.environ, DEBUG_ENV: "1" if debug else "0"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


@pytest.mark.parametrize("debug", [False, True])
def test_a_refused_bundle_run_ends_in_one_line_with_status_2(debug, tmp_path):
    """Under MONAI's runner a refusal is one line naming the path (exit 2); SUPREMIX_MED_DEBUG=1 keeps the
    traceback."""
    done = _bundle_run("ukb_brainage/train.json", tmp_path, debug, dataset_dir=str(tmp_path / "no_cache"),
                       output_dir=str(tmp_path / "out"))
    if debug:
        assert done.returncode == 1 and "Traceback" in done.stderr
        return
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert _errors(done.stderr) == [f"supremix-med: error: {tmp_path / 'no_cache'} is not a supremix-med cache (no "
                                    f"such folder): build one with python -m preprocessing.<modality> (the bundle's "
                                    f"README names it) or give --dataset_dir the folder of one."]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["state"] == "failed"


def test_inference_without_a_model_ends_in_one_line(tmp_path):
    done = _bundle_run("airfoil/inference.json", tmp_path, ckpt_dir=str(tmp_path / "no_model"),
                       dataset_dir=str(tmp_path / "none"), output_dir=str(tmp_path / "out"))
    assert done.returncode == EXIT_REFUSED, done.stderr
    [line] = _errors(done.stderr)
    assert line.startswith("supremix-med: error: ") and f"no model.pt in {tmp_path / 'no_model'}" in line


# ------------------------------------------------------------------- what `$` expressions name is imported
_MODULE_PATH = re.compile(r"\bsupremix_med(?:\.[A-Za-z_]\w*)+")
_WORKFLOWS = (("train.json",), ("train.json", "evaluate.json"), ("train.json", "multi_gpu_train.json"),
              ("train.json", "demo.json"), ("inference.json",))
#: Run in a fresh interpreter: the config's imports only, then every dotted name must resolve. In-process the
#: test session has imported everything already, which is how a missing import once went unnoticed.
_RESOLVE = """
import json, sys
imports, names = json.load(sys.stdin)
scope = {}
for statement in imports:
    exec(statement.lstrip("$"), scope)
missing = []
for name in names:
    head, *rest = name.split(".")
    value = scope[head]
    for part in rest:
        if not hasattr(value, part):
            missing.append(name)
            break
        value = getattr(value, part)
print(json.dumps(missing))
"""


def test_every_module_an_expression_names_is_in_the_imports():
    """MONAI evaluates ``$`` expressions with the config's ``imports`` only: ``supremix_med.x.y`` in an expression
    needs ``supremix_med.x`` imported there, whatever else the process happens to have imported."""
    by_imports: dict[tuple[str, ...], set[str]] = {}
    for name in NAMES:
        for files in _WORKFLOWS:
            if not all((BUNDLES / name / f).is_file() for f in files):
                continue
            config = load_config(name, *files, folder=BUNDLES)
            names = {match for text in _strings(config) if text.startswith("$")
                     for match in _MODULE_PATH.findall(text)}
            by_imports.setdefault(tuple(config["imports"]), set()).update(names)
    for imports, names in by_imports.items():
        done = subprocess.run([sys.executable, "-c", _RESOLVE], input=json.dumps([imports, sorted(names)]),
                              capture_output=True, text=True, cwd=REPO, check=True)
        assert json.loads(done.stdout) == [], f"imports {imports} do not reach {done.stdout}"
