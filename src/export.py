"""Ship a model: python -m src.export ckpt_path=<ckpt> format=onnx|torchscript|hf [opset=17] [push=true repo_id=...]

Writes model.onnx (ONNX metadata) or model.pt (TorchScript extra file) into its run dir, with the facts of the
eval transform (input size, mean/std, interpolation, ...) and the class names under the key "vitlab", a dynamic
batch axis; or, format=hf, a Hugging Face Hub-ready folder `hf/` (model.safetensors, config.json, a model card:
src/inference/hub_folder.py, src/reporting/model_card.py), which push=true uploads. It checks what it wrote on
test images of the checkpoint's data set: the logits of onnxruntime (of the reloaded TorchScript, of the folder
loaded back) at batch sizes 1, 3 and all against the PyTorch model's, in fp32. A file that fails the check is
deleted and the run ends with one `error:` line saying by how much. A checkpoint's fitted temperature
(src.eval calibrate=temperature) is folded into the ONNX and TorchScript graphs (their logits are divided by it,
and the metadata names it); a Hub folder keeps the model's own weights and names the temperature in config.json,
which vitlab applies when it loads the folder. A multi-label model's ONNX or TorchScript export keeps its logits,
and its metadata the task and each label's threshold, which src.predict and src.serve apply (a sigmoid per
label); its Hub folder names the task and the thresholds in config.json."""

import json
import logging
import shutil
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
from src.training.multilabel import THRESHOLDS_KEY

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt", "hf": "hf"}
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
    try:
        with unfused_attention(model):
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
    except torch.onnx.errors.OnnxExporterError as err:  # an operator ONNX has no form for, at this input
        path.unlink(missing_ok=True)
        raise UserError(onnx_refusal(str(err), example.shape[-1])) from None
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata})
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"image": images.numpy()})[0])


def onnx_refusal(message: str, image_size: int) -> str:
    """The error line for what torch's ONNX exporter refused (`message`) at input side `image_size`."""
    problem = message.split("[Caused by")[0].split(". Please feel free")[0].strip()
    fix = "export with format=torchscript or format=hf instead"
    if "adaptive_avg_pool2d" in message:  # VGG pools its last feature map (1x1 at 32 px) up to 7x7
        fix = (
            f"at data.image_size={image_size} the model pools its last feature map to a size that is not a "
            f"multiple of it: train at the size it was built for (224 px for VGG), or {fix}"
        )
    return f"format=onnx: torch's ONNX exporter cannot write this model ({problem}); {fix}"


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: str):
    traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: metadata})
    loaded = torch.jit.load(str(path))
    return lambda images: loaded(images).detach()


def export_hf(module, path: Path, facts: dict, class_names: list[str], ckpt_path: Path):
    """The Hub folder and its model card; the folder loaded back as a user loads it."""
    from src.inference.hub_folder import load_folder, write_folder
    from src.reporting.model_card import write_model_card

    backbone_config = dict(module.hparams.backbone)
    thresholds = module.thresholds.tolist() if module.multilabel else None
    library = write_folder(
        module.backbone, path, facts, class_names, backbone_config, module.temperature, thresholds
    )
    name = (
        getattr(module.backbone, "pretrained_cfg", {}).get("architecture")
        or backbone_config["_target_"].split(".")[-1]
    )
    run_dir = ckpt_path.resolve().parent.parent  # <run dir>/checkpoints/<file>.ckpt
    data_name = str(module.hparams.data.get("_target_", "")).split(".")[-1] or "images"
    write_model_card(
        path, library, name, data_name, class_names, run_dir, facts, module.temperature, thresholds
    )
    reloaded, _, _ = load_folder(path)
    return lambda images: reloaded(images).detach()


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Uploads the folder to the Hub repo `repo_id` (made if missing); its URL. Offline or refused: a UserError,
    and the folder stays."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Add model"
        ).commit_url
    except Exception as err:  # offline mode, no network, no token, no rights: huggingface_hub's own messages
        raise UserError(
            f"could not push {folder} to the Hub repo {repo_id} ({type(err).__name__}: {str(err).strip()[:200]}); "
            f"the folder stays: push it later with `hf upload {repo_id} {folder}`"
        ) from None


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
        raise UserError(
            f"format={cfg.format} is not a format: use format=onnx, format=torchscript or format=hf"
        )
    if cfg.push and (cfg.format != "hf" or not cfg.repo_id):
        raise UserError("push=true uploads a Hub folder: use it with format=hf repo_id=<user>/<name>")
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
    names = list(module.class_names or [str(i) for i in range(module.hparams.num_classes)])
    facts = preprocessing_facts(instantiate(data))
    images = sample_images(data, cfg.num_images)

    path = Path(cfg.paths.output_dir) / FORMATS[cfg.format]
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.format == "hf":
        exported = export_hf(module, path, facts, names, Path(cfg.ckpt_path))
    else:
        writer = export_onnx if cfg.format == "onnx" else export_torchscript
        # traced at batch 2: a batch of one lets tracing fold size-1 dimensions into constants
        # the temperature is already applied to the logits
        # multi-label: the graph gives logits; predict applies the sigmoid and the thresholds of the metadata
        task = {"task": "multilabel", THRESHOLDS_KEY: module.thresholds.tolist()} if module.multilabel else {}
        metadata = json.dumps({**facts, "class_names": names, TEMPERATURE_KEY: module.temperature, **task})
        exported = writer(model, images[:2], path, cfg.opset, metadata)
    worst, flips = compare(model, exported, images)
    if worst > cfg.tolerance or flips:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise UserError(
            f"the exported {cfg.format} model disagrees with the PyTorch model on {len(images)} test images: "
            f"max |logit difference| {worst:.3g} (allowed {cfg.tolerance:g}), top-1 differs on {flips}; "
            f"{path.name} was deleted. Try another opset=... or format=..."
        )
    size = sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size
    log.info(
        "wrote %s (%s, %.1f MB); checked on %d test images at batch 1, 3 and %d: max |logit difference| %.2g, "
        "same top-1", path, cfg.format, size / 1e6, len(images), len(images), worst,
    )  # fmt: skip
    if cfg.push:
        log.info("pushed to %s", push_to_hub(path, cfg.repo_id))
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        export(cfg)


if __name__ == "__main__":
    run_command(main)
