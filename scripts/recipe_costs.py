"""What each recipe component costs per training step at the CIFAR settings (32 px, batch 128), on this machine:
the augmentation policies on the loader side (images/s of one DataLoader worker), Mixup/CutMix on the batch,
the EMA update, against one training step of the model (ViT-Lite-7/4 and CCT-7/3x1). Prints a markdown table.

    python scripts/recipe_costs.py [--device cpu] [--batch-size 128] [--repeats 5]
"""

import argparse

import numpy as np
import torch
from PIL import Image
from timm.loss import SoftTargetCrossEntropy
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from src.bench.timing import median_seconds
from src.data.transforms import build_transforms
from src.models.vit import VisionTransformer
from src.training.mixing import BatchMixup

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
POLICIES = {
    "basic (pad-crop + flip)": {"policy": "basic"},
    "randaugment m9 n2 mstd0.5 inc1": {"policy": "randaugment", "magnitude": 9, "num_ops": 2,
                                       "magnitude_std": 0.5, "increasing": True},
    "autoaugment cifar10": {"policy": "autoaugment", "autoaugment_policy": "cifar10"},
    "trivialaugment": {"policy": "trivialaugment"},
    "basic + random_erasing 0.25": {"policy": "basic", "random_erasing": 0.25},
}  # fmt: skip
MODELS = {
    "ViT-Lite-7/4": {},
    "CCT-7/3x1": {"tokenizer": "conv", "pool": "seq", "qkv_bias": False, "attn_dropout": 0.1},
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n, device = args.batch_size, torch.device(args.device)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    threads = torch.get_num_threads()
    print(f"device {device}, batch {n}, {threads} torch threads (1 for the transforms)\n", flush=True)
    print("| component | where | ms per batch | images/s |\n|---|---|---|---|")
    torch.set_num_threads(1)  # as in a DataLoader worker
    for name, augment in POLICIES.items():
        transform = build_transforms("cifar", 32, MEAN, STD, train=True, native_size=32, augment=augment)
        seconds = median_seconds(lambda t=transform: [t(p) for p in photos], args.repeats)
        print(f"| {name} | 1 DataLoader worker | {1000 * seconds:.1f} | {n / seconds:.0f} |", flush=True)
    torch.set_num_threads(threads)
    labels = torch.randint(0, 10, (n,), device=device)
    images = torch.randn(n, 3, 32, 32, device=device)
    for mode in ("batch", "elem"):
        mixup = BatchMixup(10, 0.8, 1.0, mode=mode, label_smoothing=0.1)
        seconds = median_seconds(lambda m=mixup: m(images.clone(), labels), args.repeats)
        print(f"| Mixup/CutMix (mode={mode}) | on the batch | {1000 * seconds:.2f} | {n / seconds:.0f} |")
    for name, options in MODELS.items():
        model = VisionTransformer(**options).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = SoftTargetCrossEntropy()
        targets = torch.nn.functional.one_hot(labels, 10).float()

        def step(model=model, optimizer=optimizer, loss_fn=loss_fn, targets=targets):
            optimizer.zero_grad()
            loss_fn(model(images), targets).backward()
            optimizer.step()

        seconds = median_seconds(step, args.repeats)
        print(f"| {name} training step | model | {1000 * seconds:.1f} | {n / seconds:.0f} |", flush=True)
        ema = AveragedModel(model, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
        seconds = median_seconds(lambda e=ema, m=model: e.update_parameters(m), args.repeats)
        print(
            f"| {name} EMA update | per optimizer step | {1000 * seconds:.2f} | {n / seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
