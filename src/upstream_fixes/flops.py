"""FLOP counting: Lightning's `measure_flops`, with attention on the CPU counted too; the GPU's bf16 peak, with the
H200's.

torch 2.14's FlopCounterMode (which `measure_flops`, Lightning's ThroughputMonitor and ModelSummary use) has no
formula for the CPU attention kernels (`aten._scaled_dot_product_flash_attention_for_cpu` and its backward), so
it counts 0 FLOPs for `F.scaled_dot_product_attention` on a CPU (pytorch/pytorch#195460, fixed upstream by
PR #195801 after the pinned 2.14.1). Importing this module registers the existing SDPA formulas for them with
torch's `register_flop_formula`, for every counter of this process; a torch that has its own formulas keeps them.
Drop the registration once the pinned torch has that fix.
"""

from contextlib import suppress

import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["measure_flops", "peak_bf16_flops"]


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


# Lightning 2.6 does not recognise the H200 by the name its driver gives ("NVIDIA H200": Lightning issue #20660),
# and where it does it lists the with-sparsity figure, twice the dense one (issue #21677, fixed after 2.6.6 by
# PR #21743). The H200 has the H100 SXM's GH100 tensor cores and clocks (only more and faster memory): its
# dense bf16 peak is the H100 SXM's, from NVIDIA's H100 data sheet. Drop this once the pinned Lightning has the fix.
H200_DENSE_BF16 = 989.4e12


def peak_bf16_flops(device: str) -> float | None:
    """The device's dense bf16 peak FLOP/s: Lightning's table, but for the H200; None on a CPU."""
    if device == "cuda" and "H200" in torch.cuda.get_device_name():
        return H200_DENSE_BF16
    return get_available_flops(torch.device(device), torch.bfloat16)
