"""The ring across processes: a stress run, a reader killed mid-stream, an idle reader."""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest

from tests.timeouts import LONG_TIMEOUT
from tests.transport.reader_processes import CheckedSender, reader_processes
from tests.transport.rings import new_ring, reader_bell, wait_until_parked
from torchtroupe.errors import ChannelBrokenError
from torchtroupe.transport.ring import RingWriter, detach_reader, monotonic_deadline
from torchtroupe.transport.stream import MessageWriter

CAPACITY = 16384
# How late past its deadline a timed-out send may return on a loaded machine.
DEADLINE_MARGIN_S = 1.0


def test_four_reader_processes_get_100_000_messages_whole_and_in_order() -> None:
    ring = new_ring(CAPACITY, n_readers=4)
    with reader_processes(ring, [0, 1, 2, 3]) as readers:
        ring_writer = RingWriter(ring.layout)
        sender = CheckedSender(MessageWriter(ring_writer), seed=20240501)

        def alive() -> bool:
            return all(reader.process.is_alive() for reader in readers)

        for _ in range(100_000):
            size = sender.random_size(CAPACITY)
            sender.send(size, deadline=monotonic_deadline(LONG_TIMEOUT), alive=alive)
        ring_writer.close()
        reports = [reader.report() for reader in readers]
    assert reports == [sender.expected()] * 4


def test_a_killed_reader_times_out_the_writer_until_it_is_detached() -> None:
    ring = new_ring(CAPACITY, n_readers=3)
    victim = 2
    with reader_processes(ring, [0, 1, 2], die_after={victim: 500}) as readers:
        ring_writer = RingWriter(ring.layout)
        sender = CheckedSender(MessageWriter(ring_writer), seed=7)
        for _ in range(500):  # the victim reads these, then kills itself
            sender.send(sender.random_size(CAPACITY), deadline=monotonic_deadline(LONG_TIMEOUT))
        readers[victim].process.join(LONG_TIMEOUT)
        assert readers[victim].process.exitcode == -signal.SIGKILL

        # The dead reader's cursor stays put: a message larger than the ring cannot
        # go out, and the writer gives up at its deadline instead of hanging.
        deadline = monotonic_deadline(0.5)
        with pytest.raises(TimeoutError):
            sender.send(3 * CAPACITY, deadline=deadline)
        assert time.monotonic() <= deadline + DEADLINE_MARGIN_S

        detach_reader(ring.layout, victim)
        assert ring_writer.detached_readers() == [victim]
        for _ in range(3000):
            sender.send(sender.random_size(CAPACITY), deadline=monotonic_deadline(LONG_TIMEOUT))
        ring_writer.close()
        reports = [readers[r].report() for r in (0, 1)]
    # The abandoned message had filled the ring in part: the live readers dropped it.
    assert reports == [sender.expected(aborted=1)] * 2


def test_a_writer_waiting_on_a_dead_reader_is_told_by_its_alive_check() -> None:
    ring = new_ring(CAPACITY, n_readers=2)
    with reader_processes(ring, [0, 1], die_after={1: 10}) as readers:
        ring_writer = RingWriter(ring.layout)
        sender = CheckedSender(MessageWriter(ring_writer), seed=3)
        for _ in range(10):
            sender.send(100, deadline=monotonic_deadline(LONG_TIMEOUT))
        readers[1].process.join(LONG_TIMEOUT)
        with pytest.raises(ChannelBrokenError):
            sender.send(
                3 * CAPACITY,
                deadline=monotonic_deadline(LONG_TIMEOUT),
                alive=readers[1].process.is_alive,
            )
        ring_writer.close()
        # The live reader was in the middle of the abandoned message when the ring closed.
        assert readers[0].report().count == 10


def test_a_reader_process_parked_in_receive_uses_almost_no_cpu() -> None:
    ring = new_ring(4096, n_readers=1)
    with reader_processes(ring, [0]) as readers:
        wait_until_parked(ring.region, reader_bell(0))
        process = psutil.Process(readers[0].process.pid)
        before = process.cpu_times()
        threading.Event().wait(2.0)  # a measurement window, not synchronisation
        after = process.cpu_times()
        RingWriter(ring.layout).close()
        report = readers[0].report()
    used = (after.user - before.user) + (after.system - before.system)
    # CPU times come in 10 ms clock ticks, and a parked reader still wakes every park
    # slice to check its peer; a spinning one would use the whole 2 s.
    assert used < 0.05, f"an idle reader used {used:.3f} s of CPU in 2 s"
    assert report.count == 0
    assert report.error is None
