"""supremix_med.compare: one bundle run per method (resumable, failure-tolerant) and the comparison table."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLES
from supremix_med import compare
from supremix_med.compare import (MethodRun, best_methods, bundle_command, bundle_methods, compare_methods,
                                  comparison_table, write_comparison)

UKB = [str(BUNDLES / "ukb_brainage" / "train.json"), str(BUNDLES / "ukb_brainage" / "demo.json")]

# A stand-in for `python -m monai.bundle run`: records its arguments, fails for ConR, and writes a metrics.json
# whose MAE/GM depend on the method (SupReMix best overall, RnC best few-shot); only some methods report shots.
FAKE_BUNDLE = r'''
import json, sys
from pathlib import Path
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = Path(args["--output_dir"])
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
with open(out.parent / "calls.txt", "a") as calls:
    calls.write(args["--method"] + "\n")
print("training", args["--method"])
if args["--method"] == "conr":
    print("RuntimeError: out of memory", file=sys.stderr)
    sys.exit(3)
mae = {"vanilla": 5.0, "supcon": 4.5, "rnc": 4.2, "mixsupcon": 4.4, "supremix": 3.9}[args["--method"]]
metrics = {"method": args["--method"], "mae": mae, "mse": mae ** 2, "gm": mae - 1, "pearson_r": 1 - mae / 10,
           "spearman_rho": 0.5, "n": 40, "baseline_mae": 8.0}
if args["--method"] in ("rnc", "supremix"):
    few = 6.0 if args["--method"] == "rnc" else 7.0
    metrics["shots"] = {"many": {"mae": mae - 1, "gm": mae - 2, "n": 30}, "medium": {"mae": mae, "gm": 1.0, "n": 8},
                        "few": {"mae": few, "gm": None, "n": 2},
                        "rule": {"bin_width": 1.0, "many": 100, "few": 20}}
(out / "metrics.json").write_text(json.dumps(metrics))
'''


@pytest.fixture
def fake_launcher(tmp_path) -> list[str]:
    script = tmp_path / "fake_bundle.py"
    script.write_text(FAKE_BUNDLE)
    return [sys.executable, str(script)]


def _calls(output_dir: Path) -> list[str]:
    return (output_dir / "calls.txt").read_text().split()


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of the markdown table's body rows."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in cells}


def test_bundle_methods_follow_the_configured_losses(tmp_path):
    assert bundle_methods(UKB) == ("vanilla", "supcon", "rnc", "conr", "mixsupcon", "supremix")
    overlay = tmp_path / "only_supremix.json"
    overlay.write_text(json.dumps({"loss_kwargs": {"supremix": {"temperature": 0.1}}}))
    assert bundle_methods([UKB[0], str(overlay)]) == ("vanilla", "supremix")
    overlay.write_text(json.dumps({"loss_kwargs#simcse": {}}))  # a sentence-pair bundle adds SimCSE
    assert bundle_methods([UKB[0], str(overlay)])[-2:] == ("simcse", "supremix")


def test_bundle_command_passes_the_config_list_seed_and_overrides():
    command = bundle_command(UKB, "rnc", "out/rnc", seed=7, overrides={"pretrain_epochs": "2"})
    assert command[:4] == [sys.executable, "-m", "monai.bundle", "run"]
    assert command[4:] == ["--config_file", repr([str(Path(f).resolve()) for f in UKB]), "--method", "rnc",
                           "--output_dir", str(Path("out/rnc").resolve()), "--seed", "7", "--pretrain_epochs", "2"]


def test_every_method_runs_with_the_same_seed_and_budget(fake_launcher, tmp_path):
    out = tmp_path / "cmp"
    echo = io.StringIO()
    runs = compare_methods(UKB, out, seed=5, overrides={"pretrain_epochs": "2", "dataset_dir": "/data"},
                           launcher=fake_launcher, echo=echo)
    assert [r.method for r in runs] == ["vanilla", "supcon", "rnc", "conr", "mixsupcon", "supremix"]
    assert _calls(out) == [r.method for r in runs]
    for run in runs:
        argv = json.loads((out / run.method / "argv.json").read_text())
        assert argv == bundle_command(UKB, run.method, out / run.method, 5,
                                      {"pretrain_epochs": "2", "dataset_dir": "/data"}, launcher=())
        assert f"training {run.method}" in (out / run.method / "run.log").read_text()
    assert "training supremix" in echo.getvalue()


def test_a_failing_method_is_reported_and_the_others_still_run(fake_launcher, tmp_path):
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "conr", "supremix"], launcher=fake_launcher)
    assert [r.status for r in runs] == ["ran", "failed", "ran"]
    conr = runs[1]
    assert conr.returncode == 3 and conr.metrics is None and conr.error == "exit status 3"
    log = conr.log.read_text()
    assert log.startswith("$ ") and "--method conr" in log.splitlines()[0]
    assert "RuntimeError: out of memory" in log

    write_comparison(runs, tmp_path, UKB)
    markdown = (tmp_path / "comparison.md").read_text()
    rows = _table_rows(markdown)
    assert list(rows) == ["Vanilla", "ConR (failed)", "SupReMix"]
    assert set(rows["ConR (failed)"]) == {"–"}
    assert f"- ConR: exit status 3; log `{conr.log}`" in markdown
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["runs"]["conr"]["status"] == "failed" and record["runs"]["conr"]["log"] == str(conr.log)
    assert record["table"]["conr"]["MAE"] is None


def test_a_run_that_exits_zero_without_metrics_counts_as_failed(tmp_path):
    launcher = [sys.executable, "-c", "print('nothing written')"]
    (run,) = compare_methods(UKB, tmp_path, methods=["vanilla"], launcher=launcher)
    assert run.failed and "vanilla/metrics.json: not a readable metrics.json" in run.error


def test_finished_methods_are_not_run_again_unless_overwrite(fake_launcher, tmp_path):
    compare_methods(UKB, tmp_path, methods=["vanilla", "conr"], launcher=fake_launcher)
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "conr", "rnc"], launcher=fake_launcher)
    assert [r.status for r in runs] == ["reused", "failed", "ran"]
    assert runs[0].metrics["mae"] == 5.0
    assert _calls(tmp_path) == ["vanilla", "conr", "conr", "rnc"]
    compare_methods(UKB, tmp_path, methods=["vanilla"], overwrite=True, launcher=fake_launcher)
    assert _calls(tmp_path)[-1] == "vanilla"


def test_overwrite_clears_the_old_result_before_a_failing_rerun(tmp_path):
    (tmp_path / "vanilla").mkdir()
    (tmp_path / "vanilla" / "metrics.json").write_text(json.dumps({"mae": 1.0}))
    (run,) = compare_methods(UKB, tmp_path, methods=["vanilla"], overwrite=True,
                             launcher=[sys.executable, "-c", "raise SystemExit(1)"])
    assert run.failed and not (tmp_path / "vanilla" / "metrics.json").exists()


def test_table_layout_bold_best_and_shot_columns(fake_launcher, tmp_path):
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "rnc", "supremix"], launcher=fake_launcher)
    table = comparison_table(runs, shot_metrics=("mae", "gm"))
    assert list(table.index) == ["Vanilla", "RnC", "SupReMix"]
    assert list(table.columns) == [("mae", "all"), ("mse", "all"), ("gm", "all"), ("pearson_r", "all"),
                                   ("spearman_rho", "all"), ("mae", "many"), ("mae", "medium"), ("mae", "few"),
                                   ("gm", "many"), ("gm", "medium")]
    assert np.isnan(table.loc["Vanilla", ("mae", "few")]) and table.loc["RnC", ("mae", "few")] == 6.0
    best = best_methods(table)
    assert best[("mae", "all")] == ["SupReMix"] and best[("pearson_r", "all")] == ["SupReMix"]
    assert best[("mae", "few")] == ["RnC"] and best[("spearman_rho", "all")] == ["Vanilla", "RnC", "SupReMix"]
    assert ("gm", "few") not in table.columns  # no method has a value

    write_comparison(runs, tmp_path, UKB, seed=0, overrides={"finetune_epochs": "3"})
    markdown = (tmp_path / "comparison.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method", "MAE", "MSE", "GM", "Pearson", "Spearman", "MAE many", "MAE medium", "MAE few",
        "GM many", "GM medium"]
    rows = _table_rows(markdown)
    assert rows["SupReMix"][:2] == ["**3.900**", "**15.210**"] and rows["Vanilla"][0] == "5.000"
    assert rows["RnC"][7] == "**6.000**" and rows["Vanilla"][7] == "–"
    assert "`--finetune_epochs 3`" in markdown and "MAE 8.000 on 40 test samples" in markdown
    assert ("Test samples per shot group (label bins of width 1.0: many > 100, few < 20 training samples): "
            "many 30, medium 8, few 2.") in markdown
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["table"]["rnc"]["MAE few"] == 6.0 and record["best"]["MAE"] == ["SupReMix"]
    assert record["runs"]["supremix"]["metrics"]["shots"]["few"]["n"] == 2


def test_table_without_shot_metrics_has_only_overall_columns():
    runs = [MethodRun("vanilla", "ran", Path("v"), Path("v/run.log"), 0, {"mae": 2.0, "mse": 4.0, "gm": 1.5})]
    table = comparison_table(runs)
    assert [metric for metric, _ in table.columns] == ["mae", "mse", "gm"]
    with pytest.raises(ValueError, match="unknown shot metric"):
        comparison_table(runs, shot_metrics=("mea",))


def test_bad_requests_are_refused_before_anything_runs(fake_launcher, tmp_path):
    with pytest.raises(ValueError, match=r"\['simcse'\] are not configured.*supports \['vanilla'"):
        compare_methods(UKB, tmp_path, methods=["vanilla", "simcse"], launcher=fake_launcher)
    with pytest.raises(ValueError, match="may not set"):
        compare_methods(UKB, tmp_path, methods=["vanilla"], overrides={"output_dir": "x"}, launcher=fake_launcher)
    with pytest.raises(ValueError, match="not found"):
        compare_methods([str(tmp_path / "train.json")], tmp_path)
    assert not (tmp_path / "calls.txt").exists()


def test_command_line(fake_launcher, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "BUNDLE_LAUNCHER", tuple(fake_launcher))
    argv = ["--config_file", UKB[0], "--config_file", UKB[1], "--output_dir", str(tmp_path),
            "--methods", "vanilla,supremix", "--seed", "3", "--pretrain_epochs", "1",
            "--network_config#widen_factor=0.5"]
    assert compare.main(argv) == 0
    assert "training supremix" in capsys.readouterr().out  # the CLI streams the runs' output
    assert json.loads((tmp_path / "supremix" / "argv.json").read_text())[-6:] == [
        "--seed", "3", "--pretrain_epochs", "1", "--network_config#widen_factor", "0.5"]
    assert list(_table_rows((tmp_path / "comparison.md").read_text())) == ["Vanilla", "SupReMix"]
    assert compare.main([*argv[:6], "--methods", "conr"]) == 1
    for bad in (["--method", "rnc"], ["--pretrain_epochs"], ["stray"], ["--methods", "rnc", "--shot_metrics", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            compare.main([*argv[:6], *bad])
        assert exit_info.value.code == 2
    assert "cannot be a bundle override" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_random_cache(tmp_path_factory) -> Path:
    """12 random (1, 16, 16, 16) 'scans' whose intensity grows with age, cached as the ukb bundle reads them."""
    from supremix_med.data.cache import build_cache

    folder = tmp_path_factory.mktemp("compare_cache")
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 2):
        age = 45.0 + 3 * i
        path = folder / f"s{i}.npy"
        np.save(path, (rng.normal(size=(1, 16, 16, 16)) + (age - 60) / 10).astype(np.float32))
        rows.append({"id": f"s{i}", "path": str(path), "age": age, "split": split})
    build_cache(pd.DataFrame(rows), folder / "cache", preprocess=np.load, fingerprint={"pipeline": "random"},
                progress=False)
    return folder / "cache"


def test_a_real_run_of_the_ukb_bundle(tiny_random_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny network: threads would only contend with other tests
    overrides = {"dataset_dir": str(tiny_random_cache), "pretrain_epochs": "1", "finetune_epochs": "1",
                 "batch_size": "4", "num_workers": "0"}
    (run,) = compare_methods(UKB, tmp_path, methods=["supremix"], seed=1, overrides=overrides)
    assert run.status == "ran", run.log.read_text()[-3000:]
    assert run.metrics["method"] == "supremix" and run.metrics["pretrain_epochs"] == 1 and run.metrics["n"] == 2
    assert (tmp_path / "supremix" / "models" / "pretrained_encoder.pt").is_file()
    table = write_comparison([run], tmp_path, UKB, seed=1, overrides=overrides)
    assert table.notna().all().all() and list(table.index) == ["SupReMix"]
