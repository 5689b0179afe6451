"""``bundles/ukb_brainage``: brain age (years) from T1 MRI, 3D ResNet-18 on the 2 mm MNI grid (1, 100, 100, 100).

Cache: ``python -m preprocessing.t1`` (or ``preprocessing.ukb``); inference preprocesses NIfTI scans with the
same pipeline, registering them to MNI152 when needed.
"""

#: Small affine jitter (rotation, shift, scale) of a brain volume on the 2 mm MNI grid; the PET bundle uses it too.
BRAIN_AFFINE = {
    "_target_": "RandAffined",
    "keys": "image",
    "prob": 0.8,
    "rotate_range": [0.05, 0.05, 0.05],
    "translate_range": [3, 3, 3],
    "scale_range": [0.05, 0.05, 0.05],
    "padding_mode": "zeros",
}

TRAIN = {
    "dataset_dir": "/data/ukb_brainage_cache",
    "bias_correction_method": "beheshti",
    "label_range": [45.0, 82.0],
    "network_config": {"encoder": "resnet18_3d", "projection_dim": 128, "n_targets": 1},
    "augmentation": [BRAIN_AFFINE, {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5}],
}

INFERENCE = {
    "dataset_dir": "/data/ukb_brainage_scans",
    "label_range": [45.0, 82.0],
    "register": "auto",
    "preprocessing_params": {"register": "@register"},
    "min_similarity": "$@preprocessing_fingerprint['params']['mni_similarity_threshold']",
    "qc_limits": {"registration_similarity": ["@min_similarity", None]},
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/demo/cache",
        "output_dir": "outputs/demo",
        "label_range": [42.0, 82.0],
        "pretrain_epochs": 30,
        "finetune_epochs": 30,
        "batch_size": 32,
        "num_workers": 0,
        "network_config": {
            "encoder": "resnet18_3d",
            "widen_factor": 0.25,
            "input_downsample": 2,
            "projection_dim": 128,
            "n_targets": 1,
        },
        "augmentation": [],
        "pretrain#view_keys": ["image"],
    },
}
