"""The CUDA optimizer path: fusedtrain._cuda and the dispatch in backend.py.

Two kinds of tests:

* CPU-run (no GPU needed): dispatch by array type, and the argument checks
  of the _cuda binding on stand-in objects that carry a
  ``__cuda_array_interface__`` dict with fake pointers. The checks read only
  that dict, so they run (and must pass) on a machine with the CUDA module
  built and no GPU; their messages are compared with the CPU path's.
* GPU (skipped without a device, and without CuPy): every optimizer over
  lists of CuPy arrays against the NumPy reference at the CPU tests'
  tolerances, every variant, both dtypes, several steps; unaligned views
  (the scalar path), lists longer than one launch's table, a caller's stream.
"""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

import fusedtrain
from fusedtrain import backend, ops
from conftest import (DTYPES, SPECS, assert_buffers_close, dtype_id, hyper_id, kernel_step,
                      make_rng, make_states, random_list, reference_step)

HAS_CUDA_MODULE = getattr(backend, "_cuda", None) is not None
needs_cuda_module = pytest.mark.skipif(not HAS_CUDA_MODULE,
                                       reason="fusedtrain was built without the _cuda module")
needs_gpu = pytest.mark.skipif(not fusedtrain.cuda_available(), reason="no CUDA device")


# ===========================================================================
# CPU-run: stand-in GPU arrays
# ===========================================================================
_next_ptr = itertools.count(0x7F00_0000_0000, 1 << 20)  # 1 MiB apart, 256-byte aligned


class FakeGpuArray:
    """A stand-in for a GPU array: only ``__cuda_array_interface__`` (v3),
    with a fake device pointer. Never dereferenced: the checks read the dict
    alone, and nothing is launched without a device."""

    def __init__(self, shape, typestr="<f8", ptr=None, readonly=False, strides=None, **extra):
        ptr = next(_next_ptr) if ptr is None else ptr
        self.shape = tuple(shape)
        self.ptr = ptr
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr,
                                         "data": (ptr, readonly), "strides": strides,
                                         "version": 3, **extra}


SHAPES = [(5,), (6,), (3, 4)]  # as test_bad_input.py
TYPESTR = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}


def fake_slots(spec, dtype=np.float64, shapes=SHAPES):
    """Valid stand-in lists for the heavy variant of `spec` (every buffer)."""
    slots = {"params": [FakeGpuArray(s, TYPESTR[np.dtype(dtype)]) for s in shapes],
             "grads": [FakeGpuArray(s, TYPESTR[np.dtype(dtype)]) for s in shapes]}
    for name in spec.state_names(spec.heavy):
        slots[name] = [FakeGpuArray(s, TYPESTR[np.dtype(dtype)]) for s in shapes]
    return slots


def numpy_slots(spec, dtype=np.float64, shapes=SHAPES):
    rng = make_rng("cuda-cpu", spec.name)
    slots = {"params": random_list(rng, shapes, dtype), "grads": random_list(rng, shapes, dtype)}
    for name in spec.state_names(spec.heavy):
        slots[name] = [np.abs(a) + 0.5 for a in random_list(rng, shapes, dtype)]
    return slots


def call(spec, slots, step=3):
    s = dict(slots)
    params, grads = s.pop("params"), s.pop("grads")
    kernel_step(spec, params, grads, s, spec.heavy, step)


def error_of(spec, slots):
    with pytest.raises((TypeError, ValueError, RuntimeError)) as info:
        call(spec, slots)
    return info.value


SLOT_CASES = [pytest.param(spec, slot, id=f"{spec.name}-{slot}")
              for spec in SPECS for slot in ["params", "grads", *spec.state_names(spec.heavy)]]
WRITTEN_CASES = [p for p in SLOT_CASES if p.values[1] != "grads"]


# ---------------------------------------------------------------------------
# build and dispatch
# ---------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH: a CPU-only build")
def test_cuda_module_is_built_when_nvcc_is_on_path():
    assert fusedtrain.build_info()["cuda_built"] is True
    assert HAS_CUDA_MODULE


