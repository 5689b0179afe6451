"""supremix_med.compare: the method x seed grid (resumable, failure-tolerant), its statistics and its report."""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from conftest import BUNDLES
from supremix_med import compare
from supremix_med.compare import (CellRun, Row, bundle_command, bundle_methods, build_comparison, compare_methods,
                                  comparison_rows, paired_bootstrap, parse_variant, report_columns, resampled_metric,
                                  run_protocol, t_interval, write_comparison)
from supremix_med.metrics import REGRESSION_METRICS, regression_metrics

UKB = [str(BUNDLES / "ukb_brainage" / "train.json"), str(BUNDLES / "ukb_brainage" / "demo.json")]
AIRFOIL = [str(BUNDLES / "airfoil" / "train.json")]
AIRFOIL_TINY = {"pretrain_epochs": "1", "finetune_epochs": "2", "batch_size": "16", "num_workers": "0"}

# A stand-in for `python -m monai.bundle run` (standard library only, so it starts fast): records its arguments,
# fails for ConR, and writes predictions.csv for 12 test samples (6 many-, 4 medium-, 2 few-shot) whose errors
# shrink by method (SupReMix smallest) and change with the seed, with the metrics.json the bundles write for them.
# SupCon reports no shot groups; RnC and SupReMix report ordinality after both phases, Vanilla after fine-tuning;
# SupReMix states its protocol. `--linear_probe False` halves the errors and `--window W` scales them by W.
FAKE_BUNDLE = r'''
import json, math, sys
from pathlib import Path
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
method, seed = args["--method"], int(args["--seed"])
out = Path(args["--output_dir"])
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]))
with open(out.parent.parent / "calls.txt", "a") as calls:
    calls.write(f"{method}:{seed}\n")
print("training", method, "seed", seed)
if method == "conr":
    print("RuntimeError: out of memory", file=sys.stderr)
    sys.exit(3)
probe = args.get("--linear_probe", "True") != "False"
scale = {"vanilla": 1.0, "supcon": 0.9, "rnc": 0.8, "mixsupcon": 0.85, "supremix": 0.7}[method] * (1 + 0.1 * seed)
scale *= (1.0 if probe else 0.5) * float(args.get("--window", 1.0))
ids = [f"s{k:02d}" for k in range(12)]
target = [10.0 + 2.5 * k for k in range(12)]
shot = ["many"] * 6 + ["medium"] * 4 + ["few"] * 2
pred = [t + scale * ((7 * k + 3 * seed) % 5 - 1.7) for k, t in enumerate(target)]

def summary(rows):
    errors = [pred[k] - target[k] for k in rows]
    return {"mae": sum(map(abs, errors)) / len(rows), "mse": sum(e * e for e in errors) / len(rows),
            "gm": math.exp(sum(math.log(abs(e)) for e in errors) / len(rows)), "n": len(rows)}

def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))

def ranks(x):  # no ties here
    order = sorted(range(len(x)), key=x.__getitem__)
    return [order.index(k) for k in range(len(x))]

metrics = {"method": method, **summary(range(12)), "pearson_r": pearson(pred, target),
           "spearman_rho": pearson(ranks(pred), ranks(target)), "baseline_mae": 8.0, "linear_probe": probe}
if method != "supcon":
    metrics["shots"] = {g: summary([k for k in range(12) if shot[k] == g]) for g in ("many", "medium", "few")}
    metrics["shots"]["rule"] = {"bin_width": 1.0, "many": 100, "few": 20}
if method in ("rnc", "supremix"):  # keys sorted, as the bundles' metrics.json has them
    metrics["ordinality"] = {"finetuned": {"spearman": 0.6 - 0.1 * seed}, "pretrained": {"spearman": 0.5 + 0.1 * seed}}
elif method == "vanilla":  # no pre-training: no pre-trained encoder to score
    metrics["ordinality"] = {"finetuned": {"spearman": 0.3}, "pretrained": None}
if method == "supremix":
    metrics["protocol"] = f"pre-train, {'linear probe' if probe else 'fine-tune'} (stated)"
with open(out / "predictions.csv", "w") as csv:
    csv.write("id,age,predicted_age" + (",shot" if "shots" in metrics else "") + "\n")
    for k in range(12):
        csv.write(f"{ids[k]},{target[k]!r},{pred[k]!r}" + (f",{shot[k]}" if "shots" in metrics else "") + "\n")
(out / "metrics.json").write_text(json.dumps(metrics))
'''


@pytest.fixture
def fake_launcher(tmp_path) -> list[str]:
    script = tmp_path / "fake_bundle.py"
    script.write_text(FAKE_BUNDLE)
    return [sys.executable, "-S", str(script)]


def _calls(output_dir: Path) -> list[str]:
    return (output_dir / "calls.txt").read_text().split()


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (header first, the rule left out)."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|:") and not line.startswith("|-"):
                current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _rows(table: list[list[str]]) -> dict[str, dict[str, str]]:
    """``{first cell: {header: cell}}`` of a table's body rows."""
    header = table[0]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in table[1:]}


