"""Embedded demo for the STS-B bundle: generated sentence pairs with a graded similarity and matching word vectors.

STS-B text and GloVe vectors are not shipped with the project, so the demo writes a stand-in in the same formats
(read by :mod:`supremix_med.data.sources.text_pairs`)::

    <output_dir>/train_new.tsv, dev_new.tsv, test_new.tsv   GLUE columns index, genre, sentence1, sentence2, score
    <output_dir>/glove.demo.<dim>d.txt                      GloVe text format, one vector per word of the demo
    <output_dir>/demo.json                                  generator parameters

Model
-----
Every sentence reads ``"The <adjective> <noun> is <verb> <adverb> in the <place> ."``. Each of the five slots
holds one of eight concepts (:data:`SLOTS`), and each concept is written with one of two synonyms ("big" or
"large"), picked at random per sentence. A pair agrees on ``k`` slots (same concept, possibly another synonym)
and differs on the other ``5 - k``; its score is ``k`` plus Gaussian noise of SD ``noise``, clipped to [0, 5] and
rounded to 3 decimals, like STS-B's 0-5 scale. ``k`` is drawn with probabilities :data:`AGREEMENT_PROBABILITIES`
(most pairs in the middle, few at 0 or 5), so the label distribution is imbalanced as in STS-B-DIR.

The word vectors put synonyms next to each other: every concept has a centre drawn from N(0, I / dim), and each
synonym is its centre plus N(0, (0.1)^2 I / dim); the function words ("the", "is", "in", ".") get their own
random vectors. A BiLSTM over these vectors can learn the score by comparing the slots, which a model that only
sees words, not synonym groups, could not.

Split ``s`` (train/val/test) is drawn from ``numpy.random.default_rng([seed, s])`` and the vectors from
``default_rng([seed, 3])``: the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from supremix_med.data.sources.text_pairs import SPLIT_FILES
from supremix_med.io import atomic_write, check_generator_record

__all__ = ["SLOTS", "AGREEMENT_PROBABILITIES", "TEMPLATE", "synthesize_pairs", "synthesize_word_vectors",
           "generate_demo", "vectors_file_name", "main"]

#: Concepts of each slot, each written with one of two synonyms.
SLOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "adjective": (("big", "large"), ("small", "tiny"), ("happy", "cheerful"), ("old", "elderly"),
                  ("young", "youthful"), ("angry", "furious"), ("tall", "towering"), ("quiet", "silent")),
    "noun": (("man", "guy"), ("woman", "lady"), ("dog", "puppy"), ("cat", "kitten"), ("child", "kid"),
             ("horse", "pony"), ("bird", "sparrow"), ("chef", "cook")),
    "verb": (("running", "jogging"), ("eating", "dining"), ("singing", "chanting"), ("dancing", "twirling"),
             ("sleeping", "napping"), ("playing", "frolicking"), ("talking", "chatting"), ("swimming", "paddling")),
    "adverb": (("quickly", "rapidly"), ("slowly", "leisurely"), ("loudly", "noisily"), ("happily", "joyfully"),
               ("calmly", "peacefully"), ("carefully", "cautiously"), ("badly", "poorly"), ("together", "jointly")),
    "place": (("park", "garden"), ("kitchen", "galley"), ("street", "road"), ("river", "stream"), ("house", "home"),
              ("beach", "shore"), ("forest", "woods"), ("field", "meadow")),
}
TEMPLATE = "The {adjective} {noun} is {verb} {adverb} in the {place} ."
FUNCTION_WORDS = ("the", "is", "in", ".")
#: P(the two sentences agree on k = 0..5 slots).
AGREEMENT_PROBABILITIES = (0.05, 0.15, 0.3, 0.3, 0.15, 0.05)
SYNONYM_SPREAD = 0.1
GENERATOR_FILE = "demo.json"


def vectors_file_name(dim: int) -> str:
    """Name of the demo's word-vector file: ``glove.demo.<dim>d.txt``."""
    return f"glove.demo.{dim}d.txt"


def _sentence(rng: np.random.Generator, concepts: dict[str, int]) -> str:
    """The template filled with a random synonym of each slot's concept."""
    return TEMPLATE.format(**{slot: SLOTS[slot][c][rng.integers(2)] for slot, c in concepts.items()})