def test_cuda_available_matches_device_count():
    if HAS_CUDA_MODULE:
        assert fusedtrain.cuda_available() == (backend._cuda.device_count() > 0)
    else:
        assert fusedtrain.cuda_available() is False


def test_numpy_dispatch_returns_core_itself():
    assert backend.module_for(np.zeros(3)) is fusedtrain._core


def test_unknown_array_type_is_rejected():
    with pytest.raises(TypeError, match=r"params\[0\]: expected a numpy.ndarray or a GPU array"):
        backend.module_for([1.0, 2.0])
    with pytest.raises(TypeError, match=r"params\[0\].*received builtins.list"):
        ops.sgd_([[1.0]], [np.zeros(1)], step=1)


def test_gpu_array_without_cuda_module_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(backend, "_cuda", None)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        ops.sgd_([FakeGpuArray((3,))], [FakeGpuArray((3,))], step=1)


@needs_cuda_module
def test_gpu_dispatch_has_core_method_names():
    adapter = backend.module_for(FakeGpuArray((3,)))
    for name in ("adam_", "sgd_", "rmsprop_", "adagrad_"):
        assert callable(getattr(adapter, name))


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", SLOT_CASES)
def test_numpy_array_in_gpu_call(spec, slot):
    slots = fake_slots(spec)
    slots[slot][2] = np.zeros(slots[slot][2].shape)
    err = error_of(spec, slots)
    assert type(err) is TypeError
    if slot == "params":
        assert str(err) == "params[2]: expected a GPU array like params[0], received numpy.ndarray"
    else:
        assert str(err) == f"{slot}[2]: expected a GPU array like params[0], received numpy.ndarray"


@pytest.mark.parametrize("spec,slot", [p for p in SLOT_CASES if p.values[1] != "params"])
def test_gpu_array_in_numpy_call(spec, slot):
    slots = numpy_slots(spec)
    before = {k: [a.copy() for a in v] for k, v in slots.items()}
    slots[slot][1] = FakeGpuArray(slots[slot][1].shape)
    err = error_of(spec, slots)
    assert type(err) is TypeError
    assert str(err).startswith(f"{slot}[1]: expected a numpy.ndarray, received ")
    for k, v in before.items():  # nothing ran
        for i, a in enumerate(v):
            if isinstance(slots[k][i], np.ndarray):
                np.testing.assert_array_equal(slots[k][i], a)