# ----------------------------------------------------------------------------------------------- the grid


def test_bundle_methods_follow_the_configured_losses(tmp_path):
    assert bundle_methods(UKB) == ("vanilla", "supcon", "rnc", "conr", "mixsupcon", "conr_regularizer", "supremix")
    overlay = tmp_path / "only_supremix.json"
    overlay.write_text(json.dumps({"loss_kwargs": {"supremix": {"temperature": 0.1}}}))
    assert bundle_methods([UKB[0], str(overlay)]) == ("vanilla", "supremix")
    overlay.write_text(json.dumps({"loss_kwargs#simcse": {}}))  # a sentence-pair bundle adds SimCSE
    assert bundle_methods([UKB[0], str(overlay)])[-2:] == ("simcse", "supremix")


def test_bundle_command_passes_the_config_list_seed_and_overrides():
    command = bundle_command(UKB, "rnc", "out/rnc/seed7", seed=7, overrides={"pretrain_epochs": "2"})
    assert command[:4] == [sys.executable, "-m", "monai.bundle", "run"]
    assert command[4:] == ["--config_file", repr([str(Path(f).resolve()) for f in UKB]), "--method", "rnc",
                           "--output_dir", str(Path("out/rnc/seed7").resolve()), "--seed", "7",
                           "--overwrite", "True", "--pretrain_epochs", "2"]


def test_every_method_runs_with_every_seed_and_the_same_budget(fake_launcher, tmp_path):
    out = tmp_path / "cmp"
    echo = io.StringIO()
    overrides = {"pretrain_epochs": "2", "dataset_dir": "/data"}
    runs = compare_methods(UKB, out, methods=["vanilla", "rnc", "supremix"], seeds=[5, 6], overrides=overrides,
                           launcher=fake_launcher, echo=echo)
    cells = [f"{r.method}:{r.seed}" for r in runs]
    assert cells == ["vanilla:5", "rnc:5", "supremix:5", "vanilla:6", "rnc:6", "supremix:6"]  # seed by seed
    assert _calls(out) == cells and all(r.status == "ran" for r in runs)
    for run in runs:
        assert run.output_dir == out / run.method / f"seed{run.seed}"
        argv = json.loads((run.output_dir / "argv.json").read_text())
        assert argv == bundle_command(UKB, run.method, run.output_dir, run.seed, overrides, launcher=())
        assert f"training {run.method} seed {run.seed}" in run.log.read_text()
        assert run.metrics["method"] == run.method
    assert "training supremix seed 6" in echo.getvalue()


def test_a_failing_cell_is_reported_and_the_others_still_run(fake_launcher, tmp_path):
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "conr", "supremix"], seeds=[0, 1],
                           launcher=fake_launcher)
    assert [r.status for r in runs] == ["ran", "failed", "ran"] * 2
    conr = runs[1]
    assert conr.returncode == 3 and conr.metrics is None and conr.error == "exit status 3"
    log = conr.log.read_text()
    assert log.startswith("$ ") and "--method conr" in log.splitlines()[0]
    assert "RuntimeError: out of memory" in log

    write_comparison(runs, tmp_path, UKB, resamples=100)
    markdown = (tmp_path / "comparison.md").read_text()
    summary = _rows(_tables(markdown)[0])
    assert list(summary) == ["Vanilla", "ConR", "SupReMix"]
    assert summary["ConR"]["Seeds"] == "0/2" and summary["ConR"]["MAE"] == "–" and summary["ConR"]["Protocol"] == "–"
    assert summary["SupReMix"]["Seeds"] == "2/2"
    assert f"- ConR seed 0: exit status 3; log `{conr.log}`" in markdown
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["cells"]["conr"]["1"]["status"] == "failed" and record["cells"]["conr"]["0"]["log"] == str(conr.log)
    assert record["summary"]["conr"]["MAE"] == {"mean": None, "sd": None, "n": 0, "values": {"0": None, "1": None}}
    assert record["versus_reference"]["conr"]["MAE"]["t_interval"]["n"] == 0
    assert record["versus_reference"]["supremix"]["MAE"]["t_interval"]["n"] == 2


def test_a_run_that_exits_zero_without_metrics_counts_as_failed(tmp_path):
    launcher = [sys.executable, "-c", "print('nothing written')"]
    (run,) = compare_methods(UKB, tmp_path, methods=["vanilla"], launcher=launcher)
    assert run.failed and "vanilla/seed0/metrics.json: not a readable metrics.json" in run.error


def test_a_launcher_that_cannot_start_is_a_failed_cell(tmp_path):
    (run,) = compare_methods(UKB, tmp_path, methods=["vanilla"], launcher=[str(tmp_path / "no_such_program")])
    assert run.failed and "could not start" in run.error


