"""The course's figures are drawn from the tensors they are given: the images, bars, points and
titles of each figure are checked against the same quantities computed here by another path
(bitsandbytes, a GPTQ loop written out, torch.chunk, ...), and a different input draws a
different figure, so no figure can be a fixed picture."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from safetensors.torch import load_file
from torch import nn

from helpers import figures
from helpers.paths import TINY_MODEL_DIR

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny_weights():
    """The shipped tiny model's tensors, read from its safetensors file."""
    return load_file(TINY_MODEL_DIR / "model.safetensors")


@pytest.fixture
def draw():
    """Call a figure function; every figure drawn in the test is closed afterwards."""
    import matplotlib.pyplot as plt

    drawn = []

    def call(fn, *args, **kwargs):
        fig = fn(*args, **kwargs)
        assert isinstance(fig, Figure)
        drawn.append(fig)
        return fig

    yield call
    for fig in drawn:
        plt.close(fig)


def _titles(fig) -> str:
    texts = [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
    texts += [t.get_text() for ax in fig.axes for t in ax.texts]
    return " | ".join(texts + [fig._suptitle.get_text() if fig._suptitle else ""])


def _bar_heights(ax) -> np.ndarray:
    return np.array([patch.get_height() for patch in ax.patches])


def _span_widths(ax) -> list[float]:
    """Widths of the rectangles of a broken_barh, one PolyCollection per call, in call order."""
    widths = []
    for coll in ax.collections:
        if isinstance(coll, PolyCollection):
            widths.append([np.ptp(p.vertices[:, 0]) for p in coll.get_paths()])
    return widths


# ---------------------------------------------------------------- LoRA
def _lora_layer(weight, r, twin="naive", seed=0):
    from helpers.lora import library, naive

    base = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    base.weight.data = weight.clone()
    torch.manual_seed(seed)
    layer = (naive if twin == "naive" else library).LoRALinear(base, r=r, alpha=2 * r)
    return layer


def test_lora_shapes_draws_w_b_and_a_to_scale(tiny_weights, draw):
    weight = tiny_weights["model.layers.0.mlp.up_proj.weight"]  # (640, 256)
    layer = _lora_layer(weight, r=8)
    nn.init.normal_(layer.lora_B.weight, std=0.01)  # B is 0 at init: give it values to show
    fig = draw(figures.lora_shapes, layer)
    images = fig.axes[0].images
    expected = [weight, layer.lora_B.weight.detach(), layer.lora_A.weight.detach()]
    assert len(images) == 3
    for image, matrix in zip(images, expected, strict=True):
        assert np.array_equal(image.get_array(), matrix.numpy())
        left, right, bottom, top = image.get_extent()
        assert (right - left, top - bottom) == (matrix.shape[1], matrix.shape[0])  # to scale
    text = _titles(fig)
    assert "640 x 256 = 163,840" in text and "640 x 8 = 5,120" in text and "8 x 256" in text
    assert f"{8 * (640 + 256):,} trained numbers" in text


def test_lora_shapes_reads_peft_layers_and_follows_the_rank(tiny_weights, draw):
    weight = tiny_weights["model.layers.0.self_attn.k_proj.weight"]  # (128, 256)
    layer = _lora_layer(weight, r=4, twin="library")
    fig = draw(figures.lora_shapes, layer)
    lora_a = layer.lora_A["default"].weight.detach()
    assert np.array_equal(fig.axes[0].images[2].get_array(), lora_a.numpy())
    assert fig.axes[0].images[1].get_array().shape == (128, 4)
    assert f"{4 * (128 + 256):,} trained numbers" in _titles(fig)


def test_lora_shapes_refuses_a_plain_linear():
    with pytest.raises(TypeError, match="layer must be a LoRA layer"):
        figures.lora_shapes(nn.Linear(4, 4))


# ---------------------------------------------------------------- NF4
@pytest.mark.parametrize("block", [0, 37])
def test_nf4_block_draws_the_codes_bitsandbytes_stores(tiny_weights, draw, block):
    from helpers.quantization import library, naive

    weight = tiny_weights["model.layers.0.mlp.up_proj.weight"]
    packed, absmax = library.quantize_nf4(weight, blocksize=64)  # bitsandbytes
    codes = torch.stack([packed >> 4, packed & 0x0F], 1).reshape(-1)[block * 64 : (block + 1) * 64]
    values = weight.reshape(-1)[block * 64 : (block + 1) * 64]
    fig = draw(figures.nf4_block, weight, block=block)
    top, middle, bottom = fig.axes
    assert np.array_equal(_bar_heights(middle), codes.numpy())
    np.testing.assert_allclose(
        top.collections[0].get_offsets()[:, 1], (values / absmax[block]).numpy(), rtol=1e-6
    )
    assert f"absmax = {float(absmax[block]):.4g}" in top.get_title()
    # double quantization: the absmax of the blocks sharing one scale, and their round trip,
    # as the naive twin computes it (bitsandbytes' 8-bit codes agree on all but a rare tie)
    qabsmax, absmax2, offset = naive.double_quantize_absmax(absmax)
    back = naive.double_dequantize_absmax(qabsmax, absmax2, offset)
    theirs = library.double_dequantize_absmax(*library.double_quantize_absmax(absmax))
    np.testing.assert_array_equal(bottom.lines[0].get_ydata(), absmax[:256].numpy())
    drawn = bottom.collections[0].get_offsets()[:, 1]
    np.testing.assert_array_equal(drawn, back[:256].numpy())
    assert np.mean(np.isclose(drawn, theirs[:256].numpy(), rtol=1e-6)) > 0.99
    assert f"share the scale {float(absmax2[0]):.4g}" in bottom.get_title()


def test_nf4_block_follows_the_weight(tiny_weights, draw):
    first = draw(figures.nf4_block, tiny_weights["model.layers.0.mlp.up_proj.weight"])
    other = draw(figures.nf4_block, tiny_weights["model.layers.1.mlp.up_proj.weight"])
    assert not np.array_equal(_bar_heights(first.axes[1]), _bar_heights(other.axes[1]))
    assert first.axes[0].get_title() != other.axes[0].get_title()


def test_nf4_block_refuses_a_block_outside_the_weight(tiny_weights):
    weight = tiny_weights["model.layers.0.mlp.up_proj.weight"]  # 640 * 256 / 64 = 2560 blocks
    with pytest.raises(ValueError, match="block must be an integer from 0 to 2559"):
        figures.nf4_block(weight, block=2560)
    with pytest.raises(TypeError, match="weight must be a float"):
        figures.nf4_block(weight.to(torch.int8))


# ---------------------------------------------------------------- GGUF Q4_K
@pytest.mark.parametrize("superblock", [0, 5])
def test_gguf_superblock_draws_the_bytes_of_the_super_block(tiny_weights, draw, superblock):
    from helpers.ggufq import naive

    weight = tiny_weights["model.layers.0.mlp.up_proj.weight"]  # (640, 256): 640 super-blocks
    data = naive.quantize_q4_k(weight).reshape(-1, 144)[superblock]
    d, dmin = data[:4].view(torch.float16).float().tolist()  # the super-block's two fp16
    back = naive.dequantize_q4_k(data[None]).reshape(8, 32)
    fig = draw(figures.gguf_superblock, weight, superblock=superblock)
    layout, values, scales, codes = fig.axes
    assert _span_widths(layout) == [[2], [2], [12], [128]]  # d, dmin, scales and mins, codes
    np.testing.assert_array_equal(
        values.collections[0].get_offsets()[:, 1], weight.reshape(-1, 256)[superblock].numpy()
    )
    heights = _bar_heights(scales)
    sc, mn = torch.tensor(heights[:8])[:, None], torch.tensor(heights[8:])[:, None]
    q = torch.tensor(np.asarray(codes.images[0].get_array()), dtype=torch.float32)  # (8, 32)
    # the drawn scales, minimums and codes, with d and dmin, give back what Q4_K decodes
    torch.testing.assert_close(d * sc.float() * q - dmin * mn.float(), back)
    assert f"d = {d:.4g}, dmin = {dmin:.4g}" in values.get_title()
    assert "4.5 bits per weight" in layout.get_title()


def test_gguf_superblock_follows_the_weight(tiny_weights, draw):
    weight = tiny_weights["model.layers.0.mlp.up_proj.weight"]
    first = draw(figures.gguf_superblock, weight, 0)
    other = draw(figures.gguf_superblock, weight, 1)
    codes = [np.asarray(f.axes[3].images[0].get_array()) for f in (first, other)]
    assert not np.array_equal(*codes)


def test_gguf_superblock_refuses_rows_of_partial_super_blocks(tiny_weights):
    with pytest.raises(ValueError, match="weight must be a matrix whose rows are whole super"):
        figures.gguf_superblock(tiny_weights["model.layers.0.mlp.down_proj.weight"])  # 640 cols
    with pytest.raises(ValueError, match="superblock must be an integer from 0 to 639"):
        figures.gguf_superblock(tiny_weights["model.layers.0.mlp.up_proj.weight"], 640)
    with pytest.raises(TypeError, match="weight must be a float tensor, got torch.int8"):
        figures.gguf_superblock(torch.zeros(2, 256, dtype=torch.int8))
    nan = tiny_weights["model.layers.0.mlp.up_proj.weight"].clone()
    nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="weight holds 1 NaN or inf"):
        figures.gguf_superblock(nan)


