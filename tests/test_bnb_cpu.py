"""The course keeps bitsandbytes' portable 4-bit layout on every CPU (see helpers.bnb_cpu)."""

import torch

from helpers import bnb_cpu  # noqa: F401
from helpers.qlora import library


def test_eval_forward_keeps_the_nf4_bytes():
    # On AVX512-BF16 CPUs bitsandbytes would repack the weight in place during an eval forward
    # without gradients; the bytes must stay those quantize_4bit wrote.
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64, bias=True)
    layer = library._to_bnb(linear, torch.float32, double_quant=True)
    before = layer.weight.data.clone()
    layer.eval()
    with torch.no_grad():
        out = layer(torch.randn(3, 128))
    assert not layer.support_avx512bf16_for_cpu
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert torch.equal(layer.weight.data, before)
    assert out.shape == (3, 64)