def test_finished_cells_are_not_run_again_unless_overwrite(fake_launcher, tmp_path):
    compare_methods(UKB, tmp_path, methods=["vanilla", "conr"], seeds=[0], launcher=fake_launcher)
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "conr", "rnc"], seeds=[0, 1], launcher=fake_launcher)
    assert [r.status for r in runs] == ["reused", "failed", "ran", "ran", "failed", "ran"]
    assert runs[0].metrics["method"] == "vanilla"
    assert _calls(tmp_path) == ["vanilla:0", "conr:0", "conr:0", "rnc:0", "vanilla:1", "conr:1", "rnc:1"]
    compare_methods(UKB, tmp_path, methods=["vanilla"], seeds=[1], overwrite=True, launcher=fake_launcher)
    assert _calls(tmp_path)[-1] == "vanilla:1"


def test_overwrite_clears_the_old_result_before_a_failing_rerun(tmp_path):
    (tmp_path / "vanilla" / "seed0").mkdir(parents=True)
    (tmp_path / "vanilla" / "seed0" / "metrics.json").write_text(json.dumps({"mae": 1.0}))
    (run,) = compare_methods(UKB, tmp_path, methods=["vanilla"], overwrite=True,
                             launcher=[sys.executable, "-c", "raise SystemExit(1)"])
    assert run.failed and not (tmp_path / "vanilla" / "seed0" / "metrics.json").exists()


def test_bad_requests_are_refused_before_anything_runs(fake_launcher, tmp_path):
    with pytest.raises(ValueError, match=r"\['simcse'\] are not configured.*supports \['vanilla'"):
        compare_methods(UKB, tmp_path, methods=["vanilla", "simcse"], launcher=fake_launcher)
    with pytest.raises(ValueError, match="may not set"):
        compare_methods(UKB, tmp_path, methods=["vanilla"], overrides={"output_dir": "x"}, launcher=fake_launcher)
    with pytest.raises(ValueError, match="each seed may be given once"):
        compare_methods(UKB, tmp_path, methods=["vanilla"], seeds=[1, 1], launcher=fake_launcher)
    with pytest.raises(ValueError, match="not found"):
        compare_methods([str(tmp_path / "train.json")], tmp_path)
    assert not (tmp_path / "calls.txt").exists()


# ------------------------------------------------------------------------------------------------ variants


def test_parse_variant():
    assert parse_variant("supremix_ft=supremix:linear_probe=False") == Row("supremix_ft", "supremix",
                                                                            {"linear_probe": "False"})
    assert parse_variant(" plain = rnc ") == Row("plain", "rnc", {})
    row = parse_variant("supremix_t0.1_w0.5=supremix:loss_kwargs#supremix#temperature=0.1,window=0.5")
    assert row.overrides == {"loss_kwargs#supremix#temperature": "0.1", "window": "0.5"}
    assert row.describe() == "--method supremix --loss_kwargs#supremix#temperature 0.1 --window 0.5"
    # commas inside a value stay in it: the list splits only where the next key= starts
    row = parse_variant("b=supremix:loss_kwargs#supremix#beta=[1.0,4.0],--lds={'kernel': 'laplace', 'sigma': 2}")
    assert row.overrides == {"loss_kwargs#supremix#beta": "[1.0,4.0]", "lds": "{'kernel': 'laplace', 'sigma': 2}"}
    for bad, problem in (("supremix", "NAME=METHOD"), ("=supremix", "NAME=METHOD"), ("a=", "NAME=METHOD"),
                         ("../x=supremix", "letters, digits"), ("a b=supremix", "letters, digits"),
                         ("x=supremix:linear_probe", "KEY=VALUE"), ("x=supremix:window=", "KEY=VALUE"),
                         ("x=supremix:window=1,window=2", "twice"), ("x=supremix:seed=3", "set by the comparison")):
        with pytest.raises(ValueError, match=problem):
            parse_variant(bad)


def test_comparison_rows_order_and_checks():
    probe, ft = Row("supremix_probe", "supremix", {"linear_probe": "True"}), Row("ft", "supremix", {"linear_probe": "False"})
    rows = comparison_rows(UKB, ["vanilla", "ft", "rnc"], [probe, ft])
    assert [r.name for r in rows] == ["vanilla", "ft", "rnc", "supremix_probe"]  # named ones placed, others after
    assert rows[0] == Row("vanilla", "vanilla") and rows[1] is ft
    assert [r.name for r in comparison_rows(UKB, None, [ft])][-2:] == ["supremix", "ft"]  # default: every method
    with pytest.raises(ValueError, match=r"named like methods.*rnc_probe"):
        comparison_rows(UKB, ["vanilla"], [Row("rnc", "rnc", {"linear_probe": "False"})])
    with pytest.raises(ValueError, match=r"\['simcse'\] are not configured.*variants: \['s'\]"):
        comparison_rows(UKB, ["vanilla"], [Row("s", "simcse")])
    with pytest.raises(ValueError, match="each variant may be given once"):
        comparison_rows(UKB, ["vanilla"], [ft, ft])
    with pytest.raises(ValueError, match="each method may be given once"):
        comparison_rows(UKB, ["vanilla", "ft", "ft"], [ft])
    with pytest.raises(ValueError, match="may not override"):
        comparison_rows(UKB, ["vanilla"], [Row("x", "rnc", {"output_dir": "y"})])


