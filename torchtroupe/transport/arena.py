"""The tensor arena: shared memory that a large CPU tensor is written into once.

Runs in the caller (one arena per group, for its requests) and in every rank (one
arena, for its replies). The owner's sending thread uses an arena under its side's
send lock; the caller's monitor thread also forgets a dead reader (the arena's own
lock orders the two). Readers never touch this module's objects: they map the
segments (``arena_views.py``) and write their release flags.

Note [The tensor arena]
-----------------------
A fresh CPU tensor sent through the ring is copied twice (into the ring, then out
of it into fresh memory whose pages fault on first touch). A span of at least
``TORCHTROUPE_ARENA_MIN_BYTES`` instead goes into a block of its sender's arena:
the sender copies it once into memory both sides mapped beforehand (``MAP_POPULATE``,
so no page faults), and the receiver's tensor *is* that block (``arena_views.py``).

An arena is a list of segments, each a ``memfd`` (no name in ``/dev/shm``, mode
0600) mapped once by the owner and once by each reader. Segments are added as
needed, each at least as large as all before it, up to ``TORCHTROUPE_ARENA_BYTES``
in all; a span that does not fit then travels through the ring as before, so a
sender never waits for a reader to release memory. A new segment's fd goes to a
reader once, beside the first message that uses it (``fdpass.py``); the owner
remembers which readers have it (:meth:`TensorArena.forget_reader` clears that
when a reader's process ends).

A block is a header of release flags, one byte per reader, then the data::

    | flag[0] ... flag[n_readers - 1] | pad to 64 | data: nbytes | pad to 64 |

The owner sets the flag of every reader a message goes to before it publishes the
message; each reader stores 0 into its own flag when its last reference to the
block dies. Every byte has one writer at a time (the owner while the block is free,
that reader while it holds it), so no atomic read-modify-write is needed. The owner
frees a block once all its flags read 0 (:meth:`TensorArena._reclaim`, on every
allocation), and clears the flags of a reader whose process ended. A block is freed
once: only the owner frees, and only blocks it marked busy.

The allocator is private to the owner: a first-fit free list per segment with
coalescing (:class:`FreeList`), 64-byte granules so every dtype stays aligned.

Wire descriptor of a span in the arena (the codec writes it in place of the span's
bytes, ``codec.py``)::

    | arena: u64 | segment: u64 | block: u64 | offset: u64 | segment_bytes: u64 | fd_index: i64 |

``arena`` names the arena (its owner's pid and a serial), ``block`` where the
block (its flags) starts in the segment, ``offset`` where its data starts, and
``fd_index`` the index of the segment's fd among the fds passed beside the
message, or -1 when the reader maps it already.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import itertools
import os
import stat
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from .fence import full_fence

DESCRIPTOR = struct.Struct("<QQQQQq")
"""A span placed in an arena, as the codec writes it (see Note [The tensor arena])."""
GRANULE = 64
MIN_SEGMENT_BYTES = 16 << 20
_SEGMENT_ROUNDING = 2 << 20
_PID_SHIFT = 24

_PROT_READ_WRITE = 0x1 | 0x2
_MAP_SHARED = 0x01
_MAP_POPULATE = 0x8000
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

_serials = itertools.count(1)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class SharedMapping:
    """One mapping of a segment into this process, unmapped when the last reference
    goes (the arena's, a view registry's, or a block's through its numpy array).

    Exposes ``__array_interface__``, so ``numpy.asarray(mapping)`` is the bytes of the
    segment and keeps the mapping alive (Note [Received tensors outlive the group],
    ``arena_views.py``).

    Args:
        fd: The segment's fd; it may be closed once this returns.
        nbytes: The segment's size.

    Raises:
        OSError: The kernel refused the mapping.
    """

    def __init__(self, fd: int, nbytes: int) -> None:
        address = _libc.mmap(None, nbytes, _PROT_READ_WRITE, _MAP_SHARED | _MAP_POPULATE, fd, 0)
        if address is None or address == _MAP_FAILED:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot map an arena segment: {os.strerror(error)}")
        self.address: int = address
        self.nbytes = nbytes
        self.__array_interface__ = {
            "data": (address, False),
            "shape": (nbytes,),
            "typestr": "|u1",
            "version": 3,
        }

    def __del__(self) -> None:
        _libc.munmap(self.address, self.nbytes)


def create_segment(nbytes: int) -> tuple[int, SharedMapping]:
    """A new segment of ``nbytes``: its fd (the caller owns it) and the owner's mapping,
    with every page allocated and mapped.

    Raises:
        OSError: No memory, or no ``memfd`` on this system.
    """
    fd = os.memfd_create("torchtroupe-arena", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        os.ftruncate(fd, nbytes)
        os.posix_fallocate(fd, 0, nbytes)
        return fd, SharedMapping(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise


class FreeList:
    """First-fit free list of one segment, in granules of :data:`GRANULE` bytes.

    Runs in the arena's owner, under its lock.

    Args:
        nbytes: The segment's size (a multiple of the granule).
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._starts = [0]
        self._sizes = {0: nbytes}

    def allocate(self, nbytes: int) -> int | None:
        """The offset of a free run of ``nbytes`` (a granule multiple), or None."""
        for start in self._starts:
            size = self._sizes[start]
            if size >= nbytes:
                index = bisect.bisect_left(self._starts, start)
                del self._starts[index]
                del self._sizes[start]
                if size > nbytes:
                    self._starts.insert(index, start + nbytes)
                    self._sizes[start + nbytes] = size - nbytes
                return start
        return None

    def free(self, start: int, nbytes: int) -> None:
        """Returns ``[start, start + nbytes)`` (allocated earlier) to the list."""
        index = bisect.bisect_left(self._starts, start)
        if index < len(self._starts) and self._starts[index] < start + nbytes:
            raise ValueError(f"freeing [{start}, {start + nbytes}): it overlaps a free run")
        if index and self._starts[index - 1] + self._sizes[self._starts[index - 1]] > start:
            raise ValueError(f"freeing [{start}, {start + nbytes}): it overlaps a free run")
        end = start + nbytes
        if index < len(self._starts) and self._starts[index] == end:
            nbytes += self._sizes.pop(end)
            del self._starts[index]
        if index and self._starts[index - 1] + self._sizes[self._starts[index - 1]] == start:
            self._sizes[self._starts[index - 1]] += nbytes
            return
        self._starts.insert(index, start)
        self._sizes[start] = nbytes

    def free_bytes(self) -> int:
        """How many bytes are free."""
        return sum(self._sizes.values())

    def runs(self) -> list[tuple[int, int]]:
        """The free runs ``(start, nbytes)``, in address order."""
        return [(start, self._sizes[start]) for start in self._starts]


@dataclass(frozen=True, slots=True)
class PlacedBlock:
    """A span written into the arena, to describe on the wire.

    Attributes:
        descriptor: The span's descriptor (see Note [The tensor arena]), with
            ``fd_index`` -1; the codec fills it in when ``fd`` is not None.
        fd: The segment's fd, to pass beside the message (some reader lacks it).
        segment: Index of the segment.
        start: Where the block (its header) starts in the segment.
        readers: The readers the block went to.
    """

    descriptor: tuple[int, int, int, int, int, int]
    fd: int | None
    segment: int
    start: int
    readers: tuple[int, ...]


class _Segment:
    def __init__(self, fd: int, mapping: SharedMapping) -> None:
        self.fd = fd
        self.mapping = mapping
        self.free = FreeList(mapping.nbytes)
        self.flags = (ctypes.c_uint8 * mapping.nbytes).from_address(mapping.address)
        self.closer = weakref.finalize(self, os.close, fd)


class TensorArena:
    """The owner's side of an arena (see Note [The tensor arena]).

    Args:
        n_readers: How many readers its messages may go to (a group's world size for
            the request arena, 1 for a rank's reply arena).
        capacity: The most bytes its segments may add up to.
    """

    def __init__(self, n_readers: int, capacity: int) -> None:
        self.key = (os.getpid() << _PID_SHIFT) | next(_serials)
        self.n_readers = n_readers
        self.capacity = capacity
        self.header = _align(n_readers, GRANULE)
        self._segments: list[_Segment] = []
        self._busy: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
        self._known: list[set[int]] = [set() for _ in range(n_readers)]
        self._lock = threading.Lock()
        self._closed = False

    def place(self, address: int, nbytes: int, readers: Sequence[int]) -> PlacedBlock | None:
        """Copies ``nbytes`` at ``address`` into a new block for ``readers``.

        Returns:
            The block, or None (nothing copied) when the arena is full and may not
            grow: send the span another way.
        """
        total = self.header + _align(nbytes, GRANULE)
        with self._lock:
            if self._closed:
                return None
            self._reclaim()
            found = self._allocate(total)
            if found is None:
                return None
            index, start = found
            segment = self._segments[index]
            flags = segment.flags
            for reader in readers:
                flags[start + reader] = 1
            self._busy[(index, start)] = (total, tuple(readers))
            missing = [reader for reader in readers if index not in self._known[reader]]
            for reader in missing:
                self._known[reader].add(index)
        # The copy runs without the lock (and without the GIL: ctypes lets it go).
        ctypes.memmove(segment.mapping.address + start + self.header, address, nbytes)
        descriptor = (self.key, index, start, start + self.header, segment.mapping.nbytes, -1)
        return PlacedBlock(
            descriptor, segment.fd if missing else None, index, start, tuple(readers)
        )

    def cancel(self, blocks: Sequence[PlacedBlock]) -> None:
        """Gives back blocks of a message that was never published; safe on blocks a
        reader may have released already."""
        with self._lock:
            for block in blocks:
                if (block.segment, block.start) not in self._busy:
                    continue
                flags = self._segments[block.segment].flags
                for reader in block.readers:
                    flags[block.start + reader] = 0
            self._reclaim()

    def forget_reader(self, reader: int) -> None:
        """Reader ``reader``'s process ended: releases what it held and forgets which
        segments it had mapped (its next incarnation is sent their fds again).

        Call only once that process is gone (it must not release anything later).
        """
        with self._lock:
            self._known[reader].clear()
            for (index, start), (_, readers) in self._busy.items():
                if reader in readers:
                    self._segments[index].flags[start + reader] = 0
            self._reclaim()

    def close(self) -> None:
        """Closes the segments' fds and drops the owner's mappings (each goes once no
        block of it is referenced); later :meth:`place` calls return None."""
        with self._lock:
            self._closed = True
            segments, self._segments = self._segments, []
            self._busy.clear()
        for segment in segments:
            segment.closer()

    def segment_spans(self) -> list[tuple[int, int]]:
        """``(address, nbytes)`` of each segment in the owner's mapping (for tests)."""
        return [(s.mapping.address, s.mapping.nbytes) for s in self._segments]

    def busy_blocks(self) -> int:
        """How many blocks some reader still holds (after reclaiming the released)."""
        with self._lock:
            self._reclaim()
            return len(self._busy)

    def _reclaim(self) -> None:
        if not self._busy:
            return
        full_fence()  # the readers' last loads of a block come before its reuse
        released = []
        for key, (total, readers) in self._busy.items():
            flags = self._segments[key[0]].flags
            if not any(flags[key[1] + reader] for reader in readers):
                released.append((key, total))
        for (index, start), total in released:
            del self._busy[(index, start)]
            self._segments[index].free.free(start, total)

    def _allocate(self, total: int) -> tuple[int, int] | None:
        for index, segment in enumerate(self._segments):
            start = segment.free.allocate(total)
            if start is not None:
                return index, start
        grown = self._grow(total)
        if grown is None:
            return None
        start = grown.free.allocate(total)
        return (len(self._segments) - 1, start) if start is not None else None

    def _grow(self, total: int) -> _Segment | None:
        used = sum(s.mapping.nbytes for s in self._segments)
        wanted = _align(max(total, used, MIN_SEGMENT_BYTES), _SEGMENT_ROUNDING)
        if used + wanted > self.capacity:
            wanted = _align(total, _SEGMENT_ROUNDING)
            if used + wanted > self.capacity:
                return None
        try:
            fd, mapping = create_segment(wanted)
        except OSError:
            return None  # no memory now: the ring carries the span instead
        segment = _Segment(fd, mapping)
        self._segments.append(segment)
        return segment


def arena_owner(key: int) -> int:
    """The pid of the process that owns arena ``key``."""
    return key >> _PID_SHIFT
