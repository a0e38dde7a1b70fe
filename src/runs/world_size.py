"""A fit resumed on another number of processes than it was saved on: a job resized after a node was lost, or a
command with other `trainer.devices` / `trainer.num_nodes`. From the end of an epoch it goes on (each epoch's
shares are drawn anew for the ranks there are); the global batch changes with the world size, and the log says so.
From the middle of an epoch it cannot keep the data order: each rank's place in the epoch is a place in its share
of the old world size, so the rest of the epoch would repeat some images and skip others."""

import logging

import lightning as L

from src.errors import UserError

log = logging.getLogger(__name__)


class WorldSizeCheck(L.Callback):
    """Stores the world size in each checkpoint; checks it when a fit resumes from one."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["world_size"] = trainer.world_size

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        check_world_size(checkpoint, trainer.world_size)


def check_world_size(checkpoint: dict, world_size: int) -> None:
    """A UserError for a mid-epoch checkpoint of another world size; a log line for an epoch-end one."""
    saved = checkpoint.get("world_size")  # None: saved before vitlab stored it
    if saved is None or saved == world_size:
        return
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    if not progress.get("is_last_batch", True):
        raise UserError(
            f"this checkpoint was saved in the middle of epoch {checkpoint.get('epoch')} by {saved} processes, and "
            f"the fit resumes on {world_size}: the rest of that epoch's data order cannot be kept. Resume on "
            f"{saved} processes (trainer.devices x trainer.num_nodes), or from the epoch's end: the run's "
            "checkpoints/last.ckpt of an earlier epoch"
        )
    log.warning(
        "resuming on %d processes a fit saved on %d: from here on each step's global batch is data.batch_size x %d",
        world_size,
        saved,
        world_size,
    )