def synthesize_pairs(n_pairs: int, seed: int = 0, split: int = 0, noise: float = 0.3) -> pd.DataFrame:
    """Draw ``n_pairs`` sentence pairs of the model in the module docstring.

    Args:
        n_pairs: number of pairs (>= 1).
        seed: base seed.
        split: stream index (0 train, 1 val, 2 test), so the splits differ.
        noise: SD of the Gaussian noise added to the agreement count (score units, >= 0).

    Returns:
        Frame with columns ``index`` (0..n-1), ``genre`` ("demo"), ``sentence1``, ``sentence2``, ``score``.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}.")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0 (score units), got {noise}.")
    rng = np.random.default_rng([seed, split])
    n_concepts = len(SLOTS["noun"])
    rows = []
    for _ in range(n_pairs):
        agree = rng.choice(len(AGREEMENT_PROBABILITIES), p=AGREEMENT_PROBABILITIES)
        shared = set(rng.choice(list(SLOTS), size=agree, replace=False).tolist())
        first = {slot: int(rng.integers(n_concepts)) for slot in SLOTS}
        # a different concept: shift by 1..n-1 places
        second = {slot: c if slot in shared else (c + int(rng.integers(1, n_concepts))) % n_concepts
                  for slot, c in first.items()}
        score = float(np.clip(agree + rng.normal(0.0, noise), 0.0, 5.0))
        rows.append((_sentence(rng, first), _sentence(rng, second), round(score, 3)))
    sentence1, sentence2, score = zip(*rows)
    return pd.DataFrame({"index": np.arange(n_pairs), "genre": "demo", "sentence1": sentence1,
                         "sentence2": sentence2, "score": score})


def synthesize_word_vectors(dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Vectors [dim] (float32) of every word of the demo: synonyms near their concept's centre."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    rng = np.random.default_rng([seed, len(SPLIT_FILES)])
    scale = 1.0 / np.sqrt(dim)
    vectors = {word: rng.normal(0.0, scale, dim) for word in FUNCTION_WORDS}
    for concepts in SLOTS.values():
        for synonyms in concepts:
            centre = rng.normal(0.0, scale, dim)
            for word in synonyms:
                vectors[word] = centre + rng.normal(0.0, SYNONYM_SPREAD * scale, dim)
    return {word: vector.astype(np.float32) for word, vector in vectors.items()}


def _write_vectors(vectors: dict[str, np.ndarray], path: Path) -> None:
    lines = "".join(f"{word} {' '.join(f'{v:.5f}' for v in vector)}\n" for word, vector in vectors.items())
    atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def generate_demo(output_dir: str | Path, n_pairs: Sequence[int] = (1000, 200, 200), seed: int = 0,
                  dim: int = 16, noise: float = 0.3) -> Path:
    """Write the demo dataset folder (see the module docstring) and return the word-vector file's path.

    Args:
        output_dir: the dataset folder (created); a folder generated with other arguments is refused.
        n_pairs: pairs of the train, val and test splits.
        seed, noise: see :func:`synthesize_pairs`; ``dim``: word-vector dimension.

    Raises:
        ValueError: bad arguments, or ``output_dir`` holds a demo generated with other arguments.
    """
    if len(n_pairs) != len(SPLIT_FILES):
        raise ValueError(f"n_pairs must give {len(SPLIT_FILES)} sizes for {list(SPLIT_FILES)}, got {list(n_pairs)}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_generator_record(output_dir / GENERATOR_FILE, {"n_pairs": [int(n) for n in n_pairs], "seed": seed,
                                                         "dim": dim, "noise": noise, "generator": __name__})
    for index, (names, size) in enumerate(zip(SPLIT_FILES.values(), n_pairs)):
        pairs = synthesize_pairs(int(size), seed, index, noise)
        atomic_write(output_dir / names[0],
                     lambda tmp, frame=pairs: frame.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE))
    path = output_dir / vectors_file_name(dim)
    _write_vectors(synthesize_word_vectors(dim, seed), path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m supremix_med.demo.stsb --output DIR [--n_train N] [--n_val N] [--n_test N] [--seed S]
    [--dim D] [--noise SD]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--n_train", type=int, default=1000)
    parser.add_argument("--n_val", type=int, default=200)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=16, help="word-vector dimension")
    parser.add_argument("--noise", type=float, default=0.3, help="SD of the score noise (score units)")
    args = parser.parse_args(argv)
    path = generate_demo(args.output, (args.n_train, args.n_val, args.n_test), args.seed, args.dim, args.noise)
    print(f"wrote {args.n_train}/{args.n_val}/{args.n_test} sentence pairs to {args.output} and word vectors to {path}")


if __name__ == "__main__":
    main()
