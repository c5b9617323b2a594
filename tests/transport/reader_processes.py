"""Reader processes for the multi-process ring tests (not a test module).

:func:`read_and_check` runs in a child started with the forkserver context; the rest
runs in the test process. Kept apart from the test module so a child imports only
torch and torchtroupe, not pytest and hypothesis.

A checked message is::

    | index: u64 | length: u64 | crc32 of payload: u64 | payload (length bytes) |

``index`` counts the messages the writer completed before this one, so a reader that
sees every message in order sees 0, 1, 2, ... with no gap; a message the writer gave
up on is never completed and its index is reused by the next one.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch.multiprocessing

from tests.timeouts import LONG_TIMEOUT
from tests.transport.rings import FormattedRing
from torchtroupe.errors import ChannelClosedError
from torchtroupe.transport.layout import BROKEN
from torchtroupe.transport.region import SharedRegion
from torchtroupe.transport.ring import (
    RingLayout,
    RingReader,
    monotonic_deadline,
)
from torchtroupe.transport.stream import MessageAbortedError, MessageReader, MessageWriter

HEADER = struct.Struct("<QQQ")
LARGEST_PAYLOAD = 1 << 17
READY = "ready"


@dataclass(frozen=True, slots=True)
class ReaderReport:
    """What a reader process saw, sent back through its pipe when the ring closed.

    Attributes:
        count: Messages read whole and checked.
        digest: crc32 chained over every message's header and payload, in order.
        aborted: Messages dropped because the writer abandoned them.
        error: What went wrong first (bad index or checksum, an exception), or None.
    """

    count: int
    digest: int
    aborted: int
    error: str | None


def read_and_check(
    region: SharedRegion, offset: int, reader_index: int, report: Connection, die_after: int
) -> None:
    """Reads checked messages until the ring closes, then reports; runs in a child.

    Sends READY before the first receive. With ``die_after`` > 0 the process kills
    itself with SIGKILL right after it consumed that many messages.
    """
    reader = MessageReader(RingReader(RingLayout(region, offset), reader_index))
    header = bytearray(HEADER.size)
    buffer = memoryview(bytearray(LARGEST_PAYLOAD))
    count = digest = aborted = 0
    error: str | None = None
    report.send(READY)
    try:
        while True:
            try:
                incoming = reader.receive(deadline=monotonic_deadline(LONG_TIMEOUT))
            except ChannelClosedError:
                break
            try:
                incoming.readinto(memoryview(header))
                index, length, crc = HEADER.unpack(header)
                payload = buffer[:length]
                incoming.readinto(payload)
            except MessageAbortedError:
                aborted += 1
                continue
            finally:
                incoming.finish()
            if index != count or zlib.crc32(payload) != crc:
                error = f"message {count}: got index {index}, crc {zlib.crc32(payload)} != {crc}"
                break
            digest = zlib.crc32(payload, zlib.crc32(header, digest))
            count += 1
            if count == die_after:
                os.kill(os.getpid(), signal.SIGKILL)
    except Exception as exception:  # reported to the test, which fails on it
        error = f"{type(exception).__name__}: {exception}"
    if error is not None:
        reader.ring.detach()  # so the writer does not wait for this reader
    report.send(ReaderReport(count, digest, aborted, error))
    report.close()


class CheckedSender:
    """Writes checked messages of seeded random sizes and keeps the expected report."""

    def __init__(self, writer: MessageWriter, seed: int) -> None:
        self.writer = writer
        self.random = random.Random(seed)
        self.pool = memoryview(self.random.randbytes(2 * LARGEST_PAYLOAD))
        self.count = 0
        self.digest = 0

    def random_size(self, ring_capacity: int) -> int:
        """Mostly small, some a few records long, about 1 in 100 larger than the ring."""
        roll = self.random.random()
        if roll < 0.9:
            return self.random.randrange(0, 200)
        if roll < 0.99:
            return self.random.randrange(200, ring_capacity // 2)
        return self.random.randrange(ring_capacity, 3 * ring_capacity)

    def send(
        self, nbytes: int, deadline: float | None, alive: Callable[[], bool] | None = None
    ) -> None:
        """Sends one message of ``nbytes`` payload; counts it only if it went out whole."""
        start = self.random.randrange(LARGEST_PAYLOAD)
        payload = self.pool[start : start + nbytes]
        header = HEADER.pack(self.count, nbytes, zlib.crc32(payload))
        self.writer.send([header, payload], len(header) + nbytes, deadline=deadline, alive=alive)
        self.digest = zlib.crc32(payload, zlib.crc32(header, self.digest))
        self.count += 1

    def expected(self, aborted: int = 0) -> ReaderReport:
        return ReaderReport(self.count, self.digest, aborted, None)


@dataclass(slots=True)
class ReaderProcess:
    """A started reader process and the read end of its report pipe."""

    index: int
    process: Any  # a forkserver-context Process
    reports: Connection

    def _receive(self, timeout: float) -> Any:
        if not self.reports.poll(timeout):
            raise AssertionError(
                f"reader {self.index} (pid {self.process.pid}) sent nothing in {timeout} s"
            )
        return self.reports.recv()

    def wait_ready(self, timeout: float = LONG_TIMEOUT) -> None:
        assert self._receive(timeout) == READY

    def report(self, timeout: float = LONG_TIMEOUT) -> ReaderReport:
        report = self._receive(timeout)
        assert isinstance(report, ReaderReport)
        return report


@contextmanager
def reader_processes(
    ring: FormattedRing, indices: list[int], *, die_after: dict[int, int] | None = None
) -> Iterator[list[ReaderProcess]]:
    """Starts one :func:`read_and_check` process per reader index, all READY on return.

    On exit every process is joined and its pipe closed; if the body failed the ring
    is broken first, so the readers stop at once.
    """
    context = torch.multiprocessing.get_context("forkserver")
    readers: list[ReaderProcess] = []
    failed = False
    try:
        for index in indices:
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(
                target=read_and_check,
                args=(ring.region, ring.offset, index, sending, (die_after or {}).get(index, 0)),
                name=f"ring-reader-{index}",
            )
            readers.append(ReaderProcess(index, process, receiving))
            try:
                process.start()
            finally:
                sending.close()
        for reader in readers:
            reader.wait_ready()
        yield readers
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            ring.layout.set_state(BROKEN)
        for reader in readers:
            if reader.process.pid is not None:
                reader.process.join(LONG_TIMEOUT)
                if reader.process.exitcode is None:
                    reader.process.kill()
                    reader.process.join(LONG_TIMEOUT)
                reader.process.close()
            reader.reports.close()
