"""The quantization twins over bitsandbytes' own case families, and their bad-input guards.

bitsandbytes tests 4-bit quantization (``tests/test_functional.py``, ``test_4bit_quant``) for
every block size from 64 (32 in recent releases) to 4096, in fp32, fp16 and bf16, and its
``Linear4bit`` (``tests/test_linear4bit.py``) with each ``quant_storage`` dtype. The same
families run here against the naive twin, bit for bit, on odd shapes as well as even ones.
No global seed: every run draws fresh weights.
"""

from __future__ import annotations

import copy
import math

import bitsandbytes.functional as bnbf
import pytest
import torch
from torch import nn

from helpers.qlora import library as qlora_library
from helpers.qlora import naive as qlora_naive
from helpers.quantization import library, naive

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
STORAGES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
# even and odd sizes: one short last block, an odd count of values (a half-filled last byte),
# fewer values than one block, a single value, more than the largest block
SHAPES = ((64, 40), (33, 17), (3, 7, 11), (1,), (4099,), (2, 4100))


def _fits(shape: tuple[int, ...], storage: torch.dtype) -> bool:
    size = torch.empty(0, dtype=storage).element_size()
    return math.ceil(math.prod(shape) / 2) % size == 0


@pytest.mark.parametrize("storage", STORAGES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_nf4_grid_bit_exact(blocksize, dtype, storage):
    for shape in SHAPES:
        weight = (torch.randn(shape) * (0.01 + torch.rand(1))).to(dtype)
        if not _fits(shape, storage):  # bitsandbytes fails with a view error; we say why
            for twin in (naive, library):
                with pytest.raises(ValueError, match="quant_storage"):
                    twin.quantize_nf4(weight, blocksize, storage)
            continue
        packed, absmax = naive.quantize_nf4(weight, blocksize, storage)
        ref_packed, ref_state = bnbf.quantize_4bit(
            weight, blocksize=blocksize, quant_type="nf4", quant_storage=storage
        )
        assert packed.dtype == storage == ref_packed.dtype
        assert torch.equal(packed.view(torch.uint8), ref_packed.reshape(-1).view(torch.uint8))
        assert torch.equal(absmax, ref_state.absmax), (shape, blocksize)
        lib_packed, lib_absmax = library.quantize_nf4(weight, blocksize, storage)
        assert torch.equal(lib_packed.view(torch.uint8), packed.view(torch.uint8))
        assert torch.equal(lib_absmax, absmax)
        ours = naive.dequantize_nf4(packed, absmax, shape, blocksize, dtype)
        assert ours.dtype == dtype
        # bitsandbytes' CPU dequantizer runs its C kernel for an even last dimension and blocks
        # up to 1024; otherwise a torch.compile'd path, compiled per shape and dtype (5 to 10 s
        # each, measured): those cases are left to tests/test_quantization.py's few shapes.
        if shape[-1] % 2 == 0 and blocksize <= 1024:
            theirs = bnbf.dequantize_4bit(ref_packed, ref_state)  # its C kernel
            assert torch.equal(ours, theirs.reshape(shape)), shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("double_quant", [False, True])
def test_linear4bit_with_bias_equals_bitsandbytes(dtype, double_quant):
    """The bias is added inside the matmul (F.linear), as bitsandbytes' gemm_4bit does."""
    linear = nn.Linear(192, 96, bias=True)
    with torch.no_grad():
        linear.bias.normal_()  # a visible bias, so a second rounding would show
    ours = qlora_naive.quantize_model(nn.Sequential(copy.deepcopy(linear)), dtype, double_quant)
    theirs = qlora_library.quantize_model(nn.Sequential(linear), dtype, double_quant)
    if double_quant:  # bitsandbytes' 8-bit absmax search is approximate: take its codes
        ours[0].absmax.copy_(theirs[0].weight.quant_state.absmax)
    ours.train(), theirs.train()  # bitsandbytes' default kernel (no CPU inference repacking)
    x = torch.randn(4, 5, 192).to(dtype).requires_grad_()
    out_ours, out_theirs = ours(x), theirs(x)
    assert out_ours.dtype == dtype and torch.equal(out_ours, out_theirs)
    grad = torch.randn_like(out_ours)
    (grad_ours,) = torch.autograd.grad(out_ours, x, grad)
    (grad_theirs,) = torch.autograd.grad(out_theirs, x, grad)
    assert torch.equal(grad_ours, grad_theirs)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_nan_or_inf_is_reported_not_zeroed(twin):
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(8, 64)
        x[3, 5] = bad
        calls = {
            "quantize_absmax_int8": lambda x=x: twin.quantize_absmax_int8(x),
            "per_row": lambda x=x: twin.quantize_absmax_int8(x, per_row=True),
            "quantize_zeropoint_int8": lambda x=x: twin.quantize_zeropoint_int8(x),
            "quantize_blockwise": lambda x=x: twin.quantize_blockwise(
                x, twin.dynamic_codebook(), 256
            ),
            "quantize_nf4": lambda x=x: twin.quantize_nf4(x),
            "int8_vectorwise_quantize": lambda x=x: twin.int8_vectorwise_quantize(x, 6.0),
        }
        for name, call in calls.items():
            with pytest.raises(ValueError, match=r"NaN or inf .* flat index 197"):
                call()
            assert name
    with pytest.raises(ValueError, match="absmax has 1 NaN or inf"):
        twin.double_quantize_absmax(torch.tensor([0.5, float("nan"), 0.2]))


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_statistics_of_the_wrong_layout_are_refused(twin):
    # int8: one absmax per row, or one for the tensor; 2 for a (4, 6) matrix is neither
    q, absmax = twin.quantize_absmax_int8(torch.randn(4, 6), per_row=True)
    with pytest.raises(ValueError, match="absmax has 2 values"):
        twin.dequantize_absmax_int8(q, absmax[:2])
    # blockwise: a wrong count, and a wrong blocksize that gives the same count (300 values
    # are 2 blocks of 256 or 2 blocks of 200). The second is found when a block of 200 holds
    # no +-1 code: here the first block's largest value sits at 220, outside the first 200.
    x = torch.rand(300) * 0.5
    x[220] = -3.0
    code = twin.dynamic_codebook()
    codes, absmax = twin.quantize_blockwise(x, code, 256)
    with pytest.raises(ValueError, match="absmax has 1 values"):
        twin.dequantize_blockwise(codes, absmax[:1], code, 256)
    with pytest.raises(ValueError, match="not quantized in blocks of 200"):
        twin.dequantize_blockwise(codes, absmax, code, 200)
    # NF4 (both twins check before bitsandbytes, which would read what it is given), wrong byte count, and double-quantized absmax with a wrong count
    packed, absmax = twin.quantize_nf4(torch.randn(64, 8), 64)
    with pytest.raises(ValueError, match="absmax has 4 values, but 512 values"):
        twin.dequantize_nf4(packed, absmax[:4], (64, 8), 64)
    with pytest.raises(ValueError, match="packed holds 256 bytes"):
        twin.dequantize_nf4(packed, absmax, (64, 9), 64)
    qabsmax, absmax2, offset = twin.double_quantize_absmax(torch.rand(600))
    with pytest.raises(ValueError, match="absmax2 has 3 values"):
        twin.double_dequantize_absmax(qabsmax[:256], absmax2, offset)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_unsorted_codebook_is_refused(twin):
    code = twin.dynamic_codebook()
    shuffled = code[torch.randperm(256)]
    with pytest.raises(ValueError, match="code must be sorted ascending"):
        twin.quantize_blockwise(torch.randn(100), shuffled, 64)
    codes, absmax = twin.quantize_blockwise(torch.randn(100), code, 64)
    with pytest.raises(ValueError, match="code must be sorted ascending"):
        twin.dequantize_blockwise(codes, absmax, shuffled, 64)


def test_guards_accept_every_legitimate_layout():
    """The +-1 check must not reject real data: all-zero blocks, a short last block, a code
    book with an odd number of levels, bitsandbytes' own codes."""
    x = torch.randn(1000)
    x[256:512] = 0.0  # an all-zero block
    for code in (naive.linear_codebook(4), naive.dynamic_codebook()):
        for blocksize in (64, 256, 333):
            codes, absmax = naive.quantize_blockwise(x, code, blocksize)
            back = naive.dequantize_blockwise(codes, absmax, code, blocksize)
            assert back.shape == x.shape
    codes, absmax = library.quantize_blockwise(x, naive.dynamic_codebook(), 256)
    naive.dequantize_blockwise(codes, absmax, naive.dynamic_codebook(), 256)


@pytest.mark.parametrize("twin", [naive, library], ids=["naive", "library"])
def test_int8_linear_and_zeropoint_bad_input(twin):
    x, weight = torch.randn(3, 8), torch.randn(5, 8)
    bad = weight.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="weight has 1 NaN or inf"):
        twin.int8_linear(x, bad)
    with pytest.raises(ValueError, match="must share C"):
        twin.int8_linear(x, torch.randn(5, 7))
    q, scale, zero_point = twin.quantize_zeropoint_int8(x)
    for bad_scale in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            twin.dequantize_zeropoint_int8(q, bad_scale, zero_point)
    with pytest.raises(ValueError, match="zero_point must be an integer in 0..255"):
        twin.dequantize_zeropoint_int8(q, scale, 300)
