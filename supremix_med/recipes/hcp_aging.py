"""``bundles/hcp_aging``: age (years) from resting-state fMRI, a 1D ResNet-18 over parcel time series [400, T].

Cache: ``python -m preprocessing.fmri`` (4-D NIfTI runs + a Schaefer 400 atlas, or series already extracted by
the CBIG/HCP pipelines as .npy/.csv/.txt/.mat) -> float32 [400, frames] per run; a ``subject`` column keeps the
runs of one subject in one split. Training (pre-training views and fine-tuning) sees random windows of
``window_frames`` frames (MONAI ``RandSpatialCropd`` over time); validation and test predict every window of a
run (``WindowAveragingInferer``) and average the runs of a subject (``SubjectAveragingCollector``), so metrics,
``predictions.csv`` and the brain-age bias correction are per subject. Inference runs the same pipeline on new
runs and writes one row per run.
"""

#: Windows: training crops ``window_frames`` consecutive frames; evaluation averages windows ``window_stride`` apart.
_WINDOWS = {"window_frames": 128, "window_stride": 64}
_WINDOW_INFERER = {
    "_target_": "supremix_med.engines.WindowAveragingInferer",
    "window": "@window_frames",
    "stride": "@window_stride",
}
_SUBJECT_COLLECTOR = {"_target_": "supremix_med.engines.SubjectAveragingCollector", "subject_key": "subject"}

TRAIN = {
    "dataset_dir": "/data/hcp_aging_cache",
    "bias_correction_method": "beheshti",
    "label_range": [36.0, 100.0],
    # shot-wise metrics over 5-year age bins, counted in training runs
    "shots": {"bin_width": 5.0, "many": 100, "few": 20},
    **_WINDOWS,
    "network_config": {"encoder": "resnet18_1d", "in_channels": 400, "projection_dim": 128, "n_targets": 1},
    # a random window of each run; plain tensors after it (a time series has no affine to track)
    "augmentation": [
        {"_target_": "RandSpatialCropd", "keys": "image", "roi_size": ["@window_frames"], "random_size": False},
        {"_target_": "EnsureTyped", "keys": "image", "track_meta": False},
    ],
    "pretrain#loss_kwargs#supremix#temperature": 0.5,
    "pretrain#loss_kwargs#supremix#window": 5.0,
    "pretrain#loss_kwargs#supremix#beta": [2.0, 8.0],
    "validate#dataset#covariates": ["subject"],
    "test#dataset#covariates": ["subject"],
    "validate#inferer": _WINDOW_INFERER,
    "validate#collector": _SUBJECT_COLLECTOR,
    "test#collector": _SUBJECT_COLLECTOR,
}

INFERENCE = {
    "dataset_dir": "/data/hcp_aging_runs",
    "label_range": [36.0, 100.0],
    **_WINDOWS,
    "pipeline": "fmri_parcels",
    # the label atlas of 4-D NIfTI runs (must be the one in the model's fingerprint); extracted series need none
    "atlas_path": None,
    # the model's own preprocessing parameters (frames, parcels, band-pass, ...), so only the atlas is given here
    "preprocessing_params": "$dict(monai.bundle.ConfigParser.load_config_file(@ckpt_dir + '/preprocessing.json')"
                            "['params'], atlas_path=@atlas_path)",
    "scan_suffixes": [".nii.gz", ".nii", ".npy", ".csv", ".txt", ".mat"],
    "inferer": _WINDOW_INFERER,
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/hcp_aging_demo/cache",
        "output_dir": "outputs/hcp_aging_demo",
        "pretrain_epochs": 10,
        "finetune_epochs": 30,
        "batch_size": 16,
        "learning_rate": 0.003,
        "num_workers": 0,
        "network_config": {
            "encoder": "resnet18_1d",
            "in_channels": 400,
            "widen_factor": 0.25,
            "projection_dim": 64,
            "n_targets": 1,
        },
    },
}
