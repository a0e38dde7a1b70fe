"""Classify image files: python -m src.predict ckpt_path=<ckpt|model.onnx> inputs=<file|folder|glob> [topk=5]

Needs the checkpoint only: it holds the class names and the data config, whose eval transform is applied
(no training data is read); or a model exported by src.export format=onnx, which holds the same and runs on
onnxruntime. Files that are not readable images are skipped with one warning each. Lightning and torch are
imported only when the model needs them (see src/inference.py): a prediction takes seconds less."""

import csv
import glob
import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text

from src.data.files import READ_ERRORS, open_rgb
from src.errors import UserError, exit_on_unknown_option, exit_on_user_error
from src.garbage_collector import freeze_imports
from src.inference import onnx_classifier, torch_classifier
from src.resolvers import register_resolvers
from src.run_guard import tidied_on_failure

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

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
        return open_rgb(path)  # as the training images were read (data=imagefolder, data=csv)
    except READ_ERRORS as err:
        log.warning("skipped %s: not a readable image (%s)", path, err)
        return None


def eval_transform(model):
    """The checkpoint's own eval transform, from its data config (building the DataModule reads no files)."""
    from hydra.utils import instantiate

    from src.preprocessing import preprocessing_facts, torch_eval_transform

    if not model.hparams.get("data"):
        raise UserError("this checkpoint has no data config, so its input transform is unknown")
    return torch_eval_transform(preprocessing_facts(instantiate(model.hparams.data)))


def write_predictions(rows: list[tuple[Path, list[tuple[str, float]]]], path: Path) -> None:
    k = len(rows[0][1])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{key}_{rank}" for rank in range(1, k + 1) for key in ("class", "prob"))])
        writer.writerows([str(file), *(x for pair in top for x in pair)] for file, top in rows)


def predictions_table(rows: list[tuple[Path, list[tuple[str, float]]]], title: str) -> Table:
    # Text, not markup: file and class names such as "cat [old]" show as they are ("[/x]" would end the run)
    table = Table(title=Text(title))
    table.add_column("file", overflow="fold")
    for rank in range(1, len(rows[0][1]) + 1):
        table.add_column(f"top {rank}")
    # short, unambiguous names; absolute paths without following links (a linked file may lie anywhere)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(file)) for file, _ in rows])
    for file, top in rows:
        cells = [os.path.relpath(os.path.abspath(file), root), *(f"{name} {p:.1%}" for name, p in top)]
        table.add_row(*map(Text, cells))
    return table


def pick_device(name: str | None):
    """null: cuda when available, else cpu."""
    import torch

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
    if ckpt_path.suffix == ".onnx":
        classify = onnx_classifier(ckpt_path)
    else:
        classify = torch_classifier(ckpt_path, pick_device(cfg.device))
    names = classify.class_names
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
        probs = classify([image for _, image in readable])
        for (file, _), row in zip(readable, probs, strict=True):
            top = row.argsort(kind="stable")[::-1][:k]  # most probable first
            rows.append((file, [(names[i], float(row[i])) for i in top]))
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
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        predict(cfg)


if __name__ == "__main__":
    freeze_imports()  # all loaded: no collection walks it again (src/garbage_collector.py)
    exit_on_unknown_option()
    main()
