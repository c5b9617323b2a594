"""Messages of any size over a ring: fragmentation on write, streaming on read.

Runs in the writer's and readers' processes, one thread per end at a time.

A message is a byte string of known length written as one or more records; every
record but the last has the MORE flag. A message larger than a record streams
through the ring in fragments, so memory stays bounded whatever the size. If a
writer gives up in the middle of a message (deadline, interrupt), its next send
first publishes an ABORT record; a reader that meets ABORT in place of the next
fragment drops the partial message (:class:`MessageAbortedError`) and carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .layout import ABORT
from .ring import RingReader, RingWriter

Alive = Callable[[], bool] | None


class MessageAbortedError(Exception):
    """The writer abandoned the message being read; skip to the next one."""


class MessageWriter:
    """Writes whole messages, gathered from several buffers, into a ring.

    Args:
        ring: The ring's writing end.
    """

    def __init__(self, ring: RingWriter) -> None:
        self.ring = ring
        self._abort_pending = False

    @property
    def abort_pending(self) -> bool:
        """True if the last message was abandoned part-way: the next :meth:`send`
        first tells readers so. Nothing may bypass :meth:`send` until then."""
        return self._abort_pending

    def send(
        self,
        chunks: Sequence[memoryview | bytes],
        nbytes: int,
        *,
        deadline: float | None,
        alive: Alive = None,
        wake: int = -1,
    ) -> None:
        """Writes ``chunks`` (``nbytes`` in all) as one message.

        Each chunk is copied once, straight into the ring. ``wake`` names the one
        reader the message is for (-1: all), see :meth:`RingWriter.commit`.

        Raises:
            TimeoutError: The ring stayed full until the deadline. If nothing of the
                message was published, the ring is as it was; otherwise readers will
                drop the partial message.
            ChannelClosedError, ChannelBrokenError: From the ring.
        """
        ring = self.ring
        if self._abort_pending:
            try:
                ring.reserve(0, deadline=deadline, alive=alive)
                ring.commit(0, kind=ABORT)
            except BaseException:
                ring.cancel()  # interrupted between the two: nothing was published
                raise
            self._abort_pending = False
        limit = ring.max_payload
        if nbytes <= limit:
            if ring.send(chunks, nbytes, wake):  # the common case: room now, one record
                return
            try:
                # A signal may interrupt us once the core has reserved: cancel below.
                view = ring.reserve(nbytes, deadline=deadline, alive=alive)
                position = 0
                for chunk in chunks:
                    if type(chunk) is not bytes:
                        chunk = memoryview(chunk).cast("B")
                    end = position + len(chunk)
                    view[position:end] = chunk
                    position = end
            except BaseException:
                ring.cancel()  # a chunk could not be read, or an interrupt: nothing published
                raise
            ring.commit(nbytes, wake=wake)
            return
        self._send_fragments(chunks, nbytes, limit, deadline, alive, wake)

    def _send_fragments(
        self,
        chunks: Sequence[memoryview | bytes],
        nbytes: int,
        limit: int,
        deadline: float | None,
        alive: Alive,
        wake: int,
    ) -> None:
        ring = self.ring
        sources = [memoryview(chunk).cast("B") for chunk in chunks if len(chunk)]
        source_index, source_offset = 0, 0
        remaining = nbytes
        started = False
        try:
            while remaining:
                size = min(remaining, limit)
                view = ring.reserve(size, deadline=deadline, alive=alive)
                filled = 0
                while filled < size:
                    source = sources[source_index]
                    take = min(size - filled, len(source) - source_offset)
                    view[filled : filled + take] = source[source_offset : source_offset + take]
                    filled += take
                    source_offset += take
                    if source_offset == len(source):
                        source_index, source_offset = source_index + 1, 0
                remaining -= size
                ring.commit(size, more=remaining > 0, wake=wake)
                started = True
        except BaseException:
            ring.cancel()  # a fragment reserved but not published is forgotten
            if started:
                self._abort_pending = True
            raise


class IncomingMessage:
    """One message being read; bytes are pulled from the ring as they are asked for.

    :attr:`first` is the first fragment's payload, valid until :meth:`finish` or a
    read that moves past it. When :attr:`complete` is true the whole message is
    in :attr:`first` (the common case for small messages).
    """

    __slots__ = (
        "_alive",
        "_deadline",
        "_offset",
        "_owner",
        "_reader",
        "_view",
        "complete",
        "first",
    )

    def __init__(
        self,
        owner: MessageReader,
        first: memoryview,
        deadline: float | None,
        alive: Alive,
    ) -> None:
        self._owner = owner
        reader = self._reader = owner.ring
        self._deadline = deadline
        self._alive = alive
        self.first = first
        self.complete = not reader.more
        self._view = first
        self._offset = 0

    def skip(self, nbytes: int) -> None:
        """Moves ``nbytes`` forward without copying."""
        self._pull(None, nbytes)

    def readinto(self, destination: memoryview) -> None:
        """Fills ``destination`` with the message's next ``len(destination)`` bytes."""
        self._pull(destination, len(destination))

    def _pull(self, destination: memoryview | None, nbytes: int) -> None:
        done = 0
        while done < nbytes:
            available = len(self._view) - self._offset
            if available == 0:
                self._next_fragment()
                continue
            take = min(available, nbytes - done)
            if destination is not None:
                destination[done : done + take] = self._view[self._offset : self._offset + take]
            self._offset += take
            done += take

    def _next_fragment(self) -> None:
        reader = self._reader
        if not reader.more:
            raise ValueError("read past the end of the message")
        reader.consume()
        try:
            view = reader.receive(deadline=self._deadline, alive=self._alive)
        except TimeoutError:
            # The rest of this message is still to come: the next receive must skip it.
            self._owner.resync = True
            raise
        if reader.kind == ABORT:
            reader.consume()
            self._view = memoryview(b"")
            raise MessageAbortedError
        self._view, self._offset = view, 0

    def finish(self) -> None:
        """Skips whatever is left of the message and releases it to the writer."""
        reader = self._reader
        while reader.more:
            reader.consume()
            try:
                reader.receive(deadline=self._deadline, alive=self._alive)
            except TimeoutError:
                self._owner.resync = True
                raise
            if reader.kind == ABORT:
                break
        reader.consume()


