"""The file layer of checkpoints: ``.npz`` archives written atomically and
streamed, read back member by member with every byte checked.

The files are standard ``.npz`` archives (a zip of ``.npy`` members, no
pickles) that ``numpy.load`` reads as well.

Writing
-------
``write(path, members)`` writes the archive to a temporary file in the
target's directory, named ``.<basename>.<16 hex digits>.tmp``, one member at
a time straight from the arrays' memory (no copy of the whole archive, nor
of any array), flushes and fsyncs it, renames it over ``path`` and fsyncs the
directory. The file is created with mode ``0o666 & ~umask``, as ``open()``
would create it. While it is written the temporary file holds an exclusive
``flock``; before writing, ``write`` deletes the temporaries of the same
target that interrupted saves left behind (same directory, exactly that
name pattern, regular files whose lock it can take: no live writer).

On any failure (including KeyboardInterrupt) the temporary file is removed,
the previous ``path`` is left as it was, and the exception propagates.

Reading
-------
``Reader(path)`` opens an archive and lists its members; ``Reader.array``
and ``Reader.json`` read one member each, and members that are not asked for
are never read. Whatever is wrong with the file (missing, not a regular
file, not a zip, truncated, a CRC mismatch, a member missing or not ``.npy``,
a dtype other than bool / integer / floating, a header declaring more or
fewer bytes than the member holds, bad UTF-8 or JSON, JSON nested too deep)
raises ValueError whose text starts with the path and says what is wrong.
Nothing is allocated beyond the size the member really holds.

Member names are 1 to 200 characters of ``A-Z a-z 0-9 _ . -``; member
``name`` is stored as ``name + ".npy"`` (the key ``numpy.load`` gives back
is ``name``).
"""

from __future__ import annotations

import ast
import errno
import json as _json
import os
import re
import secrets
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import NoReturn

import numpy as np

from . import _validate

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale temporaries are left alone
    fcntl = None

__all__ = ["write", "check_writable", "Reader", "read", "read_json",
           "MAX_JSON_BYTES", "MAX_JSON_DEPTH"]

#: read_json's default limits: the member's size in bytes, and how deeply
#: arrays / objects may nest
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_SUFFIX = ".npy"
_CHUNK = 2**20                            # bytes per read / write call
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10000                       # numpy.load's own limit on a .npy header
_MAX_NDIM = 64
_INTP_MAX = np.iinfo(np.intp).max
_DEFLATE_RATIO = 1100                     # deflate's limit is 1032 output bytes per input byte
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)         # fixed, so equal contents give equal files


# ---------------------------------------------------------------------------
# dtypes and names (the same rules for writing and reading)
# ---------------------------------------------------------------------------
def _dtype_problem(dt: np.dtype) -> str | None:
    """Why ``dt`` may not be stored, or None: bool, integer and floating
    dtypes only, little-endian or native byte order."""
    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        return f"dtype {dt} is not allowed (bool, integer and floating dtypes only)"
    if dt.byteorder == ">":  # NumPy writes ">" only for a non-native big-endian dtype
        return f"dtype {dt.str} is big-endian (little-endian or native only)"
    return None


def _path(value) -> str:
    """A file system path: a str or an os.PathLike giving a str."""
    try:
        p = os.fspath(value)
    except TypeError:
        p = None
    if not isinstance(p, str):
        raise TypeError(f"path must be a str or os.PathLike path; received "
                        f"{type(value).__name__} {value!r:.80}")
    return p


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"member names must be str; received {type(name).__name__} {name!r:.80}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"member names must be 1 to 200 characters of A-Z a-z 0-9 _ . -; "
                         f"received {name!r:.80}")
    return name


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _temp_prefix(base: str) -> str:
    """``.<base>.``: the temporaries of target ``base`` are this prefix, 16
    hex digits and ``.tmp``. A long base is shortened (and made unique by a
    hash) so that the name stays within the usual 255-byte limit."""
    if len(base.encode("utf-8", "surrogateescape")) > 200:
        digest = zlib.crc32(base.encode("utf-8", "surrogateescape"))
        base = f"{base[:48]}~{digest:08x}"
    return f".{base}."


def _temp_pattern(base: str) -> re.Pattern:
    return re.compile(re.escape(_temp_prefix(base)) + r"[0-9a-f]{16}\.tmp")


