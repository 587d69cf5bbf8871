"""One figure per core idea of the course, drawn from the tensors a chapter has computed.

Each function takes the chapter's own objects (a LoRA layer, a weight matrix, a GPTQ result,
per-rank gradients, a packed batch's mask), computes what it shows with the course's naive
twins, and returns a ``matplotlib.figure.Figure``. The figure is not registered with pyplot:
a notebook shows it as the cell's value (once, as a PNG, whether or not the chapter has imported
pyplot), a script saves it with ``fig.savefig``, and it works under any backend, Agg included. No number in a figure is typed in: shapes, counts,
scales and codes all come from the tensors passed.

    lora_shapes(layer)                          W beside B and A, to scale
    nf4_block(weight, block)                    one NF4 block: values, codes, absmax, double quant
    gguf_superblock(weight, superblock)         one Q4_K super-block: its parts and their bytes
    gptq_sweep(weight, h, result)               GPTQ's column order and its error feedback
    ddp_allreduce(rank_grads, name)             each rank's gradient, then the all-reduced one
    fsdp_shards(model, world_size)              which rank holds which slice under FSDP2
    packed_mask(attention_mask, seq_lengths)    the block-diagonal causal mask of a packed row
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure
from torch import nn

from helpers.checks import finite_tensor, positive_number, whole_number


class ShownFigure(Figure):
    """A Figure that a notebook shows as a PNG by itself: without pyplot imported, Jupyter has
    no display rule for a bare Figure and would print only ``<Figure size ...>``."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


DIVERGING = "RdBu_r"  # signed values: blue below zero, red above, white at zero

__all__ = ["lora_shapes", "nf4_block", "gguf_superblock", "gptq_feedback", "gptq_sweep"]
__all__ += ["ddp_allreduce", "fsdp_shards", "packed_mask"]


def _symmetric(*tensors: torch.Tensor) -> dict:
    """imshow's colour range, centred on 0: three root-mean-squares of the values (or their
    largest magnitude, if smaller), so that the bulk of a weight matrix is not washed out by
    a few large entries; 1 if all are zero. The image data keeps the values themselves."""
    rms = max(float(t.detach().float().pow(2).mean().sqrt()) for t in tensors)
    top = min(3 * rms, max(float(t.detach().abs().max()) for t in tensors)) or 1.0
    return {"vmin": -top, "vmax": top, "cmap": DIVERGING}


def _numpy(t: torch.Tensor):
    return t.detach().float().cpu().numpy()


