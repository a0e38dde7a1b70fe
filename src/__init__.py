"""vitlab: Lightning + Hydra experiments for image classification."""

import os

from omegaconf import OmegaConf

# conf/paths' root: the folder a command was started from. Not ${hydra:runtime.cwd}: a sweep (-m) resolves its
# folder (hydra.sweep.dir, below paths.log_dir) before Hydra's own resolver can answer
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
