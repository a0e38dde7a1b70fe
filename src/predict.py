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
from omegaconf import DictConfig, ListConfig
from PIL import Image
from rich.console import Console
from rich.table import Table
from torchvision.transforms import v2

from src.errors import UserError, exit_on_user_error
from src.module import ClassifierModule

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
    root = Path(os.path.commonpath([file.parent.resolve() for file, _ in rows]))  # short, unambiguous names
    for file, top in rows:
        table.add_row(str(file.resolve().relative_to(root)), *(f"{name} {p:.1%}" for name, p in top))
    return table


@exit_on_user_error
def predict(cfg: DictConfig) -> list[tuple[Path, list[tuple[str, float]]]]:
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise UserError(
            f"checkpoint not found: {ckpt_path}. Pass ckpt_path=<run dir>/checkpoints/<file>.ckpt"
        )
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ClassifierModule.load_from_checkpoint(ckpt_path, map_location=device).eval()
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
