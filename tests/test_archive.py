"""The checkpoint file layer (fusedtrain._archive): atomic streamed writes,
stale temporaries, file modes, and reads that turn every kind of damaged or
crafted file into a ValueError naming it."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import fusedtrain
from fusedtrain import _archive

fcntl = pytest.importorskip("fcntl")

MiB = 2**20


def sample_members():
    rng = np.random.default_rng(0)
    return {
        "meta": json.dumps({"format": "x", "history": [1.5, float("nan")], "nested": {"a": [1, [2]]}}).encode(),
        "params": rng.standard_normal(1000).astype(np.float32),
        "f64": rng.standard_normal((7, 3)),
        "i64": rng.integers(-2**62, 2**62, (4, 5), dtype=np.int64),
        "u8": rng.integers(0, 256, 33, dtype=np.uint8),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "flags": np.array([True, False, True]),
        "f16": np.arange(5, dtype=np.float16),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "strided": np.arange(40, dtype=np.float64).reshape(4, 10)[:, ::3],
    }


def assert_same(got: np.ndarray, want: np.ndarray):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def temps(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# ---------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------
def test_round_trip(tmp_path):
    path = tmp_path / "ck.npz"
    members = sample_members()
    _archive.write(path, members)
    assert temps(tmp_path) == []
    with _archive.Reader(path) as r:
        assert r.names == tuple(members)
        assert "params" in r and "nope" not in r
        assert r.unexpected(["params", "meta"]) == [n for n in members if n not in ("params", "meta")]
        assert r.json("meta")["nested"] == {"a": [1, [2]]}
        for name, want in members.items():
            if name == "meta":
                continue
            got = r.array(name)
            assert_same(got, want)
            assert got.flags.writeable
            assert r.header(name) == (want.shape, want.dtype)
        assert r.array("fortran").flags.f_contiguous
    # numpy reads the same file
    with np.load(path, allow_pickle=False) as z:
        assert z.files == list(members)
        for name, want in members.items():
            if name != "meta":
                assert_same(z[name], want)
        assert z["meta"].tobytes() == members["meta"]
    # equal contents give equal bytes (no timestamps)
    _archive.write(tmp_path / "again.npz", members)
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()


def test_read_and_read_json(tmp_path):
    path = tmp_path / "ck.npz"
    members = sample_members()
    _archive.write(str(path), members)
    got = _archive.read(path, ["f64", "params"], allow_extra=True)
    assert list(got) == ["f64", "params"]
    assert_same(got["params"], members["params"])
    with pytest.raises(ValueError, match=re.escape(f"{path}: unexpected members ['meta', ")):
        _archive.read(path, ["params"])
    with pytest.raises(ValueError, match=r"no member 'missing' \(members: meta, params"):
        _archive.read(path, ["missing"], allow_extra=True)
    assert _archive.read_json(path, "meta")["format"] == "x"
    with _archive.Reader(path) as r:
        assert _archive.read_json(r, "meta")["format"] == "x"
    with pytest.raises(ValueError, match="the archive is closed"):
        r.array("params")
    with pytest.raises(ValueError, match=r"'params' must be JSON text as a 1-d uint8 array; received shape \(1000,\)"):
        _archive.read_json(path, "params")


def test_members_are_read_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    _archive.write(path, {"a": np.arange(3), "b": np.arange(4)})
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name))
                        or real_open(self, name, *a, **k))
    with _archive.Reader(path) as r:
        assert r.names == ("a", "b")
        r.array("b")
    assert opened == ["b.npy"]


def test_large_write_streams_without_a_copy(tmp_path):
    path = tmp_path / "big.npz"
    members = {"params": np.ones(25 * MiB // 8), "exp_avg": np.full(25 * MiB // 8, 2.0),
               "steps": np.ones(50 * MiB // 8)[::2]}  # strided: numpy's chunked writer
    tracemalloc.start()
    try:
        _archive.write(path, members)
        _, peak_write = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = _archive.read(path, ["exp_avg"], allow_extra=True)["exp_avg"]
        _, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # no copy of an array, let alone of the archive: numpy's 16 MiB pieces for
    # the strided array are the most it holds
    assert peak_write < 20 * MiB, peak_write
    assert peak_read < 25 * MiB + 10 * MiB, peak_read  # the array and one read chunk
    assert_same(got, members["exp_avg"])
    assert path.stat().st_size > 75 * MiB


# ---------------------------------------------------------------------------
# writing: checks, modes, atomicity, stale temporaries
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("members, exc, message", [
    ({"a": [1, 2]}, TypeError, "member 'a' must be a numpy.ndarray or bytes; received list"),
    ({"a": np.array([object()])}, ValueError, r"member 'a': dtype object is not allowed"),
    ({"a": np.zeros(2, dtype="U3")}, ValueError, r"dtype <U3 is not allowed"),
    ({"a": np.zeros(2, dtype=[("x", "<f4")])}, ValueError, "is not allowed"),
    ({"a": np.zeros(2, dtype=np.complex64)}, ValueError, "is not allowed"),
    ({"a": np.zeros(2, dtype=">f4")}, ValueError, "dtype >f4 is big-endian"),
    ({"a/b": np.zeros(2)}, ValueError, "member names must be 1 to 200 characters"),
    ({"": np.zeros(2)}, ValueError, "member names must be"),
    ({3: np.zeros(2)}, TypeError, "member names must be str; received int 3"),
    ([("a", np.zeros(2))], TypeError, "members must be a mapping"),
])
def test_write_rejects_bad_members(tmp_path, members, exc, message):
    with pytest.raises(exc, match=message):
        _archive.write(tmp_path / "ck.npz", members)
    assert os.listdir(tmp_path) == []


def test_write_and_check_writable_path_errors(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    cases = [
        (tmp_path / "nowhere" / "ck.npz", FileNotFoundError, "does not exist"),
        (tmp_path / "dir", IsADirectoryError, "is a directory"),
        (str(tmp_path / "dir") + os.sep, IsADirectoryError, "is a directory"),
        (tmp_path / "file" / "ck.npz", NotADirectoryError, "is not a directory"),
    ]
    for path, exc, message in cases:
        for call in (_archive.check_writable, lambda p: _archive.write(p, {"a": np.zeros(1)})):
            with pytest.raises(exc, match=message) as e:
                call(path)
            assert str(path) in str(e.value)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        _archive.check_writable(3)
    with pytest.raises(ValueError, match="path must be a file path"):
        _archive.check_writable("")
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]


def test_check_writable_leaves_nothing(tmp_path):
    assert _archive.check_writable(tmp_path / "ck.npz") == str(tmp_path / "ck.npz")
    assert os.listdir(tmp_path) == []
    _archive.write(tmp_path / "ck.npz", {"a": np.zeros(1)})
    before = (tmp_path / "ck.npz").read_bytes()
    _archive.check_writable(tmp_path / "ck.npz")  # an existing file can be replaced
    assert os.listdir(tmp_path) == ["ck.npz"] and (tmp_path / "ck.npz").read_bytes() == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_check_writable_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="is not writable") as e:
            _archive.check_writable(ro / "ck.npz")
        assert str(ro / "ck.npz") in str(e.value)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o000, 0o666)])
def test_file_mode_follows_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _archive.write(tmp_path / "ck.npz", {"a": np.zeros(3)})
        _archive.write(tmp_path / "ck.npz", {"a": np.ones(3)})  # replacing too
    finally:
        os.umask(old)
    assert (tmp_path / "ck.npz").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("failure", ["member", "replace", "interrupt"])
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "ck.npz"
    _archive.write(path, {"a": np.arange(5)})
    before = path.read_bytes()
    if failure == "replace":
        monkeypatch.setattr(_archive.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
        exc = OSError
    else:
        real = _archive._write_array
        exc = RuntimeError if failure == "member" else KeyboardInterrupt

        def failing(zf, name, arr):
            real(zf, name, arr)
            if name == "b":
                assert temps(tmp_path), "the temporary file is being written"
                raise exc("disk gone")
        monkeypatch.setattr(_archive, "_write_array", failing)
    with pytest.raises(exc):
        _archive.write(path, {"a": np.arange(9), "b": np.ones(1000), "c": np.zeros(2)})
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert path.read_bytes() == before


def test_stale_temporaries_of_the_target_are_removed(tmp_path):
    path = tmp_path / "ck.npz"
    stale = [".ck.npz.0123456789abcdef.tmp", ".ck.npz.fedcba9876543210.tmp"]
    kept = [
        ".other.npz.0123456789abcdef.tmp",              # another target's
        ".ck.npz.0123456789abcdef.0123456789abcdef.tmp",  # the temporary of target "ck.npz.0123456789abcdef"
        ".ck.npz.0123456789abcde.tmp",                  # 15 digits
        ".ck.npz.0123456789ABCDEF.tmp",                 # not our digits
        ".ck.npz.0123456789abcdef.tmp.bak",
        "ck.npz.0123456789abcdef.tmp",                  # no leading dot
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "outside").write_bytes(b"keep me")
    os.symlink(tmp_path / "outside", tmp_path / ".ck.npz.1111111111111111.tmp")  # a link is not ours
    kept.append(".ck.npz.1111111111111111.tmp")
    # a temporary being written right now (its lock is held) stays
    live = tmp_path / ".ck.npz.2222222222222222.tmp"
    live.write_bytes(b"in progress")
    kept.append(live.name)
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        _archive.write(path, {"a": np.arange(3)})
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["ck.npz", "outside"])
    assert (tmp_path / "outside").read_bytes() == b"keep me"
    _archive.write(path, {"a": np.arange(3)})  # unlocked now: a stale one
    assert not live.exists()


def test_long_target_names(tmp_path):
    path = tmp_path / ("x" * 240 + ".npz")
    _archive.check_writable(path)
    _archive.write(path, {"a": np.arange(3)})
    stale = tmp_path / (_archive._temp_prefix(path.name) + "0123456789abcdef.tmp")
    stale.write_bytes(b"")
    _archive.write(path, {"a": np.arange(4)})
    assert os.listdir(tmp_path) == [path.name]
    assert_same(_archive.read(path, ["a"])["a"], np.arange(4))


_KILLED_SAVE = """
import sys, time
import numpy as np
from fusedtrain import _archive

