"""Writing requests to a group's ranks, in the caller.

Runs in the caller's threads. Calls from one caller reach each rank in the order
they were made: the sequence number is taken and the request written under one
lock (``send_lock``), and each rank reads its requests in ring order.

A request on the wire is a plain tuple in the field order of ``messages.Request``.
:meth:`RequestWriter.write_again` writes a request a dead rank never read to its
next incarnation (Note [Calls a dead rank never read] in ``deaths.py``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from .._settings import SETTINGS
from ..errors import (
    ActorDiedError,
    CallTimeoutError,
    ChannelBrokenError,
    ChannelClosedError,
)
from ..transport.arena import TensorArena
from ..transport.codec import TARGET_ALL, EncodedMessage, Encoder, send_encoded
from ..transport.fdpass import FdChannel
from ..transport.stream import MessageWriter
from .messages import STOP, Request
from .pump import ReplyPump
from .slots import CallSlot, Outgoing

_TRANSITION_WAIT_S = 0.01


class CallGate(Protocol):
    """What the writer asks of a group's lifecycle before and while it writes."""

    name: str
    world_size: int
    closed: bool

    def wait_ready(self, ranks: Sequence[int], deadline: float | None) -> None:
        """Returns once every rank is READY or dead for good (raises if closed)."""

    def raise_if_closed(self) -> None:
        """Raises the error a new call to a closed group gets."""

    def death_of(self, rank: int) -> ActorDiedError | None:
        """The death of a rank that stays dead, or None."""

    def wait_changed(self, timeout: float) -> None:
        """Waits up to ``timeout`` for any rank to change state."""

    def fd_channel(self, rank: int) -> FdChannel | None:
        """The fd channel of ``rank``'s serving process, or None if it has none."""


