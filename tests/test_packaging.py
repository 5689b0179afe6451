"""The project as a user gets it: the licence, the README's install instructions, the wheel outside the checkout.

The wheel tests build the wheel from a copy of the checkout and install it into a fresh virtual environment in a
temporary folder whose dependencies are this run's (see :class:`_shipping.WheelEnv`), then run Python there from
a folder outside the checkout with no PYTHONPATH, so nothing can be imported from the source tree.
"""

from __future__ import annotations

import email
import json
import re
import shlex
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from _shipping import ROOT, WheelEnv, build_wheel, pin_constraints, wheel_files
from supremix_med.bundles import INSTALLED
from supremix_med.demo.table import generate_table

README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
PROJECT = pin_constraints().read_project()
PACKAGES = ("supremix_med", "preprocessing")
DIST_INFO = f"supremix_med-{PROJECT['version']}.dist-info"


# --------------------------------------------------------------------------------------------------
# Licences


def test_licence_is_the_apache_2_text_pyproject_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS" in text
    assert PROJECT["license"] == "Apache-2.0"
    assert "LICENSE" in PROJECT["license-files"]


def data_licences() -> list[str]:
    """Licence files shipped beside data in the repository (everything named LICENSE* but the root one)."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "bundles").rglob("LICENSE*"))


def test_every_data_licence_is_listed_in_the_readme() -> None:
    licences = data_licences()
    assert licences, "no data licence found: the test would check nothing"
    text = README.read_text()
    assert [path for path in licences if f"`{path}`" not in text] == []


# --------------------------------------------------------------------------------------------------
# README "Install" and the Makefile


def readme_section(title: str) -> str:
    """The text of the README's level-2 section ``title``, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README.read_text(), re.MULTILINE | re.DOTALL)
    assert match is not None, f"README.md has no '## {title}' section"
    return match.group(1)


def makefile_variables() -> dict[str, str]:
    """``{name: default}`` of the Makefile's user-settable variables (``NAME ?= default``)."""
    return dict(re.findall(r"^([A-Z_]+)\s*\?=[ \t]*(.*?)\s*$", MAKEFILE.read_text(), re.MULTILINE))


def test_install_section_covers_cpu_cuda_docker_and_apptainer() -> None:
    install = readme_section("Install")
    for topic in ("CPU", "CUDA", "Docker", "Apptainer", "--gpus all", "--nv", "constraints.txt"):
        assert topic in install, f"README.md's Install section does not mention {topic}"
    assert "https://download.pytorch.org/whl/cpu" in install


def test_readme_make_commands_set_only_makefile_variables() -> None:
    variables = makefile_variables()
    assert {"TORCH_SPEC", "TORCH_INDEX_URL", "CONSTRAINTS"} <= set(variables)
    settings = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["make"]:
                settings += [word.split("=", 1)[0] for word in words[1:] if "=" in word]
    assert "TORCH_INDEX_URL" in settings, "the README shows no make command that picks the torch build"
    assert sorted(set(settings) - set(variables)) == []


def test_makefile_installs_the_pinned_torch_by_default() -> None:
    variables = makefile_variables()
    pins = pin_constraints().read_constraints()
    assert variables["TORCH_SPEC"] == f"torch=={pins['torch']}"
    assert variables["TORCH_INDEX_URL"] == "", "the default must be pip's configured indexes"
    assert variables["CONSTRAINTS"] == "constraints.txt"


# --------------------------------------------------------------------------------------------------
# The wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel_build"))


@pytest.fixture(scope="module")
def wheel_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    return WheelEnv.create(tmp_path_factory.mktemp("wheel_env") / "venv", wheel)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    return tmp_path


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(f"{DIST_INFO}/METADATA"))


def test_wheel_ships_every_file_of_the_packages(wheel: Path) -> None:
    shipped = wheel_files(wheel)
    sources = [path.relative_to(ROOT).as_posix()
               for package in PACKAGES for path in (ROOT / package).rglob("*")
               if path.is_file() and "__pycache__" not in path.parts]
    assert len(sources) > 50
    assert sorted(set(sources) - shipped) == []


