"""What vitlab does differently from plain Lightning, Hydra and torch, and why: the index.

Each workaround below is tagged with the upstream issue (or the version and source line) it works around and
with what tells that it can go. The code is here: one file per upstream (lightning.py, hydra.py, timm.py), one per
larger fix (checkpoint_io.py, disk_space.py, flops.py), and noise.py, which silences messages that are only noise, each with
its reason; the rest of vitlab reads like the documented patterns and calls these by name.

Lightning 2.6.6 (lightning.py)
- `RequeueAtBatchEnd`: SLURM's requeue signal saved and requeued between training batches, not inside the
  signal handler, where a DDP job hung for good (Lightning #21406, PR #21407). Added to every Trainer by
  src/training/trainer.py `build_trainer`. Goes when: tests/runs/test_requeue.py passes without it.
- `logger_writes_this_step`: asks Lightning's private `trainer._logger_connector.should_update_logs` whether
  the loggers write at this step (no public API). Used by src/training/module.py and src/training/nonfinite.py to read values
  off the GPU only then. Goes when: Lightning makes it public.
- `progress_bar_value`: the step loss logged for the progress bar as a host tensor, because Lightning turns each
  progress-bar value it holds into a number after every step, bar or no bar, which for a GPU tensor waits for
  the GPU (Lightning #21232). Used by src/training/module.py. Goes when: #21232 is fixed and the GPU sync test of
  tests/training/test_fast_paths.py passes without it.
- `MetricsLoggedOncePerEpoch`: metric objects handed to `self.log` once per stage and epoch, not at every step
  (~0.5 ms a call: Lightning #17988). Used by src/training/module.py. Goes when: `self.log` is cheap.
- `TrainLoaderStateInDataModule`: the GPU-resident loader's place in its epoch saved and restored through the
  DataModule, as Lightning drops a stateful loader's state when `configure_optimizers` asked for
  `estimated_stepping_batches` (Lightning #20550; PRs #21765, #21770). Mixed into src/data/base.py
  `ImageDataModule`. Goes when: `pytest tests/training/test_scale_out.py -k gpu_loader_fit_resumed` passes without it.
- `LearningRateFinderKeepingGroupRatios` (used by src/training/tuning.py, tune=lr_find): Lightning's learning-rate
  finder sets every parameter group to the one swept lr (lightning/pytorch/tuner/lr_finder.py,
  `_LRFinder._exchange_scheduler`; no upstream issue found), which would test layer decay's and the frozen groups'
  layers at the classifier's lr; this keeps each group at its share of it (a step pre-hook on the optimizer: during
  the sweep Lightning runs only its own callback). Goes when: Lightning's finder keeps the groups' ratios
  (tests/training/test_tuning.py `test_the_lr_finder_sweeps_each_group_at_its_share[LearningRateFinder]` fails).
- conf/callbacks/last_checkpoint.yaml: a second `ModelCheckpoint` (monitor: null; src/runs/interrupts.py
  `LastCheckpoint`, which also saves it when SIGTERM stops a fit) writes last.ckpt after every epoch. `ModelCheckpoint(monitor=..., save_top_k=1, save_last=True)` rewrites last.ckpt only at a step where it
  also saved a top-k checkpoint, i.e. only in epochs with a new best (lightning/pytorch/callbacks/
  model_checkpoint.py, `on_train_epoch_end` and `on_validation_end`: "Only save last checkpoint if a checkpoint
  was actually saved in this step"), so `ckpt_path=last` would resume from the best epoch, not the last. Goes
  when: with model_checkpoint's `save_last: true` a run whose val/acc falls in its last epoch has last.ckpt of
  that epoch; then drop last_checkpoint from conf/callbacks/default.yaml.
- src/upstream_fixes/checkpoint_io.py `AtomicCheckpointIO` (conf/trainer/default.yaml `plugins`): Lightning's
  `cloud_io._atomic_save` writes through an fsspec transaction whose temporary file is in `TMPDIR`, so on
  another file system than the run dir the final step is a copy, and a kill during it leaves a truncated
  checkpoint. Goes when: Lightning writes the temporary file beside the checkpoint and renames it
  (tests/upstream_fixes/test_checkpoint_io.py).
- disk_space.py `DiskFullError`, `no_space`: torch.save on a full disk fails with `inline_container.cc:
  unexpected pos` (a 200-line report), its `No space left on device` only in the exception's context; the atomic
  writes turn it into one line naming the file system, the free space and the space needed. Goes when: torch's
  own error names ENOSPC (tests/upstream_fixes/test_checkpoint_io.py, the full-disk test).
- flops.py `peak_bf16_flops` (used by src/bench/gpu.py): the H200's dense bf16 peak, which Lightning's table misses or doubles
  (Lightning #20660, #21677, fixed after 2.6.6 by PR #21743). Goes when: the pinned Lightning has PR #21743.

Lightning's DDP launcher in a Hydra sweep (hydra.py)
- `one_job`: a sweep job's DDP ranks re-run that job, not the whole sweep, and its process group and
  environment are cleared before the next job (Lightning #11300, PR #18175, both open). Entered by src/train.py
  `main`. Goes when: the sweep DDP tests of tests/training/test_scale_out.py pass without it.

Hydra 1.3.8 (hydra.py)
- `start_folder`, the `${cwd:}` resolver of conf/paths: `${hydra:runtime.cwd}` cannot be resolved where a sweep
  resolves `hydra.sweep.dir` (hydra/_internal/core_plugins/basic_launcher.py). Registered with vitlab's other
  resolvers by src/cli/resolvers.py `register_resolvers`, which every entry point calls.
- `failed_job_recorded`: a sweep job that fails (a user error's SystemExit too) is recorded in the sweep's
  `failed_jobs.txt` and ends as an exception, so the sweep runs its other jobs and then ends with one line and a
  non-zero exit; Hydra's `run_job` catches Exception only, so a SystemExit stopped the whole sweep. Entered by
  src/train.py `main`. Goes when: Hydra goes on after a job's SystemExit (tests/runs/test_failures.py,
  `test_a_sweep_runs_every_job_...`).
- `config_errors_in_one_line`: a command line Hydra cannot apply (a key that is not in the config, an override
  it cannot parse, a missing config file) reported as one `error:` line with its fix and exit 2, where Hydra
  prints 4-6 lines and exits 1 (hydra/_internal/utils.py, `run_and_report`, which has no hook for an app's
  messages). Installed by src/cli/exits.py `exit_on_unknown_option`, which every Hydra command calls. Goes
  when: Hydra lets an app report composition errors (tests/cli/test_train_cli.py, `test_a_key_hydra_cannot_set_...`).

timm 1.0.31 (timm.py)
- `param_groups_weight_decay`: timm's rule for which parameters get weight decay, without importing timm, whose
  `__init__` imports every model family and, when installed, wandb (through timm.utils.summary, since timm PR
  #550): 1.3 s of every run's start-up. Used by src/training/freezing.py; timm's Mixup, RandAugment, random erasing,
  models and teachers are imported where they are used. tests/training/test_freezing.py compares the groups with timm's;
  tests/cli/test_configs.py checks that a quickstart run imports no timm. Goes when: a timm submodule imports
  without timm.models.
- `drop_duplicate_num_classes`: the `model_args` of the config.json that `save_for_hf` writes hold
  `num_classes`, which transformers 5.25's `TimmWrapperForImageClassification` passes a second time (a
  TypeError for every folder timm writes). Used by src/inference/hub_folder.py. Goes when:
  `pytest tests/inference/test_hub_folder.py -m slow -k transformers` passes without it.

torch 2.14
- src/upstream_fixes/flops.py: FLOP formulas for the CPU attention kernels registered with torch, which counts them as 0
  (pytorch/pytorch#195460, fixed by PR #195801 after 2.14.1). Goes when: the pinned torch has PR #195801.
"""