def test_a_grid_of_variants_runs_resumes_and_reports(fake_launcher, tmp_path):
    variants = [parse_variant("sm_ft=supremix:linear_probe=False"), parse_variant("sm_w2=supremix:window=2")]
    overrides = {"pretrain_epochs": "2", "linear_probe": "True"}
    runs = compare_methods(UKB, tmp_path, ["vanilla", "sm_ft", "supremix"], [0, 1], overrides, launcher=fake_launcher,
                           variants=variants)
    assert [(r.row, r.method, r.seed) for r in runs] == [
        (row, method, seed) for seed in (0, 1) for row, method in
        (("vanilla", "vanilla"), ("sm_ft", "supremix"), ("supremix", "supremix"), ("sm_w2", "supremix"))]
    assert _calls(tmp_path) == ["vanilla:0", "supremix:0", "supremix:0", "supremix:0",
                                "vanilla:1", "supremix:1", "supremix:1", "supremix:1"]
    ft = runs[1]
    assert ft.output_dir == tmp_path / "sm_ft" / "seed0" and ft.status == "ran"
    argv = json.loads((ft.output_dir / "argv.json").read_text())  # the row's value wins over the common one
    assert argv[argv.index("--linear_probe") + 1] == "False" and argv.count("--linear_probe") == 1
    assert argv[argv.index("--pretrain_epochs") + 1] == "2"
    assert json.loads((ft.output_dir / "cell.json").read_text()) == {
        "row": "sm_ft", "method": "supremix", "seed": 0, "overrides": {"pretrain_epochs": "2", "linear_probe": "False"}}
    assert ft.metrics["mae"] == pytest.approx(runs[2].metrics["mae"] / 2)

    comparison = write_comparison(runs, tmp_path, UKB, overrides, resamples=50, variants=variants)
    assert comparison.rows == ["vanilla", "sm_ft", "supremix", "sm_w2"]
    markdown = (tmp_path / "comparison.md").read_text()
    summary = _rows(_tables(markdown)[0])
    assert list(summary) == ["Vanilla", "sm_ft", "SupReMix", "sm_w2"]
    assert summary["sm_ft"]["Protocol"] == "pre-train, fine-tune (stated)"
    assert summary["sm_w2"]["Protocol"] == "pre-train, linear probe (stated)"
    assert ("Variants (their own arguments, after the overrides): sm_ft: `--method supremix --linear_probe False`; "
            "sm_w2: `--method supremix --window 2`.") in markdown
    def mae(row, seed):
        return json.loads((tmp_path / row / f"seed{seed}" / "metrics.json").read_text())["mae"]

    differences = [mae("sm_w2", s) - mae("vanilla", s) for s in (0, 1)]
    mae_rows = _rows(_tables(markdown)[1])
    assert mae_rows["sm_w2"]["Mean (seeds)"] == f"{statistics.mean(differences):+.3f} (2)"
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["variants"]["sm_w2"] == {"method": "supremix", "overrides": {"window": "2"}}
    assert record["rows"] == ["vanilla", "sm_ft", "supremix", "sm_w2"]  # the order its sorted objects lose
    assert record["cells"]["sm_ft"]["1"]["method"] == "supremix"
    assert record["versus_reference"]["sm_ft"]["MAE"]["bootstrap"]["1"]["n"] == 12

    # resumed: every cell reused; a changed variant definition makes its cells stale, and only those run again
    again = compare_methods(UKB, tmp_path, ["vanilla", "sm_ft", "supremix"], [0, 1], overrides,
                            launcher=fake_launcher, variants=variants)
    assert {r.status for r in again} == {"reused"} and len(_calls(tmp_path)) == 8
    changed = [variants[0], parse_variant("sm_w2=supremix:window=3")]
    again = compare_methods(UKB, tmp_path, ["vanilla", "sm_ft", "supremix"], [0, 1], overrides,
                            launcher=fake_launcher, variants=changed)
    assert [r.row for r in again if r.status == "ran"] == ["sm_w2", "sm_w2"]
    assert again[3].metrics["mae"] == pytest.approx(1.5 * runs[3].metrics["mae"])


# ------------------------------------------------------------------------------------------ the arithmetic


def test_t_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302653 (printed tables: 4.303), half-width 4.302653 / sqrt 3
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.estimate == 2.0 and interval.n == 3
    assert interval.low == pytest.approx(2 - 2.4841377, abs=1e-6) and interval.high == pytest.approx(4.4841377)
    # 90 %: t_{0.95, 3} = 2.353363; differences 0.5, -0.5, 1.5, 2.5: mean 1, sd sqrt(5/3)
    interval = t_interval([0.5, -0.5, 1.5, 2.5], confidence=0.90)
    assert interval.high - 1 == pytest.approx(2.353363 * math.sqrt(5 / 3) / 2, abs=1e-6)
    one = t_interval([0.7, math.nan])  # a seed where a run failed is left out
    assert one.estimate == 0.7 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    assert t_interval([]).n == 0 and math.isnan(t_interval([]).estimate)
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=95)


