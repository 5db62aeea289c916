"""The GPU's multi-tensor chunk table (csrc/include/fusedtrain/multi_tensor.h),
built on the host through ``_core.chunk_table``: every element of every
tensor covered exactly once across the launches, the capacities respected,
zero-size tensors skipped, the order fixed; and the real table fits the
4 KiB kernel-parameter limit. Runs on the CPU (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fusedtrain import _core

CHUNK = 65536


def resnet50_sizes() -> list[int]:
    """Parameter sizes of torchvision's ResNet-50, in model order (161 tensors:
    convolutions, batch-norm weights and biases, the classifier)."""
    sizes = [64 * 3 * 7 * 7, 64, 64]
    inplanes = 64
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for b in range(blocks):
            sizes += [width * inplanes, width, width,
                      width * width * 9, width, width,
                      4 * width * width, 4 * width, 4 * width]
            if b == 0:
                sizes += [4 * width * inplanes, 4 * width, 4 * width]
            inplanes = 4 * width
    sizes += [1000 * 2048, 1000]
    assert len(sizes) == 161
    return sizes


def check_table(sizes, chunk_size, max_tensors, max_blocks):
    """Builds the table and checks every invariant; returns the launches."""
    launches = _core.chunk_table(sizes, chunk_size, max_tensors, max_blocks)
    covered = [np.zeros(-(-n // chunk_size), dtype=np.int64) for n in sizes]
    order = []  # (tensor, chunk) in launch order
    for li, launch in enumerate(launches):
        tensors, blocks = launch["tensors"], launch["blocks"]
        assert 1 <= len(tensors) <= max_tensors, f"launch {li}: {len(tensors)} tensors"
        assert 1 <= len(blocks) <= max_blocks, f"launch {li}: {len(blocks)} blocks"
        assert len(set(tensors)) == len(tensors), f"launch {li}: a tensor in two slots"
        used = set()
        for slot, chunk in blocks:
            assert 0 <= slot < len(tensors), f"launch {li}: slot {slot} out of range"
            t = tensors[slot]
            assert sizes[t] > 0, f"launch {li}: zero-size tensor {t} got a block"
            assert 0 <= chunk * chunk_size < sizes[t], f"launch {li}: chunk {chunk} of tensor {t}"
            covered[t][chunk] += 1
            used.add(slot)
            order.append((t, chunk))
        assert used == set(range(len(tensors))), f"launch {li}: a slot without blocks"
        # only the first slot may continue a tensor of the previous launch
        if li > 0:
            prev = launches[li - 1]["tensors"]
            assert not set(tensors[1:]) & set(prev)
    # every chunk of every tensor exactly once (so every element exactly once:
    # chunk c covers [c * chunk_size, min((c + 1) * chunk_size, n)))
    for t, c in enumerate(covered):
        assert (c == 1).all(), f"tensor {t} ({sizes[t]} elements): chunk counts {c}"
    # tensor by tensor, chunk by chunk
    assert order == sorted(order)
    # a launch ends only when it is full, or at the end
    for li, launch in enumerate(launches[:-1]):
        assert len(launch["blocks"]) == max_blocks or len(launch["tensors"]) == max_tensors
    return launches


@pytest.mark.parametrize("sizes", [
    [1], [7], [22], [1000003], [CHUNK], [CHUNK - 1], [CHUNK + 1], [3 * CHUNK],
    [1, 7, 22, 1000003, 0, 1, 65536 * 2 + 5],
], ids=repr)
def test_small_lists_default_capacity(sizes):
    for depth in range(1, 6):
        lim = _core.chunk_limits(depth)
        check_table(sizes, lim["chunk_size"], lim["max_tensors"], lim["max_blocks"])


def test_single_chunk_one_launch():
    assert _core.chunk_table([5], CHUNK, 4, 4) == [{"tensors": [0], "blocks": [(0, 0)]}]


def test_exact_small_example():
    # 2 tensors and 3 blocks per launch; the 200000-element tensor (4 chunks)
    # is cut by a full launch and continues in slot 0 of the next one
    got = _core.chunk_table([3, 0, 200000, 5], CHUNK, 2, 3)
    assert got == [
        {"tensors": [0, 2], "blocks": [(0, 0), (1, 0), (1, 1)]},
        {"tensors": [2, 3], "blocks": [(0, 2), (0, 3), (1, 0)]},
    ]


def test_zero_size_tensors_are_skipped():
    sizes = [0, 4, 0, 0, 9, 0]
    launches = check_table(sizes, 4, 8, 8)
    assert launches == [{"tensors": [1, 4], "blocks": [(0, 0), (1, 0), (1, 1), (1, 2)]}]
    assert _core.chunk_table([0, 0, 0], CHUNK, 8, 8) == []
    assert _core.chunk_table([], CHUNK, 8, 8) == []


def test_tensor_capacity_splits_launches():
    launches = check_table([10] * 7, 16, 3, 100)
    assert [l["tensors"] for l in launches] == [[0, 1, 2], [3, 4, 5], [6]]


def test_block_capacity_splits_one_tensor():
    launches = check_table([10 * 16 + 1], 16, 5, 4)
    assert len(launches) == 3  # 11 chunks, 4 per launch
    assert all(l["tensors"] == [0] for l in launches)
    assert [c for l in launches for _, c in l["blocks"]] == list(range(11))


@pytest.mark.parametrize("max_tensors,max_blocks", [(1, 1), (1, 7), (2, 3), (3, 1), (5, 5)])
def test_tight_capacities(max_tensors, max_blocks):
    rng = np.random.default_rng(max_tensors * 100 + max_blocks)
    sizes = [int(x) for x in rng.integers(0, 60, size=40)]
    check_table(sizes, 8, max_tensors, max_blocks)


def test_resnet50_sizes():
    sizes = resnet50_sizes()
    for depth in range(2, 6):
        lim = _core.chunk_limits(depth)
        launches = check_table(sizes, CHUNK, lim["max_tensors"], lim["max_blocks"])
        total_chunks = sum(-(-n // CHUNK) for n in sizes)
        assert sum(len(l["blocks"]) for l in launches) == total_chunks
        # about as few launches as the block capacity allows
        assert len(launches) <= -(-total_chunks // lim["max_blocks"]) + 3


def test_ten_thousand_tiny_tensors():
    sizes = [1 + i % 5 for i in range(10_000)]
    lim = _core.chunk_limits(4)
    launches = check_table(sizes, CHUNK, lim["max_tensors"], lim["max_blocks"])
    assert len(launches) == -(-10_000 // lim["max_tensors"])
    assert [t for l in launches for t in l["tensors"]] == list(range(10_000))


def test_deterministic():
    sizes = resnet50_sizes() + [0, 3, 70000] * 50
    a = _core.chunk_table(sizes, CHUNK, 46, 320)
    b = _core.chunk_table(list(sizes), CHUNK, 46, 320)
    assert a == b


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_real_table_fits_the_kernel_parameter_limit(depth):
    lim = _core.chunk_limits(depth)
    assert lim["depth"] == depth
    assert lim["chunk_size"] == CHUNK and lim["max_blocks"] == 320
    assert lim["param_limit"] == 4096
    assert lim["table_bytes"] + lim["reserved_bytes"] <= lim["param_limit"]
    # addresses + counts + block entries, nothing else
    assert lim["table_bytes"] >= 8 * (depth + 1) * lim["max_tensors"] + 5 * lim["max_blocks"]
    assert 32 <= lim["max_tensors"] <= 256


def test_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        _core.chunk_table([1], 0, 4, 4)
    with pytest.raises(ValueError, match="max_tensors"):
        _core.chunk_table([1], 4, 0, 4)
    with pytest.raises(ValueError, match="max_blocks"):
        _core.chunk_table([1], 4, 4, -1)
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        _core.chunk_table([1, -2], 4, 4, 4)
    with pytest.raises(ValueError, match="depth"):
        _core.chunk_limits(6)
