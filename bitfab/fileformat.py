"""The ``.bfm`` file: a zip holding ``manifest.json`` and ``.npy`` arrays, read without pickle.

Reading is defensive: sizes declared in the zip directory, in the manifest and in every ``.npy``
header are checked against each other and against :data:`bitfab.model.MAX_ELEMENTS` *before* any
data is inflated or allocated, so a truncated, corrupted or hostile file raises
:class:`~bitfab.errors.ModelFormatError` naming the field, never a numpy or zipfile traceback.
"""

from __future__ import annotations

import ast
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFormatError
from .model import (
    _ENCODINGS,
    _LAYER_KINDS,
    MAX_ELEMENTS,
    Binary,
    Dense,
    InputFormat,
    IntegerModel,
    IntWeights,
    Lut,
    NoOutput,
    Pow2,
    Requant,
    Threshold,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save", "load", "manifest_and_arrays"]

FORMAT_NAME = "bitfab-integer-model"
FORMAT_VERSION = 1
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_ENTRY_BYTES = 1 << 30
_MAX_TOTAL_BYTES = 4 << 30
_MAX_RATIO = 1100  # deflate cannot do better than ~1032:1; more means a crafted entry
_DTYPES = {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<f2", "<f4", "<f8"}


# --- writing --------------------------------------------------------------------------------------


class _Writer:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, array: np.ndarray) -> str:
        self.arrays[name] = np.ascontiguousarray(array)
        return name


def _smallest_int_dtype(arr: np.ndarray) -> np.dtype:
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise AssertionError("unreachable: values are validated to fit 62 bits")


def _dense_to_manifest(layer: Dense, prefix: str, out: _Writer) -> dict:
    enc = layer.encoding
    w = layer.weights
    if isinstance(enc, Binary):
        weights = out.add(f"{prefix}/weights.npy", np.packbits(w > 0, axis=1))
    elif isinstance(enc, (Pow2, Lut)):
        weights = out.add(f"{prefix}/weights.npy", enc.encode(w))
    else:
        weights = out.add(f"{prefix}/weights.npy", w.astype(_smallest_int_dtype(w)))
    entry = {
        "kind": "dense",
        "name": layer.name,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "input": layer.input.to_json(),
        "encoding": enc.to_json(),
        "weights": weights,
        "bias": out.add(f"{prefix}/bias.npy", layer.bias.astype(_smallest_int_dtype(layer.bias))),
        "acc_bits": layer.acc_bits,
    }
    stage = layer.output
    if isinstance(stage, Threshold):
        t = stage.thresholds
        entry["output"] = {
            "kind": "threshold",
            "count": stage.count,
            "thresholds": out.add(f"{prefix}/thresholds.npy", t.astype(_smallest_int_dtype(t))),
            "direction": out.add(f"{prefix}/direction.npy", stage.direction.astype(np.int8)),
        }
    elif isinstance(stage, Requant):
        entry["output"] = {
            "kind": "requant",
            "multiplier": out.add(f"{prefix}/multiplier.npy", stage.multiplier),
            "shift": stage.shift, "bits": stage.bits, "signed": stage.signed,
            "rounding": stage.rounding,
        }
    else:
        entry["output"] = {"kind": "none"}
    return entry


def manifest_and_arrays(model: IntegerModel) -> tuple[dict, dict[str, np.ndarray]]:
    """Return the manifest (a JSON object) and the arrays (by entry name) of ``model``."""
    out = _Writer()
    layers = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            layers.append(_dense_to_manifest(layer, f"layers/{i}", out))
        else:
            layers.append(layer.to_manifest(f"layers/{i}", out))
    extras = {key: out.add(f"extras/{key}.npy", arr) for key, arr in model.extras.items()}
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": model.name,
        "input_scale": model.input_scale,
        "output_scale": model.output_scale,
        "metadata": model.metadata,
        "layers": layers,
        "extras": extras,
        "arrays": {name: {"dtype": arr.dtype.str, "shape": list(arr.shape)}
                   for name, arr in out.arrays.items()},
    }
    return manifest, out.arrays