def _split(path) -> tuple[str, str, str]:
    """``(path, directory, basename)``, with the path and directory checked
    (the directory exists and is a directory, the path is not one)."""
    path = _path(path)
    if not path:
        raise ValueError("path must be a file path; received ''")
    full = os.path.abspath(path)
    directory, base = os.path.split(full)
    if not base or path.endswith((os.sep, "/")) or os.path.isdir(full):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path}: it is a directory; expected a file path")
    if not os.path.exists(directory):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: the directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {path}: {directory} is not a directory")
    return path, directory, base


def _create_temp(path: str, directory: str, base: str) -> tuple[int, str]:
    """A new temporary file beside ``path``, created with mode 0o666 (the
    umask applies) and locked; returns ``(fd, temp path)``."""
    prefix = _temp_prefix(base)
    for _ in range(100):
        tmp = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise PermissionError(exc.errno, f"cannot write {path}: the directory {directory} "
                                  f"is not writable ({exc.strerror})") from None
        except OSError as exc:
            raise type(exc)(exc.errno, f"cannot write {path}: cannot create a file in "
                            f"{directory} ({exc.strerror})") from None
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a concurrent cleanup may have taken the lock between O_CREAT and
            # flock and deleted the name: keep the file only if it is still ours
            if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except OSError:
            pass
        os.close(fd)
    raise FileExistsError(errno.EEXIST, f"cannot write {path}: no free temporary file name in {directory}")


def _remove_stale(directory: str, base: str) -> list[str]:
    """Delete the temporaries of ``base`` in ``directory`` that no live
    process is writing (their lock is free). Returns the paths deleted."""
    if fcntl is None:
        return []
    pattern = _temp_pattern(base)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not pattern.fullmatch(name):
            continue
        tmp = os.path.join(directory, name)
        try:
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:  # gone, a symlink, unreadable: not ours to delete
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live writer holds it
                continue
            if os.stat(tmp, follow_symlinks=False).st_ino == st.st_ino:
                os.unlink(tmp)
                removed.append(tmp)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _as_array(name: str, value) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = np.frombuffer(value, dtype=np.uint8)  # no copy
    if not isinstance(value, np.ndarray):
        raise TypeError(f"member {name!r} must be a numpy.ndarray or bytes; received "
                        f"{type(value).__name__}")
    problem = _dtype_problem(value.dtype)
    if problem:
        raise ValueError(f"member {name!r}: {problem}")
    if value.ndim > _MAX_NDIM:
        raise ValueError(f"member {name!r}: at most {_MAX_NDIM} dimensions; received {value.ndim}")
    return value


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name + _SUFFIX, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _write_array(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    """One ``.npy`` member. C- or Fortran-contiguous arrays go from their
    own memory to the file; others through numpy's chunked writer."""
    with zf.open(_zip_info(name), "w", force_zip64=True) as out:
        if arr.flags.c_contiguous or arr.flags.f_contiguous:
            np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(arr))
            if arr.nbytes:
                flat = arr.T if not arr.flags.c_contiguous else arr  # memory order
                raw = memoryview(flat.reshape(-1).view(np.uint8))
                for start in range(0, len(raw), _CHUNK):
                    out.write(raw[start:start + _CHUNK])
        else:
            np.lib.format.write_array(out, arr, allow_pickle=False)


def check_writable(path) -> str:
    """Check that :func:`write` can create or replace ``path``: its
    directory exists, is a directory and is writable (tried by creating and
    deleting a temporary file there), and ``path`` is not a directory.
    Nothing lasting is written. Returns ``path`` as a str.

    Raises FileNotFoundError (no such directory), NotADirectoryError,
    IsADirectoryError (``path`` is a directory), PermissionError or another
    OSError (the directory is not writable), each naming ``path``;
    TypeError / ValueError for an argument that is not a path.
    """
    path, directory, base = _split(path)
    fd, tmp = _create_temp(path, directory, base)
    os.close(fd)
    os.unlink(tmp)
    return path


