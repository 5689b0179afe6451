"""supremix_med.demo: every bundle's demo is a list of runnable steps ending in the bundle run."""

import importlib.util

import pytest

from supremix_med.demo import DEMOS, demo_commands, main
from supremix_med.bundles import bundle_names


@pytest.mark.parametrize("bundle", bundle_names())
def test_every_bundle_has_a_demo_of_existing_modules(bundle, tmp_path):
    commands = demo_commands(bundle, tmp_path)
    for command in commands[:-1]:
        assert command[1] == "-m" and importlib.util.find_spec(command[2]) is not None, command
        assert str(tmp_path) in " ".join(command), "every demo step writes under the output folder"
    run = commands[-1]
    assert run[2:5] == ["monai.bundle", "run", "--config_file"]
    assert run[run.index("--output_dir") + 1] == str(tmp_path)
    assert run[run.index("--dataset_dir") + 1] == DEMOS[bundle].dataset_dir.format(out=tmp_path)
    assert f"{bundle}/demo.json" in run[5]


def test_dry_run_prints_without_running(tmp_path, capsys):
    assert main(["airfoil", "--output", str(tmp_path), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "supremix_med.demo.table" in printed and "monai.bundle run" in printed
    assert not any(tmp_path.iterdir())


def test_bundle_without_demo_is_named(monkeypatch):
    monkeypatch.delitem(DEMOS, "airfoil")
    with pytest.raises(ValueError, match="'airfoil' has no demo; demos exist for"):
        demo_commands("airfoil", "out")
