"""``bundles/imdb_wiki``: age (years) from a face photograph (IMDB-WIKI-DIR), 2D ResNet-50 on RGB images (3, 224, 224).

The recipe of :mod:`supremix_med.recipes.agedb` with the paper's IMDB-WIKI-DIR settings: SupReMix temperature
0.3, window 5 years, batch 64, linear probe. Data (no cache): the images under ``dataset_dir`` and the user's DIR
split CSV ``<dataset_dir>/imdb_wiki.csv`` (``age,path,split``, paths relative to ``dataset_dir``; the
IMDB-WIKI-DIR split file does not ship with the project). Inference as for ``agedb``. The ``transfer.json``
overlay probes an encoder pre-trained on AgeDB-DIR (``outputs/agedb/models/pretrained_encoder.pt``).
"""

from supremix_med.recipes import agedb

TRAIN = {
    **agedb.TRAIN,
    "dataset_dir": "/data/imdb_wiki",
    "csv_path": "$@dataset_dir + '/imdb_wiki.csv'",
    "batch_size": 64,
    "pretrain#loss_kwargs#supremix#temperature": 0.3,
}

INFERENCE = agedb.INFERENCE

OVERLAYS = {
    "demo.json": {**agedb.DEMO, "output_dir": "outputs/imdb_wiki_demo"},
    "transfer.json": {**agedb.TRANSFER, "encoder_checkpoint": "outputs/agedb/models/pretrained_encoder.pt"},
}
