"""MONAI model-zoo's bundle checks, re-implemented for tests (the zoo's CI scripts cannot be fetched at test time).

What model-zoo's CI (``ci/verify_bundle.py``, the bundles' unit tests) checks of a bundle, and how it is
re-implemented here without network access:

- directory: ``configs/metadata.json``; the files of the layout; ``large_files.yml`` readable by MONAI's config
  parser, each entry with path, url, hash_val and hash_type. The zoo downloads every entry and checks its hash;
  offline, every entry must be present and match its sha256 instead.
- version: ``version`` is a key of ``changelog``.
- metadata: ``monai.bundle.verify_metadata`` against ``bundles/meta_schema.json``, the repository's schema
  written from the MONAI Bundle Specification's list of metadata fields. The official schema file the metadata's
  ``schema`` URL names is a release download that cannot be fetched at test time, so conformance to that exact
  file is not checked here.
- properties: a ``ConfigWorkflow`` of ``configs/train.json`` (``workflow_type="train"``) and of
  ``configs/inference.json`` (``"infer"``) initialises and ``check_properties()`` returns no missing property.
- data shape: ``monai.bundle.verify_net_in_out`` of ``network_def`` with the metadata's input shape.
- TorchScript: ``monai.bundle.ckpt_export`` of ``network_def`` with ``models/model.pt``, and the result loads.

Every check runs the way the zoo runs it: with ``bundle_root`` set to the bundle folder and the working directory
left alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.apps.utils import check_hash
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from _shipping import ROOT

SCHEMA = ROOT / "bundles" / "meta_schema.json"
#: The files every exported bundle holds.
LAYOUT = ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
          "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt",
          "LICENSE", "large_files.yml")
LARGE_FILE_KEYS = {"path", "url", "hash_val", "hash_type"}


def large_files(bundle: Path) -> list[dict]:
    """The entries of ``bundle/large_files.yml``, read as MONAI's ``download_large_files`` reads them."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "large_files.yml"))
    return parser.get()["large_files"]


def verify_directory(bundle: Path) -> None:
    """The zoo's directory check, offline: the layout's files, and every large file present with its hash."""
    missing = [name for name in LAYOUT if not (bundle / name).is_file()]
    assert missing == [], f"{bundle}: missing {missing}"
    for entry in large_files(bundle):
        assert set(entry) == LARGE_FILE_KEYS, entry
        path = bundle / entry["path"]
        assert path.is_file(), f"{bundle}: large file {entry['path']} is listed but absent"
        assert check_hash(str(path), entry["hash_val"], entry["hash_type"]), f"{path}: hash mismatch"


def verify_version(bundle: Path) -> None:
    meta = ConfigParser.load_config_file(str(bundle / "configs" / "metadata.json"))
    assert meta["version"] in meta["changelog"], f"{bundle}: version {meta['version']} not in the changelog"


def verify_metadata_format(bundle: Path) -> None:
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


def verify_properties(bundle: Path, workflow_type: str, config: str, **override) -> None:
    """Initialise the workflow of ``configs/<config>`` and check it has every required property."""
    configs = bundle / "configs"
    workflow = ConfigWorkflow(config_file=str(configs / config), meta_file=str(configs / "metadata.json"),
                              logging_file=str(configs / "logging.conf"), workflow_type=workflow_type,
                              bundle_root=str(bundle), **override)
    workflow.initialize()
    assert workflow.check_properties() == [], f"{bundle}/{config}: missing properties"


def verify_data_shape(bundle: Path, config: str = "inference.json", **override) -> None:
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / config), bundle_root=str(bundle), **override)


def verify_torchscript(bundle: Path, exported: Path, config: str = "inference.json",
                       ckpt_file: Path | None = None, **override) -> torch.jit.ScriptModule:
    """Export ``network_def`` with the checkpoint (default ``models/model.pt``) to TorchScript and load it back."""
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(ckpt_file or bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"), config_file=str(bundle / "configs" / config),
                bundle_root=str(bundle), **override)
    return torch.jit.load(str(exported))
