#!/usr/bin/env python3
"""Pin the tested environment: write ``constraints.txt``, the exact version of every package supremix-med needs.

Run it with the interpreter of the environment the tests passed in; ``make constraints`` installs every runtime
extra into ``.venv`` and runs it there::

    python docker/pin_constraints.py                # rewrite constraints.txt
    python docker/pin_constraints.py --check        # exit 1 (with a diff) when constraints.txt is stale
    python docker/pin_constraints.py --list-extras  # the extras it pins, comma-separated (for pip install)

What is pinned: the requirements of ``pyproject.toml``'s ``[project] dependencies`` and of every
optional-dependency group except ``dev``, followed transitively through the installed distributions' metadata,
with environment markers evaluated for this interpreter and platform. ``torch`` is pinned by its public version
(``2.13.0``, never ``2.13.0+cpu``), so the CPU wheel, a CUDA wheel and the container's base image all satisfy
the pin; what only torch needs (CUDA libraries, triton, sympy, ...) is left to whichever torch build is
installed, which is why torch's own requirements are not followed.

Who reads the file: the Makefile and docker/Dockerfile install with ``--constraint constraints.txt``, and
tests/test_constraints.py checks it against pyproject.toml's ranges, this environment and every bundle's
metadata.json.
"""

from __future__ import annotations

import argparse
import difflib
import platform
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
# Optional-dependency groups that are tools for developers, not something a run needs.
UNPINNED_GROUPS = frozenset({"dev"})
# Pinned, but their own requirements are not followed: the installed build (CPU, CUDA x.y) decides them.
LEAVES = frozenset({canonicalize_name("torch")})

# (version, Requires-Dist lines) of an installed distribution; raises PackageNotFoundError when absent.
Lookup = Callable[[str], tuple[str, list[str]]]


def installed(name: str) -> tuple[str, list[str]]:
    """Version and ``Requires-Dist`` lines of the distribution ``name`` installed in this environment."""
    distribution = metadata.distribution(name)
    return distribution.version, list(distribution.requires or [])


def read_project(pyproject: Path = PYPROJECT) -> dict:
    """The ``[project]`` table of ``pyproject``."""
    with pyproject.open("rb") as file:
        return tomllib.load(file)["project"]


def runtime_extras(project: Mapping) -> list[str]:
    """The optional-dependency groups a run may need (every group but the developer tools), sorted."""
    return sorted(set(project.get("optional-dependencies", {})) - UNPINNED_GROUPS)


def applies(requirement: Requirement, extra: str = "") -> bool:
    """Whether ``requirement``'s marker holds here when the dependent was installed with ``extra``."""
    return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def project_requirements(project: Mapping, extras: Iterable[str]) -> list[Requirement]:
    """The project's own requirements with ``extras``; a group naming the project (``pkg[x]``) pulls group x in.

    Raises ``ValueError`` for an extra that pyproject.toml does not define.
    """
    name = canonicalize_name(project["name"])
    groups = project.get("optional-dependencies", {})
    requirements: list[Requirement] = []
    pending: list[str | None] = [None, *extras]
    seen: set[str | None] = set()
    while pending:
        group = pending.pop()
        if group in seen:
            continue
        seen.add(group)
        if group is not None and group not in groups:
            raise ValueError(f"pyproject.toml: no optional-dependencies group {group!r}")
        for line in project["dependencies"] if group is None else groups[group]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == name:
                pending.extend(requirement.extras)
            elif applies(requirement):
                requirements.append(requirement)
    return requirements


def pin_closure(requirements: Iterable[Requirement], lookup: Lookup = installed) -> dict[NormalizedName, str]:
    """``{canonical name: public version}`` of ``requirements`` and everything they need, as installed.

    Follows each distribution's requirements for the extras asked of it, evaluating markers for this
    interpreter; does not follow the requirements of :data:`LEAVES`. Raises ``ValueError`` naming the package
    and who needs it when a requirement is not installed or its installed version is outside the range asked.
    """
    pins: dict[NormalizedName, str] = {}
    followed: dict[NormalizedName, set[str]] = {}
    pending = [(requirement, "pyproject.toml") for requirement in requirements]
    while pending:
        requirement, needed_by = pending.pop()
        name = canonicalize_name(requirement.name)
        try:
            version_text, requires = lookup(name)
        except metadata.PackageNotFoundError:
            raise ValueError(f"{requirement} (needed by {needed_by}) is not installed in this environment") from None
        version = Version(version_text)
        if not requirement.specifier.contains(version, prereleases=True):
            raise ValueError(f"{name} {version} is installed, but {needed_by} needs {requirement}")
        pins[name] = version.public
        if name in LEAVES:
            continue
        extras = ({""} | set(requirement.extras)) - followed.setdefault(name, set())
        followed[name] |= extras
        for line in requires:
            dependency = Requirement(line)
            if any(applies(dependency, extra) for extra in extras):
                pending.append((dependency, f"{name} {version}"))
    return pins


def render(pins: Mapping[str, str], extras: Iterable[str]) -> str:
    """The text of constraints.txt: a header saying where the pins come from, then ``name==version`` lines."""
    header = [
        "# Exact versions of everything supremix-med needs at run time (extras: "
        f"{', '.join(extras) or 'none'}),",
        "# taken from the environment its tests passed in: "
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}.",
        "# Regenerate with `make constraints` (docker/pin_constraints.py); do not edit by hand.",
        "# Use: pip install --constraint constraints.txt '.[mlflow]'. torch is pinned by its public version,",
        "# so the CPU wheel, any CUDA wheel and the container's base image of that version all satisfy it.",
    ]
    return "\n".join([*header, *(f"{name}=={pins[name]}" for name in sorted(pins))]) + "\n"


def read_constraints(path: Path = CONSTRAINTS) -> dict[NormalizedName, str]:
    """``{canonical name: version}`` of a constraints file of ``name==version`` lines (comments allowed)."""
    pins: dict[NormalizedName, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        if not separator or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: expected 'name==version', got {line!r}")
        pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=CONSTRAINTS, help="the constraints file (default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    mode.add_argument("--list-extras", action="store_true", help="print the pinned extras, comma-separated")
    args = parser.parse_args(argv)

    project = read_project()
    extras = runtime_extras(project)
    if args.list_extras:
        print(",".join(extras))
        return 0
    try:
        text = render(pin_closure(project_requirements(project, extras)), extras)
    except ValueError as error:
        print(f"pin_constraints: {error}; install the project with '.[{','.join(extras)}]' first", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.output),
                                         "this environment", lineterm=""))
        print("\n".join(diff) or f"{args.output} matches this environment")
        return 1 if diff else 0
    args.output.write_text(text)
    print(f"wrote {args.output}: {text.count('==')} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
