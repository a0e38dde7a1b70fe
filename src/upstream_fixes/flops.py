"""FLOP counting: Lightning's `measure_flops`, with attention on the CPU counted too.

torch 2.14's FlopCounterMode (which `measure_flops`, Lightning's ThroughputMonitor and ModelSummary use) has no
formula for the CPU attention kernels (`aten._scaled_dot_product_flash_attention_for_cpu` and its backward), so
it counts 0 FLOPs for `F.scaled_dot_product_attention` on a CPU (pytorch/pytorch#195460, fixed upstream by
PR #195801 after the pinned 2.14.1). Importing this module registers the existing SDPA formulas for them with
torch's `register_flop_formula`, for every counter of this process; a torch that has its own formulas keeps them.
Drop the registration once the pinned torch has that fix.
"""

from contextlib import suppress

import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["measure_flops"]


# torch hands a formula the arguments' shapes: (query, key, value, ...) forward and (grad_out, query, key,
# value, ...) backward, as for the CUDA kernels
def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


aten = torch.ops.aten
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}
for _kernel, _formula in CPU_ATTENTION.items():
    with suppress(RuntimeError):  # "duplicate registrations": this torch counts the kernel itself
        register_flop_formula(_kernel)(_formula)