def save(model: IntegerModel, path) -> None:
    """Write ``model`` to ``path`` atomically (a temporary file renamed into place)."""
    if not isinstance(model, IntegerModel):
        raise TypeError(f"model must be an IntegerModel, not {type(model).__name__}")
    manifest, arrays = manifest_and_arrays(model)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                zf.writestr(name, buf.getvalue())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- reading --------------------------------------------------------------------------------------


def _get(d: Any, key: str, types, where: str, default: Any = ...) -> Any:
    if not isinstance(d, dict):
        raise ModelFormatError(f"{where} must be a JSON object, not {type(d).__name__}")
    if key not in d:
        if default is not ...:
            return default
        raise ModelFormatError(f"{where}.{key} is missing")
    value = d[key]
    if types is int and isinstance(value, bool):
        raise ModelFormatError(f"{where}.{key} must be an integer, not {value!r}")
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise ModelFormatError(f"{where}.{key} must be {names}, not {value!r}"[:300])
    return value


class _Reader:
    """Reads validated arrays from an open zip file."""

    def __init__(self, zf: zipfile.ZipFile, declared: dict, source: str):
        self.zf = zf
        self.declared = declared
        self.source = source
        self.total = 0

    def entry(self, name: str, where: str) -> zipfile.ZipInfo:
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise ModelFormatError(f"{where}: array {name!r} is missing from the file") from None
        if info.file_size > _MAX_ENTRY_BYTES:
            raise ModelFormatError(f"{where}: entry {name!r} would inflate to {info.file_size} "
                                   f"bytes, more than the limit {_MAX_ENTRY_BYTES}")
        if info.file_size > _MAX_RATIO * max(info.compress_size, 1) + 4096:
            raise ModelFormatError(f"{where}: entry {name!r} has an impossible compression ratio "
                                   f"({info.file_size} from {info.compress_size} bytes)")
        self.total += info.file_size
        if self.total > _MAX_TOTAL_BYTES:
            raise ModelFormatError(f"{where}: the file would inflate to more than "
                                   f"{_MAX_TOTAL_BYTES} bytes")
        return info

    def array(self, name: Any, where: str, shape: tuple | None = None, kinds: str = "iu",
              ) -> np.ndarray:
        if not isinstance(name, str):
            raise ModelFormatError(f"{where} must name an array entry, not {name!r}"[:300])
        decl = self.declared.get(name)
        if not isinstance(decl, dict):
            raise ModelFormatError(f"{where}: array {name!r} is not declared in manifest.arrays")
        dshape = _get(decl, "shape", list, f"arrays[{name!r}]")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in dshape) \
                or len(dshape) > 4:
            raise ModelFormatError(f"arrays[{name!r}].shape must be a list of at most 4 "
                                   f"non-negative integers, not {dshape!r}"[:300])
        count = 1
        for n in dshape:
            count *= n
        if count > MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: array {name!r} declares {count} elements, more than "
                                   f"the limit {MAX_ELEMENTS}")
        if shape is not None and tuple(dshape) != shape:
            raise ModelFormatError(f"{where}: array {name!r} has shape {tuple(dshape)}, "
                                   f"expected {shape}")
        info = self.entry(name, where)
        with self.zf.open(info) as f:
            head = f.read(min(info.file_size, 4096))
            try:
                version = np.lib.format.read_magic(io.BytesIO(head))
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unknown .npy version {version}")
                lenfmt, start = ("<H", 10) if version == (1, 0) else ("<I", 12)
                (hlen,) = struct.unpack(lenfmt, head[8:start])
                if start + hlen > len(head):
                    raise ValueError("header is longer than 4 KiB or truncated")
                d = ast.literal_eval(head[start:start + hlen].decode("latin1"))
                if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
                    raise ValueError("bad .npy header")
            except (ValueError, SyntaxError, struct.error, UnicodeDecodeError, MemoryError,
                    RecursionError, TypeError) as exc:
                raise ModelFormatError(f"{where}: array {name!r} is not a valid .npy file "
                                       f"({str(exc)[:100]})") from None
            descr, fortran, hshape = d["descr"], d["fortran_order"], d["shape"]
            if not isinstance(descr, str) or descr not in _DTYPES:
                raise ModelFormatError(f"{where}: array {name!r} has unsupported dtype {descr!r}")
            if descr != decl.get("dtype"):
                raise ModelFormatError(f"{where}: array {name!r} has dtype {descr}, the manifest "
                                       f"declares {decl.get('dtype')!r}"[:300])
            if hshape != tuple(dshape) or not isinstance(fortran, bool):
                raise ModelFormatError(f"{where}: array {name!r} has shape {hshape!r}, the "
                                       f"manifest declares {tuple(dshape)}"[:300])
            dtype = np.dtype(descr)
            if dtype.kind not in kinds:
                raise ModelFormatError(f"{where}: array {name!r} must hold integers, not {dtype}")
            offset = start + hlen
            nbytes = count * dtype.itemsize
            if offset + nbytes != info.file_size:
                raise ModelFormatError(f"{where}: array {name!r} holds {info.file_size - offset} "
                                       f"data bytes, its header needs {nbytes}")
            data = head[offset:] + f.read(nbytes - max(len(head) - offset, 0))
        if len(data) != nbytes:
            raise ModelFormatError(f"{where}: array {name!r} is truncated")
        arr = np.frombuffer(data, dtype=dtype).reshape(hshape, order="F" if fortran else "C")
        return arr.astype(np.int64) if dtype.kind in "iub" else arr.copy()


