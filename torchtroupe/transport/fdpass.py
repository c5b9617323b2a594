"""Passing file descriptors beside ring messages, for tensors already in shared memory.

Runs in the caller and in each rank; one channel per rank incarnation, each end
used under its side's send lock (writes) or pump/serve loop (reads).

A CPU tensor whose storage is already shared (``share_memory_()``, torch's
file-descriptor strategy) is not copied through the ring: the sender passes the
storage's fd over a ``SOCK_SEQPACKET`` socket pair with ``SCM_RIGHTS``, and the
message names it by index. Each batch of fds is tagged with the sequence number of
the message it belongs to, and is sent *before* that message is published, so a
reader always finds the fds already waiting. If publishing then fails (a
deadline), the batch is orphaned; the reader, asking for a later tag, closes it::

    | tag: i64 | count: u32 |  + SCM_RIGHTS: up to 250 fds     (one datagram per batch)

The receiver maps each fd through torch's own cache keyed by the segment's inode,
so sending the same shared tensor again reuses the mapping; no segment is ever
named in ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Sequence

from ..errors import ChannelBrokenError

_HEADER = struct.Struct("<qI")
_MAX_FDS_PER_BATCH = 250  # the kernel takes at most 253 per message


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of sockets for one channel (caller end, rank end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class FdChannel:
    """One end of a channel of tagged fd batches.

    Args:
        sock: A ``SOCK_SEQPACKET`` Unix socket connected to the other end.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._held: dict[int, list[int]] = {}

    def send(self, tag: int, fds: Sequence[int], timeout: float | None = None) -> None:
        """Passes ``fds`` (duplicated into the peer) for the message tagged ``tag``.

        Raises:
            ChannelBrokenError: The other end is gone.
            TimeoutError: The peer's socket stayed full for ``timeout`` seconds.
        """
        self._socket.settimeout(timeout)
        try:
            for start in range(0, len(fds), _MAX_FDS_PER_BATCH):
                batch = list(fds[start : start + _MAX_FDS_PER_BATCH])
                socket.send_fds(self._socket, [_HEADER.pack(tag, len(batch))], batch)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ChannelBrokenError("the peer of this fd channel is gone") from error

    def receive(self, tag: int, count: int, timeout: float | None = None) -> list[int]:
        """Returns the ``count`` fds sent for message ``tag``; the caller owns them.

        Batches for earlier tags (whose messages were never published) are closed.

        Raises:
            ChannelBrokenError: The other end closed before sending them.
            TimeoutError: They did not arrive within ``timeout`` seconds.
        """
        received = self._held.pop(tag, [])
        self._socket.settimeout(timeout)
        while len(received) < count:
            try:
                data, fds, _, _ = socket.recv_fds(self._socket, _HEADER.size, _MAX_FDS_PER_BATCH)
            except ConnectionResetError as error:
                raise ChannelBrokenError("the peer of this fd channel is gone") from error
            if not data:
                _close_all(received)
                raise ChannelBrokenError("the peer closed its fd channel before sending the fds")
            batch_tag, _ = _HEADER.unpack(data)
            if batch_tag == tag:
                received.extend(fds)
            elif batch_tag < tag:
                _close_all(fds)
            else:
                self._held.setdefault(batch_tag, []).extend(fds)
        return received

    def close(self) -> None:
        """Closes the socket and any fds received but not yet claimed."""
        for fds in self._held.values():
            _close_all(fds)
        self._held.clear()
        self._socket.close()


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
