"""An HTTP server of a model: python -m src.serve ckpt_path=<ckpt|model.onnx|Hub folder> [serve.port=8000]

POST /predict (an image as the body, or images as the files of a multipart form) answers the top-k classes with
their probabilities; concurrent requests share forward passes (dynamic batching); GET /health. The server does
the model's own preprocessing. Listens on 127.0.0.1 unless serve.host says otherwise; docs/serving.md."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.cli.command import run_command
from src.cli.resolvers import register_resolvers
from src.runs.guard import tidied_on_failure
from src.serving.command import serve

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        serve(cfg)


if __name__ == "__main__":
    run_command(main)