# ---------------------------------------------------------------- GPTQ
def _calibrated(tiny_weights, seed=0):
    """A real layer of the tiny model with correlated inputs (where GPTQ's feedback matters)."""
    from helpers.gptq import naive

    weight = tiny_weights["model.layers.1.self_attn.o_proj.weight"]  # (256, 256)
    torch.manual_seed(seed)
    mix = torch.randn(256, 256) * 0.2 + torch.eye(256)
    return weight, naive.hessian(torch.randn(512, 256) @ mix)


def _feedback_by_loop(weight, h, result, percdamp=0.01, bits=4, group_size=32):
    """GPTQ's sweep written out once more, recording each column just before it is rounded."""
    perm = result.perm
    w, hh = weight.float()[:, perm].clone(), h[perm][:, perm]
    hh = hh + percdamp * torch.diagonal(hh).mean() * torch.eye(len(hh))
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hh)), upper=True)
    received = torch.zeros_like(w)
    for i in range(w.shape[1]):
        received[:, i] = w[:, i] - weight.float()[:, perm[i]]
        g = perm[i] // group_size
        scale, zero = result.scale[:, g], result.zero[:, g]
        q = scale * (torch.clamp(torch.round(w[:, i] / scale) + zero, 0, 2**bits - 1) - zero)
        err = (w[:, i] - q) / u[i, i]
        w[:, i:] -= err[:, None] * u[i, i:][None, :]
    torch.testing.assert_close(w[:, torch.argsort(perm)], result.weight)  # the loop is GPTQ's
    return received


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_sweep_draws_the_order_and_the_feedback(tiny_weights, draw, act_order):
    from helpers.gptq import naive

    weight, h = _calibrated(tiny_weights)
    result = naive.gptq_quantize(weight, h, act_order=act_order)
    fig = draw(figures.gptq_sweep, weight, h, result)
    order, heat, size = fig.axes
    diag = torch.diagonal(h)[result.perm]
    np.testing.assert_array_equal(_bar_heights(order), diag.numpy())
    assert bool((diag[:-1] >= diag[1:]).all()) == act_order  # act-order: largest first
    received = _feedback_by_loop(weight, h, result)
    np.testing.assert_allclose(heat.images[0].get_array(), received.numpy(), atol=2e-6)
    np.testing.assert_allclose(size.lines[0].get_ydata(), received.abs().mean(0), atol=2e-6)
    assert float(received[:, 0].abs().max()) == 0 and float(received.abs().max()) > 1e-3
    assert ", ".join(str(int(c)) for c in result.perm[:5]) in order.get_title()


