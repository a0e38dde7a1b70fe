"""FLOP counting with torch.utils.flop_counter, including attention on the CPU.

torch 2.14's FlopCounterMode has no formula for the CPU attention kernels
(`aten._scaled_dot_product_flash_attention_for_cpu` and its backward), so it counts 0 FLOPs for
`F.scaled_dot_product_attention` on a CPU (pytorch/pytorch#195460, fixed upstream by PR #195801 after the
pinned 2.14.1). `flop_counter()` registers the existing SDPA formulas for them; drop the mapping once the
pinned torch has that fix.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


# FlopCounterMode hands custom formulas the arguments' shapes: (query, key, value, ...) forward and
# (grad_out, query, key, value, ...) backward, as for the CUDA kernels
def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


aten = torch.ops.aten
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode (no table printed) that also counts CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
