"""Tabular regression data (supremix_med.data.sources.tables) and the generated demo table (supremix_med.demo.table)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from monai.data import DataLoader

from supremix_med.demo.table import TABLE_FILE, generate_table, main, synthesize_table
from supremix_med.data.sources.tables import (
    AIRFOIL_COLUMNS, AIRFOIL_TARGET, PIPELINE, TABLE_INFO_FILE, FeatureScaler, TableDataset, TableInfo, load_table,
    prediction_records, preprocess, read_table,
)
from supremix_med.inference import check_fingerprint


@pytest.fixture(scope="module")
def demo_csv(tmp_path_factory) -> Path:
    """The default 1503-row demo table."""
    folder = tmp_path_factory.mktemp("demo_table")
    generate_table(folder)
    return folder / TABLE_FILE


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _small_csv(path: Path, n_rows: int = 40, seed: int = 1) -> Path:
    """A CSV with features a, b, a constant column c, and target y = a - 2 b."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(5.0, 2.0, n_rows), rng.uniform(0.0, 1.0, n_rows)
    pd.DataFrame({"a": a, "b": b, "c": 3.0, "y": a - 2 * b}).to_csv(path, index=False)
    return path


def test_read_airfoil_dat_names_columns(tmp_path):
    path = _write(tmp_path / "airfoil_self_noise.dat",
                  "800\t0\t0.3048\t71.3\t0.00266337\t126.201\n1000\t0\t0.3048\t71.3\t0.00266337\t125.201\n")
    table = read_table(path)
    assert tuple(table.columns) == AIRFOIL_COLUMNS
    assert table.shape == (2, 6)
    assert table["frequency"].tolist() == [800.0, 1000.0]
    assert table[AIRFOIL_TARGET].tolist() == [126.201, 125.201]


@pytest.mark.parametrize("text, expected", [
    ("1 2 3 4 5 6 7\n", "7 columns"),
    ("1 2 3 4 5 6\n1 2 3 4 5 6 7\n", "cannot be read"),
    ("", "empty"),
])
def test_read_airfoil_dat_rejects_other_layouts(tmp_path, text, expected):
    path = _write(tmp_path / "bad.dat", text)
    with pytest.raises(ValueError, match=expected) as error:
        read_table(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("cell, problem", [("abc", "'abc' is not a finite number"), ("", "is missing"),
                                           ("inf", "'inf' is not a finite number")])
def test_bad_cell_error_names_file_row_and_column(tmp_path, cell, problem):
    path = _write(tmp_path / "table.csv", f"x1,x2,y\n1,2,3\n4,5,6\n7,{cell},9\n10,oops,12\n")
    with pytest.raises(ValueError) as error:
        read_table(path, "y")
    message = str(error.value)
    assert message.startswith(f"{path}: row 3, column 'x2': {problem}")
    assert "2 unusable cell(s) in 2 row(s)" in message


def test_table_errors_name_the_file(tmp_path):
    path = _write(tmp_path / "table.csv", "x1,x2,y\n1,2,3\n")
    with pytest.raises(ValueError, match=r"no target column 'age'; the columns are \['x1', 'x2', 'y'\]"):
        read_table(path, "age")
    header_only = _write(tmp_path / "header.csv", "x1,y\n")
    with pytest.raises(ValueError, match="no data rows"):
        read_table(header_only, "y")
    target_only = _write(tmp_path / "target.csv", "y\n1\n")
    with pytest.raises(ValueError, match="feature columns"):
        read_table(target_only, "y")
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty.csv'}: the file is empty"):
        read_table(_write(tmp_path / "empty.csv", ""), "y")


def test_airfoil_sized_table_splits_1203_150_150(demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET, seed=0)
    assert table.split.value_counts().to_dict() == {"train": 1203, "val": 150, "test": 150}
    assert table.split.equals(load_table(demo_csv, AIRFOIL_TARGET, seed=0).split)
    assert not table.split.equals(load_table(demo_csv, AIRFOIL_TARGET, seed=1).split)
    assert table.in_features == 5 and table.feature_columns == AIRFOIL_COLUMNS[:5]


def test_other_tables_split_proportionally(tmp_path):
    table = load_table(_small_csv(tmp_path / "t.csv", n_rows=200), "y")
    assert table.split.value_counts().to_dict() == {"train": 160, "val": 20, "test": 20}


def test_too_small_table_is_refused(tmp_path):
    path = _small_csv(tmp_path / "tiny.csv", n_rows=5)
    with pytest.raises(ValueError, match=r"tiny.csv: 5 row\(s\) leave split\(s\) \['(val|test)'\] empty"):
        load_table(path, "y")


def test_scaler_is_fitted_on_the_training_rows_only(tmp_path, demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET)
    train = table.info.scaler.transform(table.rows("train"))
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    # changing the features of every held-out row leaves the split, the scaler and the label range as they were
    values = pd.read_csv(demo_csv)
    values.loc[(table.split != "train").to_numpy(), list(table.feature_columns)] *= 10.0
    values.to_csv(tmp_path / "changed.csv", index=False)
    changed = load_table(tmp_path / "changed.csv", AIRFOIL_TARGET)
    assert changed.split.equals(table.split)
    assert changed.info == table.info
    train_targets = table.rows("train")[AIRFOIL_TARGET]
    assert table.label_range == [train_targets.min(), train_targets.max()]


def test_constant_feature_is_centred_and_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="supremix_med.data.sources.tables"):
        table = load_table(_small_csv(tmp_path / "t.csv"), "y")
    assert table.info.scaler.constant == ("c",)
    assert "['c'] are constant" in caplog.text
    features = np.stack([r["features"] for r in table.records("val")])
    assert np.isfinite(features).all() and np.all(features[:, 2] == 0.0)


