"""The parse workers: each batch's parts prepared beside the load (prepare.prepare does the work).

etl.py asks a Preparer for each batch's parts, in order. Song batches are prepared in a thread of
etl.py's process, log batches in worker processes (or in etl.py's own, with --jobs 0); each keeps
at most one part waiting, so that memory stays bounded whatever the input's size, and the
database loads one part while the next is prepared. A worker that fails sends its failure in
place of a part; one that dies (killed, out of memory) is named with how it ended.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import gc
import importlib.abc
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Generator, Iterator
from multiprocessing import resource_tracker

import psycopg2

import cli
from contract import Batch, HandOver, Limits, Part, Unusable


@functools.cache
def prepare_module():
    """prepare.py, imported when there is something to prepare: it brings pyarrow and the parsers,
    a large share of a run that finds nothing new (bench/README.md has the measurement). What
    the imports made, and the run's plan, live as long as the process: frozen (gc.freeze), the
    garbage collector no longer walks them each time the many objects of a batch of small files
    set it off (etl.py's CPU for 20,000 song files: 1.34-1.42 s, against 1.45-1.58 s unfrozen,
    four rounds in turn; about 7% of the song stage)."""
    import prepare

    gc.freeze()
    return prepare


class WithoutPandas(importlib.abc.MetaPathFinder):
    """pandas as if it were not installed. pyarrow imports pandas the first time it builds an
    array from a Python list, for 0.2 s of a process's CPU; etl.py and its parse workers never
    use pandas. Going without it, the small day (100k events) took 2.49 -> 2.28 s (five rounds
    in turn, bench/README.md); pyarrow reads an ImportError as "no pandas"."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def without_pandas() -> None:
    """In etl.py run as a command, and in its parse workers: not where it is imported (a test,
    a notebook), whose pandas stays."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, WithoutPandas())


def default_jobs(batches: list[Batch], limits: Limits) -> int:
    """A worker process costs about a second to start: it pays from a few parts on (song parts
    count too: it starts while they are prepared here)."""
    parts = sum(max(1, sum(t.size for t in b.tasks) // limits.log_batch_bytes) for b in batches)
    return 1 if parts >= 3 and (os.cpu_count() or 1) > 1 else 0


class Preparer:
    """Every batch's parts, in order. Log batches are prepared by worker processes (jobs > 0)
    while the database loads the current batch, or else here; song batches in a thread of this
    process, while the database loads the part before: a batch of small song files takes less
    time than a worker takes to start, and the workers start on the log batches meanwhile. The
    thread and each worker keep at most one part waiting, so memory stays bounded whatever the
    size of the input. Log parts are shaped once what the run hands over after its song files
    are loaded has come (hand_over): in a bulk load, what it takes to write the plays straight
    into songplays."""

    def __init__(self, batches: list[Batch], limits: Limits, jobs: int):
        self.batches, self.limits = batches, limits
        self.written: Callable = lambda: None  # prepare.DirectSource, once handed over
        self.songs = [n for n, batch in enumerate(batches) if batch.kind == "song"]
        self.song_outbox: queue.Queue = queue.Queue(maxsize=1)
        self.song_thread: threading.Thread | None = None  # started when the first is asked for
        # The log batches' numbers: the k-th of them goes to worker k % jobs, and there are no
        # more workers than log batches.
        self.logs = [n for n, batch in enumerate(batches) if batch.kind == "log"]
        self.workers, self.inboxes, self.handovers = [], [], []
        self.sending: list[concurrent.futures.Future] = []  # the hand-over, on its way to each
        self.closed = False  # the workers killed: nothing more comes from them
        jobs = min(jobs, len(self.logs))
        if jobs <= 0:
            return
        try:
            self._start_workers(jobs)
        except OSError as exc:  # no process or pipe to be had: the system's limits reached
            self.close()
            self.workers, self.inboxes, self.handovers, self.closed = [], [], [], False
            print(
                f"note: the parse workers could not start ({exc.strerror or exc}): the logs are "
                "parsed in this process, as with --jobs 0",
                file=sys.stderr,
            )
        except BaseException:  # a stop, raised once they are started: nobody else can close them
            self.close()
            raise

    def _start_workers(self, jobs: int) -> None:
        """Each worker gets two pipes: the hand-over comes down one, its parts up the other.
        The worker's ends are closed here once it started (or could not): a worker that dies,
        even halfway through writing a part, ends its pipes, and nothing waits for it forever."""
        context = multiprocessing.get_context("spawn")
        logs = [self.batches[n] for n in self.logs]
        theirs = []
        # The workers start with Ctrl-C and SIGTERM blocked, and keep them so: they are
        # etl.py's to report, in one line, and they die with it. Here they wait until the
        # workers are started. Every spawned process needs multiprocessing's resource tracker,
        # whose start unblocks them again: it is started first.
        # A stop that comes meanwhile is raised once they are started, for __init__ to kill them.
        # Whatever way etl.py ends, its exit kills the workers left first (the last resort, for a
        # stop Python raises between two steps of the code that closes them): multiprocessing's
        # own exit asks them to end with SIGTERM, which they block, and waits for them for good.
        resource_tracker.ensure_running()
        atexit.register(self._kill_workers)
        with cli.stops_held():
            try:
                with cli.stops_blocked():
                    for k in range(jobs):
                        inbox, outbox = context.Pipe(duplex=False)
                        self.inboxes.append(inbox)
                        theirs.append(outbox)
                        reader, writer = context.Pipe(duplex=False)
                        self.handovers.append(writer)
                        theirs.append(reader)
                        args = (logs[k::jobs], self.limits, outbox, reader, os.getpid())
                        worker = context.Process(
                            target=_worker, name="parse worker", daemon=True, args=args
                        )
                        self.workers.append(worker)
                        worker.start()
            finally:
                for end in theirs:
                    end.close()

    def hand_over(self, handed: HandOver) -> None:
        """In a bulk load, the song keys as the database has them once the run's song files are
        loaded, and the ids taken for the new log files; None in any other load. With no log
        batch there is nobody to hand it to (and prepare.py is not imported)."""
        if not self.logs:
            return
        self.written = prepare_module().direct_once(lambda: handed)
        # Sent from threads of this run's own (each worker has a log batch to read it in, and
        # reads it once a part needs it): a pipe and a thread that close() ends, where a
        # multiprocessing queue would leave its feeder thread running while Python exits, racing
        # the cleanup of the queue's named semaphores (a "leaked semaphore" warning, now and then).
        self.sending = [in_a_thread(writer.send, handed) for writer in self.handovers]

    def parts(self, number: int) -> Generator[Part, None, None]:
        """Batch number's parts, up to its last (and nothing of the next batch, even when closed
        before its last)."""
        if self.batches[number].kind == "song":
            take = self.song_part
        elif self.workers:
            k = self.logs.index(number) % len(self.workers)
            take = functools.partial(_receive_from, self.inboxes[k], self.workers[k])
        else:
            yield from self.here(self.batches[number])
            return
        last = False
        try:
            while not last:
                part = take()
                last = part.last
                yield part
        except GeneratorExit:  # closed before the batch's last part: the next parts taken are
            while not last and not self.closed:  # the rest, unless the preparer is closed
                last = take().last
            raise

    def song_part(self) -> Part:
        """The next song part, from the thread that prepares the song batches in order."""
        if self.song_thread is None:
            parts = (part for n in self.songs for part in self.here(self.batches[n]))
            put = functools.partial(_put, self.song_outbox, lambda: self.closed)
            self.song_thread = threading.Thread(
                target=_send_parts, args=(parts, put), name="song preparer", daemon=True
            )
            self.song_thread.start()
        return _receive(self.song_outbox, self.song_thread)

    def here(self, batch: Batch, unusable: Unusable | None = None) -> Generator[Part, None, None]:
        """The parts of a batch prepared in this process (written gives None until handed
        over, and in a load that is not a bulk load); the files unusable names are emptied."""
        return prepare_module().prepare(batch, self.limits, self.written, unusable)

    def _kill_workers(self) -> None:
        """Every worker started killed, and waited for."""
        for worker in self.workers:
            if worker.pid is not None:  # started
                worker.kill()
                worker.join()

    def close(self) -> None:
        """The workers killed, whatever stop comes meanwhile (a second Ctrl-C): a worker left
        would hold etl.py at its exit for good, multiprocessing asking it to end with SIGTERM,
        which it blocks."""
        self.closed = True
        with cli.stops_held():
            self._kill_workers()
            atexit.unregister(self._kill_workers)
            for sending in self.sending:  # sent, or failed on the pipe of a worker now gone
                sending.exception()
            for end in [*self.handovers, *self.inboxes]:
                end.close()


def in_a_thread(work: Callable, *args) -> concurrent.futures.Future:
    """work(*args) run in a thread of its own, its result (or exception) in the future; a daemon
    thread, so that etl.py ends without waiting for work it no longer needs."""
    future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(work(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _worker(batches, limits: Limits, outbox, handover, parent: int) -> None:
    """A parse worker: its batches (the n-th log batch is worker n % jobs's) prepared in order."""
    _die_with(parent)
    without_pandas()

    def parts() -> Generator[Part, None, None]:
        written = prepare_module().direct_once(handover.recv)
        for batch in batches:
            yield from prepare_module().prepare(batch, limits, written)

    with _sending(outbox) as send:
        _send_parts(parts(), send)
    # Its work all sent, it ends here rather than through Python's exit, where tearing down
    # Arrow's thread pools now and then aborts with "terminate called without an active
    # exception" on the run's standard error (seen once in 1,400 runs of two workers).
    os._exit(0)


def _send_parts(parts: Iterator[Part], put: Callable[[object], bool]) -> None:
    """The parts put in turn, until put says none is taken any more (False); a failure to
    prepare them is put in their place, for _part_of to raise."""
    try:
        for part in parts:
            if not put(part):
                return
    except cli.UserError as exc:  # an object store that stops answering, say
        failed = WorkerFailed(traceback.format_exc(), exc)
    except BaseException as exc:  # put once what the parts held is let go with exc
        short = out_of_memory(exc, "reading the files") if short_of_memory(exc) else None
        failed = WorkerFailed(traceback.format_exc(), short)
    else:
        return
    put(failed)


@contextlib.contextmanager
def _sending(outbox) -> Generator[Callable[[object], bool], None, None]:
    """A worker's send(item): the item written into the pipe by a thread, so that the worker
    prepares the next part while etl.py loads the one before and has yet to read this one (at
    most one part on its way). Its end waits until the last item is written."""
    free, items = threading.Semaphore(1), queue.SimpleQueue()

    def write_each() -> None:
        with contextlib.suppress(OSError):  # etl.py gone (killed): the worker dies with it
            while True:
                outbox.send(items.get())
                free.release()

    def send(item) -> bool:
        free.acquire()
        items.put(item)
        return True

    threading.Thread(target=write_each, daemon=True).start()
    yield send
    free.acquire()


def _put(outbox, closed: Callable[[], bool], item) -> bool:
    """item put in outbox once the item before is taken; False if closed() comes first."""
    while not closed():
        try:
            outbox.put(item, timeout=1)
            return True
        except queue.Full:
            continue
    return False


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    traceback: str
    error: cli.UserError | None = None  # raised again as it is: one line, its exit code


def _receive(outbox: queue.Queue, thread: threading.Thread) -> Part:
    """The thread's next part, or its failure raised."""
    return _part_of(outbox.get(), thread.name)


def _receive_from(inbox, worker: multiprocessing.Process) -> Part:
    """The worker's next part, or its failure raised; or, when the pipe ends before a whole
    part came (the worker killed), how it ended."""
    try:
        item = inbox.recv()
    except (EOFError, OSError):  # OSError: "got end of file during message"
        worker.join()
        raise worker_gone(worker.name, worker.exitcode) from None
    return _part_of(item, worker.name)


def _part_of(item: Part | WorkerFailed, name: str) -> Part:
    if isinstance(item, WorkerFailed) and item.error:
        raise item.error
    if isinstance(item, WorkerFailed):
        raise RuntimeError(f"the {name} failed:\n{item.traceback}")
    return item


# What a run that ran out of memory (or lost a worker, as the kernel's out-of-memory killer
# kills one) leaves, and how to go on.
GO_ON = (
    "what each batch committed before stays; run again to go on, with a smaller --batch-mb if "
    "memory is short (memory follows it)"
)


# How the C libraries under the parse say that the system has no memory left to give, as
# Python's MemoryError does: Arrow's thread pool starting a thread, the dynamic loader mapping a
# library that is imported when first needed, C's and C++'s allocators.
NO_MEMORY_WORDS = (
    "Failed to launch worker thread",
    "failed to map segment",
    "Cannot allocate memory",
    "std::bad_alloc",
)


def short_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        not isinstance(exc, (cli.UserError, psycopg2.Error))
        and any(words in str(exc) for words in NO_MEMORY_WORDS)
    )


def out_of_memory(exc: BaseException, doing: str) -> cli.UserError:
    return cli.UserError(f"out of memory {doing} ({cli.first_line(exc)}): {GO_ON}")


def worker_gone(name: str, exit_code: int | None) -> cli.UserError:
    """A worker that ended without a word: killed by a signal (SIGKILL: what the kernel's
    out-of-memory killer sends), or exited."""
    how = f"ended (exit code {exit_code})"
    if exit_code is not None and -exit_code in signal.valid_signals():
        oom = ", as the kernel's out-of-memory killer does" if -exit_code == signal.SIGKILL else ""
        how = f"was killed ({signal.Signals(-exit_code).name}{oom})"
    return cli.UserError(f"the {name} {how}: {GO_ON}")


def _die_with(parent: int) -> None:
    """A worker dies with etl.py, even with a kill -9 (Linux's parent-death signal)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
