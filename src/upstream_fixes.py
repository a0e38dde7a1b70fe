"""The one place where vitlab works around upstream behaviour that is wrong, each with the upstream issue; remove a
workaround when the release that fixes it is pinned."""

import signal
from types import FrameType

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment


class RequeueAtBatchEnd(L.Callback):
    """SLURM's requeue signal (SIGUSR1 before the time limit or a preemption) handled between training batches.

    Lightning 2.6 saves the hpc checkpoint and runs `scontrol requeue` inside the signal handler itself
    (`_SignalConnector._slurm_sigusr_handler_fn`). Python runs a handler between any two bytecodes of the main
    thread: in the middle of a DDP collective or a checkpoint write, so a 2-rank job hung for good, neither
    requeued nor finished (Lightning issue #21406, fix proposed in PR #21407). Here the handler only records the
    signal; at the end of each training batch the ranks agree whether any got it, and then Lightning's own
    save-and-requeue runs on every rank at the same point. Outside a SLURM job with auto-requeue it does nothing.
    """

    def __init__(self) -> None:
        self._requeue_signal: signal.Signals | None = None
        self._received = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment  # what Lightning registers by
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        # replaces the handler Lightning registered for this fit; Lightning restores the earlier one at teardown
        self._requeue_signal = environment.requeue_signal
        self._received = False
        signal.signal(self._requeue_signal, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received = True

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self._requeue_signal is None:
            return
        # one rank may have got the signal a batch before another: all of them save (a collective) at once
        if trainer.strategy.reduce_boolean_decision(self._received, all=False):
            self._received = False
            trainer._signal_connector._slurm_sigusr_handler_fn(self._requeue_signal, None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requeue_signal = None
