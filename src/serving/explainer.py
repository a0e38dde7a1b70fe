"""The demo page's overlay: where the model looks for its top class in one image, as src.explain draws it
(attention rollout or Grad-CAM from src/inference/attention_maps.py), returned as PNG bytes."""

from pathlib import Path

from PIL import Image

from src.errors import UserError
from src.inference.attention_maps import METHODS, default_method, heatmaps
from src.inference.classifiers import eval_transform, pick_device
from src.reporting.attention import overlay_png
from src.training.module import load_checkpoint


class Explainer:
    def __init__(self, ckpt_path: Path, device: str | None, method: str | None):
        if ckpt_path.suffix == ".onnx" or ckpt_path.is_dir():
            raise UserError(
                f"the demo's overlays need the model's gradients and attention: pass the .ckpt that {ckpt_path} "
                "was exported from"
            )
        if method is not None and method not in METHODS:
            raise UserError(
                f"serve.method={method} is not a method: use rollout, gradcam or null (the model's)"
            )
        self.device = pick_device(device)
        self.model = load_checkpoint(ckpt_path, map_location=self.device).eval()
        self.method = method or default_method(self.model)
        self.transform = eval_transform(self.model)
        self.mean, self.std = self.model.hparams.data["mean"], self.model.hparams.data["std"]

    def __call__(self, image: Image.Image) -> bytes:
        batch = self.transform(image)[None].to(self.device)
        return overlay_png(batch[0].cpu(), heatmaps(self.model, batch, self.method)[0], self.mean, self.std)