def test_gptq_sweep_refuses_a_result_of_another_layer(tiny_weights):
    from helpers.gptq import naive

    weight, h = _calibrated(tiny_weights)
    result = naive.gptq_quantize(weight, h)
    other = tiny_weights["model.layers.0.self_attn.o_proj.weight"]
    with pytest.raises(ValueError, match="result does not come from this weight"):
        figures.gptq_sweep(other, h, result)
    with pytest.raises(ValueError, match="percdamp=0.5"):
        figures.gptq_sweep(weight, h, result, percdamp=0.5)
    with pytest.raises(ValueError, match="result must be the GPTQResult"):
        figures.gptq_sweep(weight[:, :128], h[:128, :128], result)


# ---------------------------------------------------------------- DDP and FSDP
def _rank_gradients(world=2, seed=0):
    """Real gradients of a small linear model: each rank's shard of a batch, its summed loss
    divided by the whole batch's size (as the naive DDP does), and the full-batch gradient."""
    torch.manual_seed(seed)
    model, x, y = nn.Linear(16, 6), torch.randn(12, 16), torch.randn(12, 6)

    def grads(rows):
        model.zero_grad()
        ((model(x[rows]) - y[rows]).pow(2).sum() / len(x)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    per_rank = [grads(slice(r, None, world)) for r in range(world)]
    return per_rank, grads(slice(None))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_allreduce_draws_each_rank_and_their_sum(draw, world):
    per_rank, full = _rank_gradients(world)
    fig = draw(figures.ddp_allreduce, per_rank, "weight", reduced=full)
    images = [ax.images[0].get_array() for ax in fig.axes]
    assert len(images) == world + 1
    for image, grads in zip(images, per_rank, strict=False):
        assert np.array_equal(image, grads["weight"].numpy())
    assert np.array_equal(images[-1], full["weight"].numpy())  # what every rank got
    assert not np.allclose(images[0], images[1])  # different shards, different gradients
    assert f"norm {float(full['weight'].norm()):.4g}" in fig.axes[-1].get_title(loc="left")
    bias = draw(figures.ddp_allreduce, per_rank, "bias", op="mean")
    mean = torch.stack([g["bias"] for g in per_rank]).mean(0)
    np.testing.assert_allclose(bias.axes[-1].images[0].get_array(), mean[None].numpy())


def test_ddp_allreduce_draws_by_default_the_first_gradient_that_is_not_zero(draw):
    per_rank, _ = _rank_gradients()
    frozen = [{"lora_A": torch.zeros(2, 16), **grads} for grads in per_rank]  # as A while B = 0
    fig = draw(figures.ddp_allreduce, frozen)
    assert np.array_equal(fig.axes[0].images[0].get_array(), per_rank[0]["weight"].numpy())
    assert fig.axes[-1].get_xlabel() == "weight (6, 16)"
    tall = draw(figures.ddp_allreduce, [{"lora_B": g["weight"].T} for g in per_rank])
    assert np.array_equal(tall.axes[1].images[0].get_array(), per_rank[1]["weight"].numpy())
    assert tall.axes[-1].get_xlabel() == "lora_B (16, 6), transposed"


def test_ddp_allreduce_refuses_a_reduction_that_does_not_add_up():
    per_rank, full = _rank_gradients()
    with pytest.raises(ValueError, match="reduced\\['weight'\\] is not the sum of rank_grads"):
        figures.ddp_allreduce(per_rank, "weight", reduced={"weight": 1.01 * full["weight"]})
    figures.ddp_allreduce(per_rank, "weight", reduced={"weight": 1.01 * full["weight"]}, rtol=0.02)
    with pytest.raises(ValueError, match="reduced\\['weight'\\] has shape"):
        figures.ddp_allreduce(per_rank, "weight", reduced={"weight": full["weight"][:2]})
    with pytest.raises(ValueError, match="2 or more ranks"):
        figures.ddp_allreduce(per_rank[:1])
    with pytest.raises(ValueError, match="name 'lora_A' is not in"):
        figures.ddp_allreduce(per_rank, "lora_A")
    with pytest.raises(ValueError, match="rank_grads\\[1\\] has shape"):
        figures.ddp_allreduce([per_rank[0]["weight"], per_rank[1]["weight"][:3]])


@pytest.fixture(scope="module")
def lora_model():
    from transformers import AutoModelForCausalLM

    from helpers.lora import naive

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    torch.manual_seed(0)
    return naive.add_lora(model, 8, 16, ("q_proj", "v_proj"))


@pytest.mark.parametrize("world", [2, 3])
def test_fsdp_shards_hold_what_torch_chunk_gives_each_rank(lora_model, draw, world):
    fig = draw(figures.fsdp_shards, lora_model, world)
    params = list(lora_model.parameters())
    trainable = [p for p in params if p.requires_grad]
    for ax, tensors, copies in zip(
        fig.axes, (params, trainable, trainable), (1, 1, 2), strict=True
    ):
        held = [sum(w) for w in _span_widths(ax)]
        expected = [0] * world
        for p in tensors:  # FSDP2 shards dim 0 as torch.chunk does
            for rank, piece in enumerate(torch.chunk(p, world, dim=0)):
                expected[rank] += copies * piece.numel()
        assert held == expected
        assert sum(held) == copies * sum(p.numel() for p in tensors)
        assert f"rank 0: {expected[0]:,}" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_fsdp_shards_refuse_what_cannot_be_sharded(lora_model):
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        figures.fsdp_shards(lora_model, 0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        figures.fsdp_shards(nn.Linear(4, 4).requires_grad_(False), 2)


# ---------------------------------------------------------------- packing
def _packed_batch(lengths, pack_len):
    from helpers.packing import naive

    encoded = [{"input_ids": list(range(1, n + 1)), "labels": list(range(n))} for n in lengths]
    rows = naive.pack(encoded, pack_len)
    return rows, naive.collate(rows, pad_token_id=0)


def test_packed_mask_draws_the_collated_mask_and_its_documents(draw):
    rows, batch = _packed_batch([20, 35, 12, 50, 30], 100)  # rows of 67 and 80 tokens
    for row in (0, 1):
        lengths = rows[row]["seq_lengths"]
        fig = draw(figures.packed_mask, batch["attention_mask"], lengths, row=row)
        ax = fig.axes[0]
        assert np.array_equal(ax.images[0].get_array(), batch["attention_mask"][row, 0].numpy())
        edges = sorted({line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] > 0})
        assert edges == [e - 0.5 for e in np.cumsum(lengths)[:-1]]
        inside = sum(n * (n + 1) // 2 for n in lengths)  # causal within each document
        pad = 80 - sum(lengths)
        assert f"{len(lengths)} documents in 80 tokens" in ax.get_title()
        assert f"{inside:,} pairs allowed inside documents, 0 across" in ax.get_title()
        assert (f"padding: {pad * (pad + 1) // 2:,} pairs" in ax.get_title()) == (pad > 0)


def test_packed_mask_counts_the_pairs_a_leaky_mask_lets_through(draw):
    lengths = [7, 5, 9]
    leaky = torch.ones(21, 21, dtype=torch.bool)  # every token sees every other: no packing mask
    fig = draw(figures.packed_mask, leaky, lengths)
    across = 21 * 21 - sum(n * n for n in lengths)
    assert f"{across:,} across" in fig.axes[0].get_title()
    assert np.array_equal(fig.axes[0].images[0].get_array(), leaky.numpy())


def test_packed_mask_refuses_a_mask_it_cannot_draw():
    _, batch = _packed_batch([5, 6], 20)
    mask = batch["attention_mask"]
    with pytest.raises(TypeError, match="attention_mask must be a bool tensor"):
        figures.packed_mask(mask.float(), [5, 6])
    with pytest.raises(ValueError, match="seq_lengths \\[5, 7\\] must hold"):
        figures.packed_mask(mask, [5, 7])
    with pytest.raises(ValueError, match="row must be an integer from 0 to 0"):
        figures.packed_mask(mask, [5, 6], row=1)
    with pytest.raises(ValueError, match="seq_lengths\\[1\\] must be a positive integer"):
        figures.packed_mask(mask, [5, 0])


def test_a_figure_shows_itself_as_a_png_without_pyplot():
    """A chapter that has not imported pyplot still gets an image, not ``<Figure size ...>``."""
    from helpers.figures import ShownFigure

    _, batch = _packed_batch([5, 6], 20)
    fig = figures.packed_mask(batch["attention_mask"], [5, 6])
    assert isinstance(fig, ShownFigure)
    assert fig._repr_png_().startswith(b"\x89PNG")
