"""Classify image files: python -m src.predict ckpt_path=<ckpt|model.onnx> inputs=<file|folder|glob> [topk=5]

Needs the checkpoint only: it holds the class names and the data config, whose eval transform is applied
(no training data is read); or a model exported by src.export format=onnx, which holds the same and runs on
onnxruntime. Files that are not readable images are skipped with one warning each. Lightning and torch are
imported only when the model needs them (see src/inference/classifiers.py): a prediction takes seconds less."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.errors import UserError
from src.inference.classifiers import check_threshold, load_classifier
from src.inference.files import expand_inputs, load_image, predictions_table, write_predictions
from src.runs.guard import tidied_on_failure

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)


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
    classify = load_classifier(ckpt_path, cfg.device, cfg.tta)
    names = classify.class_names
    thresholds = classify.thresholds
    if thresholds is not None:
        if (threshold := check_threshold(cfg.get("threshold"))) is not None:
            thresholds = [float(threshold)] * len(names)
        log.info("multi-label model: every label above its threshold, most probable first")
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
            top = row.argsort(kind="stable")[::-1]  # most probable first
            top = top[:k] if thresholds is None else [i for i in top if row[i] > thresholds[i]]
            rows.append((file, [(names[i], float(row[i])) for i in top]))
    if not rows:
        raise UserError(f"none of the {len(files)} input files is a readable image")

    out = Path(cfg.paths.output_dir) / "predictions.csv"
    write_predictions(rows, out)
    title = f"Top-{k} predictions" if thresholds is None else "Labels above their thresholds"
    Console().print(predictions_table(rows, f"{title} of {ckpt_path.name}"))
    log.info(
        "%d images classified, %d files skipped (not readable images); wrote %s", len(rows), skipped, out
    )
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        predict(cfg)


if __name__ == "__main__":
    run_command(main)
