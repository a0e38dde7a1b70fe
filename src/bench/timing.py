"""Clocks of the measurements: wall and process CPU time, device syncs, steady-state step timing, peak memory."""

import os
import statistics
import threading
import time

import lightning as L
import torch


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock() -> tuple[float, float]:
    """Wall time, and this process's CPU time: on a CPU shared with other jobs the latter hardly depends on
    how often they take the cores away, so it still compares two loops when wall times are noise."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    return end[0] - start[0], end[1] - start[1]


class StepTimer(L.Callback):
    """Time from the start of batch `warmup` to the end of the last batch (steady state).

    Not Lightning's ThroughputMonitor: that one synchronises the GPU after every batch, which the raw loop it is
    compared with does not do."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.start, self.end = warmup, device, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == trainer.num_training_batches - 1:  # one sync at the end, as the raw loop does
            sync(self.device)
            self.end = clock()


class EpochTimer(L.Callback):
    """Wall seconds of each training epoch, by epoch index."""

    def __init__(self, device: str):
        self.device, self.seconds = device, {}

    def on_train_epoch_start(self, trainer, module):
        sync(self.device)
        self.seconds[trainer.current_epoch] = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        sync(self.device)
        self.seconds[trainer.current_epoch] = time.perf_counter() - self.seconds[trainer.current_epoch]


class PeakMemory:
    """Peak GPU memory allocated, or the peak resident set size of this process sampled every 5 ms (the
    kernel's own peak never goes down, so it cannot tell one model from the one before)."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.005):
            with open("/proc/self/statm") as statm:
                self.peak = max(self.peak, int(statm.read().split()[1]) * page)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20
