"""Tests for the ring cores: transport/_ringcore.c and its twin transport/_ringcore_py.py.

Both cores speak the ring of ``ring.py`` on the same memory, so a C writer must be
readable by a Python reader and the other way round. Every behaviour test here runs
for the four (writer core, reader core) pairs, with the cores made directly on a
formatted ring (not through ``RingWriter``/``RingReader``, which only ever use the
core that ``core.py`` selected). The C pairs are skipped when the extension is not
built. One slow test runs the whole transport suite on the pure-Python core.
"""

from __future__ import annotations

import array
import fractions
import pickle as stdlib_pickle
import random
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import pytest

from tests.support.twin import assert_passes_on_the_twin, assert_twin_is_selected
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.transport.rings import (
    WRITER_BELL,
    FormattedRing,
    in_thread,
    new_ring,
    reader_bell,
    wait_until_parked,
)
from torchtroupe.errors import ChannelBrokenError, ChannelClosedError
from torchtroupe.transport import _ringcore_py
from torchtroupe.transport.doorbell import Doorbell
from torchtroupe.transport.layout import (
    ABORT,
    BROKEN,
    CLOSED,
    DATA,
    HEADER_BYTES,
    OPEN,
    PARKED,
    PLAIN_BUDGET,
    PRELUDE,
    WRITE_LINE,
)
from torchtroupe.transport.ring import detach_reader

CAPACITY = 4096
MAX_PAYLOAD = CAPACITY // 4 - HEADER_BYTES
PATTERN = random.Random(0).randbytes(1 << 16)

# The cores are C objects or Python objects with the same methods; the stub types
# of one module do not describe the other, so the tests hold them as Any.
WriterCore = Any
ReaderCore = Any


