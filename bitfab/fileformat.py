"""The ``.bfm`` file: a zip holding ``manifest.json`` and ``.npy`` arrays, read without pickle.

Reading is defensive: sizes declared in the zip directory, in the manifest and in every ``.npy``
header are checked against each other and against the limits (``docs/limits.md``) *before* any
data is inflated or allocated, so a truncated, corrupted or hostile file raises
:class:`~bitfab.errors.ModelFormatError` naming the field, never a numpy or zipfile traceback, and
a small file never takes much memory:

- only regular files are opened (a FIFO, a device or a directory is refused before it is opened);
- the whole model is budgeted: every array a file names, each time it names it, counts its
  elements as they are in memory (int64 after widening, binary weights unpacked) against
  :data:`~bitfab.formats.MAX_MODEL_ELEMENTS`, before it is read; at most :data:`MAX_ARRAYS`
  arrays are read;
- an entry's data is read into one buffer of exactly the size its header declares.
"""

from __future__ import annotations

import ast
import io
import json
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFormatError
from .formats import MAX_ELEMENTS, MAX_MODEL_ELEMENTS, InputFormat

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Writer", "Reader", "field", "input_format",
           "smallest_int_dtype", "write_archive", "read_archive", "MAX_ARRAYS",
           "MAX_MANIFEST_BYTES"]

