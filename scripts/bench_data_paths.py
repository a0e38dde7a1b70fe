"""Which input path keeps up with the model: the training loader of each of vitlab's file-based data sets, on the
same generated images, against the model's training rate.

    python -m scripts.bench_data_paths --images 5000 --workers 2 [--size 64] [--dir /tmp/vitlab_bench_paths]

Writes `--images` pictures of `--size` px in 10 classes (once: existing files are kept) as an image folder of
JPEGs, one of PNGs, a CSV listing the JPEGs, a Hugging Face data set of the JPEGs' bytes (`save_to_disk`) and
WebDataset shards of the JPEG folder (src.shards). Each is read through its own DataModule (data=imagefolder,
csv, hf, shards) with the same settings: data.style=imagenet's random-resized crop and flip to `--image-size`,
`--workers` loader processes, `--batch-size`. Prints a markdown table: each path's training loader in images/s
and its ratio to a training step of the quickstart's scratch ViT on the CPU (bench_imagefolder.model_rate).
"""

import argparse
import csv
import logging
from pathlib import Path

from scripts.bench_imagefolder import model_rate, write_files
from src.bench.loaders import loader_rate
from src.data.hf import HFDataModule
from src.data.imagefolder import ImageFolderDataModule
from src.data.manifest import CSVDataModule
from src.data.shards import ShardsDataModule, write_shards

CLASSES = 10


def write_csv(folder: Path, path: Path) -> None:
    """labels.csv beside the class folders: path (relative to the CSV), label (the class folder)."""
    if path.is_file():
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for image in sorted(folder.glob("*/*.jpg")):
            writer.writerow([image.relative_to(path.parent).as_posix(), image.parent.name])


def write_hf(folder: Path, out: Path) -> None:
    """The JPEGs' own bytes as a `datasets` data set (Image and ClassLabel features), saved to disk."""
    if out.is_dir():
        return
    import datasets

    files = sorted(folder.glob("*/*.jpg"))
    names = sorted({file.parent.name for file in files})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    data = datasets.Dataset.from_dict(
        {"image": [{"bytes": file.read_bytes(), "path": None} for file in files],
         "label": [names.index(file.parent.name) for file in files]},
        features=features,
    )  # fmt: skip
    data.save_to_disk(str(out))


def paths(root: Path, images: int, size: int, settings: dict) -> dict:
    """{path name: its DataModule}, writing what is not on disk yet."""
    jpeg, png = root / "jpeg", root / "png"
    write_files(jpeg, images, size, "jpg")
    write_files(png, images, size, "png")
    write_csv(jpeg, jpeg / "labels.csv")
    write_hf(jpeg, root / "hf")
    if not (root / "shards" / "shards.json").is_file():
        write_shards(ImageFolderDataModule(data_dir=str(jpeg), **settings), root / "shards", 1000)
    return {
        "imagefolder (JPEG)": ImageFolderDataModule(data_dir=str(jpeg), **settings),
        "imagefolder (PNG)": ImageFolderDataModule(data_dir=str(png), **settings),
        "csv (JPEG)": CSVDataModule(csv_path=str(jpeg / "labels.csv"), **settings),
        "hf (JPEG bytes, save_to_disk)": HFDataModule(name=str(root / "hf"), **settings),
        "shards (JPEG, local folder)": ShardsDataModule(path=str(root / "shards"), **settings),
    }


def table(
    root: Path, images: int, size: int, image_size: int, workers: int, batch_size: int, batches: int
) -> str:
    held_out = max(CLASSES, images // 10)  # val and test: a tenth each, at least one image per class
    settings = dict(
        num_classes=CLASSES, image_size=image_size, mean=[0.5] * 3, std=[0.25] * 3, batch_size=batch_size,
        num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None, val_size=held_out,
        test_size=held_out, style="imagenet",
    )  # fmt: skip
    modules = paths(root, images, size, settings)
    model = model_rate(image_size, batch_size)
    rows = [
        f"| path | training loader img/s ({workers} workers) | loader / model "
        f"(scratch ViT, CPU: {model:,.0f} img/s) |",
        "|---|---:|---:|",
    ]
    for name, datamodule in modules.items():
        datamodule.setup("fit")
        rate = loader_rate(datamodule.train_dataloader(), batches, "cpu")
        rows.append(f"| {name} | {rate:,.0f} | {rate / model:.1f}x |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64, help="side of the generated images")
    parser.add_argument("--image-size", type=int, default=32, help="what the model sees")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="timed per path, after the first")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vitlab_bench_paths"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        table(args.dir, args.images, args.size, args.image_size, args.workers, args.batch_size, args.batches)
    )


if __name__ == "__main__":
    main()
