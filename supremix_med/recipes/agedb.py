"""``bundles/agedb``: age (years) from a face photograph (AgeDB-DIR), 2D ResNet-50 on RGB images (3, 224, 224).

Data (no cache): the images under ``dataset_dir`` and a DIR split CSV ``age,path,split`` with paths relative to
``dataset_dir`` -- by default the published AgeDB-DIR split shipped with the bundle (``bundles/agedb/agedb.csv``,
12,208/2,140/2,140 images; paths ``AgeDB/<file>.jpg``), read by :class:`supremix_med.data.sources.faces.FaceDataset`
(images loaded with PIL as RGB in [0, 1]). The paper's protocol: two SimCLR-style views per image for
contrastive pre-training (:func:`supremix_med.data.sources.face_transforms.face_augmentation`: random resized crop 224,
scale 0.2-1, horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grey-scale p 0.2), SupReMix with
temperature 0.5 and window 5 years, batch 128, then a linear probe on the frozen encoder with the same
augmentation; validation and test see a centred crop (:func:`~supremix_med.data.sources.face_transforms.face_eval_transforms`).
``label_range`` is the training ages' range. Shot groups: 1-year bins, many > 100, few < 20 training images.

``train.json`` stores the face preprocessing fingerprint (image size, crop) beside the model; inference runs
:func:`supremix_med.data.sources.faces.preprocess` with those parameters on a folder of images or a CSV ``id,path[,age]``
and writes ``predictions.csv`` with an ``error`` column naming every unreadable file. The ``transfer.json`` overlay
probes an encoder pre-trained elsewhere (e.g. on IMDB-WIKI-DIR) instead of pre-training.
"""

from supremix_med.recipes import split_datasets, template_imports

_FACES = {"_target_": "supremix_med.data.sources.faces.FaceDataset", "csv_path": "@csv_path", "image_dir": "@dataset_dir"}

TRAIN = {
    "imports": template_imports("$import supremix_med.data.sources.faces"),
    "dataset_dir": "/data/agedb",
    "csv_path": "$@bundle_root + '/agedb.csv'",
    "image_size": 224,
    "crop_fraction": 0.875,
    "batch_size": 128,
    "linear_probe": True,
    "label_range": "$[float(@train#dataset.labels.min()), float(@train#dataset.labels.max())]",
    "network_config": {"encoder": "resnet50_2d", "projection_dim": 128, "n_targets": 1},
    "augmentation": {"_target_": "supremix_med.data.sources.face_transforms.face_augmentation", "image_size": "@image_size"},
    "eval_transforms": {
        "_target_": "supremix_med.data.sources.face_transforms.face_eval_transforms",
        "image_size": "@image_size",
        "crop_fraction": "@crop_fraction",
    },
    "pretrain#loss_kwargs#supremix#temperature": 0.5,
    "pretrain#loss_kwargs#supremix#window": 5.0,
    **split_datasets(_FACES),
    "data_fingerprint": "$supremix_med.data.sources.faces.fingerprint(@image_size, @crop_fraction)",
}

INFERENCE = {
    "dataset_dir": "/data/faces",
    "pipeline": "faces",
    "preprocessing_params": "$monai.bundle.ConfigParser.load_config_file(@ckpt_dir + '/preprocessing.json')['params']",
    "scan_suffixes": [".jpg", ".jpeg", ".png"],
    "gap_name": None,
    "label_range": [0.0, 120.0],
    "batch_size": 64,
    "writer#bias_correction": None,
}

TRANSFER = {
    "encoder_checkpoint": "outputs/imdb_wiki/models/pretrained_encoder.pt",
    "frozen_encoder": "@linear_probe",
    "run#2": "$@network.load_encoder(@encoder_checkpoint)",
}
"""Overlay: probe an encoder pre-trained by another run (same network and image size) instead of pre-training;
``--linear_probe False`` fine-tunes it instead."""

DEMO = {
    "dataset_dir": "outputs/faces_demo",
    "csv_path": "$@dataset_dir + '/faces.csv'",
    "output_dir": "outputs/agedb_demo",
    "image_size": 48,
    "pretrain_epochs": 8,
    "finetune_epochs": 10,
    "batch_size": 64,
    "num_workers": 1,
    "shots": {"bin_width": 1.0, "many": 25, "few": 10},
    "network_config": {
        "encoder": "resnet",
        "spatial_dims": 2,
        "depth": 18,
        "in_channels": 3,
        "widen_factor": 0.25,
        "projection_dim": 128,
        "n_targets": 1,
    },
}
"""Overlay: the generated faces (``python -m supremix_med.demo.faces --output outputs/faces_demo``), 48 px,
a quarter-width 2D ResNet-18, a few epochs on a CPU."""

OVERLAYS = {"demo.json": DEMO, "transfer.json": TRANSFER}
