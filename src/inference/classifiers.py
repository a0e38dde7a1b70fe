"""Classifiers for src.predict, each loading as little as it can: an exported .onnx file runs on onnxruntime
(NumPy and Pillow, no torch); a checkpoint whose backbone is rebuilt from its plain hyper-parameters runs on torch
alone; other checkpoints go through Lightning's ClassifierModule. Each maps RGB images to class probabilities: a
checkpoint's with its fitted temperature (src/training/calibration.py; an export has it folded in), and with
`tta` other than none, averaged over test-time views (src/data/tta.py, which needs torch on the ONNX route too)."""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.errors import UserError

# where exported files keep their preprocessing facts and class names (ONNX metadata, TorchScript extra file)
METADATA_KEY = "vitlab"


@dataclass
class Classifier:
    class_names: list[str]
    transform: Callable  # PIL image -> one model input
    run: Callable[[list], np.ndarray]  # transformed inputs -> (n, classes) probabilities
    # multi-label models: each label's threshold (a label is predicted above it), their probabilities sigmoids
    thresholds: list[float] | None = None

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.run([self.transform(image) for image in images])


def check_threshold(value) -> float | None:
    """threshold=<number> of src.train / src.eval / src.predict: one probability for every label, or null."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1
    ):
        raise UserError(
            f"threshold={value} must lie between 0 and 1 (or null: each label's fitted threshold)"
        )
    return value


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "onnxruntime is not installed: pip install -c constraints.txt -e '.[export]'"
        ) from None
    return onnxruntime


def onnx_classifier(path: Path, tta: str = "none") -> Classifier:
    onnxruntime = import_onnxruntime()

    from src.data.preprocessing import numpy_eval_transform

    if not path.is_file():
        raise UserError(f"model not found: {path}. Pass ckpt_path=<export run dir>/model.onnx")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"{path} is not an ONNX model onnxruntime can load ({err})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in metadata:
        raise UserError(f"{path} has no vitlab metadata: export it with python -m src.export format=onnx")
    facts = json.loads(metadata[METADATA_KEY])
    input_name = session.get_inputs()[0].name

    def logits_of(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        return _softmax(logits_of(np.stack(inputs)).astype(np.float64))

    if (
        facts.get("task") == "multilabel"
    ):  # src.export wrote its thresholds (the key of src/training/multilabel.py)
        if tta != "none":
            raise UserError("test-time augmentation averages single-label probabilities: use tta=none")

        def sigmoids(inputs: list[np.ndarray]) -> np.ndarray:
            return 1 / (1 + np.exp(-logits_of(np.stack(inputs)).astype(np.float64)))

        transform = numpy_eval_transform(facts)
        return Classifier(facts["class_names"], transform, sigmoids, [float(t) for t in facts["thresholds"]])

    if tta != "none":
        import torch

        from src.data.tta import mean_probabilities, tta_views

        views = tta_views(tta, facts["style"], facts["image_size"])

        def run(inputs: list[np.ndarray]) -> np.ndarray:
            logits = lambda view: torch.from_numpy(logits_of(view.numpy()))  # noqa: E731
            return mean_probabilities(logits, torch.from_numpy(np.stack(inputs)), views).numpy()

    return Classifier(facts["class_names"], numpy_eval_transform(facts), run)


def plain_backbone(checkpoint: dict):
    """The backbone of a checkpoint whose configs passed src/runs/safe_config.py, built from its `_target_` and plain
    arguments without Hydra or Lightning."""
    from src.runs.safe_config import allowed_callable

    config = dict(checkpoint["hyper_parameters"]["backbone"])
    config.pop("compile", None)  # src.training.module's speed switches, not the backbone's arguments
    config.pop("channels_last", None)
    model = allowed_callable("backbone", config.pop("_target_"))(**config)
    state = {
        key.removeprefix("backbone."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("backbone.")
    }
    model.load_state_dict(state)
    return model.eval()


def _rebuilds_without_lightning(checkpoint) -> bool:
    """A src.train checkpoint with its preprocessing facts (written since src.export) and a backbone `_target_`;
    other files go to load_checkpoint, which says what they lack."""
    if not (isinstance(checkpoint, dict) and checkpoint.get("preprocessing") and "state_dict" in checkpoint):
        return False
    hparams = checkpoint.get("hyper_parameters")
    return (
        isinstance(hparams, dict)
        and isinstance(hparams.get("backbone"), dict)
        and "_target_" in hparams["backbone"]
    )


def torch_classifier(path: Path, device, tta: str = "none") -> Classifier:
    """From a src.train checkpoint: the plain route when it records its preprocessing facts (checkpoints
    written since src.export), else Lightning's (which builds the DataModule for its transform)."""
    import torch

    from src.data.preprocessing import numpy_eval_transform
    from src.data.tta import tta_views
    from src.training.calibration import TEMPERATURE_KEY
    from src.training.multilabel import THRESHOLDS_KEY

    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # missing, or not a checkpoint: load_checkpoint below says so in its own words
        checkpoint = None
    if _rebuilds_without_lightning(checkpoint):
        from src.runs.safe_config import check_checkpoint_config

        check_checkpoint_config(checkpoint["hyper_parameters"], path, built=("backbone",))
        model = plain_backbone(checkpoint).to(device)
        # the ONNX route's Pillow/NumPy preprocessing: torchvision's import alone (it loads torch._dynamo) takes
        # longer than the rest of a prediction
        to_array = numpy_eval_transform(checkpoint["preprocessing"])

        def transform(image):
            return torch.from_numpy(to_array(image))

        names = checkpoint.get("class_names") or []
        num_classes = checkpoint["hyper_parameters"]["num_classes"]
        facts, temperature = checkpoint["preprocessing"], float(checkpoint.get(TEMPERATURE_KEY, 1.0))
        thresholds = None
        if checkpoint["hyper_parameters"].get("task") == "multilabel":
            thresholds = [float(t) for t in checkpoint.get(THRESHOLDS_KEY, [0.5] * num_classes)]
    else:
        from src.training.module import load_checkpoint  # Lightning: seconds of imports

        model = load_checkpoint(path, map_location=device).eval()
        facts = checkpoint_facts(model)
        transform = eval_transform(model, facts)
        names, num_classes, temperature = model.class_names, model.hparams.num_classes, model.temperature
        thresholds = model.thresholds.tolist() if model.multilabel else None
    names = list(names) or [str(i) for i in range(num_classes)]
    if thresholds is not None:
        if tta != "none":
            raise UserError("test-time augmentation averages single-label probabilities: use tta=none")
        return Classifier(names, transform, _sigmoids(model, device), thresholds)
    views = tta_views(tta, facts["style"], facts["image_size"])
    return Classifier(names, transform, _probabilities(model, device, views, temperature))