class RequestWriter:
    """The caller's writer of one group's request ring.

    Args:
        requests: The request ring's message writer.
        pump: The group's reply pump (slots are registered there before writing).
        gate: The group's lifecycle.
    """

    def __init__(self, requests: MessageWriter, pump: ReplyPump, gate: CallGate) -> None:
        self.requests = requests
        self.pump = pump
        self.gate = gate
        self.send_lock = threading.Lock()
        # Large tensors of requests go through the group's arena (Note [The tensor arena]).
        self.arena = TensorArena(gate.world_size, SETTINGS.arena_bytes)
        self.encoder = Encoder(
            share_fds=True, arena=self.arena, arena_min_bytes=SETTINGS.arena_min_bytes
        )
        self.sequence = itertools.count(1)

    def submit(
        self, ranks: Sequence[int], outgoing: Sequence[Outgoing], deadline: float | None
    ) -> list[CallSlot]:
        """Writes ``outgoing`` once its ranks are ready; returns one slot per rank.

        A rank that is dead for good gets its slot failed at once with its death.

        Raises:
            CallTimeoutError: The ranks were not ready, or the ring had no room,
                before ``deadline``.
            GroupClosedError, SupervisionError: The group closed or gave up.
        """
        gate = self.gate
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise CallTimeoutError(
                    f"rank(s) {list(ranks)} of group {gate.name!r} were between incarnations "
                    f"until the deadline"
                )
            gate.wait_ready(ranks, deadline)
            wait_s = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.send_lock.acquire(timeout=wait_s):
                raise CallTimeoutError(
                    f"other callers of group {gate.name!r} held the request ring past the deadline"
                )
            try:
                gate.raise_if_closed()
                seq = next(self.sequence)
                name = outgoing[0][2]
                slots = [CallSlot(seq, rank, name) for rank in ranks]
                if self._register(slots):
                    self._write(seq, outgoing, ranks, slots, deadline)
                    return slots
            finally:
                self.send_lock.release()
            # A rank is between incarnations (its death is being recorded): wait for it.
            gate.wait_changed(_TRANSITION_WAIT_S)

    def _register(self, slots: list[CallSlot]) -> bool:
        """Registers every slot; a dead rank's slot fails at once with its death.

        Returns:
            False (and nothing registered) if a rank is between incarnations.
        """
        failed = []
        for slot in self.pump.register_all(slots):
            death = self.gate.death_of(slot.rank)
            if death is None:
                self.pump.forget(slots)
                return False
            failed.append((slot, death))
        for slot, death in failed:
            slot.resolve(None, death)
        return True

    def _write(
        self,
        seq: int,
        outgoing: Sequence[Outgoing],
        ranks: Sequence[int],
        slots: list[CallSlot],
        deadline: float | None,
    ) -> None:
        """Encodes and writes ``outgoing``; call with the send lock held."""
        encoder = self.encoder
        encoded: list[tuple[Outgoing, bytes | EncodedMessage]] = []
        sent = 0
        try:
            # Encode everything first: a value that cannot be sent fails the whole call
            # before any rank receives anything.
            for request in outgoing:
                encoded.append(
                    (request, encoder.encode_compact((seq, *request[1:]), request[0], seq))
                )
            for request, message in encoded:
                target = request[0]
                if target != TARGET_ALL and slots[ranks.index(target)].done:
                    sent += 1
                    encoder.cancel(message)
                    continue  # that rank is dead: its slot already failed
                if isinstance(message, EncodedMessage) and message.fds:
                    self._send_fds(target, seq, message.fds, deadline)
                send_encoded(self.requests, message, target, seq, deadline=deadline, wake=target)
                sent += 1
        except BaseException as error:
            for _, message in encoded[sent:]:
                encoder.cancel(message)  # never published: its blocks go back
            self.pump.forget(slots)
            if isinstance(error, (ChannelBrokenError, ChannelClosedError)) and self.gate.closed:
                self.gate.raise_if_closed()
            if not isinstance(error, TimeoutError):
                raise
            raise CallTimeoutError(
                f"the request ring of group {self.gate.name!r} stayed full until the deadline"
            ) from error

    def _send_fds(self, target: int, tag: int, fds: Sequence[int], deadline: float | None) -> None:
        """Passes ``fds`` for message ``tag`` to ``target`` (or every serving rank).

        Call with the send lock held, before the message is published. A rank that
        is gone is skipped: its death fails the call anyway.
        """
        ranks = range(self.gate.world_size) if target == TARGET_ALL else [target]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for rank in ranks:
            channel = self.gate.fd_channel(rank)
            if channel is None:
                continue
            try:
                channel.send(tag, fds, timeout)
            except TimeoutError:
                raise  # the call fails: publishing without its fds would stall the rank
            except (ChannelBrokenError, OSError):
                continue

    def write_again(self, slots: Sequence[CallSlot], deadline: float | None) -> list[CallSlot]:
        """Writes each slot's request again, to its rank alone (a new incarnation that
        replaces one which never read it); call with the send lock held.

        Returns:
            The slots whose request could not be written (the caller fails them).
        """
        failed = []
        for slot in slots:
            request = slot.request
            if slot.done or request is None:
                continue
            _, kind, name, args, kwargs = request
            try:
                message = self.encoder.encode_compact(
                    (slot.seq, kind, name, args, kwargs), slot.rank, slot.seq
                )
                slot.position = self.requests.ring.cursor
                if isinstance(message, EncodedMessage) and message.fds:
                    self._send_fds(slot.rank, slot.seq, message.fds, deadline)
                try:
                    send_encoded(
                        self.requests,
                        message,
                        slot.rank,
                        slot.seq,
                        deadline=deadline,
                        wake=slot.rank,
                    )
                except BaseException:
                    self.encoder.cancel(message)
                    raise
            except Exception:
                failed.append(slot)
        return failed

    def send_stop(self, timeout: float, ranks: Sequence[int], world_size: int) -> None:
        """Asks ``ranks`` to stop gracefully; gives up quietly (they are then stopped
        by signal)."""
        # A signal handler may run this while the interrupted thread holds the lock.
        if not self.send_lock.acquire(timeout=min(timeout, 1.0)):
            return
        try:
            targets = [TARGET_ALL] if len(ranks) == world_size else list(ranks)
            for target in targets:
                self.encoder.send(
                    self.requests,
                    tuple(Request(0, STOP, "", (), {})),
                    target=target,
                    deadline=time.monotonic() + min(timeout, 1.0),
                )
        except Exception:
            pass  # the ranks are stopped by signal instead
        finally:
            self.send_lock.release()