def payload(index: int, nbytes: int) -> bytes:
    """Distinct, reproducible bytes for record ``index``."""
    start = (index * 7919) % (len(PATTERN) // 2)
    return PATTERN[start : start + nbytes]


def record_bytes(nbytes: int) -> int:
    """Ring bytes one record of ``nbytes`` payload occupies."""
    return HEADER_BYTES + ((nbytes + 7) & ~7)


def prelude(
    target: int, tag: int, pickle_len: int, *, n_storages: int = 0, n_fds: int = 0
) -> bytes:
    """A message prelude as codec.py writes it."""
    return PRELUDE.pack(target, tag, n_storages, n_fds, pickle_len)


# -- the two cores ------------------------------------------------------------------------


def load_core(name: str) -> ModuleType:
    """The core module called ``name`` ("C" or "Python"); skips the test if C is not built."""
    if name == "C":
        return pytest.importorskip(
            "torchtroupe.transport._ringcore",
            reason="the compiled ring core is not built (pip install -e . builds it)",
        )
    return _ringcore_py


@dataclass(frozen=True, slots=True)
class CorePair:
    """Which core writes and which reads."""

    writer_name: str
    reader_name: str
    writer: ModuleType
    reader: ModuleType


PAIRS = [("C", "C"), ("C", "Python"), ("Python", "C"), ("Python", "Python")]


@pytest.fixture(params=PAIRS, ids=[f"{w}-writer-{r}-reader" for w, r in PAIRS])
def cores(request: pytest.FixtureRequest) -> CorePair:
    """A (writer core, reader core) pair; pairs with the C core skip where it is not built."""
    writer_name, reader_name = request.param
    return CorePair(writer_name, reader_name, load_core(writer_name), load_core(reader_name))


@pytest.fixture(autouse=True)
def _both_cores_raise_torchtroupe_errors() -> None:
    """Makes both cores raise ChannelClosedError/ChannelBrokenError from poll().

    Importing ring.py (above) does it for the core that core.py selected only; the
    other one would raise RuntimeError.
    """
    _ringcore_py.set_errors(ChannelClosedError, ChannelBrokenError)
    try:
        from torchtroupe.transport import _ringcore
    except ImportError:
        return
    _ringcore.set_errors(ChannelClosedError, ChannelBrokenError)


# -- rings --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoreRing:
    """A formatted ring with a writer core and one reader core per reader."""

    ring: FormattedRing
    writer: WriterCore
    readers: list[ReaderCore]

    def data(self) -> bytes:
        """A copy of the ring's data bytes (records, headers, PADs)."""
        start = self.ring.layout.data
        return bytes(self.ring.region.bytes[start : start + self.ring.layout.capacity])

    def write_cursor(self) -> int:
        """The write cursor as published in shared memory."""
        return int(self.ring.region.words[self.ring.layout.word_index(WRITE_LINE)])

    def bell(self, reader: int) -> Doorbell:
        """Reader ``reader``'s doorbell."""
        return Doorbell(self.ring.region, reader_bell(reader))

    def bell_is_parked(self, offset: int) -> bool:
        """Whether the waiter of the doorbell at ``offset`` is (still) parked on it."""
        return bool(self.ring.region.words[offset // 8] == PARKED)


MakeRing = Callable[..., CoreRing]


@contextmanager
def ring_factory(pair: CorePair) -> Iterator[MakeRing]:
    """Makes rings with cores of ``pair``; releases their regions on exit."""
    rings: list[FormattedRing] = []

    def make(capacity: int = CAPACITY, n_readers: int = 1) -> CoreRing:
        ring = new_ring(capacity, n_readers)
        rings.append(ring)
        writer = pair.writer.WriterCore(ring.region, ring.offset)
        readers = [pair.reader.ReaderCore(ring.region, ring.offset, r) for r in range(n_readers)]
        return CoreRing(ring, writer, readers)

    try:
        yield make
    finally:
        for ring in rings:
            ring.region.release()


@pytest.fixture
def make_ring(cores: CorePair) -> Iterator[MakeRing]:
    """Rings whose writer and readers are the cores of the pair under test."""
    with ring_factory(cores) as make:
        yield make


@pytest.fixture(params=["C", "Python"])
def core_name(request: pytest.FixtureRequest) -> str:
    """One core, for behaviour of one end alone."""
    name: str = request.param
    return name


@pytest.fixture
def make_one_core_ring(core_name: str) -> Iterator[MakeRing]:
    """Rings whose writer and readers are all the one core under test."""
    core = load_core(core_name)
    with ring_factory(CorePair(core_name, core_name, core, core)) as make:
        yield make


class Record(NamedTuple):
    """One record as a reader saw it."""

    data: bytes
    kind: int = DATA
    more: bool = False


def write(writer: WriterCore, record: Record, wake: int = -1) -> bool:
    """Writes ``record`` with try_reserve and commit if there is room now."""
    view = writer.try_reserve(len(record.data))
    if view is None:
        return False
    view[:] = record.data
    writer.commit(len(record.data), more=record.more, kind=record.kind, wake=wake)
    return True


def drain(reader: ReaderCore) -> list[Record]:
    """Reads and consumes every record published so far."""
    records = []
    while (view := reader.poll()) is not None:
        records.append(Record(bytes(view), reader.kind, reader.more))
        reader.consume()
    return records


def advance(ring: CoreRing, nbytes: int) -> None:
    """Moves a drained ring's cursors ``nbytes`` on (a multiple of 8) with records that
    every reader reads and that never need a PAD."""
    target = ring.writer.cursor + nbytes
    while ring.writer.cursor < target:
        tail = CAPACITY - ring.writer.cursor % CAPACITY
        size = min(target - ring.writer.cursor, MAX_PAYLOAD + HEADER_BYTES, tail)
        assert write(ring.writer, Record(bytes(size - HEADER_BYTES)))
        for reader in ring.readers:
            assert len(drain(reader)) == 1
    assert ring.writer.cursor == target


def fill(ring: CoreRing, fast: ReaderCore, nbytes: int) -> list[Record]:
    """Writes records until the ring is full, ``fast`` reading each at once."""
    written = []
    while write(ring.writer, record := Record(payload(len(written), nbytes))):
        written.append(record)
        assert drain(fast) == [record]
        assert len(written) <= 64, "the writer never ran out of room"
    return written


# -- records ------------------------------------------------------------------------------


SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 39, 40, 41, 63, 64, 65, 255, 511, 513]
SIZES += [MAX_PAYLOAD - 9, MAX_PAYLOAD - 8, MAX_PAYLOAD - 1, MAX_PAYLOAD]


def test_records_of_every_size_round_trip_byte_exact_with_their_flags_across_wrap_arounds(
    make_ring: MakeRing,
) -> None:
    ring = make_ring(n_readers=2)
    eager, lagging = ring.readers
    assert ring.writer.max_payload == MAX_PAYLOAD
    choose = random.Random(1)
    sizes = SIZES * 4 + [choose.randint(0, MAX_PAYLOAD) for _ in range(300)]
    written: list[Record] = []
    seen_eager: list[Record] = []
    seen_lagging: list[Record] = []
    cursor, pads = 0, 0
    for index, nbytes in enumerate(sizes):
        kind = ABORT if index % 11 == 5 else DATA
        record = Record(payload(index, nbytes), kind, more=index % 3 == 1)
        if not write(ring.writer, record):
            # Full: the lagging reader holds the writer back until it reads.
            seen_lagging += drain(lagging)
            seen_eager += drain(eager)
            assert write(ring.writer, record)
        written.append(record)
        # The writer's cursor moves as the layout says: a record that would cross
        # the end of the ring is preceded by a PAD filling the tail.
        tail = CAPACITY - cursor % CAPACITY
        if record_bytes(nbytes) > tail:
            cursor, pads = cursor + tail, pads + 1
        cursor += record_bytes(nbytes)
        assert ring.writer.cursor == cursor == ring.write_cursor()
        if index % 2:
            seen_eager += drain(eager)
    seen_eager += drain(eager)
    seen_lagging += drain(lagging)

    assert pads > 20 and cursor > 40 * CAPACITY
    assert seen_eager == written
    assert seen_lagging == written


def test_records_of_max_payload_cross_the_end_of_the_ring_at_every_offset(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    for start in range(0, CAPACITY, 8):
        advance(ring, (start - ring.writer.cursor) % CAPACITY)
        for index in range(3):
            record = Record(payload(index, MAX_PAYLOAD), more=bool(index % 2))
            assert write(ring.writer, record)
            assert drain(ring.readers[0]) == [record], f"start {start}, record {index}"


def test_cores_attached_to_a_ring_mid_stream_take_over_its_cursors(
    cores: CorePair, make_ring: MakeRing
) -> None:
    ring = make_ring()
    written = [Record(payload(index, 300)) for index in range(3)]
    for record in written:
        assert write(ring.writer, record)
    assert drain(ring.readers[0]) == written
    late = Record(b"written before the hand-over")
    assert write(ring.writer, late)

    # Each end is taken over by the pair's other core (the same one for C/C and
    # Python/Python), starting from the cursors in shared memory.
    writer = cores.reader.WriterCore(ring.ring.region, ring.ring.offset)
    reader = cores.writer.ReaderCore(ring.ring.region, ring.ring.offset, 0)
    assert writer.cursor == ring.writer.cursor
    later = [Record(payload(index, MAX_PAYLOAD)) for index in range(8)]
    assert drain(reader) == [late]
    for record in later:
        assert write(writer, record)
        assert drain(reader) == [record]


# -- send and send_message ----------------------------------------------------------------


CHUNK_TYPES: list[Callable[[bytes], Any]] = [
    bytes,
    bytearray,
    memoryview,
    lambda data: memoryview(b"." + data)[1:],  # a view that does not start its buffer
    lambda data: array.array("I", data[: len(data) // 4 * 4]),  # 4-byte items
]


def _chunks(index: int) -> list[Any]:
    """Up to 6 chunks of the buffer types a caller passes to send(), some empty."""
    choose = random.Random(index)
    chunks: list[Any] = []
    for _ in range(choose.randint(1, 6)):
        data = payload(index + len(chunks), choose.choice([0, 1, 5, 8, 40, 100]))
        chunks.append(choose.choice(CHUNK_TYPES)(data))
    return chunks


def _nbytes(chunks: Sequence[Any]) -> int:
    return sum(memoryview(chunk).nbytes for chunk in chunks)


def test_send_and_send_message_write_the_same_bytes_as_try_reserve_and_commit(
    make_ring: MakeRing,
) -> None:
    sent, reserved = make_ring(), make_ring()
    for index in range(400):
        if index % 2:
            chunks = _chunks(index)
            nbytes = _nbytes(chunks)
            assert sent.writer.send(chunks, nbytes, 0) is True
            record = Record(b"".join(memoryview(chunk).cast("B").tobytes() for chunk in chunks))
        else:
            target, tag = index - 200, -index * 1_000_003
            pickle = payload(index, (index * 37) % (MAX_PAYLOAD - PRELUDE.size + 1))
            assert sent.writer.send_message(target, tag, pickle, 0) is True
            record = Record(prelude(target, tag, len(pickle)) + pickle)
        assert write(reserved.writer, record, wake=0)

        assert sent.data() == reserved.data(), f"record {index}"
        assert sent.writer.cursor == reserved.writer.cursor == sent.write_cursor()
        assert drain(sent.readers[0]) == [record]
        assert drain(reserved.readers[0]) == [record]
    assert sent.writer.cursor > 20 * CAPACITY


def test_send_message_of_a_bytearray_pickle_writes_its_bytes(make_ring: MakeRing) -> None:
    ring = make_ring()
    pickle = bytearray(payload(0, 77))
    assert ring.writer.send_message(1, 2, pickle, -1) is True
    assert drain(ring.readers[0]) == [Record(prelude(1, 2, 77) + pickle)]


def test_send_of_nine_chunks_gives_the_same_answer_in_both_cores() -> None:
    answers = {}
    for name in ("C", "Python"):
        core = load_core(name)
        with ring_factory(CorePair(name, name, core, core)) as make:
            ring = make()
            sent = ring.writer.send([b"x"] * 9, 9, -1)
            answers[name] = (sent, drain(ring.readers[0]))
    assert answers["C"] == answers["Python"]


# -- poll_message -------------------------------------------------------------------------


class PollCase(NamedTuple):
    record: Record
    target: int | None
    tag: int | None
    pickle: bytes | None


PICKLE = b"\x80\x05\x95 a pickle, whatever its bytes"
POLL_CASES = {
    "a one-record message without tensors": PollCase(
        Record(prelude(5, 9, len(PICKLE)) + PICKLE), 5, 9, PICKLE
    ),
    "negative target and tag and an empty pickle": PollCase(
        Record(prelude(-1, -(2**63), 0)), -1, -(2**63), b""
    ),
    "largest target and tag": PollCase(
        Record(prelude(2**63 - 1, 2**63 - 1, 1) + b"p"), 2**63 - 1, 2**63 - 1, b"p"
    ),
    "a record longer than its pickle (the pickle only)": PollCase(
        Record(prelude(3, 4, 4) + b"pickleXXXX"), 3, 4, b"pick"
    ),
    "a message with storages": PollCase(
        Record(prelude(3, 4, len(PICKLE), n_storages=1) + PICKLE), 3, 4, None
    ),
    "a message with fds": PollCase(
        Record(prelude(3, 4, len(PICKLE), n_fds=2) + PICKLE), 3, 4, None
    ),
    "the first fragment of a message": PollCase(
        Record(prelude(3, 4, len(PICKLE)) + PICKLE, more=True), 3, 4, None
    ),
    "a pickle longer than the record": PollCase(
        Record(prelude(3, 4, len(PICKLE) + 1) + PICKLE), 3, 4, None
    ),
    "a data record shorter than a prelude": PollCase(
        Record(prelude(3, 4, 0)[:-1]), None, None, None
    ),
    "an empty data record": PollCase(Record(b""), None, None, None),
    "an abort": PollCase(Record(b"", kind=ABORT), None, None, None),
    "an abort with a prelude's bytes": PollCase(
        Record(prelude(3, 4, 1) + b"p", kind=ABORT), None, None, None
    ),
}


def test_poll_message_reads_the_prelude_and_the_pickle_of_a_complete_message(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    reader = ring.readers[0]
    for name, case in POLL_CASES.items():
        advance(ring, (CAPACITY - 24 - ring.writer.cursor) % CAPACITY)  # then a PAD
        assert reader.poll_message() is None
        assert write(ring.writer, case.record)

        polled = reader.poll_message()
        assert polled is not None, name
        record, target, tag, pickle = polled
        assert (bytes(record), reader.kind, reader.more) == case.record, name
        assert (target, tag) == (case.target, case.tag), name
        assert (None if pickle is None else bytes(pickle)) == case.pickle, name
        reader.consume()
        assert reader.poll_message() is None, name


def test_poll_message_returns_what_send_message_wrote(make_ring: MakeRing) -> None:
    ring = make_ring(n_readers=2)
    for index in range(50):
        pickle = payload(index, index * 19)
        assert ring.writer.send_message(index, -index, pickle, index % 2)
        for reader in ring.readers:
            polled = reader.poll_message()
            assert polled is not None
            record, target, tag, read_pickle = polled
            assert (target, tag) == (index, -index)
            assert read_pickle is not None and bytes(read_pickle) == pickle
            assert bytes(record) == prelude(index, -index, len(pickle)) + pickle
            reader.consume()


# -- take ---------------------------------------------------------------------------------


def test_take_unpickles_the_messages_for_its_rank_and_leaves_every_other_record_to_poll(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    writer, reader = ring.writer, ring.readers[0]
    unpickled: list[bytes] = []

    def loads(view: memoryview) -> Any:
        unpickled.append(bytes(view))
        return stdlib_pickle.loads(view)

    dumps = stdlib_pickle.dumps
    assert reader.take(loads, 1) is None
    advance(ring, CAPACITY - 16)  # the first message follows a PAD
    assert writer.send_message(2, 10, dumps(("for rank 2",)), -1)  # skipped
    assert writer.send_message(1, 11, dumps(("for rank 1", 1)), -1)
    assert writer.send_message(-1, 12, dumps(("for every rank",)), -1)
    assert reader.take(loads, 1) == ("for rank 1", 1)
    assert reader.take(loads, 1) == ("for every rank",)
    assert unpickled == [dumps(("for rank 1", 1)), dumps(("for every rank",))]
    assert reader.take(loads, 1) is None
    assert writer.floor() == writer.cursor  # what take() returned or skipped is consumed

    unpickled.clear()
    not_a_pickle = b"not a pickle"
    others = [
        Record(prelude(2, 20, 3, n_storages=1) + b"abc"),  # tensors: even for another rank
        Record(b"", kind=ABORT),
        Record(prelude(1, 21, len(dumps(["a list"]))) + dumps(["a list"])),
        Record(prelude(1, 22, len(not_a_pickle)) + not_a_pickle),
        Record(prelude(-1, 23, 5) + dumps(("fragment",))[:5], more=True),
    ]
    for record in others:
        assert write(writer, record)
    for record in others:
        view = reader.take(loads, 1)
        assert isinstance(view, memoryview)
        assert (bytes(view), reader.kind, reader.more) == record
        with pytest.raises(RuntimeError):
            reader.poll()  # still to consume
        reader.consume()
    assert unpickled == [dumps(["a list"]), not_a_pickle]

    assert writer.send_message(-1, 30, dumps(("last",)), -1)
    ring.ring.layout.set_state(CLOSED)
    assert reader.take(loads, 5) == ("last",)
    with pytest.raises(ChannelClosedError):
        reader.take(loads, 5)


def test_send_plain_pickles_in_the_writer_and_take_with_loads_reads_it(
    make_ring: MakeRing, cores: CorePair
) -> None:
    ring = make_ring()
    value = (7, 1, "echo", (1, 2.5, "s", b"b", None, True, [1], {"k": (2,)}), {"x": -(1 << 40)})

    assert ring.writer.send_plain(0, 7, value, -1)
    assert not ring.writer.send_plain(0, 8, (object(),), -1)  # nothing written
    taken = ring.readers[0].take(cores.reader.loads, 0)

    assert taken == value and type(taken[3][5]) is bool
    # A pickle of something else: loads hands it to the stock unpickler.
    other = (fractions.Fraction(1, 3),)
    assert ring.writer.send_message(0, 9, stdlib_pickle.dumps(other), -1)
    assert ring.readers[0].take(cores.reader.loads, 0) == other
    assert ring.readers[0].take(cores.reader.loads, 0) is None


def test_send_plain_writes_the_prelude_of_a_message(make_ring: MakeRing) -> None:
    ring = make_ring()
    assert ring.writer.send_plain(3, 9, ("v",), -1)

    record = ring.readers[0].poll()

    pickled = bytes(record[PRELUDE.size :])
    assert bytes(record[: PRELUDE.size]) == prelude(3, 9, len(pickled))
    assert stdlib_pickle.loads(pickled) == ("v",)


def test_take_lets_a_keyboard_interrupt_raised_by_loads_through_and_the_record_stays_unread(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    reader = ring.readers[0]
    message = stdlib_pickle.dumps((1,))
    assert ring.writer.send_message(0, 1, message, -1)

    def interrupted(view: memoryview) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reader.take(interrupted, 0)
    # Nothing is lost and nothing is left half-read: the next take gets the message.
    assert reader.take(stdlib_pickle.loads, 0) == (1,)
    assert reader.take(stdlib_pickle.loads, 0) is None


def test_take_each_reads_every_ring_in_turn_and_stops_a_ring_at_a_record_left_to_decode(
    make_ring: MakeRing,
) -> None:
    rings = [make_ring(), make_ring()]
    for value in [(1,), (2,)]:
        assert rings[0].writer.send_message(-1, 0, stdlib_pickle.dumps(value), -1)
    assert rings[1].writer.send_message(-1, 0, stdlib_pickle.dumps((3,)), -1)
    assert rings[1].writer.send_message(-1, 0, stdlib_pickle.dumps("not a tuple"), -1)
    assert rings[1].writer.send_message(-1, 0, stdlib_pickle.dumps((4,)), -1)
    readers = (rings[0].readers[0], rings[1].readers[0])
    module = sys.modules[type(readers[0]).__module__]

    taken = module.take_each(readers, stdlib_pickle.loads, -1)

    assert [(index, value) for index, value in taken[:3]] == [(0, (1,)), (0, (2,)), (1, (3,))]
    index, left = taken[3]
    assert index == 1 and isinstance(left, memoryview)  # pending, for the general path
    readers[1].consume()
    assert module.take_each(readers, stdlib_pickle.loads, -1) == [(1, (4,))]


def test_take_leaves_every_record_to_the_general_path_while_resyncing(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    reader = ring.readers[0]
    assert ring.writer.send_message(0, 1, stdlib_pickle.dumps((1,)), -1)
    reader.resync = True

    left = reader.take(stdlib_pickle.loads, 0)

    assert isinstance(left, memoryview)
    reader.consume()
    reader.resync = False


PLAIN_VALUES: list[object] = [
    None,
    True,
    -(2**100),
    1.5,
    float("nan"),
    "text",
    b"bytes",
    (),
    (1, "a", None),
    [1, [2, [3]]],
    {"key": (b"value", 2.0), 3: None},
    [[[[[[[[1]]]]]]]],  # 8 levels: plain
    [[[[[[[[[1]]]]]]]]],  # 9 levels: not plain
    bytearray(b"x"),
    {1, 2},
    frozenset(),
    (1, object()),
    {(1, 2): [3]},
    {1: {2: {3: set()}}},
    struct.Struct("<q"),
    NamedTuple("Point", [("x", int)])(1),
    type("Text", (str,), {})("subclass"),
    type("Mapping", (dict,), {})(),
]


def test_plain_dumps_takes_the_same_values_in_both_cores() -> None:
    c_core, python_core = load_core("C"), load_core("Python")
    cycle: list[object] = []
    cycle.append(cycle)
    wide = PLAIN_VALUES[2]  # an int past 64 bits: only the Python core's stock pickle takes it
    for value in [*PLAIN_VALUES, cycle]:
        taken = [core.plain_dumps(value) is not None for core in (c_core, python_core)]
        assert taken == ([False, True] if value is wide else [taken[0]] * 2), value
    budget = PLAIN_BUDGET  # the list itself counts as one object
    for core in (c_core, python_core):
        assert core.plain_dumps(({"a": [1, 2.0, b"3"]}, None, True)) is not None
        assert core.plain_dumps(list(range(budget - 1))) is not None
        assert core.plain_dumps(list(range(budget))) is None
        assert core.plain_dumps(PLAIN_VALUES[11]) is not None  # 8 levels
        assert core.plain_dumps(PLAIN_VALUES[12]) is None  # 9 levels
        assert core.plain_dumps(cycle) is None
        assert core.plain_dumps({1, 2}) is None


# -- back-pressure and detached readers ---------------------------------------------------


@pytest.mark.parametrize("start", [0, CAPACITY - 520], ids=["aligned", "needs-a-pad"])
def test_a_lagging_reader_holds_back_try_reserve_send_and_send_message_until_it_reads(
    make_ring: MakeRing, start: int
) -> None:
    ring = make_ring(n_readers=2)
    fast, slow = ring.readers
    advance(ring, start)
    written = fill(ring, fast, MAX_PAYLOAD)
    assert written
    cursor, data = ring.writer.cursor, ring.data()

    assert ring.writer.try_reserve(MAX_PAYLOAD) is None
    big = payload(99, MAX_PAYLOAD)
    assert ring.writer.send([big[:10], big[10:]], MAX_PAYLOAD, -1) is False
    assert ring.writer.send_message(7, 8, big[PRELUDE.size :], -1) is False
    # Nothing was written, not even a PAD.
    assert ring.writer.cursor == cursor == ring.write_cursor()
    assert ring.data() == data
    assert fast.poll() is None

    assert drain(slow) == written
    sends: list[tuple[Callable[[], bool], Record]] = [
        (lambda: write(ring.writer, Record(big)), Record(big)),
        (lambda: ring.writer.send([big[:10], big[10:]], MAX_PAYLOAD, -1), Record(big)),
        (
            lambda: ring.writer.send_message(7, 8, big[PRELUDE.size :], -1),
            Record(prelude(7, 8, MAX_PAYLOAD - PRELUDE.size) + big[PRELUDE.size :]),
        ),
    ]
    for send, record in sends:
        assert send() is True
        assert drain(fast) == [record]
        assert drain(slow) == [record]


def test_a_full_ring_has_room_again_as_soon_as_the_slowest_reader_consumes_one_record(
    make_ring: MakeRing,
) -> None:
    ring = make_ring(n_readers=2)
    fast, slow = ring.readers
    written = fill(ring, fast, MAX_PAYLOAD)
    assert len(written) == CAPACITY // record_bytes(MAX_PAYLOAD)
    assert ring.writer.try_reserve(0) is None
    assert ring.writer.floor() == 0

    view = slow.poll()
    assert view is not None and bytes(view) == written[0].data
    assert ring.writer.try_reserve(0) is None  # polled is not consumed
    slow.consume()
    assert ring.writer.floor() == record_bytes(MAX_PAYLOAD)
    record = Record(payload(50, MAX_PAYLOAD))
    assert write(ring.writer, record)
    assert ring.writer.try_reserve(0) is None
    assert drain(fast) == [record]
    assert drain(slow) == [*written[1:], record]


@pytest.mark.parametrize("detached_by", ["its reader core", "a monitor"])
def test_a_detached_reader_no_longer_holds_back_the_writer(
    make_ring: MakeRing, detached_by: str
) -> None:
    ring = make_ring(n_readers=3)
    fast, slow, other = ring.readers
    assert ring.writer.detached_readers() == []
    fill(ring, fast, MAX_PAYLOAD)
    drain(other)
    assert ring.writer.try_reserve(MAX_PAYLOAD) is None

    if detached_by == "its reader core":
        slow.detach()
    else:
        detach_reader(ring.ring.layout, 1)
    assert ring.writer.detached_readers() == [1]
    for index in range(40):
        record = Record(payload(index, MAX_PAYLOAD))
        assert write(ring.writer, record)
        assert drain(fast) == [record]
        assert drain(other) == [record]
    assert ring.writer.floor() == ring.writer.cursor


# -- closed and broken rings --------------------------------------------------------------


@pytest.mark.timeout(2 * LONG_TIMEOUT)
@pytest.mark.parametrize(
    ("state", "error"),
    [(CLOSED, ChannelClosedError), (BROKEN, ChannelBrokenError)],
    ids=["closed", "broken"],
)
def test_readers_get_the_published_records_then_the_error_of_a_closed_or_broken_ring(
    make_ring: MakeRing, state: int, error: type[Exception]
) -> None:
    ring = make_ring(n_readers=2)
    advance(ring, CAPACITY - 200)
    written = [Record(payload(index, 150 * index), more=index == 2) for index in range(4)]
    for record in written:
        assert write(ring.writer, record)
    ring.ring.layout.set_state(state)

    assert ring.writer.state() == state
    assert ring.writer.try_reserve(8) is None
    assert ring.writer.send([b"12345678"], 8, -1) is False
    assert ring.writer.send_message(1, 2, b"pickle", -1) is False
    assert ring.writer.cursor == ring.write_cursor()
    for reader in ring.readers:
        assert reader.has_data()
        assert drain_until(reader, error) == written
        with pytest.raises(error):
            reader.poll()
        with pytest.raises(error):
            reader.poll_message()
        assert reader.has_data()
        assert reader.spin(LONG_TIMEOUT) is True


def drain_until(reader: ReaderCore, error: type[Exception]) -> list[Record]:
    """Reads and consumes records until poll() raises ``error``."""
    records = []
    with pytest.raises(error):
        for _ in range(100):
            view = reader.poll()
            assert view is not None, "poll() returned None instead of raising"
            records.append(Record(bytes(view), reader.kind, reader.more))
            reader.consume()
    return records


def test_an_open_ring_is_reported_open_and_an_empty_one_has_no_data(make_ring: MakeRing) -> None:
    ring = make_ring()
    assert ring.writer.state() == OPEN
    assert not ring.readers[0].has_data()
    assert ring.readers[0].poll() is None


# -- misuse -------------------------------------------------------------------------------


def test_a_record_larger_than_max_payload_is_refused_and_nothing_is_written(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    too_big = bytes(MAX_PAYLOAD + 1)
    with pytest.raises(ValueError):
        ring.writer.try_reserve(MAX_PAYLOAD + 1)
    assert ring.writer.send([too_big], len(too_big), -1) is False
    assert ring.writer.send_message(1, 2, too_big[PRELUDE.size :], -1) is False
    assert ring.writer.cursor == ring.write_cursor() == 0
    assert ring.readers[0].poll() is None
    # No reservation was left behind.
    record = Record(payload(0, MAX_PAYLOAD))
    assert write(ring.writer, record)
    assert drain(ring.readers[0]) == [record]


def test_commit_without_try_reserve_raises_runtime_error(make_ring: MakeRing) -> None:
    ring = make_ring()
    with pytest.raises(RuntimeError):
        ring.writer.commit(0)
    with pytest.raises(RuntimeError):
        ring.writer.commit(0, wake=5)  # the missing reservation is reported first
    assert write(ring.writer, Record(b"abc"))
    with pytest.raises(RuntimeError):
        ring.writer.commit(3)  # committed already
    assert drain(ring.readers[0]) == [Record(b"abc")]


def test_try_reserve_twice_raises_runtime_error_and_keeps_the_first_reservation(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    view = ring.writer.try_reserve(3)
    with pytest.raises(RuntimeError):
        ring.writer.try_reserve(3)
    with pytest.raises(RuntimeError):
        ring.writer.send([b"abc"], 3, -1)
    with pytest.raises(RuntimeError):
        ring.writer.send_message(1, 2, b"", -1)
    with pytest.raises(RuntimeError):
        ring.writer.send_plain(1, 2, (), -1)
    view[:] = b"abc"
    ring.writer.commit(3)
    assert drain(ring.readers[0]) == [Record(b"abc")]


def test_poll_again_before_consume_raises_runtime_error(make_ring: MakeRing) -> None:
    ring = make_ring()
    reader = ring.readers[0]
    assert write(ring.writer, Record(b"first"))
    assert write(ring.writer, Record(b"second"))
    view = reader.poll()
    with pytest.raises(RuntimeError):
        reader.poll()
    with pytest.raises(RuntimeError):
        reader.poll_message()
    with pytest.raises(RuntimeError):
        reader.take(stdlib_pickle.loads, 0)
    assert view is not None and bytes(view) == b"first"
    reader.consume()
    assert drain(reader) == [Record(b"second")]


def test_commit_to_a_reader_out_of_range_raises_value_error_and_keeps_the_reservation(
    make_ring: MakeRing,
) -> None:
    ring = make_ring(n_readers=2)
    view = ring.writer.try_reserve(5)
    view[:] = b"hello"
    with pytest.raises(ValueError):
        ring.writer.commit(5, wake=2)
    assert ring.write_cursor() == 0
    assert ring.readers[0].poll() is None
    ring.writer.commit(5, wake=1)
    assert drain(ring.readers[0]) == [Record(b"hello")]
    assert drain(ring.readers[1]) == [Record(b"hello")]


def test_send_of_chunks_that_do_not_add_up_to_nbytes_raises_value_error(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    for total in [0, 4, 6]:
        with pytest.raises(ValueError):
            ring.writer.send([b"he", b"llo"], total, -1)
    assert ring.writer.cursor == ring.write_cursor() == 0
    assert ring.readers[0].poll() is None
    assert ring.writer.send([b"he", b"llo"], 5, -1) is True
    assert drain(ring.readers[0]) == [Record(b"hello")]


@pytest.mark.parametrize("method", ["send", "send_message", "send_plain"])
def test_send_to_a_reader_out_of_range_raises_value_error_and_writes_nothing(
    make_one_core_ring: MakeRing, method: str
) -> None:
    ring = make_one_core_ring(n_readers=2)
    with pytest.raises(ValueError):
        if method == "send":
            ring.writer.send([b"hello"], 5, 2)
        elif method == "send_message":
            ring.writer.send_message(1, 2, b"hello", 2)
        else:
            ring.writer.send_plain(1, 2, ("hello",), 2)
    assert ring.writer.cursor == ring.write_cursor() == 0
    assert ring.readers[0].poll() is None
    assert ring.writer.send([b"hello"], 5, 1) is True  # no reservation was left behind
    assert drain(ring.readers[1]) == [Record(b"hello")]


@pytest.mark.parametrize("nbytes", [MAX_PAYLOAD + 1, 16], ids=["max_payload", "reserved"])
def test_commit_of_more_bytes_than_were_reserved_raises_value_error(
    make_one_core_ring: MakeRing, nbytes: int
) -> None:
    ring = make_one_core_ring()
    view = ring.writer.try_reserve(8)
    with pytest.raises(ValueError):
        ring.writer.commit(nbytes)
    assert ring.write_cursor() == 0
    view[:] = b"reserved"
    ring.writer.commit(8)  # the reservation is still there
    assert drain(ring.readers[0]) == [Record(b"reserved")]


def test_commit_of_a_record_kind_that_is_not_data_or_abort_raises_value_error(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    view = ring.writer.try_reserve(4)
    view[:] = b"kind"
    for kind in [0, 2, 256]:  # 2 is PAD, which only the writer core itself writes
        with pytest.raises(ValueError):
            ring.writer.commit(4, kind=kind)
    assert ring.write_cursor() == 0
    ring.writer.commit(4, kind=ABORT)
    assert drain(ring.readers[0]) == [Record(b"kind", kind=ABORT)]


def test_cancel_forgets_a_reservation_and_its_pad_and_publishes_nothing(
    make_ring: MakeRing,
) -> None:
    ring = make_ring()
    advance(ring, CAPACITY - 16)
    ring.writer.cancel()  # nothing reserved: nothing to do
    assert ring.writer.try_reserve(100) is not None  # needs a PAD
    assert ring.writer.cursor == CAPACITY  # past the PAD, not yet published
    ring.writer.cancel()
    assert ring.writer.cursor == ring.write_cursor() == CAPACITY - 16
    assert ring.readers[0].poll() is None
    # Now the writer may reserve again, and the record lands where it would have.
    record = Record(payload(0, 100))
    assert write(ring.writer, record)
    assert ring.writer.cursor == ring.write_cursor() == CAPACITY + record_bytes(100)
    assert drain(ring.readers[0]) == [record]


def test_commit_treats_any_true_more_as_the_more_flag(
    core_name: str, make_one_core_ring: MakeRing
) -> None:
    ring = make_one_core_ring()
    ring.writer.try_reserve(0)
    ring.writer.commit(0, more=2)
    assert drain(ring.readers[0]) == [Record(b"", more=True)]


def test_send_message_of_a_target_beyond_64_bits_raises_overflow_error(
    core_name: str, make_one_core_ring: MakeRing
) -> None:
    ring = make_one_core_ring()
    with pytest.raises(OverflowError):
        ring.writer.send_message(2**63, 0, b"", -1)
    with pytest.raises(OverflowError):
        ring.writer.send_message(0, -(2**63) - 1, b"", -1)


NEGATIVE_ARGUMENTS: dict[str, Callable[[CoreRing, ModuleType], object]] = {
    "try_reserve(-1)": lambda ring, core: ring.writer.try_reserve(-1),
    "commit(kind=-1)": lambda ring, core: (
        ring.writer.try_reserve(0),
        ring.writer.commit(0, kind=-1),
    ),
    "WriterCore(offset=-64)": lambda ring, core: core.WriterCore(ring.ring.region, -64),
    "ReaderCore(reader=2**64)": lambda ring, core: core.ReaderCore(
        ring.ring.region, ring.ring.offset, 2**64
    ),
}


@pytest.mark.parametrize("call", NEGATIVE_ARGUMENTS.values(), ids=NEGATIVE_ARGUMENTS.keys())
def test_a_negative_or_too_large_argument_raises_value_error(
    core_name: str,
    make_one_core_ring: MakeRing,
    call: Callable[[CoreRing, ModuleType], object],
) -> None:
    ring = make_one_core_ring()
    with pytest.raises(ValueError):
        call(ring, load_core(core_name))


def test_cores_at_an_offset_past_the_end_of_the_region_are_rejected_with_value_error(
    core_name: str, make_one_core_ring: MakeRing
) -> None:
    ring = make_one_core_ring()
    core = load_core(core_name)
    for offset in [ring.ring.region.nbytes, 1 << 40]:
        with pytest.raises(ValueError):
            core.WriterCore(ring.ring.region, offset)
        with pytest.raises(ValueError):
            core.ReaderCore(ring.ring.region, offset, 0)


def test_a_record_that_overruns_the_ring_breaks_it_for_the_reader(
    core_name: str, make_one_core_ring: MakeRing
) -> None:
    ring = make_one_core_ring()
    layout, words = ring.ring.layout, ring.ring.region.words
    words[layout.data // 8] = CAPACITY | (DATA << 32)  # a header no writer core writes
    words[layout.word_index(1)] = record_bytes(8)  # published as if 8 bytes long
    with pytest.raises(ChannelBrokenError):
        ring.readers[0].poll()


def test_a_reader_core_out_of_range_is_rejected_with_value_error(
    cores: CorePair, make_ring: MakeRing
) -> None:
    ring = make_ring(n_readers=2)
    for reader in [-1, 2, 100]:
        with pytest.raises(ValueError):
            cores.reader.ReaderCore(ring.ring.region, ring.ring.offset, reader)


def test_cores_at_an_offset_without_a_ring_are_rejected_with_value_error(
    cores: CorePair, make_ring: MakeRing
) -> None:
    ring = make_ring()
    region = ring.ring.region
    # A doorbell line, a misaligned offset, the write-cursor line, the state line.
    for offset in [ring.ring.offset + shift for shift in (-64, 8, 64, 128)]:
        with pytest.raises(ValueError):
            cores.writer.WriterCore(region, offset)
        with pytest.raises(ValueError):
            cores.reader.ReaderCore(region, offset, 0)
    # The ring itself is still there.
    cores.writer.WriterCore(region, ring.ring.offset)
    cores.reader.ReaderCore(region, ring.ring.offset, 0)


# -- needed_floor -------------------------------------------------------------------------


def expected_needed_floor(cursor: int, nbytes: int) -> int:
    """The floor at which a record of ``nbytes`` fits, from the layout in ring.py."""
    size = record_bytes(nbytes)
    tail = CAPACITY - cursor % CAPACITY
    return cursor + (size if size <= tail else tail + size) - CAPACITY


def test_needed_floor_follows_the_layout_and_is_the_same_in_both_cores(
    cores: CorePair, make_ring: MakeRing
) -> None:
    ring = make_ring()
    assert ring.writer.needed_floor(0) == HEADER_BYTES - CAPACITY  # negative: a young ring
    for position in [0, 8, 1000, CAPACITY - 520, CAPACITY - 8, 3 * CAPACITY + 136]:
        advance(ring, position - ring.writer.cursor)
        twin = cores.reader.WriterCore(ring.ring.region, ring.ring.offset)
        for nbytes in SIZES:
            expected = expected_needed_floor(position, nbytes)
            assert ring.writer.needed_floor(nbytes) == expected, (position, nbytes)
            assert twin.needed_floor(nbytes) == expected, (position, nbytes)


# -- spinning -----------------------------------------------------------------------------


def test_spin_returns_false_after_about_the_time_when_nothing_arrives(
    make_ring: MakeRing,
) -> None:
    reader = make_ring().readers[0]
    assert reader.spin(0.0) is False
    started = time.monotonic()
    assert reader.spin(0.05) is False
    assert 0.04 <= time.monotonic() - started < SHORT_TIMEOUT


@pytest.mark.timeout(2 * LONG_TIMEOUT)
@pytest.mark.parametrize("seconds", [-1.0, float("nan")], ids=["negative", "nan"])
def test_spin_rejects_a_negative_or_nan_time_with_value_error(
    core_name: str,
    make_one_core_ring: MakeRing,
    seconds: float,
) -> None:
    ring = make_one_core_ring()
    reader = ring.readers[0]
    # A record waits, so a core that accepts the time returns at once instead of
    # spinning for ever on NaN.
    assert write(ring.writer, Record(b"x"))
    with pytest.raises(ValueError):
        reader.spin(seconds)
    with pytest.raises(ValueError):
        load_core(core_name).spin_any((reader,), seconds)


@pytest.mark.timeout(2 * LONG_TIMEOUT)
def test_spin_returns_true_at_once_when_a_record_waits(make_ring: MakeRing) -> None:
    ring = make_ring()
    reader = ring.readers[0]
    advance(ring, CAPACITY - 16)
    record = Record(payload(0, 100))
    assert write(ring.writer, record)  # behind a PAD
    started = time.monotonic()
    assert reader.spin(LONG_TIMEOUT) is True
    assert time.monotonic() - started < SHORT_TIMEOUT
    assert drain(reader) == [record]
    assert reader.spin(0.0) is False


@pytest.mark.timeout(2 * LONG_TIMEOUT)
def test_spin_any_returns_as_soon_as_one_of_several_readers_has_data(
    cores: CorePair, make_ring: MakeRing
) -> None:
    rings = [make_ring(n_readers=2) for _ in range(3)]
    readers = tuple(reader for ring in rings for reader in ring.readers)
    spin_any = cores.reader.spin_any
    started = time.monotonic()
    assert spin_any(readers, 0.05) is False
    assert 0.04 <= time.monotonic() - started < SHORT_TIMEOUT
    assert spin_any((), 0.0) is False

    record = Record(b"for the middle ring")
    assert write(rings[1].writer, record)
    started = time.monotonic()
    assert spin_any(readers, LONG_TIMEOUT) is True
    assert time.monotonic() - started < SHORT_TIMEOUT
    assert [reader.has_data() for reader in readers] == [False, False, True, True, False, False]
    assert drain(rings[1].readers[0]) == [record]
    assert spin_any(readers, LONG_TIMEOUT) is True  # the other reader of that ring
    assert drain(rings[1].readers[1]) == [record]
    assert spin_any(readers, 0.0) is False

    rings[2].ring.layout.set_state(CLOSED)
    assert spin_any(readers, LONG_TIMEOUT) is True


# -- doorbells ----------------------------------------------------------------------------


def park_then_poll(reader: ReaderCore, bell: Doorbell) -> Record | None:
    """Parks on ``bell`` unless a record waits, then polls once (no retry)."""
    bell.prepare_park()
    if reader.has_data():
        bell.cancel_park()
    else:
        bell.park(LONG_TIMEOUT)
    view = reader.poll()
    if view is None:
        return None
    record = Record(bytes(view), reader.kind, reader.more)
    reader.consume()
    return record


def publish(writer: WriterCore, how: str, data: bytes, wake: int) -> Record:
    """Publishes ``data`` (or a message around it) to reader ``wake`` by ``how``."""
    if how == "commit":
        record = Record(data)
        assert write(writer, record, wake=wake)
        return record
    if how == "send":
        assert writer.send([data[:3], data[3:]], len(data), wake) is True
        return Record(data)
    assert writer.send_message(11, 12, data, wake) is True
    return Record(prelude(11, 12, len(data)) + data)


@pytest.mark.timeout(3 * LONG_TIMEOUT)
@pytest.mark.parametrize("how", ["commit", "send", "send_message"])
def test_a_parked_reader_is_woken_by_a_record_addressed_to_it_and_only_that_reader(
    make_ring: MakeRing, how: str
) -> None:
    ring = make_ring(n_readers=2)
    bells = [ring.bell(0), ring.bell(1)]

    def unblock() -> None:
        for bell in bells:
            bell.interrupt()

    with (
        in_thread(lambda: park_then_poll(ring.readers[0], bells[0]), unblock=unblock) as other,
        in_thread(lambda: park_then_poll(ring.readers[1], bells[1]), unblock=unblock) as woken,
    ):
        wait_until_parked(ring.ring.region, reader_bell(0))
        wait_until_parked(ring.ring.region, reader_bell(1))
        record = publish(ring.writer, how, payload(0, 200), wake=1)
        assert woken.result(SHORT_TIMEOUT) == record
        # The reader the record was not addressed to was left parked.
        assert ring.bell_is_parked(reader_bell(0))
        assert not other.done()
        ring.writer.notify_all()
        assert other.result(SHORT_TIMEOUT) == record


@pytest.mark.timeout(3 * LONG_TIMEOUT)
def test_a_record_for_every_reader_wakes_every_parked_reader(make_ring: MakeRing) -> None:
    ring = make_ring(n_readers=3)
    bells = [ring.bell(r) for r in range(3)]

    def unblock() -> None:
        for bell in bells:
            bell.interrupt()

    with (
        in_thread(lambda: park_then_poll(ring.readers[0], bells[0]), unblock=unblock) as first,
        in_thread(lambda: park_then_poll(ring.readers[1], bells[1]), unblock=unblock) as second,
        in_thread(lambda: park_then_poll(ring.readers[2], bells[2]), unblock=unblock) as third,
    ):
        for r in range(3):
            wait_until_parked(ring.ring.region, reader_bell(r))
        record = Record(b"to all", more=True)
        assert write(ring.writer, record, wake=-1)
        for future in (first, second, third):
            assert future.result(SHORT_TIMEOUT) == record


def wait_for_room(writer: WriterCore, bell: Doorbell, nbytes: int) -> bool:
    """Parks the writer on ``bell`` unless a record of ``nbytes`` fits; then says if it fits."""
    bell.prepare_park()
    if writer.floor() >= writer.needed_floor(nbytes):
        bell.cancel_park()
    else:
        bell.park(LONG_TIMEOUT)
    return bool(writer.floor() >= writer.needed_floor(nbytes))


@pytest.mark.timeout(2 * LONG_TIMEOUT)
@pytest.mark.parametrize("freed_by", ["consume", "detach"])
def test_a_parked_writer_is_woken_when_the_slow_reader_consumes_or_detaches(
    make_ring: MakeRing, freed_by: str
) -> None:
    ring = make_ring(n_readers=2)
    fast, slow = ring.readers
    written = fill(ring, fast, MAX_PAYLOAD)
    bell = Doorbell(ring.ring.region, WRITER_BELL)

    with in_thread(
        lambda: wait_for_room(ring.writer, bell, MAX_PAYLOAD), unblock=bell.interrupt
    ) as future:
        wait_until_parked(ring.ring.region, WRITER_BELL)
        if freed_by == "consume":
            view = slow.poll()
            assert view is not None and bytes(view) == written[0].data
            slow.consume()
        else:
            slow.detach()
        assert future.result(SHORT_TIMEOUT) is True
    record = Record(payload(9, MAX_PAYLOAD))
    assert write(ring.writer, record)
    assert drain(fast) == [record]


# -- the whole transport suite on the pure-Python core ------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_transport_suite_passes_on_the_pure_python_core() -> None:
    assert_twin_is_selected()
    # -m "not slow": not this test, nor the other slow ones that run whole suites.
    assert_passes_on_the_twin(["tests/transport"], 280, "-x", "-m", "not slow")


def test_other_threads_run_while_a_long_spin_waits(make_one_core_ring: MakeRing) -> None:
    # A spin longer than the core's GIL window lets the GIL go: a spinning caller or
    # rank must not freeze its process's other threads (monitor, senders, actor code).
    reader = make_one_core_ring().readers[0]
    started, stop = threading.Event(), threading.Event()
    stamps: list[float] = []  # when the other thread ran, every 1000th time

    def count() -> None:
        started.set()
        runs = 0
        while not stop.is_set():
            runs += 1
            if runs % 1000 == 0:
                stamps.append(time.perf_counter())

    thread = threading.Thread(target=count)
    thread.start()
    started.wait(SHORT_TIMEOUT)
    begin = time.perf_counter()
    assert reader.spin(0.3) is False  # nothing arrives
    stop.set()
    thread.join(SHORT_TIMEOUT)
    # Well inside the spin, away from its edges, where the GIL may change hands anyway.
    inside = [stamp for stamp in stamps if begin + 0.02 <= stamp <= begin + 0.25]
    assert len(inside) > 10, f"the other thread ran {len(inside)}k times during the spin"