def test_resampled_metrics_match_the_library():
    rng = np.random.default_rng(1)
    target = np.round(rng.normal(size=9), 1)  # ties in the labels: Spearman's mean ranks matter
    pred = target + rng.normal(scale=0.5, size=9)
    pred[3] = target[3]  # one exact prediction: GM's floor matters
    indices = rng.integers(0, 9, size=(40, 9))
    indices[0] = 4  # a constant resample: the correlations are undefined
    for name, metric in REGRESSION_METRICS.items():
        expected = [metric(pred[row], target[row]) for row in indices]
        np.testing.assert_allclose(resampled_metric(name, pred, target, indices), expected, rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    assert math.isnan(resampled_metric("spearman_rho", pred, target, indices)[0])


def test_paired_bootstrap_against_an_independent_loop():
    rng = np.random.default_rng(2)
    target = rng.uniform(20, 80, size=25)
    reference, method = target + rng.normal(scale=5, size=25), target + rng.normal(scale=4, size=25)
    resamples, entropy = 300, (7, 2, 0)
    found = paired_bootstrap(reference, method, target, ["mae", "pearson_r"], resamples, entropy, 0.9)
    for name in ("mae", "pearson_r"):
        metric = REGRESSION_METRICS[name]
        differences = []
        for b in range(resamples):  # the documented draw: resample b from default_rng([*entropy, b])
            rows = np.random.default_rng([*entropy, b]).integers(0, 25, size=25)
            differences.append(metric(method[rows], target[rows]) - metric(reference[rows], target[rows]))
        low, high = np.percentile(differences, [5, 95])
        interval = found[name]
        assert interval.estimate == pytest.approx(metric(method, target) - metric(reference, target))
        assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
        assert interval.n == 25 and interval.confidence == 0.9
    again = paired_bootstrap(reference, method, target, ["mae"], resamples, entropy, 0.9)["mae"]
    assert again == found["mae"]  # seeded: the same interval every time
    identical = paired_bootstrap(reference, reference, target, ["mse"], 50)["mse"]
    assert identical.estimate == identical.low == identical.high == 0.0
    with pytest.raises(ValueError, match="one non-zero length"):
        paired_bootstrap(reference, method[:3], target, ["mae"])


# ---------------------------------------------------------------------------------------------- the report


def test_grid_report_means_intervals_and_layout(fake_launcher, tmp_path):
    seeds = [0, 1, 2]
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "supcon", "rnc", "supremix"], seeds=seeds,
                           launcher=fake_launcher)
    comparison = write_comparison(runs, tmp_path, UKB, overrides={"finetune_epochs": "3"}, resamples=200,
                                  bootstrap_seed=4)
    labels = [c.label for c in comparison.columns]
    assert labels == ["MAE", "MSE", "GM", "Pearson", "Spearman", "MAE many", "MAE medium", "MAE few", "GM many",
                      "GM medium", "GM few", "Ordinality pretrained", "Ordinality finetuned"]

    def value(method, seed, read=lambda m: m["mae"]):
        return read(json.loads((tmp_path / method / f"seed{seed}" / "metrics.json").read_text()))

    record = json.loads((tmp_path / "comparison.json").read_text())
    maes = [value("supremix", s) for s in seeds]
    assert record["summary"]["supremix"]["MAE"]["mean"] == pytest.approx(statistics.mean(maes))
    assert record["summary"]["supremix"]["MAE"]["sd"] == pytest.approx(statistics.stdev(maes))
    assert record["summary"]["supremix"]["MAE"]["values"] == {str(s): pytest.approx(v) for s, v in zip(seeds, maes)}
    differences = [value("supremix", s) - value("vanilla", s) for s in seeds]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(differences) / math.sqrt(3)
    versus = record["versus_reference"]["supremix"]["MAE"]
    assert versus["t_interval"]["estimate"] == pytest.approx(statistics.mean(differences))
    assert versus["t_interval"]["low"] == pytest.approx(statistics.mean(differences) - half)
    assert versus["t_interval"]["high"] == pytest.approx(statistics.mean(differences) + half)
    # RnC's fine-tuned ordinality is 0.6, 0.5, 0.4 against Vanilla's 0.3: differences 0.3, 0.2, 0.1 (sd 0.1),
    # half-width t_{0.975, 2} * 0.1 / sqrt 3 = 0.248414; over seeds only (nothing per test sample to resample)
    ordinality = record["versus_reference"]["rnc"]["Ordinality finetuned"]
    assert ordinality["t_interval"]["estimate"] == pytest.approx(0.2)
    assert ordinality["t_interval"]["high"] == pytest.approx(0.2 + 0.248414, abs=1e-6)
    assert ordinality["bootstrap"] == {}

    # the bootstrap of seed 1 on the many-shot samples (the first 6 ids), recomputed from the predictions files
    frames = {m: pd.read_csv(tmp_path / m / "seed1" / "predictions.csv") for m in ("vanilla", "supremix")}
    many = frames["vanilla"]["shot"] == "many"
    expected = paired_bootstrap(frames["vanilla"]["predicted_age"][many], frames["supremix"]["predicted_age"][many],
                                frames["vanilla"]["age"][many], ["mae"], 200, (4, 1, 1))["mae"]
    boot = versus["bootstrap"]
    assert boot["1"].keys() == {"estimate", "low", "high", "n", "confidence"}
    assert record["versus_reference"]["supremix"]["MAE many"]["bootstrap"]["1"]["low"] == pytest.approx(expected.low)
    assert boot["1"]["estimate"] == pytest.approx(differences[1])  # predictions.csv agrees with metrics.json
    assert boot["1"]["n"] == 12 and boot["1"]["low"] < boot["1"]["high"]
    assert record["versus_reference"]["supremix"]["GM few"]["bootstrap"]["0"]["n"] == 2
    supcon = record["versus_reference"]["supcon"]["MAE many"]  # SupCon's metrics.json has no shot groups,
    assert supcon["t_interval"]["n"] == 0 and supcon["bootstrap"]["0"]["n"] == 6  # its predictions pair by id
    assert record["best"]["MAE"] == ["supremix"] and record["best"]["Ordinality pretrained"] == ["rnc", "supremix"]
    assert record["seeds"] == seeds and record["bootstrap"] == {"resamples": 200, "seed": 4}

    markdown = (tmp_path / "comparison.md").read_text()
    tables = _tables(markdown)
    assert tables[0][0] == ["Method", "Protocol", "Seeds", *labels]
    summary = _rows(tables[0])
    assert summary["SupReMix"]["MAE"] == f"**{statistics.mean(maes):.3f} ± {statistics.stdev(maes):.3f}**"
    assert summary["Vanilla"]["Protocol"] == "end to end" and summary["RnC"]["Protocol"] == "pre-train, then linear probe"
    assert summary["SupReMix"]["Protocol"] == "pre-train, linear probe (stated)"
    assert summary["Vanilla"]["Ordinality pretrained"] == "–" and summary["SupCon"]["MAE many"] == "–"
    assert summary["Vanilla"]["Ordinality finetuned"] == "0.300 ± 0.000"
    mae = tables[1]
    assert mae[0] == ["Method", "Mean (seeds)", "95 % t-interval", "Seed 0 (95 % bootstrap)",
                      "Seed 1 (95 % bootstrap)", "Seed 2 (95 % bootstrap)"]
    row = _rows(mae)["SupReMix"]
    assert row["Mean (seeds)"] == f"{statistics.mean(differences):+.3f} (3)"
    assert row["95 % t-interval"] == f"[{statistics.mean(differences) - half:+.3f}, {statistics.mean(differences) + half:+.3f}]"
    assert row["Seed 1 (95 % bootstrap)"] == f"{differences[1]:+.3f} [{boot['1']['low']:+.3f}, {boot['1']['high']:+.3f}]"
    assert "### Ordinality finetuned" in markdown and "### Ordinality pretrained" not in markdown  # no reference
    assert "`--finetune_epochs 3`" in markdown
    assert "seeds 0, 1, 2" in markdown and "200 resamples, bootstrap seed 4" in markdown
    assert "MAE 8.000 on 12 test samples" in markdown
    assert ("Test samples per shot group (label bins of width 1.0: many > 100, few < 20 training samples): "
            "many 6, medium 4, few 2.") in markdown
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shot_bootstrap_needs_the_shot_column_and_is_noted(fake_launcher, tmp_path):
    runs = compare_methods(UKB, tmp_path, methods=["vanilla", "rnc"], launcher=fake_launcher)
    frame = pd.read_csv(runs[0].predictions)
    frame.drop(columns="shot").to_csv(runs[0].predictions, index=False)
    more = compare_methods(UKB, tmp_path, methods=["supremix"], launcher=fake_launcher)
    comparison = build_comparison([*runs, *more], resamples=20)
    assert "MAE" in comparison.bootstrap[("rnc", 0)] and "MAE many" not in comparison.bootstrap[("rnc", 0)]
    assert comparison.notes == ["Vanilla seed 0: predictions.csv has no 'shot' column, so the shot groups have no "
                                "bootstrap interval (their t-intervals over seeds stand)"]  # once, not per row
    frame.to_csv(runs[0].predictions, index=False)
    method = pd.read_csv(runs[1].predictions)
    method.iloc[1:].to_csv(runs[1].predictions, index=False)  # a sample missing: paired on the others, noted
    comparison = build_comparison(runs, resamples=20)
    assert comparison.bootstrap[("rnc", 0)]["MAE"].n == 11
    assert "RnC seed 0: paired by id on 11 test samples (the reference has 12, this run 11)" in comparison.notes
    method.iloc[:0].to_csv(runs[1].predictions, index=False)  # no sample id in common: noted, the report still stands
    comparison = build_comparison(runs, resamples=20)
    assert comparison.bootstrap == {} and "no sample id in common" in comparison.notes[0]
    assert comparison.versus[("rnc", "MAE")].n == 1
    method = method.astype({"predicted_age": object})
    for bad, problem in (("n/a", "1 row(s) without a finite label and prediction (e.g. id 's03')"),
                         ("abc", "a non-numeric label or prediction")):
        method.loc[3, "predicted_age"] = bad
        method.to_csv(runs[1].predictions, index=False)
        (note,) = build_comparison(runs, resamples=20).notes
        assert note.startswith(f"RnC seed 0: no bootstrap: {runs[1].predictions}: {problem}")
    runs[0].predictions.unlink()
    (note,) = build_comparison(runs, resamples=20).notes
    assert note.startswith(f"Vanilla seed 0: no bootstrap for this seed: {runs[0].predictions}: not a readable")


