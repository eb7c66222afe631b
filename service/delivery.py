"""The deliverer: POSTs each outbox item to the consumers with a `url` in the keys file.

Each item goes as a structured CloudEvent (`application/cloudevents+json`), signed with
Standard Webhooks (`webhook-id` = the item's id, so a receiver dedupes on it). The engine keeps
the books (engine/runtime/delivery.py: the lease, what is due, what an answer means); this
module only speaks HTTP. It runs in `serve`'s background thread and in `webinar-flows deliver`;
any number of deliverers may share a database: a consumer's items are sent by the holder of its
lease, which a deliverer renews every round and another takes over once it has expired.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine import RETRY_SCHEDULE, DeliveryAnswer, Engine, StoreError

from .keys import PushTarget
from .webhooks import STRUCTURED, post, signed_headers

USER_AGENT = "webinar-flows-deliver/1"
LEASE_SECONDS = 60.0  # longer than a round of sends can take (TIMEOUT_SECONDS each, in parallel)
TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.25  # how often an idle deliverer looks for new items
WORKERS = 8  # concurrent requests: items of different route keys
METRICS_EVERY = 5.0  # seconds between two readings of the backlog for the metrics


def owner_id() -> str:
    """This deliverer's name in a lease: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_here(owner: str) -> bool:
    """Whether a lease holder is a deliverer of this host whose process is gone (or a zombie):
    its lease is then taken over at once instead of after it expires."""
    rest = owner.split(":")  # host:pid:random (owner_id)
    if len(rest) < 3 or ":".join(rest[:-2]) != socket.gethostname() or not rest[-2].isdigit():
        return False
    pid = int(rest[-2])
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            if stat.read().rpartition(")")[2].split()[:1] == ["Z"]:
                return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _answer_text(status: int | None, error: str, body: bytes) -> str:
    if status is None:
        return error or "no answer"
    snippet = body[:200].decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {snippet}" if snippet else "")


class Deliverer:
    """Delivers every push consumer's due items, round after round, until stopped."""

    def __init__(self, open_engine: Callable[[], Engine], targets: dict[str, PushTarget], *,
                 schedule: Sequence[float] = RETRY_SCHEDULE, timeout: float = TIMEOUT_SECONDS,
                 lease_seconds: float = LEASE_SECONDS, workers: int = WORKERS, metrics: Any = None,
                 log: Callable[[str], None] | None = None):
        self._open_engine = open_engine
        self.targets = targets
        self.schedule = tuple(schedule)
        self.timeout = timeout
        self.lease_seconds = max(lease_seconds, 2 * timeout)
        self.metrics = metrics
        self.owner = owner_id()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webinar-flows-deliver")
        self._engine: Engine | None = None
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self._measured = 0.0
        self._dirty = False  # sent since the metrics last read the backlog

    def _send(self, target: PushTarget, due: Any, gone: threading.Event) -> Any:
        """POST one item; None when a 410 earlier in this round means the consumer is gone."""
        if gone.is_set():
            return None
        body = due.body.encode("utf-8")
        headers = signed_headers(target.secrets, body, STRUCTURED, msg_id=due.id)
        got = post(target.url, body, headers, self.timeout, USER_AGENT)
        if got.status == 410:
            gone.set()
        return DeliveryAnswer(got.status, _answer_text(got.status, got.error, got.body), got.retry_after)

    def round(self) -> int:
        """One pass over the push consumers: send what is due now; how many items were sent."""
        if self._engine is None:
            self._engine = self._open_engine()
        engine, sent = self._engine, 0
        for name, target in self.targets.items():
            due = engine.delivery_round(name, self.owner, time.time(), lease_seconds=self.lease_seconds,
                                        dead=dead_here)
            if due:
                gone = threading.Event()
                # the first alone: a consumer that is gone (410) then gets one request, not one per worker
                answers = [self._send(target, due[0], gone)]
                answers += list(self._pool.map(lambda item, t=target, g=gone: self._send(t, item, g), due[1:]))
                sent_now = [(d, a) for d, a in zip(due, answers, strict=True) if a is not None]
                outcomes = engine.delivery_answers(name, self.owner, sent_now, time.time(),
                                                   lease_seconds=self.lease_seconds, schedule=self.schedule)
                sent += len(due)
                self._dirty = True
                if self.metrics is not None:
                    self.metrics.delivery(name, outcomes)
        if self.metrics is not None and (time.monotonic() - self._measured > METRICS_EVERY or (sent == 0 and self._dirty)):
            self._dirty = sent > 0
            self._measured = time.monotonic()
            for name in self.targets:
                state = engine.delivery_state(name)
                self.metrics.delivery_state(name, state["pending"] + state["not_taken"], state["failed"])
        return sent

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> None:
        """Deliver until `stop` is set; with `once`, until a round finds nothing to send now."""
        stop = stop or self.stop_event
        failing = False
        try:
            while not stop.is_set():
                try:
                    sent = self.round()
                    failing = False
                except Exception as exc:  # a busy or unreachable database: try again shortly
                    if once:
                        raise
                    if not failing:
                        what = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
                        self._log(f"deliver: {what}; trying again")
                    failing, sent = True, 0
                    self._close_engine()
                    stop.wait(1.0)
                if sent == 0:
                    if once:
                        return
                    stop.wait(POLL_SECONDS)
        finally:
            self._release()
            self._close_engine()

    def _release(self) -> None:
        if self._engine is None:
            return
        for name in self.targets:
            try:
                self._engine.delivery_release(name, self.owner, time.time())
            except Exception:  # noqa: BLE001, S110  (the lease expires by itself)
                pass

    def _close_engine(self) -> None:
        if self._engine is not None:
            try:
                self._engine.close()
            finally:
                self._engine = None

    # -- as serve's background thread --

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="webinar-flows-deliverer", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
