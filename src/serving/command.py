"""What src.serve and src.demo run: the classifier of `ckpt_path` behind the server of conf/serve.yaml's `serve:`."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.cli.exits import exit_on_user_error
from src.errors import UserError
from src.inference.classifiers import load_classifier
from src.serving.app import Settings, create_app, import_server, serve_forever


@exit_on_user_error
def serve(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError(
            "ckpt_path is missing: python -m src.serve ckpt_path=<file.ckpt|model.onnx|Hub folder>"
        )
    settings = Settings(**OmegaConf.to_container(cfg.serve, resolve=True))
    import_server()  # before seconds of model loading
    path = Path(cfg.ckpt_path)
    if not path.exists():
        raise UserError(
            f"ckpt_path={path} does not exist: pass a checkpoint, an exported model.onnx or a Hub folder"
        )
    if settings.threads is not None:
        import torch

        torch.set_num_threads(settings.threads)
    classifier = load_classifier(path, cfg.device)
    explainer = None
    if settings.demo:
        from src.serving.explainer import Explainer  # Lightning and the attention maps: only for the demo

        explainer = Explainer(path, cfg.device, settings.method)
    serve_forever(create_app(classifier, settings, path.name, explainer), settings, path.name)
