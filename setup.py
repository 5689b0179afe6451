"""Package layout of supremix-med; everything else is in pyproject.toml.

The bundle configs live at the repository's top level (``bundles/``: what users name in ``python -m monai.bundle
run --config_file bundles/<name>/train.json``). A build maps that folder into the package as
``supremix_med/resources/bundles`` (package data, nothing copied in the repository), where
``supremix_med.bundles.bundles_dir()`` finds it in an installed wheel. The folder keeps its name so that the
configs' MONAI macros (``%bundles/_base/train.json#...``) resolve from its parent, as they do from the repository
root.

Each folder under ``bundles/`` is declared as a (data-only) package of its own, as setuptools asks of every
directory shipped inside a package; ``BUNDLE_FILES`` are the file kinds a bundle folder holds (tests check that
every file under ``bundles/`` reaches the wheel).
"""

from setuptools import find_namespace_packages, find_packages, setup

#: The repository folder of the bundles, and the package it becomes in the wheel.
BUNDLES, BUNDLES_PACKAGE = "bundles", "supremix_med.resources.bundles"
#: The files a bundle folder ships: configs, metadata and schema, logging settings, READMEs, shipped data splits
#: and their licences.
BUNDLE_FILES = ["*.json", "*.conf", "*.md", "*.csv", "*.tsv", "LICENSE*"]

bundle_packages = [BUNDLES_PACKAGE] + [f"{BUNDLES_PACKAGE}.{name}" for name in find_namespace_packages(
    where=BUNDLES, exclude=["*__pycache__*"])]

setup(
    packages=find_packages(include=["supremix_med*", "preprocessing*"]) + bundle_packages,
    package_dir={BUNDLES_PACKAGE: BUNDLES},
    package_data={"supremix_med": ["py.typed"], **{package: BUNDLE_FILES for package in bundle_packages}},
)