# ---------------------------------------------------------------- LoRA
def _lora_matrices(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """W (out, in), B (out, r), A (r, in) and the scaling of a naive or peft LoRA layer."""
    lora_a, lora_b = getattr(layer, "lora_A", None), getattr(layer, "lora_B", None)
    base = getattr(layer, "base_layer", None)
    if lora_a is None or lora_b is None or base is None:
        raise TypeError(
            f"layer must be a LoRA layer (helpers.lora's LoRALinear or peft's), with base_layer, "
            f"lora_A and lora_B; got {type(layer).__name__}"
        )
    scaling = layer.scaling
    if isinstance(lora_a, nn.ModuleDict):  # peft: one entry per adapter name
        if len(lora_a) != 1:
            raise ValueError(f"layer holds {len(lora_a)} adapters {list(lora_a)}: keep one")
        (adapter,) = lora_a.keys()
        lora_a, lora_b, scaling = lora_a[adapter], lora_b[adapter], scaling[adapter]
    weight = base.weight
    if not weight.is_floating_point():
        raise TypeError(
            f"layer.base_layer.weight is {weight.dtype} (a quantized base): draw a LoRA layer "
            "over a float weight (chapter 02's), or dequantize the base first"
        )
    return weight.detach(), lora_b.weight.detach(), lora_a.weight.detach(), float(scaling)


def lora_shapes(layer: nn.Module) -> Figure:
    """The frozen W beside LoRA's B and A, drawn to scale, their values as images.

    Args:
        layer: a LoRA layer, ``helpers.lora.naive.LoRALinear`` or peft's (one adapter).

    Returns:
        The figure: one axes whose images are W (out, in), B (out, r), A (r, in), in that
        order, placed at their true sizes (one unit per number).
    """
    weight, lora_b, lora_a, scaling = _lora_matrices(layer)
    (out_f, in_f), r = weight.shape, lora_a.shape[0]
    gap = max(in_f, out_f) // 8  # room for the + and the x between the matrices
    x_b, x_a = in_f + gap, in_f + 2 * gap + r
    width, height = x_a + in_f + gap / 2, out_f * 1.4
    fig = ShownFigure(figsize=(8, min(max(8 * height / width, 3), 9)), layout="constrained")
    ax = fig.add_subplot()
    # name, matrix, left edge, where its label goes (B's below: it is too thin for one above)
    parts = [
        ("W (frozen)", weight, 0, "above"),
        ("B", lora_b, x_b, "below"),
        ("A", lora_a, x_a, "above"),
    ]
    for name, matrix, x0, where in parts:
        rows, cols = matrix.shape
        top = out_f  # A sits level with the top of B: B (out, r) times A (r, in)
        ax.imshow(_numpy(matrix), extent=(x0, x0 + cols, top - rows, top), **_symmetric(matrix))
        label = f"{name}\n{rows} x {cols} = {rows * cols:,}"
        y, va = (top + out_f * 0.03, "bottom") if where == "above" else (-out_f * 0.03, "top")
        ax.text(x0 + cols / 2, y, label, ha="center", va=va, fontsize=9)
    ax.text(in_f + gap / 2, out_f / 2, "+", fontsize=20, ha="center", va="center")
    ax.text(x_b + r + gap / 2, out_f - r / 2, "x", fontsize=14, ha="center", va="center")
    ax.set(xlim=(-gap / 4, width), ylim=(-out_f * 0.2, out_f * 1.2))
    ax.set_aspect("equal")
    ax.axis("off")
    n_lora, n_full = r * (in_f + out_f), in_f * out_f
    ax.set_title(
        f"h = W x + {scaling:g} B A x at r = {r}: {n_lora:,} trained numbers instead of "
        f"{n_full:,} ({n_lora / n_full:.2%})",
        fontsize=10,
    )
    return fig


# ---------------------------------------------------------------- NF4 and double quantization
def _nf4_codes(weight: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-bit code of every value (N,) and the absmax of every block (nb,), by the naive
    twin of chapter 01 (the packed bytes unpacked, high nibble first)."""
    from helpers.quantization import naive as quant

    packed, absmax = quant.quantize_nf4(weight, blocksize)  # checks weight and blocksize
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[: weight.numel()]
    return codes.long(), absmax


def nf4_block(weight: torch.Tensor, block: int = 0, blocksize: int = 64) -> Figure:
    """One block of a weight in NF4: its values, their 4-bit codes on the 16 levels, the
    block's absmax, and that absmax quantized again (double quantization).

    Args:
        weight: the float tensor chapter 01 quantizes (any shape, blocks in flat order).
        block: which block of ``blocksize`` values to draw.
        blocksize: values per absmax (64 in bitsandbytes and QLoRA).

    Returns:
        The figure. Top: the block's values divided by its absmax (points) and the NF4 level
        each is stored as (line), over the 16 levels. Middle: one bar per value, its code.
        Bottom: the absmax of the 256 blocks that share one second-level scale (line) and
        their 8-bit round trip (points), this block marked.
    """
    from helpers.quantization import naive as quant

    codes, absmax = _nf4_codes(weight, blocksize)
    block = whole_number(block, "block", 0, absmax.numel() - 1)
    qabsmax, absmax2, offset = quant.double_quantize_absmax(absmax)
    absmax_back = quant.double_dequantize_absmax(qabsmax, absmax2, offset)
    start, stop = block * blocksize, min((block + 1) * blocksize, weight.numel())
    values = weight.detach().reshape(-1)[start:stop].float().cpu()  # (B,)
    block_codes, scale = codes[start:stop].cpu(), float(absmax[block])
    levels = quant.nf4_codebook()
    fig = ShownFigure(figsize=(9, 8), layout="constrained")
    top, middle, bottom = fig.subplots(3, 1)
    for level in levels.tolist():
        top.axhline(level, color="lightgray", lw=0.8)
    index = torch.arange(start, stop).numpy()
    top.scatter(index, (values / scale).numpy(), s=12, color="tab:blue", label="value / absmax")
    top.step(
        index,
        levels[block_codes].numpy(),
        where="mid",
        color="tab:red",
        lw=1,
        label="its NF4 level",
    )
    top.set(
        ylabel="value / absmax",
        title=f"block {block}: {stop - start} values, absmax = "
        f"{scale:.4g} (stored in fp32), 16 NF4 levels in gray",
    )
    top.legend(fontsize=8, loc="lower right")
    middle.bar(index, block_codes.numpy(), color="tab:red")
    middle.set(
        ylabel="4-bit code",
        ylim=(0, 15.5),
        yticks=range(0, 16, 3),
        title=f"{stop - start} codes: {-(-(stop - start) // 2)} bytes, two codes a byte",
    )
    _draw_double_quant(bottom, block, absmax, absmax_back, qabsmax, absmax2, offset)
    plain, double = 4 + 32 / blocksize, 4 + 8 / blocksize + 32 / (blocksize * 256)
    fig.suptitle(
        f"NF4 in blocks of {blocksize}: {plain:.3f} bits per weight with fp32 absmax, "
        f"{double:.3f} with double quantization"
    )
    return fig


def _draw_double_quant(ax, block, absmax, absmax_back, qabsmax, absmax2, offset) -> None:
    """The absmax values that share this block's second-level scale, before and after their
    8-bit round trip (double quantization groups 256 absmax values)."""
    group = block // 256
    first, last = group * 256, min((group + 1) * 256, absmax.numel())
    index = torch.arange(first, last).numpy()
    ax.plot(index, _numpy(absmax[first:last]), color="tab:blue", lw=1, label="absmax (fp32)")
    ax.scatter(
        index,
        _numpy(absmax_back[first:last]),
        s=6,
        color="tab:orange",
        label="after its 8-bit round trip",
    )
    ax.axvline(block, color="tab:red", lw=1, label=f"block {block}: code {int(qabsmax[block])}")
    ax.set(
        xlabel="block",
        ylabel="absmax",
        title=f"double quantization: blocks {first} to "
        f"{last - 1} share the scale {float(absmax2[group]):.4g}; offset (the mean absmax) "
        f"{float(offset):.4g}",
    )
    ax.legend(fontsize=8, loc="upper right")


# ---------------------------------------------------------------- GGUF Q4_K
def _q4_k_parts(block: torch.Tensor) -> dict[str, torch.Tensor]:
    """One Q4_K super-block's 144 bytes, unpacked: d and dmin (fp16), the 8 six-bit scales and
    minimums, the 256 four-bit codes as (8, 32). The layout is ggml's ``block_q4_K``, read as
    ``helpers.ggufq.naive.dequantize_q4_k`` reads it."""
    halves = block[:4].contiguous().view(torch.float16).float()  # d, dmin
    packed = block[4:16].long()  # 12 bytes of six-bit numbers
    scales = torch.cat([packed[:4] & 63, (packed[8:] & 0xF) | ((packed[:4] >> 6) << 4)])
    mins = torch.cat([packed[4:8] & 63, (packed[8:] >> 4) | ((packed[4:8] >> 6) << 4)])
    qs = block[16:].reshape(4, 32)  # 4 chunks of 64 values: low nibbles, then high nibbles
    codes = torch.stack([qs & 0x0F, qs >> 4], dim=1).reshape(8, 32).long()
    return {"d": halves[0], "dmin": halves[1], "scales": scales, "mins": mins, "codes": codes}


def _draw_q4_k_bytes(ax, superblock: int) -> None:
    """The bytes of one Q4_K super-block, part by part, as ggml's ``block_q4_K`` lays them out;
    each part's size follows from the numbers it stores (fp16: 2 bytes; 16 six-bit numbers;
    256 four-bit codes), checked against ``BYTES_PER_BLOCK``."""
    from helpers.ggufq import naive as gguf
    from helpers.ggufq.kquant import QK_K, SUB

    n_bytes, sub_blocks = gguf.BYTES_PER_BLOCK["Q4_K"], QK_K // SUB
    sizes = {
        "d (fp16)": 2,
        "dmin (fp16)": 2,
        f"{sub_blocks} scales + {sub_blocks} mins, 6 bits": sub_blocks * 2 * 6 // 8,
        f"{QK_K} codes, 4 bits": QK_K * 4 // 8,
    }
    if sum(sizes.values()) != n_bytes:  # the parts must add up to ggml's block size
        raise RuntimeError(f"Q4_K parts {sizes} do not add up to {n_bytes} bytes")
    start = 0
    colours = ("tab:red", "tab:orange", "tab:green", "tab:blue")
    for (name, size), colour in zip(sizes.items(), colours, strict=True):
        ax.broken_barh([(start, size)], (0, 1), color=colour, label=f"{name}: {size} B")
        start += size
    ax.set(
        xlim=(0, n_bytes),
        ylim=(0, 1),
        yticks=[],
        xlabel="byte",
        title=f"super-block {superblock}: {n_bytes} bytes for {QK_K} weights = "
        f"{gguf.bits_per_weight('Q4_K'):g} bits per weight",
    )
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.9))


def gguf_superblock(weight: torch.Tensor, superblock: int = 0) -> Figure:
    """One Q4_K super-block of a weight (llama.cpp's 4-bit k-quant, chapter on deployment):
    its 256 values in 8 sub-blocks of 32, each sub-block's 6-bit scale and minimum, the
    super-block's fp16 ``d`` and ``dmin``, and the bytes each part takes.

    Args:
        weight: float matrix (rows, cols) with ``cols % 256 == 0``, quantized here with
            ``helpers.ggufq.naive.quantize_q4_k``.
        superblock: which super-block, counted row after row.

    Returns:
        The figure. Top: the 144 bytes, part by part (a broken bar). Second: the values and
        what Q4_K gives back, ``d * scale_j * q - dmin * min_j``, sub-blocks marked. Third:
        the 8 scales and 8 minimums (6-bit integers). Bottom: the 4-bit codes, 8 x 32.
    """
    from helpers.ggufq import naive as gguf
    from helpers.ggufq.kquant import QK_K, SUB

    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] % QK_K:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"weight must be a matrix whose rows are whole super-blocks of {QK_K}, got {got}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {weight.dtype}")
    superblock = whole_number(superblock, "superblock", 0, weight.numel() // QK_K - 1)
    # each super-block is quantized on its own values alone: quantize just this one
    values = weight.detach().reshape(-1, QK_K)[superblock].float().cpu()  # (256,)
    block = gguf.quantize_q4_k(values[None])  # (1, 144); checks dtype and finiteness
    part = _q4_k_parts(block[0])
    back = gguf.dequantize_q4_k(block).reshape(-1)
    fig = ShownFigure(figsize=(9, 9), layout="constrained")
    layout, vals, scales, codes = fig.subplots(4, 1, height_ratios=(0.6, 2, 1.4, 1.2))
    _draw_q4_k_bytes(layout, superblock)
    sub_blocks = QK_K // SUB
    index = torch.arange(QK_K).numpy()
    vals.scatter(index, values.numpy(), s=6, color="tab:blue", label="weight")
    vals.step(index, back.numpy(), where="mid", color="tab:red", lw=0.8, label="Q4_K gives back")
    for j in range(1, sub_blocks):
        vals.axvline(j * SUB, color="gray", lw=0.6)
    vals.set(
        xlim=(-1, QK_K),
        ylabel="value",
        title=f"d = {float(part['d']):.4g}, dmin = "
        f"{float(part['dmin']):.4g}; sub-block j: d * scale_j * q - dmin * min_j",
    )
    vals.legend(fontsize=8, loc="upper right")
    j = torch.arange(sub_blocks).numpy()
    scales.bar(j - 0.2, part["scales"].numpy(), width=0.4, color="tab:green", label="scale_j")
    scales.bar(j + 0.2, part["mins"].numpy(), width=0.4, color="tab:olive", label="min_j")
    scales.set(
        ylim=(0, 85), yticks=(0, 21, 42, 63), xticks=j, ylabel="6-bit integer", xlabel="sub-block"
    )
    scales.legend(fontsize=8, loc="upper right", ncols=2)
    codes.imshow(part["codes"].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=15)
    codes.set(xlabel="value in its sub-block", ylabel="sub-block", title="4-bit codes q (0 to 15)")
    return fig


# ---------------------------------------------------------------- GPTQ
def gptq_feedback(
    weight: torch.Tensor, h: torch.Tensor, result, bits: int = 4, percdamp: float = 0.01
) -> torch.Tensor:
    """What GPTQ's error feedback added to each weight before its column was rounded.

    GPTQ's sweep keeps ``W - Q = E U`` (``U`` the upper Cholesky factor of the damped
    ``H^-1``, in sweep order; ``E`` the scaled rounding errors, one column per step), so ``E``
    comes back from the result by one triangular solve, and column i just before rounding was
    ``Q_i + E_i U_ii``. The codes of those columns on the result's grid are checked against
    ``result.codes``: a result made from another weight, Hessian or damping is refused.

    Args:
        weight: the layer's weight (out, in), as passed to ``gptq_quantize``.
        h: its Hessian (in, in); ``bits``, ``percdamp``: as passed to ``gptq_quantize``.
        result: the ``GPTQResult`` of ``helpers.gptq.naive.gptq_quantize(weight, h, ...)``.

    Returns:
        float32 (out, in) on the CPU, columns in sweep order (``result.perm``): the update
        column i had received from the columns rounded before it.
    """
    from helpers.gptq import naive as gptq

    gptq.check_weight(weight, bits, 1, max_bits=8)
    gptq.check_hessian(h, weight.shape[1], percdamp)
    if not isinstance(result, gptq.GPTQResult) or result.weight.shape != weight.shape:
        got = tuple(result.weight.shape) if isinstance(result, gptq.GPTQResult) else type(result)
        raise ValueError(
            f"result must be the GPTQResult of this weight {tuple(weight.shape)}, got {got}"
        )
    device = weight.device  # the solve runs where the layer is (a GPU for a large one)
    perm = result.perm.to(device)
    w, hh = weight.detach().float().clone(), h.detach().float().to(device).clone()
    dead = torch.diagonal(hh) == 0  # as gptq_quantize: dead inputs get weight 0
    hh[dead, dead], w[:, dead] = 1.0, 0.0
    w, hh = w[:, perm], hh[perm][:, perm]  # (out, in), (in, in) in sweep order
    u = gptq._inverse_cholesky(hh, percdamp)  # the factor the sweep used
    q = result.weight.detach().float().to(device)[:, perm]
    err = torch.linalg.solve_triangular(u, w - q, upper=True, left=False)  # W - Q = E U
    before = q + err * torch.diagonal(u)  # (out, in): each column as it was rounded
    group = perm // (weight.shape[1] // result.scale.shape[1])  # each column's grid
    scale, zero = result.scale.to(device)[:, group], result.zero.to(device)[:, group]
    codes = torch.clamp(torch.round(before / scale) + zero, 0, 2**bits - 1)
    agree = (codes == result.codes.to(device)[:, perm].float()).float().mean().item()
    if agree < 0.999:  # a rare tie may round the other way; a wrong input moves most codes
        raise ValueError(
            f"result does not come from this weight and h with bits={bits}, "
            f"percdamp={percdamp}: only {agree:.1%} of its codes are reproduced"
        )
    return (before - w).cpu()


def gptq_sweep(
    weight: torch.Tensor, h: torch.Tensor, result, bits: int = 4, percdamp: float = 0.01
) -> Figure:
    """GPTQ's column sweep: the order the columns are quantized in, and the error feedback,
    the update each rounding pushed onto the columns not yet quantized.

    Args:
        weight, h, result, bits, percdamp: as for ``gptq_feedback``.

    Returns:
        The figure. Top: diag(H) of each column in sweep order (act-order sorts it, largest
        first). Middle: the feedback each weight received before its column was rounded
        (image, out x in, sweep order). Bottom: its mean size per column.
    """
    update = gptq_feedback(weight, h, result, bits, percdamp)  # (out, in), sweep order
    perm = result.perm.cpu()
    diag = torch.diagonal(h.detach().float().cpu())[perm]
    steps = torch.arange(len(perm)).numpy()
    fig = ShownFigure(figsize=(9, 8), layout="constrained")
    order, heat, size = fig.subplots(3, 1, sharex=True, height_ratios=(1, 2, 1))
    order.bar(steps, diag.numpy(), width=1.0, color="tab:gray")
    first = ", ".join(str(int(c)) for c in perm[:5])
    order.set(
        ylabel="diag(H)",
        title=f"{len(perm)} columns, quantized left to right; the first five are columns {first}",
    )
    heat.imshow(_numpy(update), aspect="auto", interpolation="nearest", **_symmetric(update))
    heat.set(
        ylabel="output row",
        title="feedback received before rounding (earlier columns' "
        "errors times U); column 0 receives none",
    )
    size.plot(steps, _numpy(update.abs().mean(0)), color="tab:purple", lw=1)
    size.set(xlabel="step of the sweep", ylabel="mean |feedback|")
    fig.suptitle(f"GPTQ on a {tuple(weight.shape)} weight, {bits} bits")
    return fig


# ---------------------------------------------------------------- DDP and FSDP
def _rank_tensors(rank_grads: Sequence, name: str | None) -> tuple[list[torch.Tensor], str]:
    """Each rank's gradient of one parameter, from ``[{name: grad}, ...]`` or ``[grad, ...]``."""
    if not isinstance(rank_grads, Sequence) or len(rank_grads) < 2:
        raise ValueError("rank_grads must list the gradients of 2 or more ranks, one item a rank")
    if all(isinstance(g, Mapping) for g in rank_grads):
        keys = list(rank_grads[0])
        if name is None:  # the first parameter with a gradient (LoRA's A has none while B = 0)
            moving = [k for k in keys if any(bool(g[k].ne(0).any()) for g in rank_grads if k in g)]
            name = (moving or keys)[0]
        missing = [r for r, g in enumerate(rank_grads) if name not in g]
        if missing:
            raise ValueError(
                f"name {name!r} is not in the gradients of rank(s) {missing}; "
                f"rank 0 has {keys[:3]}..."
            )
        grads = [g[name] for g in rank_grads]
    elif all(isinstance(g, torch.Tensor) for g in rank_grads):
        grads, name = list(rank_grads), name or "gradient"
    else:
        raise TypeError("rank_grads must be a list of {name: gradient} dicts or of tensors")
    for rank, g in enumerate(grads):
        finite_tensor(g, f"rank_grads[{rank}]")
        if g.shape != grads[0].shape or g.dim() > 2:
            raise ValueError(
                f"rank_grads[{rank}] has shape {tuple(g.shape)}; every rank's "
                f"gradient must have rank 0's shape {tuple(grads[0].shape)}, 1-D or 2-D"
            )
    return [g.detach().float().cpu() for g in grads], name


def ddp_allreduce(
    rank_grads: Sequence,
    name: str | None = None,
    reduced=None,
    op: str = "sum",
    rtol: float = 1e-4,
) -> Figure:
    """Each rank's gradient of one parameter, and the all-reduce that makes them equal.

    Args:
        rank_grads: per rank, ``{parameter name: gradient}`` (or the gradient tensor) computed
            on that rank's shard of the window, before any all-reduce.
        name: the parameter to draw (default: the first whose gradient is not all zero).
        reduced: optionally, what the ranks held after their all-reduce (a dict as above, or
            a tensor): drawn in place of the reduction computed here, and only if the two
            agree, ``||reduced - reduction|| <= rtol * ||reduction||`` (summation order).
        op: "sum" (the naive DDP: each rank divided by the global token count already) or
            "mean" (torch's DDP and accelerate, which average over ranks).

    Returns:
        The figure: one image per rank, then the all-reduced gradient, on one colour scale
        (a matrix taller than wide is drawn transposed, so that the rows of images stay wide).
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    grads, name = _rank_tensors(rank_grads, name)
    shape = tuple(grads[0].shape)
    grads = [g.reshape(-1, shape[-1]) for g in grads]  # (rows, cols); a vector is one row
    total = torch.stack(grads).sum(0) if op == "sum" else torch.stack(grads).mean(0)
    if reduced is not None:
        got = reduced[name] if isinstance(reduced, Mapping) else reduced
        got = finite_tensor(got, "reduced").detach().float().cpu()
        if got.numel() != total.numel():
            raise ValueError(f"reduced[{name!r}] has shape {tuple(got.shape)}, not {shape}")
        got = got.reshape(total.shape)
        gap = float((got - total).norm() / total.norm().clamp(min=1e-30))
        if gap > positive_number(rtol, "rtol"):
            raise ValueError(
                f"reduced[{name!r}] is not the {op} of rank_grads: relative difference "
                f"{gap:.3g} > rtol={rtol:g}"
            )
        total = got
    fig = ShownFigure(figsize=(9, 1.4 * (len(grads) + 1) + 0.6), layout="constrained")
    axes = fig.subplots(len(grads) + 1, 1, sharex=True)
    colours = _symmetric(*grads, total)
    tall = grads[0].shape[0] > grads[0].shape[1]  # e.g. LoRA's B (out, r): drawn on its side
    for rank, (ax, g) in enumerate(zip(axes, [*grads, total], strict=True)):
        ax.imshow((g.T if tall else g).numpy(), aspect="auto", interpolation="nearest", **colours)
        what = f"rank {rank}: its own shard" if rank < len(grads) else f"all_reduce({op.upper()})"
        ax.set_title(f"{what}, norm {float(g.norm()):.4g}", fontsize=9, loc="left")
        ax.set_yticks([])
    axes[-1].set_xlabel(f"{name} {shape}" + (", transposed" if tall else ""))
    fig.suptitle(
        f"{len(grads)} ranks, different gradients; after the all-reduce every rank "
        "holds the bottom one and takes the same step"
    )
    return fig


def _shard_rows(rows: int, world_size: int) -> list[int]:
    """Rows of a dim-0 shard per rank, as FSDP2 (``torch.chunk``) cuts: ceil(rows / N) each,
    the last ranks get fewer or none."""
    size = -(-rows // world_size)
    return [max(0, min(size, rows - rank * size)) for rank in range(world_size)]


def fsdp_shards(model: nn.Module, world_size: int) -> Figure:
    """Which rank holds which slice of the weights, gradients and optimizer state under FSDP2
    (ZeRO-3): every parameter is cut along its first dimension into ``world_size`` shards.

    Args:
        model: the model to shard (its parameter shapes and which ones train are read).
        world_size: N, the number of ranks.

    Returns:
        The figure: three bars (weights; gradients, trainable parameters only; AdamW's two
        moments per trainable number), each the parameters end to end in the model's order,
        coloured by the rank that holds each slice.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    world_size = whole_number(world_size, "world_size")
    params = list(model.named_parameters())
    trainable = [(n, p) for n, p in params if p.requires_grad]
    if not params or not trainable:
        raise ValueError(
            "model has no trainable parameters: nothing would hold gradients or "
            "optimizer state (add LoRA, or unfreeze it)"
        )
    lanes = {
        "weights": (params, 1),
        "gradients": (trainable, 1),
        "AdamW state (2 moments)": (trainable, 2),
    }
    fig = ShownFigure(figsize=(9, 4.5), layout="constrained")
    axes = fig.subplots(len(lanes), 1)
    colours = [f"C{rank % 10}" for rank in range(world_size)]
    for ax, (lane, (tensors, copies)) in zip(axes, lanes.items(), strict=True):
        segments, start, edges = [[] for _ in range(world_size)], 0, []
        for _, p in tensors:
            edges.append(start)
            rows_total = p.shape[0] if p.dim() else 1  # a scalar is one row
            per_row = copies * p.numel() // max(rows_total, 1)
            for rank, rows in enumerate(_shard_rows(rows_total, world_size)):
                if rows:
                    segments[rank].append((start, rows * per_row))
                start += rows * per_row
        for rank, spans in enumerate(segments):
            held = sum(length for _, length in spans)
            ax.broken_barh(spans, (0, 1), color=colours[rank], label=f"rank {rank}: {held:,}")
        ax.vlines(edges[1:], 0, 1, color="white", lw=0.5)  # where one parameter ends
        ax.set(
            xlim=(0, start),
            yticks=[],
            title=f"{lane}: {start:,} numbers in {len(tensors)} tensors",
            ylabel="",
        )
        ax.legend(fontsize=7, loc="upper right", ncols=min(world_size, 4))
    axes[-1].set_xlabel("numbers, parameter after parameter in the model's order")
    fig.suptitle(f"FSDP2 on {world_size} ranks: each parameter cut along its first dimension")
    return fig


# ---------------------------------------------------------------- packing
def packed_mask(attention_mask: torch.Tensor, seq_lengths: Sequence[int], row: int = 0) -> Figure:
    """The attention mask of one packed row, with its documents' boundaries.

    Args:
        attention_mask: bool, (B, 1, T, T) as ``helpers.packing.naive.collate`` builds it, or
            (T, T); True where query (row) may attend to key (column).
        seq_lengths: the row's example lengths (the packed row's ``seq_lengths``); the rest of
            the T tokens, if any, is padding.
        row: which row of the batch to draw.

    Returns:
        The figure: the mask as an image (T, T), a line at each document boundary, and in the
        title the pairs allowed inside documents and across them (0 for a right mask).
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
        got = (
            attention_mask.dtype
            if isinstance(attention_mask, torch.Tensor)
            else type(attention_mask)
        )
        raise TypeError(f"attention_mask must be a bool tensor (True: may attend), got {got}")
    if attention_mask.dim() == 4 and attention_mask.shape[1] == 1:
        row = whole_number(row, "row", 0, attention_mask.shape[0] - 1)
        mask = attention_mask[row, 0]
    elif attention_mask.dim() == 2:
        mask = attention_mask
    else:
        raise ValueError(
            f"attention_mask must be (B, 1, T, T) or (T, T), got {tuple(attention_mask.shape)}"
        )
    length = mask.shape[0]
    if mask.shape != (length, length):
        raise ValueError(
            f"attention_mask must be square in its last two dimensions, got {tuple(mask.shape)}"
        )
    lengths = [whole_number(n, f"seq_lengths[{i}]") for i, n in enumerate(seq_lengths)]
    if not lengths or sum(lengths) > length:
        raise ValueError(
            f"seq_lengths {lengths} must hold 1 or more lengths adding up to at "
            f"most the mask's {length} tokens"
        )
    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    document = torch.cat([document, torch.full((length - len(document),), -1)])  # -1: padding
    mask = mask.cpu()
    same = document[:, None] == document[None, :]
    real = (document >= 0)[:, None]  # queries that are tokens of a document
    inside, across = int((mask & same & real).sum()), int((mask & ~same).sum())
    padding = int((mask & same & ~real).sum())  # padding among itself: never in the loss
    fig = ShownFigure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    for edge in torch.tensor(lengths).cumsum(0)[:-1].tolist():
        ax.axhline(edge - 0.5, color="tab:red", lw=0.8)
        ax.axvline(edge - 0.5, color="tab:red", lw=0.8)
    if sum(lengths) < length:
        ax.axvspan(sum(lengths) - 0.5, length - 0.5, color="tab:blue", alpha=0.15, label="padding")
        ax.legend(fontsize=8, loc="upper right")
    ax.set(
        xlabel="key (attended to)",
        ylabel="query (attending)",
        title=f"{len(lengths)} documents in {length} tokens\n{inside:,} pairs allowed inside "
        f"documents, {across:,} across" + (f" (padding: {padding:,} pairs)" if padding else ""),
    )
    return fig