def test_protocol_defaults_and_stated():
    def cell(method, **metrics):
        return CellRun(method, 0, "ran", Path("x"), Path("x/run.log"), 0, {"mae": 1.0, **metrics})

    assert run_protocol(cell("vanilla", linear_probe=False)) == "end to end"
    assert run_protocol(cell("supremix", linear_probe=True)) == "pre-train, then linear probe"
    assert run_protocol(cell("supcon", linear_probe=False)) == "pre-train, then fine-tune"
    assert run_protocol(cell("conr")) == "joint pre-train (L1 + ConR), then fine-tune"
    assert run_protocol(cell("conr_regularizer")) == "end to end + conr regulariser"
    assert run_protocol(cell("conr", protocol="regulariser, end to end")) == "regulariser, end to end"


def test_columns_without_shots_or_ordinality_and_bad_shot_metrics():
    runs = [CellRun("vanilla", 0, "ran", Path("v"), Path("v/run.log"), 0, {"mae": 2.0, "mse": 4.0, "gm": 1.5})]
    assert [c.label for c in report_columns(runs)] == ["MAE", "MSE", "GM"]
    with pytest.raises(ValueError, match="unknown shot metric"):
        report_columns(runs, shot_metrics=("mea",))


def test_command_line(fake_launcher, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare.runs, "BUNDLE_LAUNCHER", tuple(fake_launcher))
    argv = ["--config_file", UKB[0], "--config_file", UKB[1], "--output_dir", str(tmp_path),
            "--methods", "vanilla,supremix", "--seeds", "3,4", "--bootstrap", "50", "--pretrain_epochs", "1",
            "--network_config#widen_factor=0.5"]
    assert compare.main(argv) == 0
    assert "training supremix seed 4" in capsys.readouterr().out  # the CLI streams the runs' output
    assert json.loads((tmp_path / "supremix" / "seed4" / "argv.json").read_text())[-8:] == [
        "--seed", "4", "--overwrite", "True", "--pretrain_epochs", "1", "--network_config#widen_factor", "0.5"]
    record = json.loads((tmp_path / "comparison.json").read_text())
    assert record["seeds"] == [3, 4] and record["bootstrap"]["resamples"] == 50
    assert compare.main([*argv[:6], "--methods", "conr"]) == 1
    variant = ["--methods", "vanilla,ft", "--variant", "ft=supremix:linear_probe=False,pretrain_epochs=3"]
    assert compare.main([*argv[:6], *variant]) == 0
    assert json.loads((tmp_path / "ft" / "seed0" / "argv.json").read_text())[-4:] == [
        "--linear_probe", "False", "--pretrain_epochs", "3"]
    assert json.loads((tmp_path / "comparison.json").read_text())["variants"] == {
        "ft": {"method": "supremix", "overrides": {"linear_probe": "False", "pretrain_epochs": "3"}}}
    for bad in (["--method", "rnc"], ["--pretrain_epochs"], ["stray"], ["--methods", "rnc", "--shot_metrics", "x"],
                ["--seeds", "0,a"], ["--seed", "1"], ["--bootstrap", "0"], ["--variant", "supremix"],
                ["--variant", "rnc=rnc:window=2"]):
        with pytest.raises(SystemExit) as exit_info:
            compare.main([*argv[:6], *bad])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be a bundle override" in err and "--seeds 0,1,2" in err and "comma-separated integers" in err


