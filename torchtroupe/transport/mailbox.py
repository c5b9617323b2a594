"""A group's mailbox: one request ring to every rank, one reply ring per rank.

The caller (the process that spawned the group) writes requests; rank ``i`` reads
the request ring as reader ``i`` and skips messages addressed to other ranks
without copying them, then answers on reply ring ``i``. Everything lives in one
:class:`SharedRegion`, mapped once per process::

    line 0        caller's reply bell  (the caller parks here for any reply)
    line 1        caller's send bell   (the caller parks here when the request ring is full)
    line 2 + 2i   rank i's request bell (rank i parks here for requests)
    line 3 + 2i   rank i's room bell    (rank i parks here when its reply ring is full)
    ...
    request ring  writer: caller; readers: ranks 0..n-1
    reply ring 0  writer: rank 0;  reader: caller
    ...

Each waiting reason has its own bell, so a caller that frees reply room never
wakes a rank parked for requests (and vice versa).
"""

from __future__ import annotations

from dataclasses import dataclass

from .doorbell import Doorbell
from .layout import (
    CACHE_LINE,
    CURSOR_WORD,
    DETACHED_WORD,
    MIN_CAPACITY,
    OPEN,
    STATE_LINE,
    WRITE_LINE,
)
from .region import SharedRegion, align_up
from .ring import RingLayout, RingReader, RingWriter, ring_footprint
from .stream import MessageReader, MessageWriter
from .waiting import DEFAULT_STRATEGY, WaitStrategy

_CALLER_REPLY_BELL = 0
_CALLER_SEND_BELL = CACHE_LINE


def _rank_bell(rank: int) -> int:
    return (2 + 2 * rank) * CACHE_LINE


def _rank_room_bell(rank: int) -> int:
    return (3 + 2 * rank) * CACHE_LINE


@dataclass(frozen=True, slots=True)
class MailboxLayout:
    """Where a group's rings live; picklable, so ranks can open their ends.

    Attributes:
        region: The shared memory.
        world_size: Number of ranks.
        request_offset: Offset of the request ring.
        reply_offsets: Offset of each rank's reply ring.
    """

    region: SharedRegion
    world_size: int
    request_offset: int
    reply_offsets: tuple[int, ...]

    @staticmethod
    def create(world_size: int, ring_bytes: int) -> MailboxLayout:
        """Allocates and formats the mailbox of a group of ``world_size`` ranks."""
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, not {world_size}")
        capacity = max(MIN_CAPACITY, 1 << (ring_bytes - 1).bit_length())
        request_offset = align_up(_rank_bell(world_size), CACHE_LINE)
        position = request_offset + ring_footprint(capacity, world_size)
        reply_offsets = []
        for _ in range(world_size):
            position = align_up(position, CACHE_LINE)
            reply_offsets.append(position)
            position += ring_footprint(capacity, 1)
        region = SharedRegion.allocate(position)
        RingLayout.format(
            region,
            request_offset,
            capacity=capacity,
            reader_bell_offsets=[_rank_bell(rank) for rank in range(world_size)],
            writer_bell_offset=_CALLER_SEND_BELL,
        )
        for rank, offset in enumerate(reply_offsets):
            RingLayout.format(
                region,
                offset,
                capacity=capacity,
                reader_bell_offsets=[_CALLER_REPLY_BELL],
                writer_bell_offset=_rank_room_bell(rank),
            )
        return MailboxLayout(region, world_size, request_offset, tuple(reply_offsets))

    def request_ring(self) -> RingLayout:
        """The request ring's layout."""
        return RingLayout(self.region, self.request_offset)

    def reply_ring(self, rank: int) -> RingLayout:
        """Rank ``rank``'s reply ring layout."""
        return RingLayout(self.region, self.reply_offsets[rank])

    def caller_reply_bell(self) -> Doorbell:
        """The doorbell the caller parks on while it waits for replies."""
        return Doorbell(self.region, _CALLER_REPLY_BELL)

    def reset_rank(self, rank: int, request_writer: RingWriter) -> None:
        """Prepares the rings of ``rank`` for a new incarnation of it.

        Call with no process writing rank ``rank``'s reply ring and no thread of the
        caller reading it, and while holding the request writer (no sends). The new
        incarnation starts reading at the current end of the request ring: requests
        the dead incarnation did not read are not replayed.
        """
        words = self.region.words
        reply = self.reply_ring(rank)
        words[reply.word_index(WRITE_LINE)] = 0
        words[reply.word_index(STATE_LINE)] = OPEN
        words[reply.word_index(reply.reader_line(0), CURSOR_WORD)] = 0
        words[reply.word_index(reply.reader_line(0), DETACHED_WORD)] = 0
        request = request_writer.layout
        request_line = request.reader_line(rank)
        words[request.word_index(request_line, CURSOR_WORD)] = request_writer.cursor
        words[request.word_index(request_line, DETACHED_WORD)] = 0


class CallerEnd:
    """The caller's side of a mailbox: the request writer and every reply reader.

    Args:
        layout: The group's mailbox.
        strategy: How the caller waits for replies and for request room.
    """

    def __init__(self, layout: MailboxLayout, strategy: WaitStrategy = DEFAULT_STRATEGY) -> None:
        self.layout = layout
        self.strategy = strategy
        self.requests = MessageWriter(RingWriter(layout.request_ring(), strategy))
        self.replies = [
            MessageReader(RingReader(layout.reply_ring(r), 0, strategy))
            for r in range(layout.world_size)
        ]
        self.reply_bell = layout.caller_reply_bell()

    def reopen_reply(self, rank: int) -> None:
        """Re-reads rank ``rank``'s reply cursor after :meth:`MailboxLayout.reset_rank`."""
        reader = RingReader(self.layout.reply_ring(rank), 0, self.strategy)
        self.replies[rank] = MessageReader(reader)


class RankEnd:
    """A rank's side of a mailbox: its request reader and its reply writer.

    Args:
        layout: The group's mailbox.
        rank: This rank.
        strategy: How the rank waits for requests and for reply room.
    """

    def __init__(
        self, layout: MailboxLayout, rank: int, strategy: WaitStrategy = DEFAULT_STRATEGY
    ) -> None:
        self.rank = rank
        self.strategy = strategy
        self.requests = MessageReader(RingReader(layout.request_ring(), rank, strategy))
        self.replies = MessageWriter(RingWriter(layout.reply_ring(rank), strategy))
