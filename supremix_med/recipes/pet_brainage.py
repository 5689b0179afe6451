"""``bundles/pet_brainage``: brain age (years) from FDG PET, 3D ResNet-18 on the 2 mm MNI grid (1, 100, 100, 100).

Cache: ``python -m preprocessing.pet`` on a manifest ``id,path,age[,sex,split]`` whose paths are DICOM PET series
folders (SUV from the DICOM tags) or NIfTI volumes (SUV, or Bq/ml with an SUVR reference mask), already in MNI
space; the demo cohort is ``supremix_med.demo.pet`` (DICOM series with SUV tags). Inference runs the same
pipeline on a folder of series folders / NIfTI files or a CSV ``id,path[,age]``, with the preprocessing
parameters of the training cache (``preprocessing_params``; the fingerprint check refuses others).
"""

from supremix_med.recipes.ukb_brainage import BRAIN_AFFINE

#: SUV scales with body composition and blood glucose: a global gain the network must ignore.
_SUV_GAIN = {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.15, "prob": 0.8}
_AUGMENTATION = [BRAIN_AFFINE, _SUV_GAIN]

TRAIN = {
    "dataset_dir": "/data/pet_brainage_cache",
    "bias_correction_method": "beheshti",
    "label_range": [20.0, 90.0],
    "network_config": {"encoder": "resnet18_3d", "projection_dim": 128, "n_targets": 1},
    "augmentation": _AUGMENTATION,
}

INFERENCE = {
    "dataset_dir": "/data/pet_brainage_scans",
    "label_range": [20.0, 90.0],
    "pipeline": "pet",
    "dicom_layout": "series",
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/pet_brainage_demo/cache",
        "output_dir": "outputs/pet_brainage_demo",
        "label_range": [20.0, 80.0],
        "pretrain_epochs": 10,
        "finetune_epochs": 20,
        "batch_size": 16,
        "num_workers": 0,
        "network_config": {
            "encoder": "resnet18_3d",
            "widen_factor": 0.25,
            "input_downsample": 4,
            "projection_dim": 64,
            "n_targets": 1,
        },
        "augmentation": [_SUV_GAIN],
        "pretrain#view_keys": ["image"],
    },
}