def write(path, members: Mapping) -> None:
    """Write ``members`` (name -> numpy array, or bytes stored as a 1-d uint8
    array) to the ``.npz`` file ``path``, atomically, in the mapping's order.

    Everything is checked before any file is created: ``path`` as in
    :func:`check_writable`, each name (1 to 200 characters of
    ``A-Z a-z 0-9 _ . -``), each value (an ndarray, or bytes / bytearray /
    memoryview, of a bool, integer or floating dtype, not big-endian, at most
    64 dimensions); TypeError / ValueError otherwise. Then stale temporaries
    of ``path`` are deleted and the archive is written as the module
    docstring says. Arrays are written as they are in memory (no copy for C-
    or Fortran-contiguous arrays; others in 16 MiB pieces).
    """
    if not isinstance(members, Mapping):
        raise TypeError(f"members must be a mapping of name -> array; received {type(members).__name__}")
    arrays = [(_check_name(k), _as_array(k, v)) for k, v in members.items()]
    path, directory, base = _split(path)
    _remove_stale(directory, base)
    fd, tmp = _create_temp(path, directory, base)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, arr in arrays:
                    _write_array(zf, name, arr)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)  # still locked: no cleanup can take it meanwhile
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
    _fsync_directory(directory)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
# What the standard library's zipfile / zlib raise on a damaged archive
# (found by truncating and flipping bits). Only the calls into zipfile and
# the reads from its members are guarded by this: our own checks raise
# ValueError themselves.
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error,
            UnicodeError, NotImplementedError, RuntimeError, ArithmeticError, LookupError,
            zlib.error)


