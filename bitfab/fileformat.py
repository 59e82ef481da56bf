"""The ``.bfm`` file: a zip holding ``manifest.json`` and ``.npy`` arrays, read without pickle.

Reading is defensive: sizes declared in the zip directory, in the manifest and in every ``.npy``
header are checked against each other and against :data:`bitfab.formats.MAX_ELEMENTS` *before* any
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
from .formats import MAX_ELEMENTS, InputFormat

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Writer", "Reader", "field", "input_format",
           "smallest_int_dtype", "write_archive", "read_archive"]

FORMAT_NAME = "bitfab-integer-model"
FORMAT_VERSION = 1
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_ENTRY_BYTES = 1 << 30
_MAX_TOTAL_BYTES = 4 << 30
_MAX_RATIO = 1100  # deflate cannot do better than ~1032:1; more means a crafted entry
_DTYPES = {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<f2", "<f4", "<f8"}


# --- writing --------------------------------------------------------------------------------------


class Writer:
    """Collects the arrays of a manifest under their entry names."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, array: np.ndarray) -> str:
        """Store ``array`` as entry ``name`` (``"layers/0/weights.npy"``); return the name."""
        self.arrays[name] = np.ascontiguousarray(array)
        return name

    def add_int(self, name: str, array: np.ndarray) -> str:
        """Store an integer array in its smallest integer dtype."""
        array = np.asarray(array)
        return self.add(name, array.astype(smallest_int_dtype(array)))


def smallest_int_dtype(arr: np.ndarray) -> np.dtype:
    """Return the smallest of int8..int64 that holds every value of ``arr``."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise AssertionError("unreachable: values are validated to fit 62 bits")


def write_archive(manifest: dict, arrays: dict, path) -> None:
    """Write ``manifest`` and ``arrays`` to ``path`` atomically (a temporary file renamed into
    place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    out = open(tmp, "xb")  # a fresh name, created exclusively: never a file of the user's
    try:
        with out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                zf.writestr(name, buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- reading --------------------------------------------------------------------------------------


def field(d: Any, key: str, types, where: str, default: Any = ...) -> Any:
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


class Reader:
    """Reads validated arrays from an open zip file (sizes checked before anything is read)."""

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
        """Return the array entry ``name`` (int64 for integer data), checked against its
        declaration, the expected ``shape`` and the size limits."""
        if not isinstance(name, str):
            raise ModelFormatError(f"{where} must name an array entry, not {name!r}"[:300])
        decl = self.declared.get(name)
        if not isinstance(decl, dict):
            raise ModelFormatError(f"{where}: array {name!r} is not declared in manifest.arrays")
        dshape = field(decl, "shape", list, f"arrays[{name!r}]")
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


def input_format(d: Any, where: str) -> InputFormat:
    """Return the InputFormat a manifest entry describes."""
    kind = field(d, "kind", str, where)
    if kind == "bipolar":
        return InputFormat.bipolar()
    if kind != "int":
        raise ModelFormatError(f"{where}.kind must be 'bipolar' or 'int', not {kind!r}"[:300])
    return InputFormat.int(field(d, "bits", int, where), field(d, "signed", bool, where))


def _manifest(zf: zipfile.ZipFile, source: str) -> dict:
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
    fmt = field(manifest, "format", str, "manifest")
    if fmt != FORMAT_NAME:
        raise ModelFormatError(f"manifest.format must be {FORMAT_NAME!r}, not {fmt!r}"[:300])
    version = field(manifest, "version", int, "manifest")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"manifest.version is {version}; this bitfab reads version "
                               f"{FORMAT_VERSION}")
    return manifest


def read_archive(path, build):
    """Open a ``.bfm`` file and return ``build(manifest, reader)`` (the manifest's envelope
    checked, a :class:`Reader` for its arrays). Every problem raises :class:`ModelFormatError`
    naming the field, prefixed with the path."""
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
                manifest = _manifest(zf, source)
                reader = Reader(zf, field(manifest, "arrays", dict, "manifest"), source)
                return build(manifest, reader)
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
