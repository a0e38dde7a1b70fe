"""Dynamic batching: images from concurrent requests wait in one asyncio queue; a worker takes up to `max_batch_size`
of them, or what came within `max_wait_ms` of the first, and runs one forward pass in its own thread (the event
loop keeps accepting requests meanwhile). At most `max_queue` images are admitted and not yet answered: a request
that would go beyond is refused at once (503), so memory stays bounded however many clients send."""

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest_batch: int = 0


class DynamicBatcher:
    def __init__(
        self, run: Callable[[list], np.ndarray], max_batch_size: int, max_wait_ms: float, max_queue: int
    ):
        self.run = run  # model inputs -> (n, classes) probabilities
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.pending = 0  # admitted images not answered yet: waiting or in the forward pass
        self.stats = BatchStats()
        # one thread runs every forward pass (and the demo's overlays): the model is never used by two at once
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def admit(self, count: int) -> bool:
        """Reserves room for `count` images; False (and nothing reserved) when the queue has no room for them."""
        if self.pending + count > self.max_queue:
            return False
        self.pending += count
        return True

    async def submit(self, inputs: Sequence) -> list[tuple[np.ndarray, int]]:
        """(probabilities, size of the batch it ran in) per input, which admit() let in."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in inputs]
        for item in zip(inputs, futures, strict=True):
            self._queue.put_nowait(item)
        return await asyncio.gather(*futures)

    async def run_alone(self, fn: Callable, *args):
        """`fn(*args)` on the forward thread, for one image that admit() let in (the demo's overlays)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.pending -= 1

    async def _next_batch(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                probabilities = await loop.run_in_executor(self.executor, self.run, [x for x, _ in batch])
            except (
                Exception
            ) as err:  # the model failed on this batch: its requests get a 500, the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
            else:
                for (_, future), row in zip(batch, probabilities, strict=True):
                    if not future.done():  # a client that went away cancelled its future
                        future.set_result((row, len(batch)))
            finally:
                self.pending -= len(batch)
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
