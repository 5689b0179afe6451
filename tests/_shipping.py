"""Helpers of the shipping tests: the constraints script, the linters, and the wheel installed outside the repo."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
# Top-level entries of a checkout that are local state, not source (.gitignore and .dockerignore list them).
LOCAL_STATE = frozenset({".git", ".venv", "outputs", "build", "dist", "data", "cache", ".cache", "mlruns", "runs",
                         ".pytest_cache", ".mypy_cache"})


@functools.cache
def pin_constraints() -> ModuleType:
    """``docker/pin_constraints.py`` (a script, not a package module) loaded as a module."""
    spec = importlib.util.spec_from_file_location("pin_constraints", ROOT / "docker" / "pin_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_tool(name: str) -> str | None:
    """The executable ``name`` on PATH or beside this interpreter (``.venv/bin`` when the venv is not active)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if os.access(beside, os.X_OK) else None)


def clean_environ() -> dict[str, str]:
    """This process's environment without the variables that would point Python at the checkout."""
    return {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}


def _copy_source(destination: Path) -> Path:
    """Copy the checkout without its local state (virtual environments, outputs, build folders, caches)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == ROOT
        return {name for name in names
                if (top and name in LOCAL_STATE) or name == "__pycache__" or name.endswith(".egg-info")}

    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def build_wheel(work_dir: Path) -> Path:
    """Build the project's wheel from a copy of the checkout (the checkout itself gets no build/ or egg-info).

    Uses this environment's setuptools (no build isolation), so nothing is downloaded. Returns the wheel path.
    """
    source = _copy_source(work_dir / "source")
    wheels = work_dir / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, env=clean_environ(), timeout=300)
    (wheel,) = wheels.glob("supremix_med-*.whl")
    return wheel


def wheel_files(wheel: Path) -> set[str]:
    """The paths inside ``wheel``."""
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@dataclass(frozen=True)
class WheelEnv:
    """A fresh virtual environment outside the repository with the project's wheel installed.

    Its own site-packages holds only the wheel; the dependencies come from this test run's environment, whose
    site-packages directories a ``.pth`` file appends to its path, so nothing is downloaded. Only plain paths are
    appended (``.pth`` files in them are not run), so an editable install of the checkout stays invisible.
    """

    root: Path
    python: Path
    site_packages: Path

    @classmethod
    def create(cls, root: Path, wheel: Path) -> WheelEnv:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
        python = root / "bin" / "python"
        site_packages = Path(subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, env=clean_environ()).stdout.strip())
        parents = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        (site_packages / "_test_run_dependencies.pth").write_text("".join(f"{path}\n" for path in parents))
        # --no-deps: the dependencies are this run's (tests check the wheel's requirements against them).
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                        "--no-index", "--force-reinstall", str(wheel)],
                       check=True, env=clean_environ(), cwd=root, timeout=300)
        return cls(root, python, site_packages)

    def run(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``python args`` of this environment in ``cwd`` with no PYTHONPATH (never the checkout)."""
        return subprocess.run([str(self.python), *args], cwd=cwd, env=clean_environ(), capture_output=True,
                              text=True, timeout=timeout)
