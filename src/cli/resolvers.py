"""vitlab's OmegaConf resolvers, registered by `register_resolvers()`: every entry point calls it when it is
imported (so do the DDP ranks and the SLURM jobs, which import it again), and so must any code that resolves
vitlab's configs itself, e.g. a notebook that composes conf/train.yaml with Hydra's compose API:

    with initialize_config_dir(config_dir=".../conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits"])
    register_resolvers()  # before reading a value: `${cwd:}` and the others resolve when read
"""

import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.upstream_fixes.hydra import start_folder


def _resume_dir(*args) -> str:
    from src.runs.folders import (
        resume_dir,  # imported when used: it loads torch, which src.predict does without
    )

    return resume_dir(*args)


def _config_subdir(run_dir, ckpt_path=None) -> str | None:
    from src.runs.folders import config_subdir

    return config_subdir(run_dir, ckpt_path)


def _folder_num_classes(data_dir) -> int:
    from src.data.imagefolder import folder_classes  # imported when used: it loads Lightning

    return len(folder_classes(data_dir))


def _csv_num_classes(csv_path, label_column, separator=None) -> int:
    from src.data.manifest import manifest_classes

    return len(manifest_classes(csv_path, label_column, separator))


def _hf_num_classes(name, label_column) -> int:
    from src.data.hf import hf_num_classes

    return hf_num_classes(name, label_column)


def _shards_num_classes(path) -> int:
    from src.data.shards import shards_num_classes

    return shards_num_classes(path)


def _timm_input(name: str, key: str):
    from src.models.timm_models import pretrained_input  # imported when used: it loads timm

    value = pretrained_input(name)[key]
    # a plain list is no value OmegaConf.resolve() can store (mean, std)
    return OmegaConf.create(value) if isinstance(value, list) else value


# the resolvers that fill a data setting in from the model (conf/model/timm.yaml, hf.yaml)
MODEL_INPUT = re.compile(r"\$\{(timm|hf)_input:")
# PIL's convert("L"): the grey value of an RGB pixel (ITU-R 601-2 luma)
_LUMA = (0.299, 0.587, 0.114)


def _per_channel(values, channels: int) -> ListConfig:
    """`values` (a data set's or a model's mean or std) for images of `channels` channels: as they are when they
    have one per channel; one value for all; three (RGB) for grey images their luma-weighted average (what a
    grey image read with PIL's mode "L" has), for N channels repeated in turn, as timm repeats a pretrained
    model's RGB filters for in_chans=N. Other lengths are left for the config check to refuse."""
    values = [float(v) for v in values]
    if len(values) == channels or not isinstance(channels, int) or channels < 1:
        return OmegaConf.create(values)
    if len(values) == 1:
        return OmegaConf.create(values * channels)
    if len(values) == 3 and channels == 1:
        return OmegaConf.create([round(sum(w * v for w, v in zip(_LUMA, values, strict=True)), 4)])
    if len(values) == 3:
        return OmegaConf.create([values[i % 3] for i in range(channels)])
    return OmegaConf.create(values)


def _hf_input(name: str, key: str):
    from src.models.hf_models import processor_input  # imported when used: it loads transformers

    value = processor_input(name)[key]
    return OmegaConf.create(value) if isinstance(value, list) else value


def _preprocessing_from(*, _parent_) -> DictConfig:
    """For each setting conf/model/timm.yaml (hf.yaml) fills in from the model: `model` where the data config still takes the
    model's value, `config` where the command or a config file set its own."""
    from src.models.timm_models import INPUT_KEYS

    raw = OmegaConf.to_container(_parent_, resolve=False)
    return OmegaConf.create(
        {key: "model" if MODEL_INPUT.search(str(raw.get(key))) else "config" for key in INPUT_KEYS}
    )


def register_resolvers() -> None:
    """Registers (again: idempotent) every resolver vitlab's configs use."""
    # conf/paths' root: the folder a command was started from (a Hydra workaround, src/upstream_fixes)
    OmegaConf.register_new_resolver("cwd", start_folder, replace=True)
    # data.num_classes of data=imagefolder / csv / hf / shards, counted from the data (class folders, the label column):
    # the model gets it by interpolation, and `--cfg job --resolve` shows it
    OmegaConf.register_new_resolver("folder_num_classes", _folder_num_classes, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("csv_num_classes", _csv_num_classes, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("hf_num_classes", _hf_num_classes, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("shards_num_classes", _shards_num_classes, use_cache=True, replace=True)
    # conf/model/timm.yaml: the data settings the model's pretrained weights expect (timm's data config), and
    # which of them the config left to the model
    OmegaConf.register_new_resolver("timm_input", _timm_input, use_cache=True, replace=True)
    # conf/model/hf.yaml: the same from a transformers model's image processor
    OmegaConf.register_new_resolver("hf_input", _hf_input, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("preprocessing_from", _preprocessing_from, replace=True)
    # data.mean / data.std for data.channels (grey images, N-channel models)
    OmegaConf.register_new_resolver("per_channel", _per_channel, replace=True)
    # conf/hydra/train.yaml's run dir (a resumed fit continues in its checkpoint's) and where its config copy
    # goes (src/runs/folders.py). Cached: every look at hydra.run.dir in a process sees the same folder, even once
    # checkpoints are written
    OmegaConf.register_new_resolver("resume_dir", _resume_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("config_subdir", _config_subdir, use_cache=True, replace=True)