FORMAT_NAME = "bitfab-integer-model"
#: The newest version this bitfab writes and reads. A file says the oldest version that holds what
#: it uses (1: dense and lstm layers in a chain; 2: the image kinds and ``source``/``skip`` edges
#: of :mod:`bitfab.conv`), so version-1 readers still read every model they could.
FORMAT_VERSION = 2
#: Arrays one file may name (each name counts each time it is used).
MAX_ARRAYS = 4096
#: manifest.json's size: its JSON objects take up to ~25 times their text in memory
MAX_MANIFEST_BYTES = 4 << 20
_HEADER_BYTES = 4096  # the longest .npy header read
_MAX_ENTRY_BYTES = 8 * MAX_ELEMENTS + _HEADER_BYTES
_MAX_TOTAL_BYTES = 8 * MAX_MODEL_ELEMENTS + MAX_ARRAYS * _HEADER_BYTES
_CHUNK = 1 << 20  # bytes inflated per read into an array's buffer
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
    """Reads validated arrays from an open zip file (sizes checked before anything is read).

    Members
    -------
    elements : int
        Elements of the arrays read so far, as they are in memory (the whole-model budget
        :data:`~bitfab.formats.MAX_MODEL_ELEMENTS` counts them).
    arrays : int
        Arrays read so far (at most :data:`MAX_ARRAYS`).
    """

    def __init__(self, zf: zipfile.ZipFile, declared: dict, source: str):
        self.zf = zf
        self.declared = declared
        self.source = source
        self.total = 0
        self.elements = 0
        self.arrays = 0

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

    def charge(self, elements: int, where: str) -> None:
        """Count ``elements`` (in memory) against the whole-model budget, or refuse the file."""
        self.elements += elements
        if self.elements > MAX_MODEL_ELEMENTS:
            raise ModelFormatError(f"{where}: the model holds more than {MAX_MODEL_ELEMENTS} "
                                   f"array elements, the limit of one model (docs/limits.md)")

    def array(self, name: Any, where: str, shape: tuple | None = None, kinds: str = "iu",
              widened: int | None = None, widen: bool = True) -> np.ndarray:
        """Return the array entry ``name``, checked against its declaration, the expected
        ``shape`` and the limits: read-only, int64 for integer data (``widen``; else in its
        stored dtype).

        ``widened`` is the number of elements the caller turns it into (binary weights unpack
        eight per byte; default its own count): the budget is charged that many before anything
        is read.
        """
        if not isinstance(name, str):
            raise ModelFormatError(f"{where} must name an array entry, not {name!r}"[:300])
        decl = self.declared.get(name)
        if not isinstance(decl, dict):
            raise ModelFormatError(f"{where}: array {name!r} is not declared in "
                                   f"manifest.arrays"[:300])
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
                                   f"the limit {MAX_ELEMENTS}"[:300])
        if shape is not None and tuple(dshape) != shape:
            raise ModelFormatError(f"{where}: array {name!r} has shape {tuple(dshape)}, "
                                   f"expected {shape}"[:300])
        self.arrays += 1
        if self.arrays > MAX_ARRAYS:
            raise ModelFormatError(f"{where}: the file names more than {MAX_ARRAYS} arrays")
        self.charge(max(count, widened or 0), where)
        info = self.entry(name, where)
        with self.zf.open(info) as f:
            head = f.read(min(info.file_size, _HEADER_BYTES))
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
                raise ModelFormatError(f"{where}: array {name!r} has unsupported dtype "
                                       f"{descr!r}"[:300])
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
            # one buffer of exactly the declared size, filled a chunk at a time
            buf = np.empty(nbytes, dtype=np.uint8)
            got = min(len(head) - offset, nbytes)
            buf[:got] = np.frombuffer(head, dtype=np.uint8, count=got, offset=offset)
            while got < nbytes:
                chunk = f.read(min(_CHUNK, nbytes - got))
                if not chunk:
                    raise ModelFormatError(f"{where}: array {name!r} is truncated")
                buf[got:got + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                got += len(chunk)
        arr = buf.view(dtype).reshape(hshape, order="F" if fortran else "C")
        if widen and dtype.kind in "iub":
            arr = arr.astype(np.int64)
        else:
            buf.flags.writeable = False
        arr.flags.writeable = False
        return arr


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
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ModelFormatError(f"manifest.json is {info.file_size} bytes, more than the limit "
                               f"{MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(zf.read(info).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        # ValueError: json.JSONDecodeError, and an integer of more than 4300 digits
        raise ModelFormatError(f"manifest.json is not valid JSON ({str(exc)[:100]})") from None
    fmt = field(manifest, "format", str, "manifest")
    if fmt != FORMAT_NAME:
        raise ModelFormatError(f"manifest.format must be {FORMAT_NAME!r}, not {fmt!r}"[:300])
    version = field(manifest, "version", int, "manifest")
    if not 1 <= version <= FORMAT_VERSION:
        raise ModelFormatError(f"manifest.version is {version}; this bitfab reads versions "
                               f"1..{FORMAT_VERSION}")
    return manifest


def _open_regular(path, source: str):
    """Open ``path`` for reading if it is a regular file; refuse anything else (a FIFO would
    block, a device would never end) before opening it, and again on the opened file."""
    try:
        mode = os.stat(path).st_mode
        # O_NONBLOCK: should a FIFO replace the file after the check, open does not wait for it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)) \
            if stat.S_ISREG(mode) else None
    except FileNotFoundError:
        raise ModelFormatError(f"{source}: no such model file") from None
    except PermissionError:
        raise ModelFormatError(f"{source}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{source}: cannot open the model file "
                               f"({str(exc)[:100]})") from None
    if fd is None:
        _refuse_kind(mode, source)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        _refuse_kind(mode, source)
    return os.fdopen(fd, "rb")


def _refuse_kind(mode: int, source: str):
    if stat.S_ISDIR(mode):
        raise ModelFormatError(f"{source}: is a directory, not a model file")
    what = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    raise ModelFormatError(f"{source}: is {what}, not a regular file")


def read_archive(path, build):
    """Open a ``.bfm`` file and return ``build(manifest, reader)`` (the manifest's envelope
    checked, a :class:`Reader` for its arrays). Every problem raises :class:`ModelFormatError`
    naming the field, prefixed with the path; only regular files are opened."""
    source = str(path)
    file = _open_regular(path, source)
    try:
        zf = zipfile.ZipFile(file, "r")
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, struct.error,
            NotImplementedError, RuntimeError, KeyError, IndexError, OverflowError) as exc:
        # zipfile raises all of these on corrupted directories
        file.close()
        raise ModelFormatError(f"{source}: not a bitfab model (not a readable zip archive: "
                               f"{str(exc)[:100]})") from None
    except BaseException:
        file.close()
        raise
    try:
        with file, zf:
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
