"""Micro-batching: score concurrent requests with one ``predict_proba`` call.

Requests wait in a queue; a worker takes the first, then keeps collecting for up to
``window_ms`` or until ``max_size`` are in hand, and scores them together on one worker thread
(routers are not assumed thread-safe, and the event loop must stay free for I/O). While a
batch is being scored, new requests queue up and form the next batch, so under load batches
fill even with a zero window. ``max_size=1`` turns batching off: one call per request.
``bench/serve_load.py`` measures both.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np


class MicroBatcher:
    def __init__(self, score: Callable[[Sequence[str], Sequence[str | None]], np.ndarray], *,
                 window_ms: float = 2.0, max_size: int = 32):
        self.score_batch, self.window = score, window_ms / 1000.0
        self.max_size = max(1, int(max_size))
        self.executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue | None = None
        self._loop = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.scored = 0

    def _start(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # one worker per event loop (the server's, or our own)
            if self.executor is not None:  # the worker of a loop we no longer serve
                self.executor.shutdown(wait=False)
            self._loop, self._queue = loop, asyncio.Queue()
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capsat-score")
            self._worker = loop.create_task(self._run())
        return self._queue

    async def score(self, text: str, task: str | None = None) -> np.ndarray:
        """One request's row of probabilities (``task``: its task label, or None)."""
        future = asyncio.get_running_loop().create_future()
        await self._start().put((text, task, future))
        return await future

    async def _run(self) -> None:
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_size:
                timeout = deadline - loop.time()
                try:
                    batch.append(queue.get_nowait() if timeout <= 0 else
                                 await asyncio.wait_for(queue.get(), timeout))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            texts, tasks = [text for text, _, _ in batch], [task for _, task, _ in batch]
            try:
                probs = await loop.run_in_executor(self.executor, self.score_batch, texts, tasks)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches += 1
            self.scored += len(batch)
            for (_, _, future), row in zip(batch, probs):
                if not future.done():  # its client may have gone
                    future.set_result(row)

    async def aclose(self) -> None:
        """Stop the worker; a later ``score`` (e.g. on another loop) starts a new one."""
        if self._worker is not None:
            self._worker.cancel()
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        self._loop = self._queue = self._worker = self.executor = None
