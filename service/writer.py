"""Group commit: one thread owns the only write connection and commits for everyone.

SQLite has one writer at a time, and a commit's fsync costs the same for one event as for
five hundred. So requests do not commit: they queue their events and wait. The writer takes
whatever is queued (up to `max_batch` events, whole requests only) as soon as its previous
commit ends, with no fixed wait, processes it in one transaction, and only then settles each
request's future, so a 200 always follows its commit. The queue is bounded in events: when
it is full a request is refused at once rather than held in memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from engine import Engine

from .engine_process import EngineProcess

Results = list[dict[str, Any]]
IDLE_SECONDS = 1.0  # how often an idle writer checks that its process is alive


class QueueFull(Exception):
    """The queue holds as many events as it may; try again shortly."""


class WriterClosed(Exception):
    """The writer is stopping (or has died): nothing new is taken."""


@dataclass
class _Job:
    items: list[Any]
    future: Future | asyncio.Future = field(default_factory=Future)
    call: Callable[[Engine], Any] | None = None  # a job of its own: fn(the writer's engine)
    loop: asyncio.AbstractEventLoop | None = None  # set when `future` is an asyncio future of this loop


class Writer:
    """The writer thread and its bounded queue. `submit` from any thread; `stop` drains."""

    def __init__(self, open_engine: Callable[[], Engine], *, capacity: int = 5000, max_batch: int = 500,
                 on_commit: Callable[[int], None] | None = None):
        self._open_engine = open_engine
        self.capacity, self.max_batch = capacity, max_batch
        self._on_commit = on_commit
        self._jobs: deque[_Job] = deque()
        self._depth = 0  # events queued, not yet taken
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="webinar-flows-writer", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self.busy_since: float | None = None  # monotonic start of the transaction under way
        self.last_error: tuple[str, float] | None = None  # why the last transaction failed, and when
        self._engine: Any = None

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def alive(self) -> bool:
        """The thread runs, is not stopping, and its engine's process (when it has one) too."""
        engine = self._engine
        return (self._thread.is_alive() and not self._closing
                and not (isinstance(engine, EngineProcess) and not engine.alive))

    def start(self) -> None:
        """Start the thread and wait until it holds its engine; re-raise what opening it raised."""
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def submit(self, items: list[Any]) -> Future:
        """Queue one request's events; its future gets their results once they are committed."""
        return self._queue(_Job(items)).future  # type: ignore[return-value]

    def submit_async(self, items: list[Any]) -> asyncio.Future:
        """`submit` for a caller on an event loop: an asyncio future of the running loop, settled
        on that loop. A transaction's futures are settled by one callback handed to the loop, not
        one thread-safe hand-off (a wake-up of the loop) per request."""
        loop = asyncio.get_running_loop()
        return self._queue(_Job(items, future=loop.create_future(), loop=loop)).future  # type: ignore[return-value]

    def _queue(self, job: _Job) -> _Job:
        items = job.items
        with self._lock:
            if self._closing or not self._thread.is_alive():
                raise WriterClosed()
            if self._depth + len(items) > self.capacity:
                raise QueueFull()
            self._jobs.append(job)
            self._depth += len(items)
            self._lock.notify()
        return job

    def submit_call(self, fn: Callable[[Engine], Any]) -> Future:
        """Queue `fn(engine)` to run on the writer thread, alone, in turn with the events (the
        console's re-process and purge); its future gets what it returns or raises."""
        job = _Job([], call=fn)
        with self._lock:
            if self._closing or not self._thread.is_alive():
                raise WriterClosed()
            self._jobs.append(job)
            self._lock.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Take nothing new, commit and settle everything queued, then close the engine."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            engine = self._open_engine()
        except BaseException as exc:  # noqa: BLE001 - handed to start() in the starting thread
            self._failure = exc
            self._started.set()
            return
        self._engine = engine
        self._started.set()
        try:
            while (jobs := self._take()) is not None:
                if jobs:
                    self._commit(engine, jobs)
                elif isinstance(engine, EngineProcess):
                    self._revive(engine)
        finally:
            engine.close()

    def _revive(self, engine: EngineProcess) -> None:
        """A writer process that died while idle is replaced now, not at the next request:
        /readyz says "not ready" meanwhile, and a server that gets no traffic would never
        send one."""
        try:
            engine.revive()
        except Exception as exc:  # noqa: BLE001 - /readyz reports it; the next idle turn tries again
            self.last_error = (f"the writer process cannot start: {type(exc).__name__}: {exc}", time.monotonic())

    def _take(self) -> list[_Job] | None:
        """Whole requests up to `max_batch` events; [] after an idle second; None when stopping."""
        with self._lock:
            if not self._jobs and not self._closing:
                self._lock.wait(IDLE_SECONDS)
            if not self._jobs:
                return None if self._closing else []
            jobs, count = [self._jobs.popleft()], 0
            count = len(jobs[0].items)
            while (jobs[0].call is None and self._jobs and self._jobs[0].call is None
                   and count + len(self._jobs[0].items) <= self.max_batch):
                count += len(self._jobs[0].items)
                jobs.append(self._jobs.popleft())
            self._depth -= count
            return jobs

    def _commit(self, engine: Engine, jobs: list[_Job]) -> None:
        if jobs[0].call is not None:
            self.busy_since = time.monotonic()
            try:
                _settle(jobs[0].future, result=_run(engine, jobs[0].call))
            except Exception as exc:  # noqa: BLE001 - the caller answers it
                _settle(jobs[0].future, exception=exc)
            finally:
                self.busy_since = None
            return
        items = [item for job in jobs for item in job.items]
        self.busy_since = time.monotonic()
        try:
            results = engine.process_many(items, batch_size=max(1, len(items)))
        except Exception as exc:  # noqa: BLE001 - each waiting request answers it (503 for a StoreError)
            self.last_error = (f"the last transaction failed: {type(exc).__name__}: {exc}", time.monotonic())
            _settle_all([(job, None, exc) for job in jobs])
            return
        finally:
            self.busy_since = None
        self.last_error = None
        if self._on_commit is not None:
            self._on_commit(len(items))
        settled, start = [], 0
        for job in jobs:
            settled.append((job, results[start:start + len(job.items)], None))
            start += len(job.items)
        _settle_all(settled)


def _run(engine: Any, job: Callable[[Engine], Any]) -> Any:
    """`job(engine)`, where the engine is: in the writer process when there is one."""
    return engine.run(job) if isinstance(engine, EngineProcess) else job(engine)


def _settle_all(settled: list[tuple[_Job, Results | None, BaseException | None]]) -> None:
    """Settle each job's future: a concurrent one here, the asyncio ones of a loop in one
    callback on that loop (each request's own hand-off would wake the loop once per request)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Results | None, BaseException | None]]] = {}
    for job, result, exception in settled:
        if job.loop is None:
            _settle(job.future, result=result, exception=exception)  # type: ignore[arg-type]
        else:
            by_loop.setdefault(job.loop, []).append((job.future, result, exception))  # type: ignore[arg-type]
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, futures)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle_on_loop(futures: list[tuple[asyncio.Future, Results | None, BaseException | None]]) -> None:
    for future, result, exception in futures:
        if future.done():  # its request went away (cancelled)
            continue
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


def _settle(future: Future, *, result: Results | None = None, exception: BaseException | None = None) -> None:
    """Settle a request's future; one whose request went away (cancelled) is left alone."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
