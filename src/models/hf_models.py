"""Hugging Face transformers image classifiers (`AutoModelForImageClassification`) by Hub id or local folder, as a
backbone that returns plain logits, and the input their image processor expects. transformers is the `hf` extra,
imported when a model is built."""

import inspect
from pathlib import Path

from torch import nn

from src.errors import UserError

INSTALL = "pip install -c constraints.txt -e '.[hf]'"
# PIL's resampling filters (transformers' image processors store them as PIL's numbers)
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(f"model=hf needs transformers, which is not installed: {INSTALL}") from None
    return transformers


def _source(name: str) -> str:
    """A local folder's path (with ~ expanded), else the Hub id as given."""
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def _unavailable(name: str, err: Exception) -> UserError:
    """The error line for a name whose files transformers could not get (offline, a typo, no such folder)."""
    where = "is no folder here" if not Path(name).expanduser().exists() else "is a folder without them"
    return UserError(
        f"model.name={name}: transformers cannot load its files ({type(err).__name__}: "
        f"{str(err).strip().splitlines()[0][:160]}); {name} {where}. Give a folder written by save_pretrained "
        "(config.json, weights, preprocessor_config.json), or a Hub id on a machine that reaches the Hub "
        "(once: it is cached)"
    )


def processor_input(name: str) -> dict:
    """The input the model's image processor (preprocessor_config.json) gives it: image_size, interpolation,
    mean, std, crop_pct (the share of the resized image the evaluation's centre crop keeps; 1: none)."""
    transformers = _transformers()
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(_source(name))
    except (OSError, ValueError) as err:
        raise _unavailable(name, err) from None
    size = processor.size
    side = size.get("height") or size.get("shortest_edge")
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct is None and getattr(processor, "do_center_crop", False):
        crop_pct = processor.crop_size["height"] / side
        side = processor.crop_size["height"]
    return {
        "image_size": int(side),
        "interpolation": _RESAMPLE.get(int(processor.resample), "bilinear"),
        "mean": [float(v) for v in processor.image_mean],
        "std": [float(v) for v in processor.image_std],
        "crop_pct": float(crop_pct or 1.0),
    }


class HFClassifier(nn.Module):
    """A transformers image classifier whose forward takes images and returns logits, as vitlab's module expects.
    Models with position embeddings for one size (ViT, DeiT, BEiT) interpolate them for another `img_size`."""

    # the classifier module of transformers' image classifiers (freeze=head_only trains it alone)
    classifier_names = ("model.classifier",)

    def __init__(self, model: nn.Module, img_size: int | None):
        super().__init__()
        self.model = model
        built_for = getattr(model.config, "image_size", None)
        takes = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self.interpolate = bool(takes and img_size and built_for and img_size != built_for)

    def forward(self, x):
        if self.interpolate:
            return self.model(pixel_values=x, interpolate_pos_encoding=True).logits
        return self.model(pixel_values=x).logits


def hf_model(name: str, num_classes: int, img_size: int | None = None, pretrained: bool = True) -> nn.Module:
    """`AutoModelForImageClassification` of `name` (a Hub id or a folder written by save_pretrained) classifying
    `num_classes`: its weights when `pretrained` (a classifier of another size is made anew, as
    `ignore_mismatched_sizes` does), else its architecture alone (what a checkpoint rebuilds before loading its
    own weights)."""
    transformers = _transformers()
    source = _source(name)
    labels = {"num_labels": num_classes, "id2label": {i: str(i) for i in range(num_classes)}}
    labels["label2id"] = {v: k for k, v in labels["id2label"].items()}
    try:
        if pretrained:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                source, ignore_mismatched_sizes=True, **labels
            )
        else:
            config = transformers.AutoConfig.from_pretrained(source, **labels)
            model = transformers.AutoModelForImageClassification.from_config(config)
    except OSError as err:  # what transformers raises for files it cannot get
        raise _unavailable(name, err) from None
    except ValueError as err:  # a config of no image classifier
        raise UserError(f"model.name={name} is no image classifier transformers knows ({err})") from None
    return HFClassifier(model, img_size)
