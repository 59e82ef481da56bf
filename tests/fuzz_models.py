"""A seeded mutation fuzzer of ``.bfm`` files: only :class:`ModelFormatError` may escape
:meth:`IntegerModel.load`.

The mutator starts from a few valid models (dense layers of every encoding and output stage, wide
int and lut dictionaries, a bidirectional lstm and an lstm classifier, a CNN and a 1-D ResNet,
metadata and extras) and applies, per mutant, one of: bit flips, truncations, byte overwrites of
the file; mutations of one zip entry (its ``.npy`` header, its data, extreme values, a dropped,
renamed, duplicated or stored entry); mutations of ``manifest.json`` (a value replaced by another
type, a big or negative integer, a non-finite float, another array's name; a key dropped or added;
a declared shape or dtype changed). A mutant that loads must also describe itself (``bitfab
info``'s facts), save, and run through the golden model.

The test suite runs a few thousand mutants (:mod:`tests.test_fuzz`). A longer run, by hand::

    PYTHONPATH=. python tests/fuzz_models.py --mutants 100000 --seed 1

prints the outcome counts and saves every escaping mutant under ``--keep`` (default
``build/fuzz``) for a regression test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from bitfab.errors import ModelFormatError
from bitfab.examples import ENCODINGS, cnn, random_dense, resnet1d
from bitfab.lstm import random_lstm
from bitfab.model import Dense, InputFormat, IntegerModel, IntWeights, Lut, Pow2, Threshold

__all__ = ["seed_models", "Mutator", "check_file", "run"]

#: integers that probe every width limit (JSON has no bound on integers)
BIG_INTS = [0, 1, -1, 2, 7, 8, 31, 32, 33, 62, 63, 64, 255, 256, 4096, 1 << 20, (1 << 24) + 1,
            (1 << 31) - 1, 1 << 31, -(1 << 31) - 1, (1 << 62), (1 << 63) - 1, 1 << 63,
            -(1 << 63), -(1 << 63) - 1, 1 << 64, 10 ** 30, -(10 ** 30), 10 ** 400, -(10 ** 400)]
#: values of every JSON type
ODD_VALUES = [None, True, False, "", "x", "layers/0/weights.npy", "manifest.json", [], [1, 2],
              [[1]], {}, {"kind": "int"}, 0.5, -0.0, 1e308, 1e-320, float("nan"), float("inf"),
              float("-inf"), "NaN", "int", "bipolar", "dense", "lstm", "none", "threshold",
              "requant", "floor", "sequence", "last"]
#: extreme values written into integer arrays
EXTREMES = np.array([0, 1, -1, 2, 3, 127, -128, 255, (1 << 31) - 1, -(1 << 31), (1 << 61),
                     -(1 << 61), (1 << 62), (1 << 63) - 1, -(1 << 63)], dtype=np.int64)
_DTYPES = ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", ">i4", "<f4", "<f8",
           "|O", "<c8", "|S4", "<U2"]


def seed_models() -> list[IntegerModel]:
    """Return the valid models the mutants start from (small, so that loading is fast)."""
    rng = np.random.default_rng(7)
    models = []
    bip = InputFormat.bipolar()
    l0 = random_dense(rng, 13, 9, "binary", bip, "threshold", thresholds=1)
    l1 = random_dense(rng, 9, 4, "binary", bip, "none")
    models.append(IntegerModel((l0.replace(name="fc0"), l1), 1 / 255, 0.25,
                               {"recipe": "fuzz", "labels": list("abcd")},
                               {"f": rng.standard_normal((4, 3)).astype(np.float32),
                                "i": np.arange(5, dtype=np.int16)}, "binary"))
    for name, enc in ENCODINGS.items():
        a = random_dense(rng, 7, 6, enc, InputFormat.int(4), "threshold", thresholds=3,
                         sparsity=0.3)
        b = random_dense(rng, 6, 5, enc, InputFormat.int(2), "requant", requant_bits=4)
        c = random_dense(rng, 5, 3, enc, InputFormat.int(4, True), "none")
        models.append(IntegerModel((a, b, c), 0.5, None, {"encoding": name}, {}, name))
    # the widest weights and dictionaries: int16 weights on int16 inputs, a 256-entry lut,
    # pow2 up to 2^30
    wide = Dense(rng.integers(-(1 << 15), 1 << 15, (4, 6)), IntWeights(16),
                 InputFormat.int(16, True), bias=rng.integers(-(1 << 20), 1 << 20, 4))
    lut = Lut(tuple(int(v) for v in rng.choice(np.arange(-(1 << 20), 1 << 20), 256,
                                                 replace=False)))
    big_lut = Dense(rng.choice(np.array(lut.dictionary), (3, 8)), lut, InputFormat.int(8))
    pow2 = Dense(Pow2(0, 30).random(rng, (2, 5), 0.2), Pow2(0, 30), InputFormat.int(8, True))
    models.append(IntegerModel((wide,), name="wide"))
    models.append(IntegerModel((big_lut,), name="lut256"))
    models.append(IntegerModel((pow2.replace(output=Threshold(np.array([[-5, 0, 9]] * 2))),),
                               name="pow2"))
    # lstm: bidirectional per-step lstm, and an lstm classifier with a dense head
    seq = random_lstm(rng, 3, 4, ENCODINGS["lut"], directions=2, max_length=16)
    models.append(IntegerModel((seq,), 0.5, name="bilstm"))
    last = random_lstm(rng, 4, 3, returns="last", hidden_bits=5)
    head = random_dense(rng, 3, 2, "int", last.out_format, "none")
    models.append(IntegerModel((last, head), 0.5, None, {"task": "fuzz"},
                               {"emb": rng.integers(-8, 8, (6, 4)).astype(np.int8)}, "lstm"))
    # image kinds: a binary CNN (padding with -1, maxpool, flatten) and a 1-D ResNet (strides,
    # a 1x1 projection on a skip edge, adds aligned by shifts, global average pooling)
    models.append(cnn(rng, (6, 6, 2), (3,), 4, "binary", name="cnn"))
    models.append(resnet1d(rng, 8, 2, 3, "ternary"))
    return models


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


class Mutator:
    """Mutants of one valid ``.bfm`` file (its bytes, its entries and its manifest)."""

    def __init__(self, model: IntegerModel):
        manifest, arrays = model.manifest()
        self.manifest = manifest
        self.entries = {name: _npy(arr) for name, arr in arrays.items()}
        self.names = list(self.entries)
        self.data = self.pack(manifest, self.entries)

    @staticmethod
    def pack(manifest, entries: dict, order=None, stored=()) -> bytes:
        """Return the bytes of a zip of ``manifest`` (a dict, or raw bytes) and ``entries``."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            zf.writestr("manifest.json", text)
            for name in order or entries:
                kind = zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED
                zf.writestr(zipfile.ZipInfo(name), entries[name], compress_type=kind)
        return buf.getvalue()

    # --- the file as bytes ------------------------------------------------------------------------

    def flip(self, rng) -> bytes:
        buf = bytearray(self.data)
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
        return bytes(buf)

    def truncate(self, rng) -> bytes:
        return self.data[:int(rng.integers(len(self.data)))]

    def overwrite(self, rng) -> bytes:
        buf = bytearray(self.data)
        at = int(rng.integers(len(buf)))
        n = int(rng.integers(1, 9))
        fill = rng.choice([0x00, 0xFF, 0x7F, 0x80, -1])
        new = rng.integers(0, 256, n, dtype=np.uint8).tobytes() if fill < 0 else bytes([fill]) * n
        buf[at:at + n] = new
        return bytes(buf)

    # --- one zip entry ----------------------------------------------------------------------------

    def entry(self, rng) -> bytes:
        entries = dict(self.entries)
        name = self.names[int(rng.integers(len(self.names)))]
        data = entries[name]
        order, stored = list(entries), ()
        op = int(rng.integers(11))
        if op == 0:  # flip bits of the entry (header or data)
            buf = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
            entries[name] = bytes(buf)
        elif op == 1:  # truncate or extend the data
            cut = int(rng.integers(len(data) + 1))
            entries[name] = data[:cut] if rng.random() < 0.5 else data + bytes(cut % 17 + 1)
        elif op == 2:  # rewrite the .npy header dict
            end = data.index(b"}") + 1
            head = data[:end].decode("latin1")
            a, b = sorted(rng.integers(10, len(head), 2))
            junk = str(rng.choice(["(99999999999,)", "(3, 3)", "()", "'<i8'", "'|O'", "True",
                                   "None", "'shape': (1,)", "1e999", "(-1,)", "[1]", "{'a': 1}",
                                   "'descr'", "(2**64,)", ""]))
            entries[name] = (head[:a] + junk + head[b:]).encode("latin1") + data[end:]
        elif op == 3:  # the same shape in another dtype, or another shape
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            dt = str(rng.choice(["<i8", "<u8", "|i1", "|u1", "<i2", "<f8", "<f4", "|b1", ">i4"]))
            shape = arr.shape if rng.random() < 0.6 else tuple(
                int(n) for n in rng.integers(0, 5, int(rng.integers(0, 4))))
            vals = rng.choice(EXTREMES, size=int(np.prod(shape)))
            with np.errstate(all="ignore"):
                entries[name] = _npy(vals.astype(dt).reshape(shape))
        elif op == 4:  # extreme values in place
            arr = np.load(io.BytesIO(data), allow_pickle=False).copy()
            if arr.size:
                flat = arr.reshape(-1)
                k = int(rng.integers(flat.size))
                info = np.iinfo(arr.dtype) if arr.dtype.kind in "iu" else None
                if info is not None:
                    flat[k] = rng.choice([info.min, info.max, 0, -1 if info.min else 1])
                else:
                    flat[k] = rng.choice([0.0, -1.0, 1e30])
            entries[name] = _npy(arr)
        elif op == 5:  # drop the entry
            del entries[name]
            order.remove(name)
        elif op == 6:  # another entry's bytes under this name
            entries[name] = self.entries[self.names[int(rng.integers(len(self.names)))]]
        elif op == 7:  # stored instead of deflated, entries reordered
            stored = (name,)
            rng.shuffle(order)
        elif op == 8:  # a pickle (dtype object) or an odd dtype in the header
            dt = str(rng.choice(_DTYPES))
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": dt, "fortran_order": False,
                                                       "shape": (3,)})
            entries[name] = buf.getvalue() + bytes(24)
        elif op == 9:  # fortran order, or a version 2 / 3 header
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if rng.random() < 0.5:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asfortranarray(arr), version=(2, 0))
                entries[name] = buf.getvalue()
            else:
                entries[name] = data[:6] + bytes([int(rng.integers(0, 5)), 0]) + data[8:]
        else:  # an extra entry, or a duplicated name
            entries["junk.npy" if rng.random() < 0.5 else name + "/"] = data
            order.append("junk.npy" if "junk.npy" in entries else name + "/")
        return self.pack(self.manifest, entries, [n for n in order if n in entries], stored)

    # --- the manifest -----------------------------------------------------------------------------

    def _paths(self, node, path=()):
        yield path
        if isinstance(node, dict):
            for k, v in node.items():
                yield from self._paths(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from self._paths(v, path + (i,))

    def _value(self, rng, old):
        r = rng.random()
        if r < 0.35:
            return int(rng.choice(np.array(BIG_INTS, dtype=object)))
        if r < 0.65:
            return ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        if r < 0.8:
            return self.names[int(rng.integers(len(self.names)))]
        if isinstance(old, int) and not isinstance(old, bool):
            return old + int(rng.choice([-2, -1, 1, 2, 8, 1 << 20]))
        if isinstance(old, list) and old:
            return old[: int(rng.integers(len(old)))] if rng.random() < 0.5 else old + old
        if isinstance(old, dict) and old:
            return {k: v for k, v in old.items() if rng.random() < 0.7}
        return [old, old]

    def manifest_json(self, rng) -> bytes:
        manifest = json.loads(json.dumps(self.manifest))
        for _ in range(int(rng.integers(1, 4))):
            paths = list(self._paths(manifest))[1:]
            path = paths[int(rng.integers(len(paths)))]
            parent = manifest
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            op = rng.random()
            if op < 0.15 and isinstance(parent, dict):
                del parent[key]
            elif op < 0.25 and isinstance(parent, dict):
                parent[str(rng.choice(["extra", "kind", "weights", "bias"]))] = \
                    self._value(rng, None)
            elif op < 0.35 and len(path) >= 2 and path[0] == "arrays" \
                    and isinstance(manifest["arrays"][path[1]], dict):
                decl = manifest["arrays"][path[1]]
                if rng.random() < 0.5:
                    decl["shape"] = [int(n) for n in rng.integers(0, 40, int(rng.integers(0, 5)))]
                else:
                    decl["dtype"] = str(rng.choice(_DTYPES))
            elif op < 0.5 and isinstance(manifest.get("extras"), dict):
                # extras name another array, or one array several times
                target = self.names[int(rng.integers(len(self.names)))]
                for i in range(int(rng.integers(1, 5))):
                    manifest["extras"][f"e{i}"] = target
            else:
                parent[key] = self._value(rng, parent[key])
        text = json.dumps(manifest).encode()
        if rng.random() < 0.05:  # not quite JSON, or JSON of another shape
            odd = [text[: len(text) // 2], b"[]", b"null", b"\xff\xfe" + text,
                   text.replace(b"1", b"1" * 400, 1), text.replace(b"1", b"1" * 5000, 1),
                   b"[" * 100000]
            text = odd[int(rng.integers(len(odd)))]
        return self.pack(text, self.entries)

    def mutant(self, rng) -> tuple[str, bytes]:
        """Return ``(kind of mutation, file bytes)``."""
        kind = str(rng.choice(["flip", "truncate", "overwrite", "entry", "entry", "manifest",
                               "manifest", "manifest"]))
        return kind, getattr(self, {"manifest": "manifest_json"}.get(kind, kind))(rng)


def check_file(path) -> str:
    """Load ``path``; return ``"loaded"`` or ``"refused"``. A loaded model must also give its
    ``bitfab info`` facts, save, and run through the golden model. Any other exception
    propagates: it is a bug."""
    from bitfab.cli.info import model_info
    from bitfab.sim.golden import execute
    try:
        model = IntegerModel.load(path)
    except ModelFormatError as exc:
        assert str(exc) and "\n" not in str(exc), repr(exc)
        return "refused"
    model_info(model)
    model.save(Path(path).with_name("resaved.bfm"))
    fmt = model.input
    n = int(np.prod(model.in_shape))  # a vector, a time step, or a flat image
    x = np.array([[fmt.min_value] * n, [fmt.max_value] * n])
    if fmt.kind == "bipolar":
        x = np.array([[-1] * n, [1] * n])
    image = len(model.in_shape) > 1
    execute(model, x[:, None, :] if model.sequential and not image else x)
    return "loaded"


def run(mutants: int, seed: int = 0, folder=None, keep=None, limit_s: float | None = None,
        ) -> tuple[Counter, list]:
    """Run ``mutants`` mutants (spread over :func:`seed_models`) from ``seed``; return the
    outcome counts and the escapes ``(mutant id, kind, error line)``."""
    import bitfab.sim  # noqa: F401  (registers the golden model of every kind)
    mutators = [Mutator(m) for m in seed_models()]
    if folder is None and os.access("/dev/shm", os.W_OK):
        folder = "/dev/shm"  # a mutant is written and loaded at memory speed, not disk speed
    counts: Counter = Counter()
    escapes = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        target = Path(tmp) / "mutant.bfm"
        for i in range(mutants):
            if limit_s is not None and time.monotonic() - start > limit_s:
                break
            rng = np.random.default_rng([seed, i])
            mut = mutators[i % len(mutators)]
            kind, data = mut.mutant(rng)
            target.write_bytes(data)
            try:
                counts[check_file(target)] += 1
            except Exception as exc:  # noqa: BLE001  (every other exception is a finding)
                line = f"{type(exc).__name__}: {str(exc)[:200]}"
                where = traceback.extract_tb(exc.__traceback__)[-1]
                escapes.append((i, kind, f"{line} ({Path(where.filename).name}:{where.lineno})"))
                counts["escaped"] += 1
                if keep is not None:
                    os.makedirs(keep, exist_ok=True)
                    (Path(keep) / f"mutant-{seed}-{i}.bfm").write_bytes(data)
            counts[kind] += 1
    return counts, escapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", default="build/fuzz", help="folder for escaping mutants")
    args = parser.parse_args(argv)
    start = time.monotonic()
    counts, escapes = run(args.mutants, args.seed, keep=args.keep)
    wall = time.monotonic() - start
    total = counts["loaded"] + counts["refused"] + counts["escaped"]
    print(f"{total} mutants (seed {args.seed}) in {wall:.1f} s: "
          f"{counts['refused']} refused, {counts['loaded']} loaded, {counts['escaped']} escaped")
    print("mutations:", {k: v for k, v in sorted(counts.items())
                         if k not in ("loaded", "refused", "escaped")})
    for i, kind, line in escapes[:50]:
        print(f"  mutant {i} ({kind}): {line}")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
