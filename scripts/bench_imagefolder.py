"""How fast data=imagefolder finds its files and feeds a model, on generated files.

    python scripts/bench_imagefolder.py --files 100000 --workers 2 [--size 64] [--dir /tmp/bench_images]

Writes `--files` JPEGs (`--size` px, 10 class folders; once: an existing folder is reused), then prints
- the setup scan as one markdown table row: listing and classing the files, the check that every file decodes
  (data.check_files=`--check`, decode by default, with `--workers` processes, nothing cached), a whole setup once that check is cached,
  the split, the peak memory (resident set of this process plus that of its largest child) and files/s of the
  cached setup; `--header` prints the table's header first;
- on stderr (with `--batches` above 0): the training DataLoader (decode + data.style=imagenet's random-resized
  crop and flip to `--image-size`) with `--workers` processes, in images/s, against a training step of the
  quickstart's scratch ViT on the CPU at `--image-size`: the rate the loader must stay ahead of.
"""

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.imagefolder import ImageFolderDataModule, assign_splits, list_folder

HEADER = (
    "| files | data.check_files | listing s | check s (uncached) | setup s (cached check) | split s | peak RSS MB | files/s (cached) |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|"
)


def write_files(root: Path, n: int, size: int, ext: str = "jpg") -> None:
    """`n` images of `size` px in 10 class folders (image i: one noise picture rolled by i pixels), as JPEGs
    (quality 85) or PNGs; an existing folder of at least `n` of them is kept."""
    if len(list(root.glob(f"*/*.{ext}"))) >= n:
        return
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:06d}.{ext}", quality=85)


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


def peak_rss_mb() -> float:
    """The peak resident set of this process plus that of its largest child (Linux: ru_maxrss in KiB)."""
    own, children = (
        resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return (own + children) / 1024


def scan_row(datamodule: ImageFolderDataModule, workers: int, check: str) -> str:
    """The table row of the setup scan of `datamodule`'s folder: its check cached in a new, empty cache folder."""
    data_dir = datamodule.hparams.data_dir
    previous = os.environ.get("VITLAB_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["VITLAB_CACHE"] = cache
        start = time.perf_counter()
        index = list_folder(data_dir)
        listed = time.perf_counter()
        index.drop_unreadable(data_dir, data_dir, check, workers)
        checked = time.perf_counter()
        assign_splits(index, 0.1, 0.1, seed=0)
        split = time.perf_counter() - checked
        files = index.total
        del index
        start_cached = time.perf_counter()
        datamodule.setup("fit")
        cached = time.perf_counter() - start_cached
    if previous is None:
        os.environ.pop("VITLAB_CACHE")
    else:
        os.environ["VITLAB_CACHE"] = previous
    return (
        f"| {files:,} | {check} | {listed - start:.1f} | {checked - listed:.1f} | {cached:.1f} | {split:.2f} | "
        f"{peak_rss_mb():,.0f} | {files / cached:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=32, help="what the model sees")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="of the loader; 0: the scan only")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vitlab_bench_images"))
    parser.add_argument("--check", choices=["decode", "open"], default="decode", help="data.check_files")
    parser.add_argument("--header", action="store_true", help="print the table's header before its row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    write_files(args.dir, args.files, args.size)
    print(f"files: {args.files} JPEGs of {args.size} px in {args.dir} ({time.perf_counter() - start:.1f} s)",
          file=sys.stderr)  # fmt: skip

    dm = ImageFolderDataModule(
        data_dir=str(args.dir), num_classes=10, image_size=args.image_size, mean=[0.5] * 3, std=[0.25] * 3,
        batch_size=args.batch_size, num_workers=args.workers, persistent_workers=False, prefetch_factor=4,
        val_size=0.1, test_size=0.1, check_files=args.check,
    )  # fmt: skip
    if args.header:
        print(HEADER)
    print(scan_row(dm, args.workers, args.check), flush=True)

    if not args.batches:
        return
    loader = iter(dm.train_dataloader())
    next(loader)  # workers started
    start = time.perf_counter()
    for _ in range(args.batches):
        next(loader)
    loader_rate = args.batches * args.batch_size / (time.perf_counter() - start)
    rate = model_rate(args.image_size, args.batch_size)
    print(f"loader ({args.workers} workers): {loader_rate:,.0f} img/s; scratch ViT training step (CPU): "
          f"{rate:,.0f} img/s; loader / model: {loader_rate / rate:.1f}x", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
