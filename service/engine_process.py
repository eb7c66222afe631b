"""The writer's engine in a process of its own, so the HTTP work and the engine use two cores.

One Python process runs one thread at a time (the GIL). With the writer as a thread beside
the event loop, every request's HTTP work (parsing, signature, the answer) and every event's
engine work (validation, rules, SQL) took turns on one core: the service reached about a
third of what the engine alone does on the same events, whatever the machine had to spare
(docs/service-performance.md). Here a child process owns the only write connection; a thread
of the server sends it each request's events as they are queued, and the child, when it starts
a transaction, takes every message already waiting in its pipe (service/writer.py settles the
answers). The server's threads only wait on the pipe, which lets go of the GIL, while the loop
answers other requests.

Everything else stays in the server process: the queue and its bound, the metrics, the rate
buckets, the readers. The child is not a second writer: it is the writer's hands.

The child is started with the interpreter that runs the server (`python -m
service.engine_process`), not with multiprocessing, which would re-import the server's main
module in it. It dies with the server: it exits when its pipe closes, and on Linux the kernel
kills it the moment the thread that started it goes away (a SIGKILL of the server included),
so a restarted server never meets an orphan holding the write lock. SIGINT and SIGTERM are
the server's to handle: the child ignores them and finishes what it was given when told to.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from engine import Config, Engine, Received, StoreError

from .jsonbytes import dumps as json_bytes

START_SECONDS = 60.0  # opening the engine includes migrating an old database
DIRECT_BYTES = 32 * 1024  # a Unix socket takes a message this small whole or not at all
CLOSE = pickle.dumps(("close", None, 0))  # finish what was sent before, then exit


class WriterProcessDied(StoreError):
    """The writer process is gone (killed, out of memory); the transaction's outcome is unknown:
    its requests get 503 and their senders' resends are deduped."""


