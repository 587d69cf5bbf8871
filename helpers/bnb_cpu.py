"""Keep bitsandbytes' 4-bit weights in their portable layout on every CPU.

On a CPU with AVX512-BF16 (recent Intel Xeons), bitsandbytes 0.49+ repacks a ``Linear4bit``'s
weight *in place* into a CPU-only tiled layout the first time the layer runs in eval mode
without gradients (``Linear4bit.forward`` checks ``support_avx512bf16_for_cpu``). After that the
weight no longer holds NF4 codes two per byte, so everything the course does with those bytes
(compare them with the naive twin, dequantize, merge, save) reads a different layout, and the
outputs differ from the same layer on any other machine. The course keeps the layout that
bitsandbytes documents and uses on GPUs: every layer created after this module is imported
reports the fast path as unavailable. It only changes speed on those CPUs, never results.

(bitsandbytes' import-time warning about an optional hub kernel on such CPUs is silenced in
``helpers/__init__.py``, which runs before any chapter imports bitsandbytes.)
"""

from __future__ import annotations

import bitsandbytes.nn.modules as _bnb_modules


def _portable_layout_only() -> bool:
    """What ``Linear4bit`` asks when it is built: may it repack for AVX512-BF16? Never."""
    return False


_bnb_modules.has_avx512bf16 = _portable_layout_only
