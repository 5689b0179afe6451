"""supremix_med.io: atomic writes leave either the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import json
import os

import pytest

from supremix_med.io import atomic_write, atomic_write_json, check_generator_record


def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json({"mae": 1.0}, path)

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"mae": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_write_gives_umask_permissions_not_private_ones(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_json({"a": 1}, tmp_path / "a.json", durable=True)
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_generator_record_resumes_same_parameters_and_refuses_others(tmp_path):
    record = tmp_path / "cohort.json"
    check_generator_record(record, {"seed": 0})
    check_generator_record(record, {"seed": 0})
    with pytest.raises(ValueError, match="records output generated with"):
        check_generator_record(record, {"seed": 1})