class MessageReader:
    """Reads whole messages from one ring reader.

    Args:
        ring: The ring's reading end.
    """

    def __init__(self, ring: RingReader) -> None:
        self.ring = ring

    @property
    def resync(self) -> bool:
        """True after a read gave up in the middle of a message: the records still to
        come of that message are skipped before the next message. Kept in the ring
        core, whose ``take`` leaves every record to this class while it is set."""
        return self.ring.resync

    @resync.setter
    def resync(self, value: bool) -> None:
        self.ring.resync = value

    def _skip_continuation(self) -> None:
        """Consumes one record of an abandoned message; back in step after its last
        fragment (or an ABORT record)."""
        reader = self.ring
        self.resync = reader.kind != ABORT and reader.more
        reader.consume()

    def _starts_a_message(self) -> bool:
        """Whether the record just received starts a message; consumes it if not
        (an ABORT, or what is left of a message a read gave up on)."""
        if self.resync:
            self._skip_continuation()
            return False
        if self.ring.kind == ABORT:
            self.ring.consume()
            return False
        return True

    def take(
        self,
        loads: Callable[[memoryview], Any],
        rank: int,
        *,
        deadline: float | None = None,
        alive: Alive = None,
    ) -> tuple[Any, ...] | IncomingMessage | None:
        """The next message for ``rank`` (or for every rank), if it has arrived: the hot
        path of calls and replies, for messages in the codec's format (``codec.py``).

        A message that is one record without tensors is unpickled with ``loads`` and
        released here, and one addressed to another rank is skipped, both inside the
        ring core. Any other message comes back as an :class:`IncomingMessage` to
        decode (or to :meth:`~IncomingMessage.finish` if it is for another rank).

        Returns:
            The unpickled tuple, an IncomingMessage, or None if nothing arrived.
        """
        ring = self.ring
        while True:
            taken = ring.take(loads, rank)  # every record, while resync is set
            if taken is None or isinstance(taken, tuple):
                return taken
            message = self.message_from(taken, deadline=deadline, alive=alive)
            if message is not None:
                return message

    def message_from(
        self, record: memoryview, *, deadline: float | None = None, alive: Alive = None
    ) -> IncomingMessage | None:
        """The message that ``record`` (polled or left by ``take``, still pending)
        starts, or None if it starts none (an ABORT, or part of an abandoned message):
        then it was consumed."""
        if self._starts_a_message():
            return IncomingMessage(self, record, deadline, alive)
        return None

    def receive(self, *, deadline: float | None, alive: Alive = None) -> IncomingMessage:
        """Waits for the next message; call :meth:`IncomingMessage.finish` when done.

        Raises:
            TimeoutError: Nothing arrived before the deadline.
            ChannelClosedError, ChannelBrokenError: From the ring.
        """
        while True:
            first = self.ring.receive(deadline=deadline, alive=alive)
            if self._starts_a_message():
                return IncomingMessage(self, first, deadline, alive)

    def poll(self, *, deadline: float | None = None, alive: Alive = None) -> IncomingMessage | None:
        """Returns the next message if its first fragment has arrived, else None.

        ``deadline`` and ``alive`` bound the waits for the message's later fragments.
        """
        while True:
            first = self.ring.poll()
            if first is None:
                return None
            if self._starts_a_message():
                return IncomingMessage(self, first, deadline, alive)