def test_dataset_items_collate_for_monai(demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET)
    dataset = TableDataset(table, "test")
    assert len(dataset) == 150
    np.testing.assert_array_equal(dataset.labels, table.labels("test"))
    assert dataset.ids == [str(i + 1) for i in table.rows("test").index]
    batch = next(iter(DataLoader(dataset, batch_size=8)))
    assert batch["features"].shape == (8, 5) and batch["label"].shape == (8, 1)
    assert str(batch["features"].dtype) == "torch.float32" and str(batch["label"].dtype) == "torch.float32"
    assert batch["id"] == dataset.ids[:8]
    image_keyed = TableDataset(table, "test", key="image")
    assert set(image_keyed[0]) == {"image", "label", "id"}
    with pytest.raises(ValueError, match="split must be one of"):
        table.rows("validation")


def test_table_info_round_trip(tmp_path, demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET)
    path = tmp_path / "models" / TABLE_INFO_FILE
    table.info.save(path)
    assert TableInfo.load(path) == table.info
    broken = _write(tmp_path / "broken.json", '{"pipeline": "t1", "params": {}}')
    with pytest.raises(ValueError, match=f"{broken}: not a table fingerprint"):
        TableInfo.load(broken)


def test_saved_table_is_an_inference_pipeline_fingerprint(tmp_path, demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET)
    path = tmp_path / TABLE_INFO_FILE
    table.info.save(path)
    params = table.info.params()
    assert check_fingerprint(path, PIPELINE, **params)["output"] == {"shape": [5], "dtype": "float32",
                                                                     "axes": "feature"}
    np.testing.assert_allclose(preprocess(demo_csv, **params), table.info.scaler.transform(table.values))
    shifted = dict(params, scaler=dict(params["scaler"], mean=[m + 1 for m in params["scaler"]["mean"]]))
    with pytest.raises(ValueError, match="differing: params.scaler.mean"):
        check_fingerprint(path, PIPELINE, **shifted)
    bad = _write(tmp_path / "bad.csv", "frequency,angle_of_attack,chord_length,free_stream_velocity,"
                                       "suction_side_displacement_thickness\n800,0,0.3,71.3,x\n")
    with pytest.raises(ValueError, match=r"bad.csv: row 1, column 'suction_side_displacement_thickness'"):
        preprocess(bad, **params)


