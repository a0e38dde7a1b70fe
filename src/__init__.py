"""vitlab: Lightning + Hydra experiments for image classification."""

from omegaconf import OmegaConf

from src.upstream_fixes.hydra import start_folder

# conf/paths' root: the folder a command was started from (a Hydra workaround, src/upstream_fixes/hydra.py)
OmegaConf.register_new_resolver("cwd", start_folder, replace=True)


def _folder_num_classes(data_dir) -> int:
    from src.data.imagefolder import folder_classes  # imported when used: it loads Lightning

    return len(folder_classes(data_dir))


def _csv_num_classes(csv_path, label_column) -> int:
    from src.data.manifest import manifest_classes

    return len(manifest_classes(csv_path, label_column))


# data.num_classes of data=imagefolder / data=csv, counted from the data (class folders, the label column):
# the model gets it by interpolation, and `--cfg job --resolve` shows it
OmegaConf.register_new_resolver("folder_num_classes", _folder_num_classes, use_cache=True, replace=True)
OmegaConf.register_new_resolver("csv_num_classes", _csv_num_classes, use_cache=True, replace=True)


# before any entry point builds a Trainer (and in every DDP rank, which imports src again)
from src.upstream_noise import silence_upstream_noise  # noqa: E402

silence_upstream_noise()