real = _archive._write_array

def slow(zf, name, arr):
    real(zf, name, arr)
    if name == "params":  # the first member is on disk: stop here until killed
        print("written", flush=True)
        time.sleep(120)

_archive._write_array = slow
_archive.write(sys.argv[1], {"params": np.ones(8_000_000), "exp_avg": np.ones(8_000_000)})
"""


def test_sigkill_during_save(tmp_path):
    path = tmp_path / "ck.npz"
    old = {"params": np.arange(10.0), "meta": b'{"epoch": 1}'}
    _archive.write(path, old)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fusedtrain.__file__)))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"written\n"
        (tmp,) = temps(tmp_path)
        assert (tmp_path / tmp).stat().st_size > 64_000_000
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert temps(tmp_path) == [tmp]  # left behind ...
    assert_same(_archive.read(path, ["params", "meta"])["params"], old["params"])  # ... the old file intact
    with np.load(path) as z:
        assert_same(z["params"], old["params"])
    _archive.write(path, {"params": np.ones(3)})  # the next save removes it
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert_same(_archive.read(path, ["params"])["params"], np.ones(3))


# ---------------------------------------------------------------------------
# reading damaged and crafted files
# ---------------------------------------------------------------------------
def read_everything(path):
    """Every member of ``path``: JSON for "meta", arrays otherwise."""
    with _archive.Reader(path) as r:
        return {n: (r.json(n) if n == "meta" else r.array(n)) for n in r.names}


def check_damaged(path, original: dict):
    """A damaged file reads as a ValueError naming it, or as the original."""
    try:
        got = read_everything(path)
    except ValueError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        return False
    assert list(got) == list(original)
    for name, want in original.items():
        if name == "meta":
            assert got[name] == json.loads(want)
        else:
            assert_same(got[name], want)
    return True


def small_members():
    return {"meta": b'{"epoch": 3, "layers": [[1, 2], {"k": "v"}]}',
            "params": np.arange(24, dtype=np.float32).reshape(4, 6), "step": np.array(7, dtype=np.int64)}


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_truncated_at_every_offset(tmp_path, compressed):
    members = small_members()
    src = tmp_path / "src.npz"
    if compressed:
        np.savez_compressed(src, **{k: (np.frombuffer(v, np.uint8) if isinstance(v, bytes) else v)
                                    for k, v in members.items()})
    else:
        _archive.write(src, members)
    raw = src.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in range(len(raw)):
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            read_everything(bad)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_random_bit_flips(tmp_path, compressed):
    members = small_members()
    src = tmp_path / "src.npz"
    if compressed:
        np.savez_compressed(src, **{k: (np.frombuffer(v, np.uint8) if isinstance(v, bytes) else v)
                                    for k, v in members.items()})
    else:
        _archive.write(src, members)
    raw = src.read_bytes()
    bad = tmp_path / "bad.npz"
    rng = np.random.default_rng(1234)
    failed = 0
    for _ in range(200):
        b = bytearray(raw)
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(b))
        failed += not check_damaged(bad, members)
    assert failed > 100  # most flips are caught (the rest hit unchecked zip fields)


def test_a_bit_flip_in_every_byte(tmp_path):
    members = {"meta": b'{"a": 1}', "params": np.arange(3, dtype=np.float32)}
    src = tmp_path / "src.npz"
    _archive.write(src, members)
    raw = src.read_bytes()
    bad = tmp_path / "bad.npz"
    bits = np.random.default_rng(5).integers(0, 8, len(raw))
    for i, bit in enumerate(bits):
        b = bytearray(raw)
        b[i] ^= 1 << int(bit)
        bad.write_bytes(bytes(b))
        check_damaged(bad, members)


def npy_bytes(header: str, body: bytes = b"", version=(1, 0)) -> bytes:
    text = header.encode("latin1")
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(text)) + text + body


def write_zip(path, entries: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def header(descr="'<f8'", shape="(2,)", fortran="False"):
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}\n"


@pytest.mark.parametrize("member, message", [
    (npy_bytes(header(shape="(1250000000000,)"), bytes(16)),
     r"declares shape \(1250000000000,\) of float64 \(10000000000000 bytes\); the member holds 16"),
    (npy_bytes(header(shape="(1099511627776, 1099511627776, 1099511627776)"), bytes(16)), "the member holds 16"),
    (npy_bytes(header(shape="(0, 4611686018427387904, 4611686018427387904)")), "is too large"),
    (npy_bytes(header(shape="(2,)"), bytes(8)), r"\(16 bytes\); the member holds 8"),
    (npy_bytes(header(shape="(1,)"), bytes(16)), r"\(8 bytes\); the member holds 16"),
    (npy_bytes(header(shape="(-1,)"), bytes(8)), "shape must be a tuple of at most 64 ints >= 0"),
    (npy_bytes(header(shape="[2]"), bytes(16)), "shape must be a tuple"),
    (npy_bytes(header(shape="(2.0,)"), bytes(16)), "shape must be a tuple"),
    (npy_bytes(header(shape="(1,) * 65"), bytes(8)), "unreadable .npy header"),
    (npy_bytes(header(shape=repr((1,) * 65)), bytes(8)), "shape must be a tuple of at most 64"),
    (npy_bytes(header(descr="'|O'", shape="(1,)"), bytes(8)), "dtype object is not allowed"),
    (npy_bytes(header(descr="[('a', '<f4')]", shape="(1,)"), bytes(4)), "is not allowed"),
    (npy_bytes(header(descr="'>f8'", shape="(2,)"), bytes(16)), "dtype >f8 is big-endian"),
    (npy_bytes(header(descr="'<M8[s]'", shape="(2,)"), bytes(16)), "is not allowed"),
    (npy_bytes(header(descr="'<nonsense'"), bytes(16)), "unknown dtype"),
    (npy_bytes(header(fortran="1"), bytes(16)), "fortran_order must be a bool"),
    (npy_bytes("{'descr': '<f8', 'shape': (2,)}"), "must have the keys descr, fortran_order and shape"),
    (npy_bytes("[1, 2]"), "must have the keys"),
    (npy_bytes("__import__('os').system('true')"), "unreadable .npy header"),
    (npy_bytes("{" * 5000), "unreadable .npy header"),
    (npy_bytes(header(), bytes(16), version=(4, 0)), r".npy format version 4.0 is not supported"),
    (npy_bytes(header(), bytes(16), version=(2, 0)), None),
    (npy_bytes(header(), bytes(16), version=(3, 0)), None),
    (b"\x93NUMPY\x01\x00\xff\xff{}", ".npy header of 65535 bytes is too long"),
    (b"\x93NUMPY\x01", "is truncated"),
    (b"PK\x03\x04 not npy at all", r"is not a .npy array \(bad magic\)"),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_crafted_npy_headers(tmp_path, member, message):
    path = tmp_path / "crafted.npz"
    write_zip(path, {"meta.npy": npy_bytes(header("'|u1'", "(2,)"), b"{}"), "x.npy": member})
    with _archive.Reader(path) as r:
        assert r.names == ("meta", "x")
        if message is None:
            assert_same(r.array("x"), np.zeros(2))
            return
        with pytest.raises(ValueError, match=message) as e:
            r.array("x")
        assert str(e.value).startswith(f"{path}: member 'x'")
        assert r.json("meta") == {}  # the other members still read


def test_pickled_object_array(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, params=np.arange(3.0), obj=np.array([{"a": 1}, None], dtype=object))
    with _archive.Reader(path) as r:
        assert_same(r.array("params"), np.arange(3.0))
        with pytest.raises(ValueError, match=r"member 'obj': dtype object is not allowed"):
            r.array("obj")


def test_fortran_order_member(tmp_path):
    path = tmp_path / "f.npz"
    a = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.savez(path, a=a)
    got = _archive.read(path, ["a"])["a"]
    assert_same(got, a)
    assert got.flags.f_contiguous


def test_archive_level_problems(tmp_path):
    cases = {}
    cases["empty"] = (b"", "not a readable zip archive")
    cases["garbage"] = (b"garbage" * 100, "not a readable zip archive")
    (tmp_path / "single.npy").write_bytes(b"")
    np.save(tmp_path / "single.npy", np.arange(3))
    cases["single.npy"] = ((tmp_path / "single.npy").read_bytes(), "a single .npy array, not a .npz archive")
    for name, (data, message) in cases.items():
        p = tmp_path / f"{name}.npz"
        p.write_bytes(data)
        with pytest.raises(ValueError, match=message) as e:
            _archive.Reader(p)
        assert str(e.value).startswith(f"{p}: ")
    with pytest.raises(ValueError, match="cannot open the file") as e:
        _archive.Reader(tmp_path / "missing.npz")
    assert str(tmp_path / "missing.npz") in str(e.value)
    with pytest.raises(ValueError, match="cannot open the file|not a regular file"):
        _archive.Reader(tmp_path)
    with pytest.raises(ValueError, match="not a regular file"):
        _archive.Reader("/dev/null")


def test_member_level_problems(tmp_path):
    path = tmp_path / "odd.npz"
    write_zip(path, {"readme.txt": b"hello", "a.npy": npy_bytes(header(), bytes(16))})
    with _archive.Reader(path) as r:
        assert r.names == ("readme.txt", "a")
        assert r.unexpected(["a"]) == ["readme.txt"]
        with pytest.raises(ValueError, match="member 'readme.txt' is not a .npy array"):
            r.array("readme.txt")
    # duplicate names
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", npy_bytes(header(), bytes(16)))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("a.npy", npy_bytes(header(), bytes(16)))
    with pytest.raises(ValueError, match="member 'a' appears twice"):
        _archive.Reader(path)
    # a compression method other than stored / deflated
    write_zip(path, {"a.npy": npy_bytes(header(), bytes(16))}, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(ValueError, match="member 'a' uses compression method 12"):
        _archive.Reader(path)


def patch_declared_size(raw: bytes, size: int) -> bytes:
    """Set the uncompressed size of the (only) member in the central directory."""
    at = raw.rindex(b"PK\x01\x02") + 24
    return raw[:at] + struct.pack("<I", size) + raw[at + 4:]


def test_deflated_members_that_lie_about_their_size(tmp_path):
    src = tmp_path / "src.npz"
    np.savez_compressed(src, a=np.zeros(100_000))
    raw = src.read_bytes()
    bad = tmp_path / "bad.npz"
    # far more than the compressed bytes can hold: refused from the directory
    bad.write_bytes(patch_declared_size(raw, 2**32 - 1))
    with pytest.raises(ValueError, match=r"member 'a' declares 4294967295 bytes, more than \d+ compressed bytes"):
        _archive.Reader(bad)
    # 20 times the real size (a header to match): found out before allocating it
    data = npy_bytes(header(shape="(2000000,)"))
    member = data + np.random.default_rng(0).bytes(800_000)  # the header says 16 MB of data; 0.8 MB there
    write_zip(src, {"a.npy": member}, compression=zipfile.ZIP_DEFLATED)
    raw = src.read_bytes()
    bad.write_bytes(patch_declared_size(raw, len(data) + 16_000_000))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="member 'a' is (truncated|damaged)"):
            _archive.read(bad, ["a"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB  # the 16 MB array was never allocated
    # fewer bytes than the data really holds: a CRC or length error
    bad.write_bytes(patch_declared_size(raw, len(member) - 8))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        _archive.read(bad, ["a"])


# ---------------------------------------------------------------------------
# JSON members
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    (b"[" * 65 + b"]" * 65, "JSON nested 65 deep; the limit is 64"),
    (b"[" * 100000, "JSON nested too deep; the limit is 64"),
    (b"[" * 5000 + b"]" * 5000, "JSON nested too deep"),
    (b'{"a": ' * 500 + b"1" + b"}" * 500, "JSON nested 500 deep"),
    (b'{"a": ' * 70 + b"1" + b"}" * 70, "JSON nested 70 deep"),
    (b"{'a': 1}", "is not valid JSON"),
    (b'{"a": 1', "is not valid JSON"),
    (b"", "is not valid JSON"),
    (b'{"a": "\xff\xfe"}', "is not UTF-8 text"),
    (b"1" * 5000, "is not valid JSON"),  # int() of more than 4300 digits
])
def test_bad_json(tmp_path, text, message):
    path = tmp_path / "ck.npz"
    _archive.write(path, {"meta": text})
    with pytest.raises(ValueError, match=message) as e:
        _archive.read_json(path, "meta")
    assert str(e.value).startswith(f"{path}: member 'meta'")


def test_json_limits(tmp_path):
    path = tmp_path / "ck.npz"
    ok = b'[' * 64 + b'"[[[[{{{{\\"]]"' + b']' * 64  # brackets in strings do not count
    _archive.write(path, {"meta": ok, "big": b'"' + b"x" * 1000 + b'"'})
    assert _archive.read_json(path, "meta") == json.loads(ok)
    assert _archive.read_json(path, "meta", max_depth=65) == json.loads(ok)
    with pytest.raises(ValueError, match="JSON nested 64 deep; the limit is 10"):
        _archive.read_json(path, "meta", max_depth=10)
    assert len(_archive.read_json(path, "big")) == 1000
    with pytest.raises(ValueError, match="member 'big': 1002 bytes of JSON; the limit is 1000"):
        _archive.read_json(path, "big", max_bytes=1000)
    with pytest.raises(ValueError, match="max_depth must be an int >= 1"):
        _archive.read_json(path, "meta", max_depth=0)