# ----------------------------------------------------------------------------------- real airfoil cells


@pytest.fixture(scope="module")
def airfoil_table(tmp_path_factory) -> Path:
    """The airfoil bundle's tiny demo table (150 rows, as in test_bundle_airfoil)."""
    from supremix_med.demo.table import TABLE_FILE, generate_table

    folder = tmp_path_factory.mktemp("airfoil_table")
    generate_table(folder, n_rows=150, seed=0)
    return folder / TABLE_FILE


def test_a_real_airfoil_cell_and_its_paired_bootstrap(airfoil_table, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny network: threads would only contend with other tests
    overrides = {"data_file": str(airfoil_table), **AIRFOIL_TINY}
    (run,) = compare_methods(AIRFOIL, tmp_path, methods=["supremix"], seeds=[1], overrides=overrides)
    assert run.status == "ran", run.log.read_text()[-3000:]
    assert run.metrics["method"] == "supremix" and run.metrics["pretrain_epochs"] == 1 and run.metrics["n"] == 15
    assert (run.output_dir / "models" / "pretrained_encoder.pt").is_file()
    # a reference cell of the same seed that predicts the test mean, written the way the bundles write theirs
    predictions = pd.read_csv(run.predictions)
    target, predicted = predictions.columns[1], predictions.columns[2]
    predictions[predicted] = predictions[target].mean() + np.linspace(-0.5, 0.5, len(predictions))
    reference = CellRun("vanilla", 1, "reused", tmp_path / "vanilla" / "seed1", tmp_path / "vanilla" / "run.log")
    reference.output_dir.mkdir(parents=True)
    predictions.iloc[::-1].to_csv(reference.predictions, index=False)  # row order does not matter: ids pair
    reference.metrics = regression_metrics(predictions[predicted], predictions[target])
    comparison = write_comparison([reference, run], tmp_path, AIRFOIL, overrides=overrides, resamples=100)
    boot = comparison.bootstrap[("supremix", 1)]
    for label, key in (("MAE", "mae"), ("Spearman", "spearman_rho")):
        assert boot[label].estimate == pytest.approx(run.metrics[key] - reference.metrics[key], abs=1e-5)
        assert boot[label].low <= boot[label].estimate <= boot[label].high and boot[label].n == 15
    assert (tmp_path / "comparison.png").is_file()


def test_a_real_airfoil_grid_of_methods_and_seeds_checked_by_hand(airfoil_table, tmp_path, monkeypatch):
    """Two methods x two seeds of the real airfoil bundle; the report's means, sd and t-interval (t_{0.975, 1} =
    12.706205) recomputed from the cells' own metrics.json, and each seed's bootstrap estimate equal to that seed's
    difference."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = {"data_file": str(airfoil_table), **AIRFOIL_TINY}
    runs = compare_methods(AIRFOIL, tmp_path, methods=["vanilla", "supremix"], seeds=[0, 1], overrides=overrides)
    assert sorted((r.method, r.seed, r.status) for r in runs) == [("supremix", 0, "ran"), ("supremix", 1, "ran"),
                                                                   ("vanilla", 0, "ran"), ("vanilla", 1, "ran")]
    write_comparison(runs, tmp_path, AIRFOIL, overrides=overrides, resamples=200)
    record = json.loads((tmp_path / "comparison.json").read_text())
    mae = {(r.method, r.seed): r.metrics["mae"] for r in runs}
    differences = [mae["supremix", s] - mae["vanilla", s] for s in (0, 1)]
    mean = (differences[0] + differences[1]) / 2
    sd = abs(differences[0] - differences[1]) / math.sqrt(2)  # the sd of two values
    half = 12.706205 * sd / math.sqrt(2)
    summary = record["summary"]["supremix"]["MAE"]
    assert summary["mean"] == pytest.approx((mae["supremix", 0] + mae["supremix", 1]) / 2)
    assert summary["sd"] == pytest.approx(abs(mae["supremix", 0] - mae["supremix", 1]) / math.sqrt(2))
    versus = record["versus_reference"]["supremix"]["MAE"]
    assert versus["t_interval"]["estimate"] == pytest.approx(mean) and versus["t_interval"]["n"] == 2
    assert versus["t_interval"]["low"] == pytest.approx(mean - half, abs=1e-6)
    assert versus["t_interval"]["high"] == pytest.approx(mean + half, abs=1e-6)
    for seed, difference in zip(("0", "1"), differences):
        boot = versus["bootstrap"][seed]
        assert boot["estimate"] == pytest.approx(difference, abs=1e-5) and boot["n"] == 15
        assert boot["low"] <= boot["estimate"] <= boot["high"]


def test_same_seed_gives_every_method_the_same_start(airfoil_table, tmp_path):
    """The paired design the compare docstring states: one seed, the same split, initial weights and
    fine-tuning batch order for every method (the loaders carry their own seeded generator)."""
    from monai.bundle import ConfigWorkflow

    starts = {}
    for method in ("vanilla", "supremix"):
        workflow = ConfigWorkflow(config_file=AIRFOIL, workflow_type="train", output_dir=str(tmp_path / method),
                                  method=method, seed=3, data_file=str(airfoil_table),
                                  **{k: int(v) for k, v in AIRFOIL_TINY.items()})
        workflow.initialize()
        parser = workflow.parser
        network = parser.get_parsed_content("network")
        weights = {k: v.clone() for k, v in network.state_dict().items()}
        if parser.get_parsed_content("pretrain#setup").epochs:
            parser.get_parsed_content("pretrain#trainer").run()
        first_batch = next(iter(parser.get_parsed_content("train#dataloader")))
        test_ids = list(parser.get_parsed_content("test#dataset").labels)
        starts[method] = weights, first_batch["label"], test_ids
    (w0, b0, t0), (w1, b1, t1) = starts["vanilla"], starts["supremix"]
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert torch.equal(b0, b1) and t0 == t1
