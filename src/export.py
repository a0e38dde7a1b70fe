"""Ship a model: python -m src.export ckpt_path=<ckpt> format=onnx|torchscript [opset=17]

Writes model.onnx (ONNX metadata) or model.pt (TorchScript extra file) into its run dir, with the facts of the
eval transform (input size, mean/std, interpolation, ...) and the class names under the key "vitlab", a dynamic
batch axis, and checks the file on test images of the checkpoint's data set: the logits of onnxruntime (or of
the reloaded TorchScript) at batch sizes 1, 3 and all against the PyTorch model's, in fp32. A file that fails the
check is deleted and the run ends with one `error:` line saying by how much. A checkpoint's fitted temperature
(src.eval calibrate=temperature) is folded into the graph: the file's logits are divided by it, and its softmax
gives the calibrated probabilities (the metadata names the temperature too)."""

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.data.preprocessing import preprocessing_facts
from src.errors import UserError
from src.inference.attention_maps import unfused_attention
from src.inference.classifiers import METADATA_KEY, import_onnxruntime
from src.runs.guard import tidied_on_failure
from src.training.calibration import TEMPERATURE_KEY, TemperatureScaled
from src.training.module import load_checkpoint

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
# scaled_dot_product_attention needs opset 14; torch's TorchScript-based ONNX exporter writes up to 20
OPSETS = range(14, torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1)


def sample_images(data: dict, n: int) -> torch.Tensor:
    """The first `n` test images of the checkpoint's data set, through its eval transform."""
    datamodule = instantiate(data)
    datamodule.setup("test")
    test = datamodule.data_test
    return torch.stack([test[i][0] for i in range(min(n, len(test)))])


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: str):
    onnxruntime = import_onnxruntime()  # onnx comes with it in the export extra
    import onnx

    # torch.onnx's TorchScript-based exporter (dynamo=False): it traces in seconds and needs no onnxscript; attention
    # as explicit softmax(q k^T) (timm sets fused_attn off for export too, `exportable=True`)
    with unfused_attention(model):
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata})
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"image": images.numpy()})[0])


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: str):
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: metadata})
    loaded = torch.jit.load(str(path))
    return lambda images: loaded(images).detach()


def compare(reference: nn.Module, exported, images: torch.Tensor) -> tuple[float, int]:
    """Largest |logit difference| and number of images whose top-1 class differs, over batches of 1, 3, all."""
    worst, flips = 0.0, 0
    for size in sorted({1, min(3, len(images)), len(images)}):
        batch = images[:size]
        with torch.no_grad():
            expected = reference(batch)
        got = exported(batch)
        worst = max(worst, float((got - expected).abs().max()))
        flips = max(flips, int((got.argmax(-1) != expected.argmax(-1)).sum()))
    return worst, flips


@exit_on_user_error
def export(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("ckpt_path is missing: python -m src.export ckpt_path=<file.ckpt> [format=onnx]")
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not a format: use format=onnx or format=torchscript")
    if cfg.format == "onnx" and cfg.opset not in OPSETS:
        raise UserError(f"opset={cfg.opset} cannot be written: use an opset from {OPSETS[0]} to {OPSETS[-1]}")
    if not (isinstance(cfg.num_images, int) and cfg.num_images >= 2):
        raise UserError(f"num_images={cfg.num_images} must be a whole number of at least 2")
    module = load_checkpoint(Path(cfg.ckpt_path)).eval()
    model = module.backbone.float().to(memory_format=torch.contiguous_format)
    if module.temperature != 1.0:
        model = TemperatureScaled(model, module.temperature).eval()
    data = module.hparams.get("data")
    if not data:
        raise UserError("this checkpoint has no data config, so its input transform is unknown")
    names = module.class_names or [str(i) for i in range(module.hparams.num_classes)]
    metadata = json.dumps(
        {
            **preprocessing_facts(instantiate(data)),
            "class_names": list(names),
            TEMPERATURE_KEY: module.temperature,  # already applied to the logits
        }
    )
    images = sample_images(data, cfg.num_images)

    path = Path(cfg.paths.output_dir) / FORMATS[cfg.format]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = export_onnx if cfg.format == "onnx" else export_torchscript
    # traced at batch 2: a batch of one lets tracing fold size-1 dimensions into constants
    exported = writer(model, images[:2], path, cfg.opset, metadata)
    worst, flips = compare(model, exported, images)
    if worst > cfg.tolerance or flips:
        path.unlink()
        raise UserError(
            f"the exported {cfg.format} model disagrees with the PyTorch model on {len(images)} test images: "
            f"max |logit difference| {worst:.3g} (allowed {cfg.tolerance:g}), top-1 differs on {flips}; "
            f"{path.name} was deleted. Try another opset=... or format=..."
        )
    log.info(
        "wrote %s (%s, %.1f MB); checked on %d test images at batch 1, 3 and %d: max |logit difference| %.2g, "
        "same top-1", path, cfg.format, path.stat().st_size / 1e6, len(images), len(images), worst,
    )  # fmt: skip
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        export(cfg)


if __name__ == "__main__":
    run_command(main)