def _input_format(d: Any, where: str) -> InputFormat:
    kind = _get(d, "kind", str, where)
    if kind == "bipolar":
        return InputFormat.bipolar()
    if kind != "int":
        raise ModelFormatError(f"{where}.kind must be 'bipolar' or 'int', not {kind!r}"[:300])
    return InputFormat.int(_get(d, "bits", int, where), _get(d, "signed", bool, where))


def _encoding(d: Any, where: str):
    kind = _get(d, "kind", str, where)
    if kind not in _ENCODINGS:
        raise ModelFormatError(f"{where}.kind must be one of {sorted(_ENCODINGS)}, "
                               f"not {kind!r}"[:300])
    if kind == "pow2":
        return Pow2(_get(d, "e_min", int, where), _get(d, "e_max", int, where),
                    _get(d, "zero", bool, where))
    if kind == "lut":
        entries = _get(d, "dictionary", list, where)
        if len(entries) > 256 or not all(isinstance(v, int) and not isinstance(v, bool)
                                         for v in entries):
            raise ModelFormatError(f"{where}.dictionary must be a list of at most 256 integers")
        return Lut(tuple(entries))
    if kind == "int":
        return IntWeights(_get(d, "bits", int, where))
    return _ENCODINGS[kind]()


def _dense_from_manifest(d: dict, reader: _Reader, where: str) -> Dense:
    n_in = _get(d, "in_features", int, where)
    n_out = _get(d, "out_features", int, where)
    if n_in < 1 or n_out < 1 or n_in * n_out > MAX_ELEMENTS:
        raise ModelFormatError(f"{where}: a {n_out}x{n_in} layer is outside 1..{MAX_ELEMENTS} "
                               f"weights")
    fmt = _input_format(_get(d, "input", dict, where), f"{where}.input")
    enc = _encoding(_get(d, "encoding", dict, where), f"{where}.encoding")
    wname = _get(d, "weights", str, where)
    if isinstance(enc, Binary):
        packed = reader.array(wname, f"{where}.weights", (n_out, (n_in + 7) // 8))
        w = np.unpackbits(packed.astype(np.uint8), axis=1, count=n_in).astype(np.int64) * 2 - 1
    else:
        raw = reader.array(wname, f"{where}.weights", (n_out, n_in))
        w = enc.decode(raw, f"{where}.weights") if isinstance(enc, (Pow2, Lut)) else raw
    bias = reader.array(_get(d, "bias", str, where), f"{where}.bias", (n_out,))
    out = _get(d, "output", dict, where)
    okind = _get(out, "kind", str, f"{where}.output")
    ow = f"{where}.output"
    if okind == "threshold":
        count = _get(out, "count", int, ow)
        if not 1 <= count <= 255:
            raise ModelFormatError(f"{ow}.count must be in 1..255, not {count}")
        stage = Threshold(reader.array(_get(out, "thresholds", str, ow), f"{ow}.thresholds",
                                       (n_out, count)),
                          reader.array(_get(out, "direction", str, ow), f"{ow}.direction",
                                       (n_out,)))
    elif okind == "requant":
        stage = Requant(reader.array(_get(out, "multiplier", str, ow), f"{ow}.multiplier",
                                     (n_out,)),
                        _get(out, "shift", int, ow), _get(out, "bits", int, ow),
                        _get(out, "signed", bool, ow), _get(out, "rounding", str, ow))
    elif okind == "none":
        stage = NoOutput()
    else:
        raise ModelFormatError(f"{ow}.kind must be 'threshold', 'requant' or 'none', "
                               f"not {okind!r}"[:300])
    acc_bits = _get(d, "acc_bits", int, where)
    return Dense(w, enc, fmt, stage, bias, acc_bits, _get(d, "name", str, where, ""))


def _read(zf: zipfile.ZipFile, source: str) -> IntegerModel:
    try:
        info = zf.getinfo("manifest.json")
    except KeyError:
        raise ModelFormatError(f"{source}: not a bitfab model (no manifest.json)") from None
    if info.file_size > _MAX_MANIFEST_BYTES:
        raise ModelFormatError(f"manifest.json is {info.file_size} bytes, more than the limit "
                               f"{_MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(zf.read(info).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"manifest.json is not valid JSON ({str(exc)[:100]})") from None
    fmt = _get(manifest, "format", str, "manifest")
    if fmt != FORMAT_NAME:
        raise ModelFormatError(f"manifest.format must be {FORMAT_NAME!r}, not {fmt!r}"[:300])
    version = _get(manifest, "version", int, "manifest")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"manifest.version is {version}; this bitfab reads version "
                               f"{FORMAT_VERSION}")
    declared = _get(manifest, "arrays", dict, "manifest")
    reader = _Reader(zf, declared, source)
    entries = _get(manifest, "layers", list, "manifest")
    if not entries:
        raise ModelFormatError("manifest.layers must not be empty")
    layers = []
    for i, entry in enumerate(entries):
        where = f"layers[{i}]"
        kind = _get(entry, "kind", str, where)
        try:
            if kind == "dense":
                layers.append(_dense_from_manifest(entry, reader, where))
            elif kind in _LAYER_KINDS:
                layers.append(_LAYER_KINDS[kind].from_manifest(entry, reader, where))
            else:
                raise ModelFormatError(f"{where}.kind must be one of {sorted(_LAYER_KINDS)}, "
                                       f"not {kind!r}"[:300])
        except ModelFormatError as exc:
            msg = str(exc)
            raise ModelFormatError(msg if msg.startswith(where) else f"{where}.{msg}") from None
    extras = {}
    for key, name in _get(manifest, "extras", dict, "manifest").items():
        extras[key] = reader.array(name, f"extras.{key}", kinds="biuf")
    scale = _get(manifest, "input_scale", (int, float), "manifest")
    out_scale = _get(manifest, "output_scale", (int, float, type(None)), "manifest", None)
    return IntegerModel(tuple(layers), scale, out_scale,
                        _get(manifest, "metadata", dict, "manifest", {}), extras,
                        _get(manifest, "name", str, "manifest", "model"))


def load(path) -> IntegerModel:
    """Read a ``.bfm`` file. Every problem raises :class:`ModelFormatError` naming the field."""
    source = str(path)
    try:
        zf = zipfile.ZipFile(path, "r")
    except FileNotFoundError:
        raise ModelFormatError(f"{source}: no such model file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{source}: is a directory, not a model file") from None
    except PermissionError:
        raise ModelFormatError(f"{source}: permission denied") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, struct.error,
            NotImplementedError, RuntimeError, KeyError, IndexError, OverflowError) as exc:
        # zipfile raises all of these on corrupted directories
        raise ModelFormatError(f"{source}: not a bitfab model (not a readable zip archive: "
                               f"{str(exc)[:100]})") from None
    try:
        with zf:
            try:
                return _read(zf, source)
            except ModelFormatError as exc:
                raise ModelFormatError(f"{source}: {exc}") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, struct.error,
                    NotImplementedError, RuntimeError, OverflowError) as exc:
                # a corrupted entry (bad CRC, broken deflate stream, truncated data)
                raise ModelFormatError(f"{source}: corrupted model file "
                                       f"({type(exc).__name__}: {str(exc)[:100]})") from None
    except ModelFormatError:
        raise
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFormatError(f"{source}: corrupted model file ({str(exc)[:100]})") from None
