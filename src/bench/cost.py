"""Counted cost of model configs: forward GFLOPs per image, parameters, and CPU training images/s.

    python -m src.bench.cost --model vit --image-size 32 --variant plain \\
        --variant "S=8 @4" model.token_learner.num_tokens=8 model.token_learner.layer=4

Each `--variant LABEL [OVERRIDE ...]` is one row: conf/model/<model>.yaml as src.train composes it, plus the
Hydra overrides. FLOPs are counted by Lightning's measure_flops (torch.utils.flop_counter: matrix multiplies,
convolutions and attention, the latter on the CPU too: src/upstream_fixes/flops.py; not normalisations, activations or softmax)
on one image in eval mode. Training images/s is the median of `--repeats` timings of src.bench's hand-written
training loop on synthetic CIFAR-shaped images; on a shared CPU it moves with the other jobs' load, the FLOP
count does not.
"""

import argparse
import statistics

import torch

from src.bench.fit_vs_raw import raw_rate
from src.bench.report import markdown
from src.bench.workload import build_module, gpu_batches, model_config, synthetic
from src.cli.exits import exit_on_user_error
from src.upstream_fixes.flops import measure_flops


def forward_flops(backbone: torch.nn.Module, image_size: int, in_chans: int = 3) -> int:
    """FLOPs of one image through the model, as torch.utils.flop_counter counts them."""
    backbone.eval()
    image = torch.zeros(1, in_chans, image_size, image_size)
    with torch.no_grad():
        return measure_flops(backbone, lambda: backbone(image))


def cost_row(label: str, model: str, image_size: int, overrides: list[str], args) -> dict:
    cfg = model_config(model, image_size, "cpu", overrides)
    torch.manual_seed(0)
    module = build_module(cfg)
    row = {
        "variant": label,
        "MFLOPs/image (forward)": f"{forward_flops(module.backbone, image_size) / 1e6:.1f}",
        "params (M)": sum(p.numel() for p in module.backbone.parameters()) / 1e6,
    }
    if args.steps:
        images, labels = synthetic(args.steps * args.batch_size)
        loader = gpu_batches(images, labels, args.batch_size, image_size, "cpu")
        rates = [
            raw_rate(module, loader, cfg, args.steps, args.warmup, "cpu")[0] for _ in range(args.repeats)
        ]
        row["CPU train img/s"] = statistics.median(rates)
    return row


@exit_on_user_error
def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit", help="a conf/model option")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar=("LABEL", "OVERRIDE"),
        help="a row: its label, then Hydra overrides (repeat for more rows); default: one 'plain' row",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="training steps per timing (0: no timing)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.steps and not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and below --steps")
    rows = []
    for label, *overrides in args.variant or [["plain"]]:
        rows.append(cost_row(label, args.model, args.image_size, overrides, args))
        print(markdown(rows[-1:]), flush=True)
    print(f"\n{markdown(rows)}")
    return rows


if __name__ == "__main__":
    main()
