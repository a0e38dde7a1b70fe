"""A resumed fit's curves continue where the checkpoint left them: in TensorBoard no step twice, none skipped."""

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def mark_tensorboard_restart(trainer: L.Trainer) -> None:
    """The interrupted run logged steps past its checkpoint (a SLURM job trains on between its SIGUSR1
    checkpoint and the requeue's SIGTERM; a killed run past its last.ckpt): the next event file starts with a
    restart marker at the resumed step, and TensorBoard hides the older events from it on (torch's purge_step)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.close()  # reopened by the next event, with the marker first
            logger.experiment.purge_step = trainer.global_step


def fix_logging_step(trainer: L.Trainer) -> None:
    """Lightning 2.6 adds 1 to its logging step (`_batches_that_stepped`) on a mid-epoch restart, as if the
    checkpoint had been saved in on_train_batch_end (training_epoch_loop.py, reset()). A SLURM hpc checkpoint
    is saved whenever SIGUSR1 arrives, mostly within a batch: its logging steps would skip one. With one
    optimizer the logging step is the global step, so that is what it gets back. Call before the first batch."""
    loop = trainer.fit_loop.epoch_loop
    if loop._batches_that_stepped == trainer.global_step + 1:
        loop._batches_that_stepped = trainer.global_step
