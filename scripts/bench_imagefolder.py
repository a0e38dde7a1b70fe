"""How fast data=imagefolder finds its files and feeds a model, on generated files.

    python scripts/bench_imagefolder.py --files 100000 --workers 2 [--size 64] [--dir /tmp/bench_images]

Writes `--files` JPEGs (`--size` px, 10 class folders; once: an existing folder is reused), then prints
- the setup scan (list, check every file decodes, split): seconds and files/s;
- the training DataLoader (decode + data.style=imagenet's random-resized crop and flip to `--image-size`) with
  `--workers` processes: images/s;
- a training step of the quickstart's scratch ViT on the CPU at `--image-size`: images/s, the rate the loader
  must stay ahead of.
"""

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.imagefolder import ImageFolderDataModule


def write_files(root: Path, n: int, size: int) -> None:
    if len(list(root.glob("*/*.jpg"))) >= n:
        return
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:06d}.jpg", quality=85)


def model_rate(image_size: int, batch_size: int, steps: int = 5) -> float:
    from src.models.vit import VisionTransformer

    model = VisionTransformer(img_size=image_size, num_classes=10, patch_size=4, embed_dim=96, depth=4,
                              num_heads=4, mlp_dim=192)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, 10, (batch_size,))
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=32, help="what the model sees")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vitlab_bench_images"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    write_files(args.dir, args.files, args.size)
    print(f"files: {args.files} JPEGs of {args.size} px in {args.dir} ({time.perf_counter() - start:.1f} s)")

    dm = ImageFolderDataModule(
        data_dir=str(args.dir), num_classes=10, image_size=args.image_size, mean=[0.5] * 3, std=[0.25] * 3,
        batch_size=args.batch_size, num_workers=args.workers, persistent_workers=False, prefetch_factor=4,
        val_size=0.1, test_size=0.1,
    )  # fmt: skip
    start = time.perf_counter()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    print(f"setup scan: {seconds:.1f} s, {args.files / seconds:,.0f} files/s")

    loader = iter(dm.train_dataloader())
    next(loader)  # workers started
    start = time.perf_counter()
    for _ in range(args.batches):
        next(loader)
    loader_rate = args.batches * args.batch_size / (time.perf_counter() - start)
    rate = model_rate(args.image_size, args.batch_size)
    print(f"loader ({args.workers} workers): {loader_rate:,.0f} img/s; scratch ViT training step (CPU): "
          f"{rate:,.0f} img/s; loader / model: {loader_rate / rate:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
