"""Where a model looks: python -m src.explain ckpt_path=<ckpt> inputs=<file|folder|glob> method=rollout|gradcam

Writes, into its run dir, overlays/<n>_<name>.png per readable image (its heat map for the top class, the top-k
in the title), grid.png with all of them and predictions.csv; unreadable files are skipped as by src.predict."""

import logging
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.errors import UserError
from src.inference.attention_maps import METHODS, heatmaps
from src.inference.classifiers import eval_transform, pick_device
from src.inference.files import expand_inputs, load_image, write_predictions
from src.reporting.attention import plot_overlays
from src.runs.guard import tidied_on_failure
from src.training.module import load_checkpoint

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)


@exit_on_user_error
def explain(cfg: DictConfig) -> Path:
    for key in ("ckpt_path", "inputs"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(
                f"{key} is missing: python -m src.explain ckpt_path=<file.ckpt> inputs=<file|folder|glob>"
            )
    if cfg.method not in METHODS:
        raise UserError(f"method={cfg.method} is not a method: use method=rollout or method=gradcam")
    for key in ("topk", "batch_size", "grid_size"):
        if not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise UserError(f"{key}={cfg[key]} must be a whole number of at least 1")
    device = pick_device(cfg.device)
    model = load_checkpoint(Path(cfg.ckpt_path), map_location=device).eval()
    names = model.class_names or [str(i) for i in range(model.hparams.num_classes)]
    transform = eval_transform(model)
    mean, std = model.hparams.data["mean"], model.hparams.data["std"]
    files = expand_inputs(list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else str(cfg.inputs))
    k = min(cfg.topk, len(names))
    out = Path(cfg.paths.output_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)

    rows, shown = [], {"image": [], "heat": [], "title": []}
    for start in range(0, len(files), cfg.batch_size):
        loaded = [(file, load_image(file)) for file in files[start : start + cfg.batch_size]]
        readable = [(file, image) for file, image in loaded if image is not None]
        if not readable:
            continue
        batch = torch.stack([transform(image) for _, image in readable]).to(device)
        with torch.inference_mode():
            top = model(batch).float().softmax(dim=-1).topk(k)
        heat = heatmaps(model, batch, cfg.method)
        for i, (file, _) in enumerate(readable):
            ranked = [
                (names[c], p) for c, p in zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)
            ]
            rows.append((file, ranked))
            title = f"{file.name}\n" + ", ".join(f"{name} {p:.0%}" for name, p in ranked)
            path = out / "overlays" / f"{len(rows) - 1:04d}_{file.stem}.png"
            plt.close(
                plot_overlays(batch[i : i + 1].cpu(), heat[i : i + 1], [title], mean, std, path, cols=1)
            )
            if len(shown["image"]) < cfg.grid_size:
                shown["image"].append(batch[i].cpu())
                shown["heat"].append(heat[i])
                shown["title"].append(title)
    if not rows:
        raise UserError(f"none of the {len(files)} input files is a readable image")
    label = {"rollout": "attention rollout", "gradcam": "Grad-CAM"}[cfg.method]
    grid = plot_overlays(
        torch.stack(shown["image"]), torch.stack(shown["heat"]), shown["title"], mean, std, out / "grid.png",
        f"{label} for the top class: {Path(cfg.ckpt_path).name}",
    )  # fmt: skip
    plt.close(grid)
    write_predictions(rows, out / "predictions.csv")
    log.info(
        "%d overlays (%s) in %s, grid.png, predictions.csv; %d files skipped (not readable images)",
        len(rows), label, out / "overlays", len(files) - len(rows),
    )  # fmt: skip
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        explain(cfg)


if __name__ == "__main__":
    run_command(main)
