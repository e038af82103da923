"""Blocking iterators consumed from asyncio, a few items ahead, on a thread of their own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


async def iterate_in_thread(
    items: Iterator[T], on_close: Callable[[], None] = lambda: None, ahead: int = 4
) -> AsyncGenerator[T, None]:
    """Run a blocking iterator in one thread of its own (its SQLite connection and its
    files stay on that thread), ``ahead`` items ahead of the consumer: the consumer's pace
    is the back-pressure. ``on_close`` runs in that thread when it stops."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[T | BaseException | None] = asyncio.Queue(maxsize=ahead)
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if cancelled.is_set():
                    return
                asyncio.run_coroutine_threadsafe(ready.put(item), loop).result()
            asyncio.run_coroutine_threadsafe(ready.put(None), loop).result()
        except BaseException as exc:  # handed to the consumer, which raises it
            if not cancelled.is_set():
                asyncio.run_coroutine_threadsafe(ready.put(exc), loop).result()
        finally:
            on_close()

    finished: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def run() -> None:
        try:
            produce()
        finally:
            loop.call_soon_threadsafe(settle)

    # A thread of its own, not the loop's default executor: a restore or a recovery can
    # last hours and must not take one of the few threads everything else shares.
    threading.Thread(target=run, name="iterate-in-thread", daemon=True).start()
    try:
        while True:
            item = await ready.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
        while not ready.empty():  # let a producer blocked on a full queue finish
            ready.get_nowait()
        with contextlib.suppress(Exception):
            await finished
