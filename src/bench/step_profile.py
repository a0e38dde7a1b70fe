"""Where a training step's time goes: cProfile's self time of two loops doing the same work (`Trainer.fit` and the
raw loop of fit_vs_raw.py; in src/bench/quickstart.py the quickstart and the same loop in a bare Lightning
Trainer), per step or per epoch, summed by package (lightning, torchmetrics, vitlab's own `src`, torch, ...) and
by function, and their difference: what the framework costs, to the line.

cProfile slows Python code far more than torch's kernels, so its milliseconds are larger than the unprofiled
overhead that fit_vs_raw.py measures: they say where the time goes, not how much there is."""

import cProfile
import pstats
import re
import tempfile
from dataclasses import dataclass

import lightning as L

from src.bench.fit_vs_raw import raw_rate
from src.bench.workload import bench_trainer

# the rows of the function table: the functions whose self time differs most between the two loops
TOP_FUNCTIONS = 15


@dataclass(frozen=True)
class ProfileDifference:
    """Self time in ms per unit (a step or an epoch) of two loops, ours and theirs, by package and function."""

    # name -> (ours, theirs), the largest ours - theirs first; functions are "path:line(function)", TOP_FUNCTIONS
    packages: dict[str, tuple[float, float]]
    functions: dict[str, tuple[float, float]]
    units: int  # how many steps or epochs were profiled


class ProfileFrom(L.Callback):
    """Profiles a fit from the start of batch `batch` of epoch `epoch` (after the warm-up) to the end of training."""

    def __init__(self, profile: cProfile.Profile, epoch: int = 0, batch: int = 0):
        self.profile, self.epoch, self.batch = profile, epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.profile.enable()

    def on_train_end(self, trainer, module):
        self.profile.disable()


def package(filename: str, function: str) -> str:
    """Who owns a profiled function: the installed package, vitlab's `src`, or (for C functions, which cProfile
    files under "~") torch's bindings or Python's own built-ins."""
    if filename == "~":
        return "torch (C++ ops, called from Python)" if "torch" in function else "Python built-ins"
    if match := re.search(r"site-packages/([^/]+)", filename):
        return match.group(1).removesuffix(".py")
    if "/src/" in filename:
        return "vitlab (src)"
    return "Python standard library"


def short_name(filename: str, line: int, function: str) -> str:
    path = re.sub(r".*site-packages/|.*/(?=src/)", "", filename)
    return function if filename == "~" else f"{path}:{line}({function})"


def self_ms_per(profile: cProfile.Profile, units: int) -> tuple[dict[str, float], dict[str, float]]:
    """Self (exclusive) time per step or epoch, by package and by function."""
    packages: dict[str, float] = {}
    functions: dict[str, float] = {}
    for (filename, line, function), (_, _, self_seconds, _, _) in pstats.Stats(profile).stats.items():
        ms = 1000 * self_seconds / units
        owner = package(filename, function)
        packages[owner] = packages.get(owner, 0.0) + ms
        name = short_name(filename, line, function)
        functions[name] = functions.get(name, 0.0) + ms
    return packages, functions


def difference(ours: cProfile.Profile, theirs: cProfile.Profile, units: int) -> ProfileDifference:
    our_packages, our_functions = self_ms_per(ours, units)
    their_packages, their_functions = self_ms_per(theirs, units)

    def paired(a: dict[str, float], b: dict[str, float]) -> dict[str, tuple[float, float]]:
        both = {name: (a.get(name, 0.0), b.get(name, 0.0)) for name in a.keys() | b.keys()}
        return dict(sorted(both.items(), key=lambda item: item[1][1] - item[1][0]))  # largest a - b first

    functions = paired(our_functions, their_functions)
    return ProfileDifference(
        paired(our_packages, their_packages), dict(list(functions.items())[:TOP_FUNCTIONS]), units
    )


def profile_steps(module, loader, cfg, steps: int, warmup: int, device: str) -> ProfileDifference:
    """The steady-state steps (after `warmup`) of one `Trainer.fit` and one raw loop, each under cProfile."""
    module.train()  # the inference measurement before this left it in eval mode, which Trainer.fit keeps
    fit_profile = cProfile.Profile()
    with tempfile.TemporaryDirectory() as log_dir:
        profiled = ProfileFrom(fit_profile, batch=warmup)
        trainer = bench_trainer(cfg, device, log_dir, profiled, max_epochs=1, limit_train_batches=steps)
        trainer.fit(module, train_dataloaders=loader)
    raw_profile = cProfile.Profile()
    raw_rate(module, loader, cfg, steps, warmup, device, raw_profile)
    return difference(fit_profile, raw_profile, steps - warmup)
