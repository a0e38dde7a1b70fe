"""A Hugging Face Hub-ready folder of a trained model: model.safetensors, config.json and README.md (a model card).

A timm architecture is written by timm's own `save_for_hf`, so timm (`timm.create_model("local-dir:<folder>",
pretrained=True)`, or `"hf-hub:<repo>"` once pushed) and transformers (`pipeline("image-classification",
model=<folder>)`, through its TimmWrapper) load it as they load Hub models. vitlab's own models (the scratch ViT,
CCT, TokenLearner) are no timm architectures: their folder holds the same three files with vitlab's backbone
config, which vitlab loads (`python -m src.predict ckpt_path=<folder>`). Either way config.json keeps, under
"vitlab", the eval transform's facts and the backbone config, so that vitlab reads a folder exactly as it read the
checkpoint. A multi-label model's folder says so as transformers does (`problem_type: multi_label_classification`:
its pipeline then gives each label's sigmoid) and keeps each label's threshold under "vitlab" (`thresholds`), which
vitlab's loader applies. Weights are read with safetensors: no pickle runs."""

import json
from pathlib import Path

from torch import nn

from src.errors import UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
# transformers' name of the task whose pipeline applies a sigmoid per label
MULTI_LABEL = "multi_label_classification"
# where config.json's "vitlab" section keeps a multi-label model's thresholds
THRESHOLDS = "thresholds"


def is_timm_model(backbone: nn.Module) -> bool:
    """A model timm built and can rebuild from its name and recorded arguments (a replaced head it cannot)."""
    if not isinstance(getattr(backbone, "pretrained_cfg", None), dict):
        return False
    classifier = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    heads = classifier if isinstance(classifier, tuple) else (classifier,)  # a distilled DeiT has two
    return all(isinstance(head, nn.Linear | nn.Identity) for head in heads)


def timm_data_config(facts: dict) -> dict:
    """vitlab's eval transform as timm's data config: the ImageNet style resizes to size / crop_pct and crops the
    centre; the others resize to the size (crop_pct 1)."""
    size = facts["image_size"]
    return {
        "input_size": (facts.get("channels", 3), size, size),
        "interpolation": facts["interpolation"],
        "mean": tuple(facts["mean"]),
        "std": tuple(facts["std"]),
        "crop_pct": facts.get("crop_pct", 0.875) if facts["style"] == "imagenet" else 1.0,
        "crop_mode": "center",
    }


def write_folder(
    backbone: nn.Module,
    folder: Path,
    facts: dict,
    class_names: list[str],
    backbone_config: dict,
    temperature: float = 1.0,
    thresholds: list[float] | None = None,
) -> str:
    """Writes model.safetensors and config.json; returns the library that loads them: "timm" or "vitlab".
    `temperature` (src.eval calibrate=temperature) is named in config.json, for vitlab's loader to apply;
    `thresholds` (multi-label models: each label's) make the folder a multi-label one."""
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    vitlab = {"preprocessing": facts, "backbone": backbone_config, "temperature": float(temperature)}
    task = {}
    if thresholds is not None:
        vitlab |= {"task": "multilabel", THRESHOLDS: [float(t) for t in thresholds]}
        task = {"problem_type": MULTI_LABEL}
    if is_timm_model(backbone):
        from timm.models import save_for_hf

        from src.upstream_fixes.timm import drop_duplicate_num_classes

        save_for_hf(
            backbone, str(folder), model_config={"label_names": class_names, **task, "vitlab": vitlab},
            safe_serialization=True, data_config=timm_data_config(facts),
        )  # fmt: skip
        drop_duplicate_num_classes(folder / CONFIG)
        return "timm"
    safetensors.torch.save_file(
        {name: tensor.contiguous() for name, tensor in backbone.state_dict().items()}, str(folder / WEIGHTS)
    )
    config = {
        "library_name": "vitlab",
        "num_classes": len(class_names),
        "label_names": class_names,
        **task,
        "pretrained_cfg": timm_data_config(facts),
        "vitlab": vitlab,
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return "vitlab"


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{folder} is no exported model folder ({path.name}: {err})") from None
    if not isinstance(config, dict) or "vitlab" not in config or not (folder / WEIGHTS).is_file():
        raise UserError(
            f"{folder} is no vitlab model folder (config.json with a 'vitlab' section and {WEIGHTS}): export one "
            "with python -m src.export ckpt_path=<ckpt> format=hf"
        )
    return config


def load_folder(folder: Path) -> tuple[nn.Module, dict, list[str]]:
    """The model of a folder write_folder wrote (eval mode; its logits divided by the folder's temperature), its
    preprocessing facts and class names. A vitlab backbone is built through the allow-list of
    src/runs/safe_config.py, as a checkpoint's is."""
    import safetensors.torch

    config = read_config(folder)
    if "architecture" in config:
        import timm

        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    else:
        from src.runs.safe_config import allowed_callable, check_checkpoint_config

        backbone = dict(config["vitlab"]["backbone"])
        check_checkpoint_config({"backbone": backbone}, folder / CONFIG, built=("backbone",))
        for switch in ("compile", "channels_last"):  # speed switches of training, not the model's arguments
            backbone.pop(switch, None)
        # the weights are the folder's: nothing is fetched or read from elsewhere
        backbone.update(
            {key: value for key, value in (("pretrained", False), ("weights_path", None)) if key in backbone}
        )
        model = allowed_callable("backbone", backbone.pop("_target_"))(**backbone)
        model.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS)))
    temperature = float(config["vitlab"].get("temperature", 1.0))
    if temperature != 1.0:
        from src.training.calibration import TemperatureScaled

        model = TemperatureScaled(model, temperature)
    return model.eval(), config["vitlab"]["preprocessing"], list(config["label_names"])


def folder_thresholds(folder: Path) -> list[float] | None:
    """A multi-label folder's thresholds (a label is predicted above its own); None for a single-label one."""
    vitlab = read_config(folder)["vitlab"]
    return [float(t) for t in vitlab[THRESHOLDS]] if vitlab.get("task") == "multilabel" else None
