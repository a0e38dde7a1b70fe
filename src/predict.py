"""Classify image files: python -m src.predict ckpt_path=<ckpt> inputs=<file|folder|glob> [topk=5]

Needs the checkpoint only: it holds the class names and the data config, whose eval transform is applied
(no training data is read). Files that are not readable images are skipped with one warning each."""

import csv
import glob
import logging
import os
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table
from torchvision.transforms import v2

from src.errors import UserError, exit_on_user_error
from src.module import ClassifierModule, load_checkpoint

log = logging.getLogger(__name__)


def expand_inputs(inputs: str | list[str]) -> list[Path]:
    """Files named by each input: a file, every (not hidden) file below a folder, or the files a glob matches."""
    patterns = [inputs] if isinstance(inputs, str) else inputs
    if not all(patterns):
        raise UserError(
            "inputs is empty: pass an image file, a folder or a quoted glob such as inputs='photos/*.jpg'"
        )
    files = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():  # hidden files and folders (.DS_Store, .git) are not inputs
            below = (
                p
                for p in path.rglob("*")
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            files += sorted(p for p in below if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            files += sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise UserError(
            f"no files found for inputs={inputs}: pass an image file, a folder or a quoted glob such as "
            "inputs='photos/*.jpg'"
        )
    return files


def load_image(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # photos are stored sideways with an EXIF rotation
            if image.mode.startswith("I"):  # 16-bit greys: to 8 bits, not clipped at 255 by convert()
                image = image.convert("I").point(lambda value: value / 257).convert("L")
            return image.convert("RGB")  # convert() decodes the pixels: truncated files fail here, not later
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        log.warning("skipped %s: not a readable image (%s)", path, err)
        return None


def eval_transform(model: ClassifierModule) -> v2.Transform:
    """The checkpoint's own eval transform, from its data config (building the DataModule reads no files)."""
    if not model.hparams.get("data"):
        raise UserError("this checkpoint has no data config, so its input transform is unknown")
    datamodule = instantiate(model.hparams.data)
    transform = datamodule.transform(train=False)
    if datamodule.native_size:
        # recipes for small fixed-size data sets (CIFAR, digits) expect images of that size: bring any photo
        # to it first (shorter side, then a centre crop), as the training images were
        size = datamodule.native_size
        transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), transform])
    return transform


def write_predictions(rows: list[tuple[Path, list[tuple[str, float]]]], path: Path) -> None:
    k = len(rows[0][1])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{key}_{rank}" for rank in range(1, k + 1) for key in ("class", "prob"))])
        writer.writerows([str(file), *(x for pair in top for x in pair)] for file, top in rows)


def predictions_table(rows: list[tuple[Path, list[tuple[str, float]]]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("file", overflow="fold")
    for rank in range(1, len(rows[0][1]) + 1):
        table.add_column(f"top {rank}")
    # short, unambiguous names; absolute paths without following links (a linked file may lie anywhere)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(file)) for file, _ in rows])
    for file, top in rows:
        table.add_row(os.path.relpath(os.path.abspath(file), root), *(f"{name} {p:.1%}" for name, p in top))
    return table


def pick_device(name: str | None) -> torch.device:
    """null: cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"device={name} is not a device: use device=cpu, device=cuda or device=cuda:1"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device={name}, but no CUDA device is visible: use device=cpu (or leave device unset)"
        )
    return device


@exit_on_user_error
def predict(cfg: DictConfig) -> list[tuple[Path, list[tuple[str, float]]]]:
    for key in ("ckpt_path", "inputs"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(
                f"{key} is missing: python -m src.predict ckpt_path=<file.ckpt> inputs=<file|folder|glob>"
            )
    for key in ("topk", "batch_size"):
        if not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise UserError(f"{key}={cfg[key]} must be a whole number of at least 1")
    ckpt_path = Path(cfg.ckpt_path)
    device = pick_device(cfg.device)
    model = load_checkpoint(ckpt_path, map_location=device).eval()
    names = model.class_names or [str(i) for i in range(model.hparams.num_classes)]
    transform = eval_transform(model)
    inputs = list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else str(cfg.inputs)
    files = expand_inputs(inputs)
    k = min(cfg.topk, len(names))

    rows, skipped = [], 0
    for start in range(0, len(files), cfg.batch_size):
        loaded = [(file, load_image(file)) for file in files[start : start + cfg.batch_size]]
        readable = [(file, image) for file, image in loaded if image is not None]
        skipped += len(loaded) - len(readable)
        if not readable:
            continue
        batch = torch.stack([transform(image) for _, image in readable]).to(device)
        with torch.inference_mode():
            top = model(batch).float().softmax(dim=-1).topk(k)
        for (file, _), probs, indices in zip(
            readable, top.values.tolist(), top.indices.tolist(), strict=True
        ):
            rows.append((file, [(names[i], p) for i, p in zip(indices, probs, strict=True)]))
    if not rows:
        raise UserError(f"none of the {len(files)} input files is a readable image")

    out = Path(cfg.paths.output_dir) / "predictions.csv"
    write_predictions(rows, out)
    Console().print(predictions_table(rows, f"Top-{k} predictions of {ckpt_path.name}"))
    log.info(
        "%d images classified, %d files skipped (not readable images); wrote %s", len(rows), skipped, out
    )
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