def _probabilities(model, device, views, temperature: float) -> Callable[[list], np.ndarray]:
    """Class probabilities of transformed inputs: the mean over the test-time views of softmax(logits / T)."""
    import torch

    from src.data.tta import mean_probabilities

    def run(inputs: list) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.stack(inputs).to(device)
            return mean_probabilities(model, batch, views, temperature).cpu().numpy()

    return run


def _sigmoids(model, device) -> Callable[[list], np.ndarray]:
    """Multi-label: each label's probability, the sigmoid of its logit."""
    import torch

    def run(inputs: list) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.stack(inputs).to(device)).float()).cpu().numpy()

    return run


def hub_folder_classifier(path: Path, device, tta: str = "none") -> Classifier:
    """From a folder of src.export format=hf (src/inference/hub_folder.py): safetensors weights, the backbone built
    by timm or through vitlab's allow-list (its temperature applied), the eval transform of its config.json; a
    multi-label folder's sigmoids and thresholds."""
    import torch

    from src.data.preprocessing import numpy_eval_transform
    from src.data.tta import tta_views
    from src.inference.hub_folder import folder_thresholds, load_folder

    model, facts, names = load_folder(path)
    to_array = numpy_eval_transform(facts)

    def transform(image):
        return torch.from_numpy(to_array(image))

    thresholds = folder_thresholds(path)
    if thresholds is not None:
        if tta != "none":
            raise UserError("test-time augmentation averages single-label probabilities: use tta=none")
        return Classifier(names, transform, _sigmoids(model.to(device), device), thresholds)
    views = tta_views(tta, facts["style"], facts["image_size"])
    return Classifier(names, transform, _probabilities(model.to(device), device, views, 1.0))


def load_classifier(path: Path, device: str | None = None, tta: str = "none") -> Classifier:
    """The classifier of a checkpoint, an exported .onnx file or a Hub folder (src.export format=hf), by its path."""
    if path.suffix == ".onnx":
        return onnx_classifier(path, tta)
    if path.is_dir():
        return hub_folder_classifier(path, pick_device(device), tta)
    return torch_classifier(path, pick_device(device), tta)


def checkpoint_facts(model) -> dict:
    """The preprocessing facts of a loaded checkpoint's data config (building the DataModule reads no files)."""
    from hydra.utils import instantiate

    from src.data.preprocessing import preprocessing_facts

    if not model.hparams.get("data"):
        raise UserError("this checkpoint has no data config, so its input transform is unknown")
    return preprocessing_facts(instantiate(model.hparams.data))


def eval_transform(model, facts: dict | None = None):
    """The checkpoint's own eval transform, from its data config (or its `facts`, where read already)."""
    from src.data.preprocessing import torch_eval_transform

    return torch_eval_transform(facts or checkpoint_facts(model))


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
