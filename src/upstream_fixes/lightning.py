"""Workarounds of Lightning 2.6.6 behaviour (see the index in src/upstream_fixes/__init__.py): each says what
Lightning does, the issue, and what tells that it can go."""

import signal
from collections.abc import Mapping
from types import FrameType

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateFinder


class RequeueAtBatchEnd(L.Callback):
    """SLURM's requeue signal (SIGUSR1 before the time limit or a preemption) handled between training batches.

    Lightning 2.6 saves the hpc checkpoint and runs `scontrol requeue` inside the signal handler itself
    (`_SignalConnector._slurm_sigusr_handler_fn`). Python runs a handler between any two bytecodes of the main
    thread: in the middle of a DDP collective or a checkpoint write, so a 2-rank job hung for good, neither
    requeued nor finished (Lightning issue #21406, fix proposed in PR #21407). Here the handler only records the
    signal; at the end of each training batch the ranks agree whether any got it, and then Lightning's own
    save-and-requeue runs on every rank at the same point. Outside a SLURM job with auto-requeue it does nothing.

    Remove when: the pinned Lightning has PR #21407 (its handler only notes the signal) and tests/runs/test_requeue.py
    passes with this callback left out of src/training/trainer.py.
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


def logger_writes_this_step(trainer: L.Trainer) -> bool:
    """Whether the loggers write at this training step (every `trainer.log_every_n_steps`, and when the fit
    stops). Lightning decides it in a private property, `trainer._logger_connector.should_update_logs`, and has
    no public way to ask; vitlab asks so as to read values off the GPU (a sync) only on the steps that are written.

    Remove when: Lightning exposes it publicly; then call that here (this is the only use of the private name)."""
    return trainer._logger_connector.should_update_logs


def progress_bar_value(value: torch.Tensor) -> torch.Tensor:
    """`value` on the host, for `self.log(name, ..., prog_bar=True)` on some steps only. Lightning holds a logged
    step value until the epoch ends and turns every progress-bar value it holds into a Python number after every
    training step, whether a bar is shown or not (`_ResultCollection.metrics`; Lightning issue #21232, open): for a
    tensor on a GPU that is a copy to the host, which waits for all the work queued so far, at every step. From
    the host, the wait is only on the steps that log it.

    Remove when: #21232 is fixed; then log the tensor itself, and tests/training/test_fast_paths.py's GPU sync test still passes
    (on a GPU)."""
    return value.detach().cpu()


class MetricsLoggedOncePerEpoch:
    """Hands torchmetrics objects to Lightning once per stage and epoch instead of at every step.

    The documented pattern logs a metric object at every step (`self.log("val/acc", self.val_acc,
    on_epoch=True)`); Lightning then computes and resets it at the epoch's end. It only needs the object once, but
    each `self.log` call costs ~0.5 ms of Python (Lightning issue #17988, open), a whole step of a small model on
    a GPU. So the module calls `log` at every step, which logs at the first step of each epoch of a stage only,
    and `new_epoch(stage)` from its `on_<stage>_epoch_start` hooks. The first step, not `batch_idx == 0`: a fit
    resumed mid-epoch starts later.

    Remove when: a `self.log` call costs next to nothing (#17988 closed as fixed); then log at every step as
    documented, and `pytest tests/training/test_scale_out.py -k resumed_mid_epoch_still_logs` still passes."""

    def __init__(self) -> None:
        self._handed_over: set[str] = set()  # stages whose metrics Lightning holds this epoch

    def new_epoch(self, stage: str) -> None:
        self._handed_over.discard(stage)

    def log(self, module: L.LightningModule, stage: str, *metrics: Mapping, **log_options) -> None:
        """`module.log_dict(...)` of each of `metrics` (dicts of metric objects, or MetricCollections) as epoch
        values, on the stage's first step of the epoch."""
        if stage in self._handed_over:
            return
        for group in metrics:
            module.log_dict(group, on_step=False, on_epoch=True, **log_options)
        self._handed_over.add(stage)


class TrainLoaderStateInDataModule:
    """Mixin for a LightningDataModule whose training loader is stateful (`state_dict()`/`load_state_dict()`,
    such as the GPU-resident loader): checkpoints keep the loader's place in its epoch through the DataModule's
    own `state_dict`, so that a fit resumed mid-epoch serves the rest of that epoch.

    Lightning 2.6 saves a stateful loader's state itself, but drops it on resume when `configure_optimizers` has
    asked for `trainer.estimated_stepping_batches` (as the warm-up and one-cycle schedules do): the loader is then
    built before the checkpoint is read, and never given its state (Lightning issue #20550, fixes proposed in
    PRs #21765 and #21770). `train_dataloader` passes its loader through `resumed_train_loader`.

    Remove when: the pinned Lightning has that fix and `pytest tests/training/test_scale_out.py -k gpu_loader_fit_resumed`
    passes, for every scheduler, without this mixin (Lightning's own copy of the state is in every checkpoint
    already, so checkpoints saved with the mixin resume without it too)."""

    _train_loader = None  # the training loader whose state the next checkpoint keeps
    _train_loader_state: dict | None = None  # from the checkpoint being resumed, for the next training loader

    def resumed_train_loader(self, loader):
        """`loader`, given the state of the checkpoint being resumed if it keeps state."""
        if not (hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")):
            return loader
        if self._train_loader_state:
            loader.load_state_dict(self._train_loader_state)
        self._train_loader, self._train_loader_state = loader, None
        return loader

    def state_dict(self) -> dict:
        return {"train_batches": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_loader_state = state_dict.get("train_batches")


class LearningRateFinderKeepingGroupRatios(LearningRateFinder):
    """Lightning's `LearningRateFinder`, stepping each parameter group at its share of the swept lr. Lightning sets
    every group to the same lr (lightning/pytorch/tuner/lr_finder.py, `_LRFinder._exchange_scheduler`), which would
    range-test layer decay's and the frozen groups' layers at the classifier's lr. The share is each group's lr
    over the largest (the classifier's groups), so the swept lr, and the suggestion, is `optimizer.lr`. It ends the
    fit after the sweep, as `Tuner.lr_find` has it do."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self._early_exit = True

    def lr_find(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        lrs = [
            group.get("initial_lr", group["lr"]) for group in optimizer.param_groups
        ]  # before any schedule
        shares = [lr / max(lrs) for lr in lrs]

        def at_shares(optimizer, args, kwargs) -> None:
            # the finder's schedule sets every group's lr afresh at each step, so this scaling does not compound
            for group, share in zip(optimizer.param_groups, shares, strict=True):
                group["lr"] *= share

        # during the sweep only the finder's own callback runs: a hook on the optimizer, not a callback
        handle = optimizer.register_step_pre_hook(at_shares)
        try:
            super().lr_find(trainer, pl_module)
        finally:
            handle.remove()