class Reader:
    """An open ``.npz`` archive; read members one at a time.

    ``Reader(path)`` opens the file and reads the zip directory only (no
    member data); ``names`` lists the members in archive order (``.npy``
    members without the suffix, any other entry by its full name). Use it as
    a context manager, or call ``close()``. Not thread-safe.
    """

    def __init__(self, path):
        self.path = _path(path)
        self._file = None
        self._zip = None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot open the file ({exc.strerror or exc})") from exc
        try:
            st = os.fstat(self._file.fileno())
            if not stat.S_ISREG(st.st_mode):
                self._fail("not a regular file")
            self._size = st.st_size
            self._open_zip()
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str, cause: BaseException | None = None) -> NoReturn:
        text = f"{self.path}: {problem}"
        if cause is not None:
            text += f" ({type(cause).__name__}: {cause})"
        raise ValueError(text) from cause

    def _open_zip(self) -> None:
        head = self._file.read(len(_NPY_MAGIC))
        self._file.seek(0)
        if head == _NPY_MAGIC:
            self._fail("a single .npy array, not a .npz archive")
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except _DAMAGED as exc:
            self._fail("not a readable zip archive", exc)
        for info in infos:
            fname = info.filename
            name = fname[:-len(_SUFFIX)] if fname.endswith(_SUFFIX) else fname
            if name in self._infos:
                self._fail(f"member {name!r} appears twice")
            if info.flag_bits & 0x1:
                self._fail(f"member {name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                self._fail(f"member {name!r} uses compression method {info.compress_type} "
                           "(stored or deflated only)")
            if info.header_offset < 0 or info.header_offset + info.compress_size > self._size:
                self._fail(f"member {name!r} extends past the end of the {self._size}-byte file")
            if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                self._fail(f"member {name!r} is stored but declares {info.file_size} bytes "
                           f"in {info.compress_size}")
            if info.file_size > _DEFLATE_RATIO * info.compress_size + 4096:
                self._fail(f"member {name!r} declares {info.file_size} bytes, more than "
                           f"{info.compress_size} compressed bytes can hold")
            self._infos[name] = info
        self._check_layout()

    def _check_layout(self) -> None:
        """Each member's local header repeats its name, and the members lie
        one after the other up to the central directory, with no gap and no
        overlap: a damaged directory that hides or invents members, or an
        archive whose members share bytes, is refused here."""
        infos = sorted(self._infos.items(), key=lambda kv: kv[1].header_offset)
        ends = []
        for name, info in infos:
            try:
                self._file.seek(info.header_offset)
                head = self._file.read(30)
                sig, *_, n, m = struct.unpack("<4sBBHHHHLLLHH", head)
                raw = self._file.read(n)
            except _DAMAGED as exc:
                self._fail(f"member {name!r}: unreadable local header", exc)
            encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
            if sig != b"PK\x03\x04" or raw.decode(encoding, "replace") != info.orig_filename:
                self._fail(f"member {name!r}: the local header does not match the directory")
            ends.append((info.header_offset + 30 + n + m + info.compress_size, info.flag_bits & 0x8))
        starts = [info.header_offset for _, info in infos[1:]] + [self._zip.start_dir]
        for (name, _), (end, descriptor), start in zip(infos, ends, starts):
            gap = start - end
            if not (gap == 0 or (descriptor and gap in (12, 16, 20, 24))):
                self._fail(f"member {name!r}: the members do not tile the archive "
                           f"(a {'gap' if gap > 0 else 'overlap'} of {abs(gap)} bytes after it)")

    # -- listing ------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._infos)

    def __contains__(self, name) -> bool:
        return name in self._infos

    def unexpected(self, expected) -> list[str]:
        """The member names not in ``expected``, in archive order."""
        expected = set(expected)
        return [n for n in self._infos if n not in expected]

    # -- members ------------------------------------------------------------
    def _info(self, name: str) -> zipfile.ZipInfo:
        if self._zip is None:
            raise ValueError(f"{self.path}: the archive is closed")
        info = self._infos.get(name)
        if info is None:
            self._fail(f"no member {name!r} (members: {', '.join(self._infos) or 'none'})")
        if not info.filename.endswith(_SUFFIX):
            self._fail(f"member {name!r} is not a .npy array")
        return info

    def _open(self, name: str, info: zipfile.ZipInfo):
        try:
            return self._zip.open(info)
        except _DAMAGED as exc:
            self._fail(f"member {name!r} is damaged", exc)

    def _read(self, name: str, f, n: int) -> bytes:
        try:
            data = f.read(n)
        except _DAMAGED as exc:
            self._fail(f"member {name!r} is damaged", exc)
        if len(data) != n:
            self._fail(f"member {name!r} is truncated")
        return data

    def _header(self, name: str, info: zipfile.ZipInfo, f) -> tuple[tuple, np.dtype, bool, int]:
        """Parse the .npy header: ``(shape, dtype, fortran_order, header
        length)``, checked against the member's size."""
        lead = self._read(name, f, 8)
        if lead[:6] != _NPY_MAGIC:
            self._fail(f"member {name!r} is not a .npy array (bad magic)")
        major = lead[6]
        if major == 1:
            hlen = struct.unpack("<H", self._read(name, f, 2))[0]
            offset = 10
        elif major in (2, 3):
            hlen = struct.unpack("<I", self._read(name, f, 4))[0]
            offset = 12
        else:
            self._fail(f"member {name!r}: .npy format version {major}.{lead[7]} is not supported")
        if hlen > _MAX_HEADER or offset + hlen > info.file_size:
            self._fail(f"member {name!r}: .npy header of {hlen} bytes is too long")
        raw = self._read(name, f, hlen)
        try:
            text = raw.decode("utf-8" if major == 3 else "latin1")
            # literal_eval of untrusted text: SyntaxError, ValueError,
            # MemoryError or RecursionError are all "a bad header"
            d = ast.literal_eval(text)
        except Exception as exc:
            self._fail(f"member {name!r}: unreadable .npy header", exc)
        if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
            self._fail(f"member {name!r}: .npy header must have the keys descr, fortran_order "
                       f"and shape; received {text.strip()!r:.200}")
        descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
        if not isinstance(descr, str):
            self._fail(f"member {name!r}: dtype {descr!r:.200} is not allowed "
                       "(bool, integer and floating dtypes only)")
        try:
            dtype = np.dtype(descr)
        except Exception as exc:  # np.dtype of an arbitrary string: TypeError, ValueError, ...
            self._fail(f"member {name!r}: unknown dtype {descr!r:.80}", exc)
        problem = _dtype_problem(dtype)
        if problem:
            self._fail(f"member {name!r}: {problem}")
        if not isinstance(fortran, bool):
            self._fail(f"member {name!r}: fortran_order must be a bool; received {fortran!r:.80}")
        if (not isinstance(shape, tuple) or len(shape) > _MAX_NDIM
                or not all(type(n) is int and 0 <= n <= _INTP_MAX for n in shape)):
            self._fail(f"member {name!r}: shape must be a tuple of at most {_MAX_NDIM} ints >= 0; "
                       f"received {shape!r:.200}")
        count = 1
        for n in shape:  # Python ints: no overflow
            count *= n
        nbytes = count * dtype.itemsize
        body = info.file_size - offset - hlen
        if nbytes != body:
            self._fail(f"member {name!r}: the header declares shape {shape} of {dtype} "
                       f"({nbytes} bytes); the member holds {body}")
        big = 1
        for n in shape:
            big *= max(n, 1)
        if big * dtype.itemsize > _INTP_MAX:  # a 0 in the shape does not make (0, 2**62, 2**62) allocatable
            self._fail(f"member {name!r}: shape {shape} is too large")
        return shape, dtype, fortran, offset + hlen

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of member ``name``, read from its header only."""
        info = self._info(name)
        with self._open(name, info) as f:
            shape, dtype, _, _ = self._header(name, info, f)
        return shape, dtype

    def array(self, name: str) -> np.ndarray:
        """Member ``name`` as a new, writable array (C order, or Fortran
        order if it was stored so). Its size is checked against the header
        before anything is allocated; a deflated member is first
        decompressed once without keeping the data, so that no more is
        allocated than it really holds."""
        info = self._info(name)
        with self._open(name, info) as f:
            shape, dtype, fortran, _ = self._header(name, info, f)
            if info.compress_type != zipfile.ZIP_STORED:
                self._verify(name, info)
            arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
            if arr.nbytes:
                view = memoryview(arr.reshape(-1).view(np.uint8))
                for start in range(0, len(view), _CHUNK):
                    stop = min(start + _CHUNK, len(view))
                    view[start:stop] = self._read(name, f, stop - start)
            if self._read_rest(name, f):
                self._fail(f"member {name!r} holds more data than its header declares")
        return arr.T if fortran else arr

    def _read_rest(self, name: str, f) -> bytes:
        try:
            return f.read(1)  # at the end: this also checks the CRC
        except _DAMAGED as exc:
            self._fail(f"member {name!r} is damaged", exc)

    def _verify(self, name: str, info: zipfile.ZipInfo) -> None:
        """Decompress a member once, keeping nothing, to check that it
        holds the bytes it declares (and its CRC)."""
        with self._open(name, info) as f:
            left = info.file_size
            while left:
                left -= len(self._read(name, f, min(_CHUNK, left)))
            if self._read_rest(name, f):
                self._fail(f"member {name!r} holds more data than it declares")

    def json(self, name: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
        """Member ``name`` (a 1-d uint8 array of UTF-8 JSON text) decoded:
        at most ``max_bytes`` bytes, arrays / objects nested at most
        ``max_depth`` deep. Returns what ``json.loads`` returns (NaN and
        Infinity accepted, as ``json.dumps`` writes them)."""
        max_bytes = _validate.integer("max_bytes", max_bytes, 0)
        max_depth = _validate.integer("max_depth", max_depth, 1)
        shape, dtype = self.header(name)
        if dtype != np.uint8 or len(shape) != 1:
            self._fail(f"member {name!r} must be JSON text as a 1-d uint8 array; "
                       f"received shape {shape} of {dtype}")
        if shape[0] > max_bytes:
            self._fail(f"member {name!r}: {shape[0]} bytes of JSON; the limit is {max_bytes}")
        raw = self.array(name).tobytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._fail(f"member {name!r} is not UTF-8 text", exc)
        try:
            value = _json.loads(text)
        except RecursionError:  # json's scanner counts its depth and stops cleanly
            self._fail(f"member {name!r}: JSON nested too deep; the limit is {max_depth}")
        except ValueError as exc:  # JSONDecodeError; also int() of > 4300 digits
            self._fail(f"member {name!r} is not valid JSON", exc)
        if _json_depth(value) > max_depth:
            self._fail(f"member {name!r}: JSON nested {_json_depth(value)} deep; the limit is {max_depth}")
        return value

    # -- closing ------------------------------------------------------------
    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._zip is None else f"{len(self._infos)} members"
        return f"<fusedtrain._archive.Reader {self.path!r} ({state})>"


def _json_depth(value) -> int:
    """How deeply lists and dicts nest in a decoded JSON value (a scalar is
    0 deep, ``[]`` 1); walked with an explicit stack, not recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((x, depth + 1) for x in v if isinstance(x, (list, dict)))
    return deepest


def read(path, names, *, allow_extra: bool = False) -> dict:
    """The arrays ``names`` of the archive ``path``, as ``{name: array}`` in
    the order of ``names``. Raises ValueError naming the file if one is
    missing or damaged, or (unless ``allow_extra``) if the archive holds a
    member not in ``names``."""
    names = list(names)
    with Reader(path) as r:
        if not allow_extra:
            extra = r.unexpected(names)
            if extra:
                r._fail(f"unexpected members {extra}")
        return {n: r.array(n) for n in names}


def read_json(source, name: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """Member ``name`` of ``source`` (a path or an open :class:`Reader`)
    decoded as JSON; see :meth:`Reader.json`."""
    if isinstance(source, Reader):
        return source.json(name, max_bytes=max_bytes, max_depth=max_depth)
    with Reader(source) as r:
        return r.json(name, max_bytes=max_bytes, max_depth=max_depth)
