"""``bundles/us_ejection_fraction``: left-ventricular ejection fraction (%) from an apical-4-chamber echo clip, a 3D
ResNet-18 over [1, T, H, W] = (1, 32, 112, 112) (time as the first spatial axis).

Cache: ``python -m preprocessing.ultrasound`` on the EchoNet-Dynamic layout (``--echonet_root``: ``FileList.csv`` +
``Videos/*.avi``, its TRAIN/VAL/TEST splits kept) or a manifest ``id,path,ef[,split]`` of AVI/MP4 clips or
multi-frame DICOM files; the demo cohort is ``supremix_med.demo.ultrasound`` (EchoNet layout). Inference runs
the same pipeline on a folder of clips (videos and DICOM files) or a CSV ``id,path[,ef]``. Not brain age: no bias
correction, and ``ef_error`` = predicted - known EF.
"""

_AUGMENTATION = [
    # probe position and depth setting differ between studies; time is axis 0 and is left alone
    {
        "_target_": "RandAffined",
        "keys": "image",
        "prob": 0.8,
        "rotate_range": [0.1, 0.0, 0.0],
        "translate_range": [0, 6, 6],
        "scale_range": [0.0, 0.05, 0.05],
        "padding_mode": "zeros",
    },
    {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
]

TRAIN = {
    "dataset_dir": "/data/us_ejection_fraction_cache",
    "target": "ef",
    "label_range": [5.0, 90.0],
    "network_config": {"encoder": "resnet18_3d", "projection_dim": 128, "n_targets": 1},
    "augmentation": _AUGMENTATION,
    "pretrain#loss_kwargs#supremix#window": 5.0,
}

INFERENCE = {
    "dataset_dir": "/data/echo_clips",
    "label_range": [5.0, 90.0],
    "pipeline": "ultrasound",
    "scan_suffixes": [".avi", ".mp4", ".mov", ".mkv", ".webm"],
    "dicom_layout": "files",
    "target": "ef",
    "gap_name": "ef_error",
    "writer#bias_correction": None,
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/us_ejection_fraction_demo/cache",
        "output_dir": "outputs/us_ejection_fraction_demo",
        "label_range": [15.0, 75.0],
        "pretrain_epochs": 10,
        "finetune_epochs": 25,
        "batch_size": 16,
        "num_workers": 0,
        "network_config": {
            "encoder": "resnet18_3d",
            "widen_factor": 0.25,
            "input_downsample": 2,
            "projection_dim": 64,
            "n_targets": 1,
        },
        "augmentation": [],
        "pretrain#view_keys": ["image"],
    },
}
