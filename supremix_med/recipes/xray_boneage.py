"""``bundles/xray_boneage``: bone age (months) from a hand radiograph, 2D ResNet-50 on (1, 512, 512) images.

Cache: ``python -m preprocessing.xray`` on a manifest ``id,path,boneage[,sex,split]`` of DICOM CR/DX files or
PNG/JPEG images, or directly on the RSNA Pediatric Bone Age layout (``--rsna_images DIR --rsna_csv CSV``,
columns ``id,boneage,male``); the demo cohort is ``supremix_med.demo.xray`` (synthetic hands, PNG).
Sex is kept as a covariate column of the cache's manifest. By default the network sees the image only;
``--covariates "['sex']"`` makes sex (M -> 0, F -> 1) a second input of the regressor, beside the image features,
as bone-age models do (the recipe's ``covariates`` knob; pre-training still sees images only).
Inference runs the same pipeline on a folder of PNG/JPEG/DICOM files or a CSV ``id,path[,boneage]`` -- for a
model trained with sex, a CSV ``id,path,sex[,boneage]`` -- with the preprocessing parameters and the covariate
list stored beside the model (so a model trained on 128-pixel images preprocesses at 128).
"""

#: One year: the label unit of the losses' windows and of the shot-wise bins.
_YEAR = 12.0
_LABEL_RANGE = [0.0, 228.0]  # months; the RSNA challenge's bone ages lie in 1-228

_AUGMENTATION = [
    {
        "_target_": "RandAffined",
        "keys": "image",
        "prob": 0.8,
        "rotate_range": [0.26],
        "translate_range": [20, 20],
        "scale_range": [0.1, 0.1],
        "padding_mode": "border",
    },
    # radiographs of right hands and mirrored exports exist; bone age does not depend on the side
    {"_target_": "RandFlipd", "keys": "image", "prob": 0.5, "spatial_axis": 1},
    {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
]

TRAIN = {
    "dataset_dir": "/data/xray_boneage_cache",
    "target": "boneage",
    "label_range": _LABEL_RANGE,
    "shots": {"bin_width": _YEAR, "many": 100, "few": 20},
    "network_config": {"encoder": "resnet50_2d", "in_channels": 1, "projection_dim": 128, "n_targets": 1},
    "augmentation": _AUGMENTATION,
    "pretrain#loss_kwargs#supremix#window": _YEAR,
    "pretrain#loss_kwargs#conr#window": _YEAR,
    "pretrain#loss_kwargs#conr#prediction_window": _YEAR,
    "pretrain#loss_kwargs#mixsupcon#sigma": _YEAR,
}

INFERENCE = {
    "dataset_dir": "/data/xray_boneage_images",
    "pipeline": "xray",
    "preprocessing_params": "$monai.bundle.ConfigParser.load_config_file(@ckpt_dir + '/preprocessing.json')['params']",
    "scan_suffixes": [".png", ".jpg", ".jpeg"],
    "dicom_layout": "files",
    "target": "boneage",
    "gap_name": "boneage_gap",
    "label_range": _LABEL_RANGE,
    "writer#bias_correction": None,
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/xray_boneage_demo/cache",
        "output_dir": "outputs/xray_boneage_demo",
        "label_range": [12.0, 216.0],
        "pretrain_epochs": 10,
        "finetune_epochs": 20,
        "batch_size": 32,
        "num_workers": 0,
        "network_config": {
            "encoder": "resnet50_2d",
            "in_channels": 1,
            "widen_factor": 0.25,
            "projection_dim": 64,
            "n_targets": 1,
        },
        # the demo's 128-pixel images: a milder affine than the 512-pixel default
        "augmentation": [
            {
                "_target_": "RandAffined",
                "keys": "image",
                "prob": 0.8,
                "rotate_range": [0.1],
                "translate_range": [6, 6],
                "scale_range": [0.05, 0.05],
                "padding_mode": "border",
            },
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
        ],
        "pretrain#view_keys": ["image"],
    },
}
