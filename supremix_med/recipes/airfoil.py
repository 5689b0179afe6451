"""``bundles/airfoil``: a continuous target from the numeric features of a table, an MLP d-20-30-10.

Data (no cache): UCI Airfoil Self-Noise, ``<dataset_dir>/airfoil_self_noise.dat`` (5 features -> the scaled sound
pressure level, dB), or any numeric CSV through ``data_file`` + ``target_column`` (features = the other
columns), read by :func:`supremix_med.data.sources.tables.load_table`: a seeded split stratified by the target
(1203/150/150 rows for the airfoil table, the same fractions otherwise) and features standardised with the
training split's mean and std. Items carry the feature vector [d] under ``"image"`` (the recipe's input key).
The paper's settings: SupReMix with temperature 1.0 and window 7 (label units), batch 32, one view per sample
(no augmentation), linear probe. ``label_range`` and the MLP's ``in_features`` come from the training data.

``train.json`` stores the target name, training label range and scaler beside the model as the fingerprint of
the ``supremix_med.data.sources.tables`` pipeline (``models/preprocessing.json``); inference checks it against this
code's pipeline, standardises a CSV (or ``.dat``) of feature rows with it and writes ``predictions.csv`` with an
``error`` column naming the file, row and column of every unusable row.
"""

from supremix_med.recipes import split_datasets

_TABLE_FILE = "$@dataset_dir + '/airfoil_self_noise.dat'"

TRAIN = {
    "dataset_dir": "/data/airfoil",
    "data_file": _TABLE_FILE,
    "target_column": "scaled_sound_pressure",
    "target": "@target_column",
    "table": {
        "_target_": "supremix_med.data.sources.tables.load_table",
        "data_file": "@data_file",
        "target_column": "@target_column",
        "seed": "@seed",
    },
    "label_range": "$@table.label_range",
    "batch_size": 32,
    "num_workers": 0,  # rows are in memory: worker processes would only add start-up time
    "linear_probe": True,
    # 1-dB bins; the 1203 training rows spread over ~40 dB, so the shot thresholds are the DIR ones scaled down
    "shots": {"bin_width": 1.0, "many": 40, "few": 10},
    "network_config": {
        "encoder": "mlp",
        "in_features": "$@table.in_features",
        "hidden": [20, 30, 10],
        "projection_dim": 128,
        "n_targets": 1,
    },
    "pretrain#view_keys": ["image"],
    "pretrain#loss_kwargs#supremix#temperature": 1.0,
    "pretrain#loss_kwargs#supremix#window": 7.0,
    **split_datasets({"_target_": "supremix_med.data.sources.tables.TableDataset", "table": "@table", "key": "image"}),
    "data_fingerprint": "$@table.info.fingerprint()",
}

INFERENCE = {
    "dataset_dir": "/data/airfoil",
    "data_file": _TABLE_FILE,
    "pipeline": "tables",
    "model_table": "$@ckpt_dir + '/preprocessing.json'",
    "preprocessing_params": "$monai.bundle.ConfigParser.load_config_file(@model_table)['params']",
    "target": "$@preprocessing_params['target']",
    "gap_name": None,
    "label_range": "$@preprocessing_params['label_range']",
    "batch_size": 256,
    "num_workers": 0,
    "preprocessing": {"_target_": "Compose", "transforms": []},
    "dataset": {
        "_target_": "Dataset",
        "data": {
            "_target_": "supremix_med.data.sources.tables.prediction_records",
            "data_file": "@data_file",
            "info": "@model_table",
            "key": "image",
        },
        "transform": "@preprocessing",
    },
    "writer#bias_correction": None,
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/airfoil_demo",
        "data_file": "$@dataset_dir + '/demo_table.csv'",
        "output_dir": "outputs/airfoil_demo/run",
        "pretrain_epochs": 30,
        "finetune_epochs": 60,
    },
}