def test_wheel_carries_the_licence(wheel: Path) -> None:
    assert f"{DIST_INFO}/licenses/LICENSE" in wheel_files(wheel)
    assert wheel_metadata(wheel)["License-Expression"] == "Apache-2.0"


def test_wheel_requirements_are_met_by_the_tested_environment(wheel: Path) -> None:
    requirements = [Requirement(line) for line in wheel_metadata(wheel).get_all("Requires-Dist")]
    runtime = [requirement for requirement in requirements if pin_constraints().applies(requirement)]
    assert {requirement.name for requirement in runtime} >= {"torch", "monai"}
    pin_constraints().pin_closure(runtime)  # raises, naming the package, when one is missing or out of range


def test_packages_import_from_the_installed_wheel(wheel_env: WheelEnv, elsewhere: Path) -> None:
    script = f"import importlib\nfor name in {PACKAGES!r}:\n    print(importlib.import_module(name).__file__)\n"
    result = wheel_env.run("-c", script, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    files = [Path(line) for line in result.stdout.split()]
    assert [file.parent.parent for file in files] == [wheel_env.site_packages] * len(PACKAGES)


def test_wheel_ships_every_bundle_file_and_the_data_licences(wheel: Path) -> None:
    shipped = wheel_files(wheel)
    bundle_files = [path.relative_to(ROOT / "bundles").as_posix() for path in (ROOT / "bundles").rglob("*")
                    if path.is_file() and "__pycache__" not in path.parts]
    assert len(bundle_files) > 80
    installed = INSTALLED.relative_to(INSTALLED.parents[2]).as_posix()  # supremix_med/resources/bundles
    assert sorted(f"{installed}/{path}" for path in bundle_files if f"{installed}/{path}" not in shipped) == []
    assert sorted(f"{DIST_INFO}/licenses/{path}" for path in data_licences()) == sorted(
        path for path in shipped if path.startswith(f"{DIST_INFO}/licenses/bundles/"))


def test_demo_configs_are_found_from_the_installed_wheel(wheel_env: WheelEnv, elsewhere: Path) -> None:
    result = wheel_env.run("-m", "supremix_med.demo", "airfoil", "--dry_run", "--output", "out", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    (bundle_run,) = [line for line in result.stdout.splitlines() if "monai.bundle run" in line]
    configs = re.findall(r"'([^']+\.json)'", bundle_run)
    assert configs, bundle_run
    assert [config for config in configs if not (elsewhere / config).is_file()] == []
    installed = wheel_env.site_packages / "supremix_med" / "resources" / "bundles"
    assert [Path(config).parent.parent for config in configs] == [installed] * len(configs)
    assert f"--output_dir {elsewhere / 'out'}" in bundle_run


def package_files(wheel_env: WheelEnv) -> set[Path]:
    """Files of the installed packages, bytecode caches aside."""
    return {path for package in PACKAGES for path in (wheel_env.site_packages / package).rglob("*")
            if "__pycache__" not in path.parts}


def test_a_tiny_bundle_runs_from_the_installed_wheel(wheel_env: WheelEnv, elsewhere: Path) -> None:
    """README "Install": export a bundle from the wheel, then run it with MONAI from the bundle's own folder."""
    before = package_files(wheel_env)
    generate_table(elsewhere / "data", n_rows=150, seed=0)  # demo_table.csv: 120/15/15 rows per split
    steps = [
        (["-m", "supremix_med.zoo", "export", "airfoil", "--output", "airfoil"], elsewhere),
        (["-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--data_file", "../data/demo_table.csv",
          "--pretrain_epochs", "1", "--finetune_epochs", "1", "--batch_size", "16"], elsewhere / "airfoil"),
    ]
    for args, cwd in steps:
        result = wheel_env.run(*args, cwd=cwd)
        assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    metrics = json.loads((elsewhere / "airfoil" / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 15 and metrics["method"] == "supremix"
    assert (elsewhere / "airfoil" / "models" / "model.pt").is_file()
    assert package_files(wheel_env) == before, "the run wrote into the installed package"
