"""Group commit: one thread owns the only write connection and commits for everyone.

SQLite has one writer at a time, and a commit's fsync costs the same for one event as for
five hundred. So requests do not commit: they queue their events and wait. The writer takes
whatever is queued (up to `max_batch` events, whole requests only) as soon as its previous
commit ends, with no fixed wait, processes it in one transaction, and only then settles each
request's future, so a 200 always follows its commit. The queue is bounded in events: when
it is full a request is refused at once rather than held in memory.

With the engine in a writer process (service/engine_process.py) the thread sends instead of
committing, and the process's pipe holds the queue's head: the process takes what waits there
when its previous commit ends, and a second thread settles the answers.
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

from .engine_process import (
    CLOSE,
    EngineProcess,
    WriterProcessDied,
    answered,
    encode,
    encode_job,
)

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


@dataclass
class _Sent:
    """A message on its way to the writer process, or in its transaction: its jobs, in order."""
    jobs: list[_Job]
    events: int
    kind: str  # "received", "many" or "run", as service/engine_process.py encoded it
    at: float  # monotonic time it was sent


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
        self._wake_due = False  # a wake-up of the writer is on the event loop's list
        self._send_lock = threading.Lock()  # one sender at a time on the writer process's pipe
        self._thread = threading.Thread(target=self._run, name="webinar-flows-writer", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._busy_since: float | None = None  # monotonic start of the transaction under way
        self.last_error: tuple[str, float] | None = None  # why the last transaction failed, and when
        self._engine: Any = None
        self._inflight: deque[_Sent] = deque()  # sent to the writer process, not yet answered
        self._receiving = False  # a receiver thread reads the writer process's answers
        self._receiver: threading.Thread | None = None
        self._answered_at = 0.0  # monotonic time the writer process's last answer came
        self._committing: list[_Job] = []  # the thread writer's transaction under way

    @property
    def depth(self) -> int:
        """Events waiting for a transaction. With a writer process, those sent to it wait there
        too, all but the oldest message's, which its transaction under way holds."""
        try:
            return self._depth - self._inflight[0].events
        except IndexError:
            return self._depth

    @property
    def busy_since(self) -> float | None:
        """When the transaction under way began. With a writer process: when its oldest message
        was sent or, if that waited in the pipe, when the last answer came (the process starts
        its next transaction as it sends one), whichever is later."""
        try:
            return max(self._inflight[0].at, self._answered_at)
        except IndexError:
            return self._busy_since

    @property
    def alive(self) -> bool:
        """The thread runs, is not stopping, and its engine's process (when it has one) too."""
        engine = self._engine
        return (self._thread.is_alive() and not self._closing
                and not (isinstance(engine, EngineProcess) and not (engine.alive and self._receiving)))

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
        one thread-safe hand-off (a wake-up of the loop) per request; and the writer is woken
        once for the requests of one turn of the loop, not once each (a thread woken on another
        core per request cost the loop about a tenth of its time)."""
        loop = asyncio.get_running_loop()
        job = self._queue(_Job(items, future=loop.create_future(), loop=loop), wake=False)
        if not self._wake_due:
            self._wake_due = True
            loop.call_soon(self._wake)
        return job.future  # type: ignore[return-value]

    def _wake(self) -> None:
        """At the end of a turn of the loop: send what it queued to the writer process from
        here when the pipe takes it at once (the writer thread, woken, would first wait for the
        GIL this thread holds: about a millisecond under load, with the process idle); wake
        the writer thread for whatever is left."""
        self._wake_due = False
        engine = self._engine
        if isinstance(engine, EngineProcess) and self._receiving and self._send_lock.acquire(blocking=False):
            try:
                while self._send_now(engine):
                    pass
            finally:
                self._send_lock.release()
        with self._lock:
            if self._jobs or self._closing:
                self._lock.notify()

    def _send_now(self, engine: EngineProcess) -> bool:
        """Send the queue's head (events only) without waiting; False when there is nothing
        to send so, or the pipe would not take it (the head is then back where it was)."""
        with self._lock:
            if not self._jobs or self._jobs[0].call is not None:
                return False
            jobs, count = self._pop_head()
        try:
            kind, data = encode([item for job in jobs for item in job.items], self.max_batch)
        except Exception:  # noqa: BLE001 - the writer thread meets it again and answers it
            data = None
        with self._lock:
            sent = data is not None and self._receiving
            if sent:
                self._inflight.append(_Sent(jobs, count, kind, time.monotonic()))
                try:
                    sent = engine.try_send(data)
                except OSError:
                    return False  # the receiver meets the end of the pipe and fails it with the rest
                if not sent:
                    self._inflight.pop()
            if not sent:
                self._jobs.extendleft(reversed(jobs))
            return sent

    def _queue(self, job: _Job, wake: bool = True) -> _Job:
        items = job.items
        with self._lock:
            if self._closing or not self._thread.is_alive():
                raise WriterClosed()
            if self.depth + len(items) > self.capacity:
                raise QueueFull()
            self._jobs.append(job)
            self._depth += len(items)
            if wake:
                self._lock.notify()
        return job

    def fail_waiting(self, exception: Callable[[], BaseException]) -> int:
        """Answer every request waiting for a commit (queued, sent to the writer process, or in
        the transaction under way) with `exception()` now, and drop the queued ones: for a
        writer stuck on a lock held elsewhere, so that senders hear 503 instead of waiting
        for it. Events already handed to the writer may still commit later; nothing was
        acknowledged, and a resend is deduped. Calls of the console (`submit_call`) wait on."""
        with self._lock:
            waiting = [job for job in self._jobs if job.loop is not None and job.call is None]
            if waiting:
                self._jobs = deque(job for job in self._jobs if job.loop is None or job.call is not None)
                self._depth -= sum(len(job.items) for job in waiting)
            waiting += [job for sent in self._inflight for job in sent.jobs if job.loop is not None]
            waiting += [job for job in self._committing if job.loop is not None]
        waiting = [job for job in waiting if not job.future.done()]
        _settle_all([(job, None, exception()) for job in waiting])
        return len(waiting)

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
        if isinstance(engine, EngineProcess):
            self._listen(engine)
        self._started.set()
        if isinstance(engine, EngineProcess):
            self._run_piped(engine)
            return
        try:
            while (jobs := self._take()) is not None:
                if jobs:
                    self._commit(engine, jobs)
        finally:
            engine.close()

    # -- with a writer process: this thread sends, a receiver thread settles -------------------

    def _run_piped(self, engine: EngineProcess) -> None:
        """Send whatever is queued to the writer process at once, without waiting for the
        transaction under way to end: the process takes what waits in its pipe when it starts
        the next one, so it never idles while the server hands it over (a thread hand-off that
        waits for the GIL, a pickle, a system call). A receiver thread settles the answers."""
        try:
            while (jobs := self._take(keep_depth=True)) is not None:
                if jobs:
                    self._send(engine, jobs)
                elif not self._receiving or not engine.alive:
                    self._reconnect(engine)
            with self._lock:  # stopping: everything is sent; wait for its answers
                while self._inflight and self._receiving:
                    self._lock.wait(IDLE_SECONDS)
        finally:
            try:
                engine.send(CLOSE)  # the process ends; its receiver meets the end of the pipe
            except (OSError, WriterProcessDied):
                pass
            if self._receiver is not None:
                self._receiver.join(10.0)
            engine.close()

    def _send(self, engine: EngineProcess, jobs: list[_Job]) -> None:
        count = sum(len(job.items) for job in jobs)
        try:
            if jobs[0].call is not None:
                kind, data = "run", encode_job(jobs[0].call)
            else:
                kind, data = encode([item for job in jobs for item in job.items], self.max_batch)
        except Exception as exc:  # noqa: BLE001 - a job that cannot travel (a closure): its caller answers it
            self._forget(count)
            _settle_all([(job, None, exc) for job in jobs])
            return
        if not self._receiving or not engine.alive:
            self._reconnect(engine)
        self._send_lock.acquire()  # the loop's thread may be sending; messages go whole, in order
        with self._lock:
            if self._receiving:
                self._inflight.append(_Sent(jobs, count, kind, time.monotonic()))
                failure = None
            else:
                self._depth -= count
                failure = self.last_error
        if failure is not None:
            self._send_lock.release()
            _settle_all([(job, None, WriterProcessDied(failure[0])) for job in jobs])
            return
        try:
            engine.send(data)
        except OSError:
            pass  # the receiver meets the end of the pipe and fails what is in flight, this included
        finally:
            self._send_lock.release()

    def _reconnect(self, engine: EngineProcess) -> None:
        """A writer process that died is replaced: at once when idle (/readyz says "not ready"
        meanwhile, and a server that gets no traffic would never send a request), else before
        the next message goes."""
        if self._receiver is not None:
            self._receiver.join(10.0)  # it has met the end of the pipe, or is about to
        try:
            engine.restart()
        except Exception as exc:  # noqa: BLE001 - /readyz reports it; the next turn tries again
            self.last_error = (f"the writer process cannot start: {type(exc).__name__}: {exc}", time.monotonic())
            return
        self._listen(engine)

    def _listen(self, engine: EngineProcess) -> None:
        self._receiving = True
        self._receiver = threading.Thread(target=self._receive, args=(engine,), name="webinar-flows-writer-answers",
                                          daemon=True)
        self._receiver.start()

    def _receive(self, engine: EngineProcess) -> None:
        """Settle each answer's messages, in order, until the pipe ends; then fail what is left
        (the process died: outcome unknown, so 503, and resends are deduped)."""
        while True:
            try:
                status, value, n = engine.receive()
            except (EOFError, OSError):
                with self._lock:
                    self._receiving = False
                    lost = list(self._inflight)
                    self._inflight.clear()
                    self._depth -= sum(sent.events for sent in lost)
                    self._lock.notify_all()
                if lost:
                    died = WriterProcessDied("the writer process died during a transaction; "
                                             "what was sent again is deduped")
                    self.last_error = (f"the last transaction failed: {died}", time.monotonic())
                    _settle_all([(job, None, died) for sent in lost for job in sent.jobs])
                return
            self._answered_at = time.monotonic()
            with self._lock:
                answered_now = [self._inflight.popleft() for _ in range(n)]
                self._depth -= sum(sent.events for sent in answered_now)
                if self._closing:  # stop() waits for the last answers; otherwise nobody does
                    self._lock.notify_all()
            self._settle_answer(status, value, answered_now)

    def _settle_answer(self, status: str, value: Any, sents: list[_Sent]) -> None:
        first = sents[0].jobs[0]
        if first.call is not None:  # a job runs alone; what it raises is its caller's
            _settle_all([(first, None, value) if status == "error" else (first, value, None)])
            return
        if status == "error":
            self.last_error = (f"the last transaction failed: {type(value).__name__}: {value}", time.monotonic())
            _settle_all([(job, None, value) for sent in sents for job in sent.jobs])
            return
        self.last_error = None
        if self._on_commit is not None:
            self._on_commit(sum(sent.events for sent in sents))
        settled: list[tuple[_Job, Results | None, BaseException | None]] = []
        for sent, results in zip(sents, value if sents[0].kind == "received" else [value], strict=True):
            start = 0
            for job in sent.jobs:
                part = results[start:start + len(job.items)]
                settled.append((job, answered(part) if sent.kind == "received" else part, None))
                start += len(job.items)
        _settle_all(settled)

    def _forget(self, count: int) -> None:
        with self._lock:
            self._depth -= count

    def _take(self, keep_depth: bool = False) -> list[_Job] | None:
        """Whole requests up to `max_batch` events; [] after an idle second; None when stopping.
        Their events stay counted in `depth` with `keep_depth` (until their answer comes)."""
        with self._lock:
            if not self._jobs and not self._closing:
                self._lock.wait(IDLE_SECONDS)
            if not self._jobs:
                return None if self._closing else []
            jobs, count = self._pop_head()
            if not keep_depth:
                self._depth -= count
            return jobs

    def _pop_head(self) -> tuple[list[_Job], int]:
        """Under the lock: a job alone, or whole requests up to `max_batch` events, and their count."""
        jobs = [self._jobs.popleft()]
        count = len(jobs[0].items)
        while (jobs[0].call is None and self._jobs and self._jobs[0].call is None
               and count + len(self._jobs[0].items) <= self.max_batch):
            count += len(self._jobs[0].items)
            jobs.append(self._jobs.popleft())
        return jobs, count

    def _commit(self, engine: Engine, jobs: list[_Job]) -> None:
        if jobs[0].call is not None:
            self._busy_since = time.monotonic()
            try:
                _settle(jobs[0].future, result=jobs[0].call(engine))
            except Exception as exc:  # noqa: BLE001 - the caller answers it
                _settle(jobs[0].future, exception=exc)
            finally:
                self._busy_since = None
            return
        items = [item for job in jobs for item in job.items]
        self._busy_since, self._committing = time.monotonic(), jobs
        try:
            results = engine.process_many(items, batch_size=max(1, len(items)))
        except Exception as exc:  # noqa: BLE001 - each waiting request answers it (503 for a StoreError)
            self.last_error = (f"the last transaction failed: {type(exc).__name__}: {exc}", time.monotonic())
            _settle_all([(job, None, exc) for job in jobs])
            return
        finally:
            self._busy_since, self._committing = None, []
        self.last_error = None
        if self._on_commit is not None:
            self._on_commit(len(items))
        settled, start = [], 0
        for job in jobs:
            settled.append((job, results[start:start + len(job.items)], None))
            start += len(job.items)
        _settle_all(settled)


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