class _Recorder:
    """Stands in for the _cuda module: records each call's arguments."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_adapter_appends_the_callers_stream(spec, monkeypatch):
    """The GPU adapter passes _core's positional arguments unchanged (ending
    with dry_run) and appends the stream: the caller's for a real call, 0 for
    a dry run (which launches nothing)."""
    rec = _Recorder()
    monkeypatch.setattr(backend, "_cuda", rec)
    monkeypatch.setattr(backend, "_device_present", True)
    monkeypatch.setattr(backend, "_current_stream", lambda first: 0xABCD)
    call(spec, fake_slots(spec))
    (name, args), = rec.calls
    assert name == {"adamw": "adam_"}.get(spec.name, spec.name + "_")
    assert args[-2:] == (False, 0xABCD)
    # the same arguments _core would get
    core_rec = _Recorder()
    monkeypatch.setattr(backend, "_core", core_rec)
    call(spec, numpy_slots(spec))
    (core_name, core_args), = core_rec.calls
    assert core_name == name and len(core_args) == len(args) - 1
    adapter = backend.module_for(FakeGpuArray((3,)))
    getattr(adapter, name)(*args[:-2], True)
    assert rec.calls[-1][1][-2:] == (True, 0)


# ---------------------------------------------------------------------------
# _cuda's argument checks on stand-ins
# ---------------------------------------------------------------------------
@needs_cuda_module
@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_valid_stand_ins(spec, dtype):
    """A valid call passes every check; then, without a device, it is a
    RuntimeError saying so (with a device, the fake pointers are not GPU
    memory: a ValueError naming params[0])."""
    slots = fake_slots(spec, dtype)
    err = error_of(spec, slots)
    if fusedtrain.cuda_available():
        assert type(err) is ValueError and str(err).startswith("params[0]: expected GPU memory")
    else:
        assert type(err) is RuntimeError
        assert "no CUDA device is available" in str(err)


@needs_cuda_module
@pytest.mark.skipif(fusedtrain.cuda_available(), reason="fake pointers fail the device check on a GPU")
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_dry_run_checks_only(spec):
    """dry_run=True (what the optimizer classes use to check every group
    first) validates and touches no device."""
    slots = fake_slots(spec)
    adapter = backend.module_for(slots["params"][0])
    p, g = slots["params"], slots["grads"]
    st = {k: v for k, v in slots.items() if k not in ("params", "grads")}
    if spec.name == "sgd":
        adapter.sgd_(p, g, st["momentum_buffer"], 1, 0.1, 0.9, 0.0, 0.0, 0.0, True, False, True)
    elif spec.name in ("adam", "adamw"):
        adapter.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], st["max_exp_avg_sq"], 1, 0.1, 0.9,
                      0.999, 1e-8, 0.0, 0.0, True, spec.name == "adamw", False, True)
    elif spec.name == "rmsprop":
        adapter.rmsprop_(p, g, st["square_avg"], st["grad_avg"], st["momentum_buffer"], 0.1,
                         0.99, 1e-8, 0.0, 0.9, 0.0, True, False, True)
    else:
        adapter.adagrad_(p, g, st["state_sum"], 1, 0.1, 0.0, 0.0, 1e-10, 0.0, False, True)


def same_message_as_cpu(spec, slot, spoil_numpy, spoil_fake, index=2):
    """The defect applied to a NumPy call and to a stand-in call gives the
    same exception type and message."""
    cpu_slots = numpy_slots(spec)
    spoil_numpy(cpu_slots, slot, index)
    cpu = error_of(spec, cpu_slots)
    gpu_slots = fake_slots(spec)
    spoil_fake(gpu_slots, slot, index)
    gpu = error_of(spec, gpu_slots)
    assert type(gpu) is type(cpu)
    assert str(gpu) == str(cpu)
    return gpu


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", SLOT_CASES)
def test_shape_mismatch(spec, slot):
    if slot == "params":  # params define the shapes: spoil a state's instead
        slot = "grads"

    def np_(s, k, i):
        s[k][i] = np.zeros((7,), s[k][i].dtype)

    def fake(s, k, i):
        s[k][i] = FakeGpuArray((7,))

    err = same_message_as_cpu(spec, slot, np_, fake)
    assert str(err) == f"{slot}[2]: expected shape (3, 4) (the shape of params[2]), received (7,)"


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", SLOT_CASES)
def test_other_dtype_in_list(spec, slot):
    def np_(s, k, i):
        s[k][i] = s[k][i].astype(np.float32)

    def fake(s, k, i):
        s[k][i] = FakeGpuArray(s[k][i].shape, "<f4")

    err = same_message_as_cpu(spec, slot, np_, fake)
    assert type(err) is TypeError
    assert str(err) == f"{slot}[2]: expected dtype float64 (the dtype of params[0]), received float32"


@needs_cuda_module
@pytest.mark.parametrize("typestr,name", [("<i8", "int64"), ("|u1", "uint8"),
                                          (">f4", ">f4"), ("<c8", "complex64")])
def test_wrong_typestr_for_params0(typestr, name):
    spec = SPECS[0]
    slots = fake_slots(spec)
    slots["params"][0] = FakeGpuArray((5,), typestr)
    err = error_of(spec, slots)
    assert type(err) is TypeError
    assert str(err) == ("params[0]: expected dtype float32, float64, float16 or bfloat16, "
                        f"received {name}")


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", SLOT_CASES)
def test_non_contiguous_strides(spec, slot):
    slots = fake_slots(spec)
    slots[slot][2] = FakeGpuArray((3, 4), strides=(64, 16))  # every other element
    err = error_of(spec, slots)
    assert type(err) is ValueError
    assert str(err).startswith(f"{slot}[2]: expected a C-contiguous array, received a "
                               "non-contiguous view")
    # the CPU path says the same, up to the library to copy with
    cpu_slots = numpy_slots(spec)
    cpu_slots[slot][2] = np.zeros((3, 8))[:, ::2]
    assert str(error_of(spec, cpu_slots)).split(" (pass")[0] == str(err).split(" (pass")[0]


@needs_cuda_module
def test_contiguous_strides_are_accepted():
    """Explicit C-contiguous strides, and any stride on extent-1 axes or on
    empty arrays, are contiguous (as NumPy's flags say)."""
    spec = SPECS[0]
    for shape, strides in [((3, 4), (32, 8)), ((1, 4), (999, 8)), ((3, 1), (8, 0)),
                           ((0, 4), (1, 1))]:
        slots = {"params": [FakeGpuArray(shape)], "grads": [FakeGpuArray(shape, strides=strides)],
                 "momentum_buffer": [FakeGpuArray(shape)]}
        err = error_of(spec, slots)
        assert "contiguous" not in str(err)
        assert type(err) in (RuntimeError, ValueError)  # past the checks: no device / fake memory


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", WRITTEN_CASES)
def test_read_only_written_buffer(spec, slot):
    def np_(s, k, i):
        s[k][i].flags.writeable = False

    def fake(s, k, i):
        s[k][i] = FakeGpuArray(s[k][i].shape, readonly=True)

    err = same_message_as_cpu(spec, slot, np_, fake)
    assert str(err) == (f"{slot}[2]: expected a writable array (it is written in place), "
                        "received a read-only array")


@needs_cuda_module
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_read_only_grads_are_accepted(spec):
    slots = fake_slots(spec)
    slots["grads"] = [FakeGpuArray(a.shape, readonly=True) for a in slots["grads"]]
    err = error_of(spec, slots)
    assert type(err) in (RuntimeError, ValueError) and "read-only" not in str(err)


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", [p for p in SLOT_CASES if p.values[1] != "params"])
def test_overlap(spec, slot):
    """A buffer sharing memory with params[2], or overlapping it partly."""
    def np_(s, k, i):
        s[k][i] = s["params"][i]

    def fake(s, k, i):
        s[k][i] = FakeGpuArray(s["params"][i].shape, ptr=s["params"][i].ptr)

    err = same_message_as_cpu(spec, slot, np_, fake)
    assert str(err) == (f"params[2] and {slot}[2]: expected separate arrays, received arrays "
                        "that share memory")
    slots = fake_slots(spec)
    slots[slot][0] = FakeGpuArray((5,), ptr=slots["params"][2].ptr + 8 * 11)  # the last element
    err = error_of(spec, slots)
    assert type(err) is ValueError and "share memory" in str(err)
    assert "params[2]" in str(err) and f"{slot}[0]" in str(err)


@needs_cuda_module
def test_adjacent_buffers_do_not_overlap():
    a = FakeGpuArray((4,), ptr=1 << 20)
    b = FakeGpuArray((4,), ptr=(1 << 20) + 32)  # right after a's 32 bytes
    err = error_of(SPECS[0], {"params": [a], "grads": [b],
                              "momentum_buffer": [FakeGpuArray((4,))]})
    assert "share memory" not in str(err)


@needs_cuda_module
@pytest.mark.parametrize("spec,slot", [p for p in SLOT_CASES if p.values[1] != "params"])
def test_list_length_mismatch(spec, slot):
    def np_(s, k, i):
        del s[k][i]

    err = same_message_as_cpu(spec, slot, np_, np_)
    assert str(err) == f"{slot}: expected 3 arrays (one per parameter), received 2"


@needs_cuda_module
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_empty_list(spec):
    slots = {k: [] for k in fake_slots(spec)}
    err = error_of(spec, slots)
    assert type(err) is ValueError
    assert str(err) == "params: expected a non-empty list of arrays, received an empty list"


@needs_cuda_module
def test_unaligned_pointer():
    spec = SPECS[0]
    slots = fake_slots(spec)
    slots["grads"][1] = FakeGpuArray((6,), ptr=(1 << 21) + 4)  # float64 at a 4-byte offset
    err = error_of(spec, slots)
    assert str(err) == "grads[1]: expected an aligned array, received an unaligned one"


@needs_cuda_module
@pytest.mark.parametrize("cai,match", [
    ("not a dict", "expected a __cuda_array_interface__ dict"),
    ({"shape": (3,), "typestr": "<f8"}, "expected a __cuda_array_interface__ dict"),
    ({"shape": (3,), "typestr": "<f8", "data": (123, False), "strides": (8, 8)},
     "expected a __cuda_array_interface__ dict"),
    ({"shape": (-3,), "typestr": "<f8", "data": (123 * 8, False)},
     "expected a __cuda_array_interface__ dict"),
    ({"shape": (3,), "typestr": "<f8", "data": (123 * 8, False), "mask": object()},
     "without a mask"),
])
def test_malformed_interface(cai, match):
    spec = SPECS[0]
    slots = fake_slots(spec)
    slots["momentum_buffer"][1] = FakeGpuArray((6,))
    slots["momentum_buffer"][1].__cuda_array_interface__ = cai
    with pytest.raises((TypeError, ValueError), match=match) as info:
        call(spec, slots)
    assert str(info.value).startswith("momentum_buffer[1]: ")


@needs_cuda_module
def test_interface_property_errors_propagate():
    class Raises:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("cannot export this tensor")

    with pytest.raises(RuntimeError, match="cannot export"):
        ops.sgd_([Raises()], [FakeGpuArray((3,))], step=1)


@needs_cuda_module
def test_zero_size_and_0d_stand_ins():
    """Zero-size arrays may carry a null pointer; 0-d arrays have shape ()."""
    spec = SPECS[0]
    shapes = [(0,), (), (2, 0)]
    slots = {"params": [FakeGpuArray(s, ptr=0 if 0 in s else None) for s in shapes],
             "grads": [FakeGpuArray(s, ptr=0 if 0 in s else None) for s in shapes],
             "momentum_buffer": [FakeGpuArray(s, ptr=0 if 0 in s else None) for s in shapes]}
    err = error_of(spec, slots)
    assert "share memory" not in str(err) and "shape" not in str(err)


@needs_cuda_module
def test_stream_must_be_a_non_negative_int():
    p, g = [FakeGpuArray((3,))], [FakeGpuArray((3,))]
    with pytest.raises(TypeError):
        backend._cuda.sgd_(p, g, None, 1, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, True, -1)
    with pytest.raises(TypeError):  # the _core signature without the stream
        backend._cuda.sgd_(p, g, None, 1, 0.1, 0.0, 0.0, 0.0, 0.0, False, False, True)


# ===========================================================================
# GPU: the kernels against the NumPy reference
# ===========================================================================
def _cupy():
    return pytest.importorskip("cupy")


def to_gpu(cp, arrays):
    return [cp.asarray(a) for a in arrays]


def gpu_run_and_compare(spec, hyper, shapes, dtype, steps, key, first_step=1, place=None):
    """Steps the kernel on CuPy copies (one call over the list) and the
    reference on NumPy arrays from the same start with the same gradients;
    compares every buffer after every step. `place` moves a NumPy array to
    the GPU (default cupy.asarray)."""
    cp = _cupy()
    place = place or cp.asarray
    rng = make_rng(*key)
    params = random_list(rng, shapes, dtype)
    states = make_states(spec, hyper, params, rng)
    gpu_params = [place(a) for a in params]
    gpu_states = {k: [place(a) for a in v] for k, v in states.items()}
    single = len(shapes) == 1
    for step in range(first_step, first_step + steps):
        grads = random_list(rng, shapes, dtype)
        gpu_grads = [place(a) for a in grads]
        kernel_step(spec, gpu_params, gpu_grads, gpu_states, hyper, step, single=single)
        reference_step(spec, params, grads, states, hyper, step)
        for g, want in zip(gpu_grads, grads):  # gradients are read only
            np.testing.assert_array_equal(cp.asnumpy(g), want)
        got_params = [cp.asnumpy(a) for a in gpu_params]
        got_states = {k: [cp.asnumpy(a) for a in v] for k, v in gpu_states.items()}
        assert_buffers_close(got_params, got_states, params, states, dtype, what=f"step {step}:")


GPU_SHAPES = {
    "1": [(1,)],
    "7": [(7,)],
    "22": [(22,)],
    "mixed": [(1,), (7,), (22,), (10, 100), (3, 11), (0,), (), (65536 + 3,)],
}
CASES = [pytest.param(spec, hyper, id=f"{spec.name}-{hyper_id(hyper) or 'plain'}")
         for spec in SPECS for hyper in spec.grid]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec,hyper", CASES)
def test_gpu_matches_reference_every_variant(spec, hyper, dtype):
    gpu_run_and_compare(spec, hyper, GPU_SHAPES["mixed"], dtype, steps=3,
                        key=("gpu", spec.name, hyper_id(hyper), dtype_id(dtype)))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shapes", list(GPU_SHAPES.values()), ids=list(GPU_SHAPES))
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_gpu_matches_reference_sizes(spec, shapes, dtype):
    gpu_run_and_compare(spec, spec.heavy, shapes, dtype, steps=4,
                        key=("gpu-sizes", spec.name, str(shapes), dtype_id(dtype)))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_gpu_matches_reference_large(spec, dtype):
    """1000003 elements: 16 chunks, the last one ragged (vector body + tail)."""
    gpu_run_and_compare(spec, spec.heavy, [(1000003,)], dtype, steps=3,
                        key=("gpu-large", spec.name, dtype_id(dtype)))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_gpu_unaligned_views_take_the_scalar_path(spec, dtype):
    """Arrays starting one element past a 16-byte boundary."""
    cp = _cupy()

    def place(a):
        flat = cp.empty(a.size + 1, dtype=a.dtype)
        out = flat[1:].reshape(a.shape)
        out[...] = cp.asarray(a)
        assert out.flags.c_contiguous and (out.data.ptr % 16 != 0 or a.size == 0)
        return out

    gpu_run_and_compare(spec, spec.heavy, [(7,), (1000,), (70000,), (3, 5)], dtype, steps=3,
                        key=("gpu-unaligned", spec.name, dtype_id(dtype)), place=place)


@needs_gpu
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_gpu_many_tensors_span_several_launches(spec):
    """More tensors than one chunk table holds, and a tensor cut across
    launches by the block capacity (320 chunks per launch)."""
    rng = np.random.default_rng(7)
    shapes = [(int(n),) for n in rng.integers(0, 3000, size=300)]
    shapes[150] = (330 * 65536 + 17,)
    gpu_run_and_compare(spec, spec.heavy, shapes, np.float32, steps=2,
                        key=("gpu-many", spec.name))


@needs_gpu
def test_gpu_runs_on_the_current_cupy_stream():
    cp = _cupy()
    spec = SPECS[1]  # adam
    with cp.cuda.Stream(non_blocking=True) as stream:
        gpu_run_and_compare(spec, spec.heavy, GPU_SHAPES["mixed"], np.float64, steps=2,
                            key=("gpu-stream",))
        stream.synchronize()


@needs_gpu
def test_gpu_numpy_mixed_in_raises_before_anything_runs():
    cp = _cupy()
    params = [cp.ones(5), cp.ones(6), cp.ones(7)]
    grads = [cp.ones(5), cp.ones(6), np.ones(7)]
    with pytest.raises(TypeError, match=r"grads\[2\]: expected a GPU array like params\[0\], "
                                         r"received numpy.ndarray"):
        ops.sgd_(params, grads, step=1, lr=0.1)
    assert all(bool((p == 1).all()) for p in params)


@needs_gpu
def test_gpu_non_contiguous_view_is_rejected():
    cp = _cupy()
    p = cp.zeros(10)[::2]
    with pytest.raises(ValueError, match=r"params\[0\]: expected a C-contiguous array"):
        ops.sgd_([p], [cp.zeros(5)], step=1)
