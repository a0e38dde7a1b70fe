"""A demo page of a model: python -m src.demo ckpt_path=<ckpt> [serve.port=8000], then open the URL it prints.

src.serve with serve.demo=true: GET / is a page where a person chooses or drops an image and sees the top-5 classes
with bars and where the model looks (attention rollout or Grad-CAM, as src.explain draws it); docs/serving.md."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.cli.command import run_command
from src.cli.resolvers import register_resolvers
from src.runs.guard import tidied_on_failure
from src.serving.command import serve

# before Hydra composes the config
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        serve(cfg)


if __name__ == "__main__":
    run_command(main)