def test_scaler_checks_its_arguments():
    with pytest.raises(ValueError, match="one length"):
        FeatureScaler(("a", "b"), (0.0,), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        FeatureScaler(("a",), (0.0,), (0.0,))
    with pytest.raises(ValueError, match=r"no column\(s\) \['b'\]"):
        FeatureScaler(("a", "b"), (0.0, 0.0), (1.0, 1.0)).transform(pd.DataFrame({"a": [1.0]}))


def test_prediction_records_apply_the_model_scaler_and_flag_bad_rows(tmp_path, demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET)
    new = pd.read_csv(demo_csv).head(4).drop(columns=AIRFOIL_TARGET).astype(object)
    new.loc[2, "chord_length"] = "n/a"
    path = tmp_path / "new.csv"
    new.assign(note="free text").to_csv(path, index=False)
    items = prediction_records(path, table.info)
    expected = table.info.scaler.transform(pd.read_csv(demo_csv).head(4))
    assert [i["id"] for i in items] == ["1", "2", "3", "4"]
    assert {i["path"] for i in items} == {str(path)}
    assert [i["error"] for i in items] == ["", "", f"{path}: row 3, column 'chord_length': 'n/a' is not a finite "
                                           "number", ""]
    np.testing.assert_allclose(np.stack([items[k]["features"] for k in (0, 1, 3)]), expected[[0, 1, 3]])
    assert np.all(items[2]["features"] == 0.0)
    assert all(np.isnan(i["label"]).all() for i in items)
    with pytest.raises(ValueError, match=r"no feature column\(s\) \['frequency', 'angle_of_attack',"):
        prediction_records(_write(tmp_path / "other.csv", "x,y\n1,2\n"), table.info)


def test_prediction_records_keep_known_targets(tmp_path, demo_csv):
    table = load_table(demo_csv, AIRFOIL_TARGET)
    info_path = tmp_path / TABLE_INFO_FILE
    table.info.save(info_path)
    items = prediction_records(demo_csv, info_path)
    truth = pd.read_csv(demo_csv)[AIRFOIL_TARGET].to_numpy(np.float32)
    np.testing.assert_array_equal(np.concatenate([i["label"] for i in items]), truth)


def test_demo_table_is_seeded_and_written_by_the_cli(tmp_path):
    main(["--output", str(tmp_path / "a"), "--n_rows", "300", "--seed", "3"])
    generate_table(tmp_path / "b", n_rows=300, seed=3)
    first = (tmp_path / "a" / TABLE_FILE).read_bytes()
    assert first == (tmp_path / "b" / TABLE_FILE).read_bytes()
    generate_table(tmp_path / "c", n_rows=300, seed=4)
    assert first != (tmp_path / "c" / TABLE_FILE).read_bytes()
    assert tuple(read_table(tmp_path / "a" / TABLE_FILE).columns) == AIRFOIL_COLUMNS
    with pytest.raises(ValueError, match="n_rows"):
        synthesize_table(0)


def test_demo_target_is_nonlinear_and_imbalanced():
    table = synthesize_table(1503, seed=0)
    y = table[AIRFOIL_TARGET].to_numpy()
    x = table[list(AIRFOIL_COLUMNS[:5])].to_numpy()
    x = (x - x.mean(axis=0)) / x.std(axis=0)

    def residual_variance(design: np.ndarray) -> float:
        design = np.column_stack([design, np.ones(len(y))])
        coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
        return float(np.var(y - design @ coefficients))

    linear, quadratic = residual_variance(x), residual_variance(np.column_stack([x, x ** 2]))
    assert linear < 0.5 * np.var(y)  # learnable from the features
    assert quadratic < 0.8 * linear  # ... but not linearly
    counts, _ = np.histogram(y, bins=10)
    assert counts.max() > 10 * min(counts[0], counts[-1])  # sparse tails: few-shot label ranges
