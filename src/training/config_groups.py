"""Config groups whose every entry is built: `callbacks`, `logger`, `trainer.plugins`."""

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None) -> list:
    """Builds every `_target_` entry of a group such as `callbacks` or `logger` (entries can be null)."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]