class Answered:
    """One event's result as the writer process sends it back: the fields the server reads for
    its metrics and status (type, status, reason) and the result's JSON for the answer, made
    there. Pickling result dicts and then printing them again in the event loop cost about
    20 µs per event between the two processes; this costs a few. Other fields are read from the
    JSON when asked for (a rejection's errors)."""

    __slots__ = ("body", "reason", "status", "type")

    def __init__(self, type: str | None, status: str, reason: str | None, body: bytes):
        self.type, self.status, self.reason, self.body = type, status, reason, body

    def __getitem__(self, key: str) -> Any:
        if key == "status":
            return self.status
        if key == "reason":
            return self.reason
        if key == "type":
            return self.type
        return self.full()[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def full(self) -> dict[str, Any]:
        """The result as `process_many` gives it, but `line` (the answer leaves it out)."""
        return orjson.loads(self.body)


class EngineProcess:
    """Stands in for the writer's Engine: `process_many` and `run` happen in the child."""

    def __init__(self, config: Config, db: Path | str, *, max_event_bytes: int, synchronous: str):
        self._args = (config, db, max_event_bytes, synchronous)
        self._child: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "service.engine_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=_child_environment())
        finally:
            theirs.close()
        self._conn = Connection(os.dup(ours.fileno()))
        self._sock = ours  # the same pipe, for sends that must not block (try_send)
        try:
            self._conn.send_bytes(pickle.dumps(self._args, protocol=pickle.HIGHEST_PROTOCOL))
            if not self._conn.poll(START_SECONDS):
                raise StoreError(f"the writer process did not open the database within {START_SECONDS:g} s")
            self._answer()  # re-raises what opening the engine raised there (a bad database, a lock)
        except (EOFError, OSError):
            self._lost()
            raise WriterProcessDied("the writer process exited before it opened the database") from None
        except BaseException:
            self._lost()
            raise

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def revive(self) -> None:
        """Start a new child if the last one died (killed, out of memory) while idle."""
        if not self.alive:
            self._lost()
            self._start()

    def process_many(self, items: list[Any], batch_size: int) -> list[dict[str, Any]] | list[Answered]:
        """The engine's `process_many` on `items`, in the child, in one transaction of up to
        `batch_size`. Items that are all `Received` (what the service sends) travel as plain
        tuples and come back as `Answered`; anything else travels and comes back as it is."""
        kind, payload = _message(items)
        answer = self._ask((kind, payload, batch_size))
        return [Answered(*a) for a in answer[0]] if kind == "received" else answer

    def run(self, job: Callable[[Engine], Any]) -> Any:
        """`job(engine)` in the child; `job` travels by pickle (a module-level function or a partial of one)."""
        return self._ask(("run", job, 0))

    # -- pipelined use (service/writer.py): one thread sends, another receives ------------------

    def send(self, data: bytes) -> None:
        """Send one message made by `encode`, without waiting for its answer. The child answers
        messages in order; consecutive messages of received events that it finds waiting when a
        transaction starts go into that one transaction, and one answer covers them all."""
        if self._conn is None:
            raise WriterProcessDied("the writer process is not running")
        self._conn.send_bytes(data)

    def try_send(self, data: bytes) -> bool:
        """`send` if the pipe takes the whole message at once, else nothing (False): for the event
        loop's thread, which must not wait. A small message goes whole or not at all."""
        if self._sock is None or len(data) > DIRECT_BYTES:
            return False
        try:
            self._sock.send(struct.pack("!i", len(data)) + data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def receive(self) -> tuple[str, Any, int]:
        """The next answer: ("ok", value, n) or ("error", exception, n), for the next n messages
        sent. For received events `value` holds one list per message of `Answered`'s fields."""
        if self._conn is None:
            raise EOFError
        status, value, n = pickle.loads(self._conn.recv_bytes())
        return status, value, n

    def restart(self) -> None:
        """A new child in place of this one, whatever became of it (the last one died)."""
        self._lost()
        self._start()

    def close(self) -> None:
        """Let the child finish and close its engine; a child that does not is killed."""
        if self._conn is not None:
            try:
                self._conn.send_bytes(CLOSE)
                self._conn.poll(10.0)
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        self._close_sock()
        if self._child is not None:
            try:
                self._child.wait(10.0)
            except subprocess.TimeoutExpired:
                self._kill()
            self._child = None

    def _ask(self, message: tuple[str, Any, int]) -> Any:
        if self._conn is None:
            self._start()  # the last one died: the next transaction gets a new one
        assert self._conn is not None
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            return self._answer()
        except (EOFError, OSError):
            self._lost()
            raise WriterProcessDied("the writer process died during a transaction; "
                                    "what was sent again is deduped") from None

    def _answer(self) -> Any:
        assert self._conn is not None
        status, value, _ = pickle.loads(self._conn.recv_bytes())
        if status == "error":
            raise value
        return value

    def _lost(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._close_sock()
        self._kill()

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _kill(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        self._child = None


def encode(items: list[Any], max_batch: int) -> tuple[str, bytes]:
    """A message of `items` for `EngineProcess.send`, to be processed in a transaction of at most
    `max_batch` events together with the messages queued behind it; and its kind."""
    kind, payload = _message(items)
    return kind, pickle.dumps((kind, payload, max_batch), protocol=pickle.HIGHEST_PROTOCOL)


def encode_job(job: Callable[[Engine], Any]) -> bytes:
    """A message that runs `job(engine)` in the child, alone; pickling errors are the caller's."""
    return pickle.dumps(("run", job, 0), protocol=pickle.HIGHEST_PROTOCOL)


def answered(value: list[tuple[Any, ...]]) -> list[Answered]:
    return [Answered(*fields) for fields in value]


def _message(items: list[Any]) -> tuple[str, Any]:
    """Received events as plain tuples (cheaper to pickle than the objects); anything else as it is."""
    if all(type(item) is Received for item in items):
        return "received", [(i.event, i.emitter, i.refusal, i.raw) for i in items]
    return "many", items


def _child_environment() -> dict[str, str]:
    """The server's environment, with the directories it imports from first on the child's path
    (a server started from a checkout imports `engine` and `service` from there)."""
    env = dict(os.environ)
    paths = [str(Path(p or ".").resolve()) for p in sys.path if Path(p or ".").is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]))
    return env


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives the trip to the server; otherwise one that does, of the nearest kind."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception class whose arguments do not pickle
        kind = StoreError if isinstance(exc, StoreError) else RuntimeError
        return kind(f"{type(exc).__name__}: {exc}")


def _answers(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each result as `Answered`'s fields: what the server reads, and its JSON without `line`."""
    out = []
    for result in results:
        result.pop("line", None)
        out.append((result.get("type"), result["status"], result.get("reason"), json_bytes(result)))
    return out


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it ends."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the child
        pass


def main(fd: int) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    if os.getppid() == 1:  # the server died before the death signal was armed
        return 1
    try:
        config, db, max_event_bytes, synchronous = pickle.loads(conn.recv_bytes())
        engine = Engine.open(config=config, db=db, max_event_bytes=max_event_bytes, synchronous=synchronous)
    except EOFError:
        return 1
    except BaseException as exc:  # noqa: BLE001 - the server re-raises it
        conn.send_bytes(pickle.dumps(("error", _portable(exc), 1)))
        return 1
    conn.send_bytes(pickle.dumps(("ok", None, 1)))
    try:
        return _serve(conn, engine)
    finally:
        engine.close()
        conn.close()


def _serve(conn: Connection, engine: Engine) -> int:
    """Answer messages in order until the pipe closes. A transaction of received events takes,
    besides its own message, every such message already waiting (up to its size in events):
    what queued while the last one committed goes into the next one, as the writer's group
    commit wants, without waiting for the server to send it."""
    dumps, loads, highest = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
    held: tuple[str, Any, int] | None = None
    while True:
        if held is not None:
            message, held = held, None
        else:
            try:
                message = loads(conn.recv_bytes())
            except EOFError:
                return 0
        kind, payload, size = message
        if kind == "close":
            return 0
        parts = [payload]
        if kind == "received":
            count = len(payload)
            while count < size and conn.poll(0):
                try:
                    following = loads(conn.recv_bytes())
                except EOFError:
                    held = ("close", None, 0)
                    break
                if following[0] == "received" and count + len(following[1]) <= size:
                    parts.append(following[1])
                    count += len(following[1])
                else:
                    held = following
                    break
        try:
            if kind == "received":
                answers = _answers(engine.process_many([Received(*f) for part in parts for f in part],
                                                       batch_size=max(1, count)))
                value, start = [], 0
                for part in parts:
                    value.append(answers[start:start + len(part)])
                    start += len(part)
                answer: tuple[str, Any, int] = ("ok", value, len(parts))
            elif kind == "many":
                answer = ("ok", engine.process_many(payload, batch_size=size), 1)
            else:
                answer = ("ok", payload(engine), 1)
        except Exception as exc:  # noqa: BLE001 - the server answers it (a StoreError is a 503)
            answer = ("error", _portable(exc), len(parts))
        try:
            try:
                data = dumps(answer, protocol=highest)
            except Exception as exc:  # noqa: BLE001 - a result or exception that does not pickle
                data = dumps(("error", RuntimeError(f"an answer that cannot be sent back: {exc}"), len(parts)))
            conn.send_bytes(data)
        except OSError:  # the server is gone
            return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
