"""Turning Python objects into ring messages and back.

Runs in the caller and in every rank; an encoder is used by one thread at a time.

Wire format of one message (all integers little-endian u64)::

    | target | tag | n_storages | n_fds | pickle_len | (len, base) * n | pickle | storages |

``target`` is the mailbox's addressing word (the rank a request is for, or -1 for
all) and ``tag`` the request's sequence number, so a reader can skip a message
without unpickling it, and answer one it cannot unpickle. ``n_fds`` counts the
shared-memory fds passed beside the message (``fdpass.py``), tagged with ``tag``.
The first five words are the prelude, ``layout.PRELUDE``: the ring cores write and
read it too (Note [One home for the ring's numbers], ``layout.py``).

Note [Tensors in the codec]
---------------------------
The pickle stream (protocol 5) never holds tensor data. A strided CPU tensor is
reduced to a reference to its storage, and each distinct storage in the message is
appended after the pickle bytes; the message writer copies those bytes from the
tensor's memory straight into the ring, and the reader copies them from the ring
straight into a fresh tensor: one copy on each side, no intermediate ``bytes``.
Views of one storage stay views of one storage after the trip, and only the span
of the storage that the message's tensors cover is sent (``base`` is where that
span starts in the original storage, 64-byte aligned so every dtype stays aligned). CUDA tensors go
through torch's own reduction (a CUDA IPC handle, no copy of device memory); a
CUDA tensor that this process itself received from another one cannot be
re-exported by CUDA IPC, so it is cloned once on its device and the clone sent.
A CPU tensor whose storage is already in shared memory is not copied at all when
the encoder may pass fds: its storage's fd travels beside the message, and the
receiver maps the same memory (through torch's inode-keyed mapping cache).
A span of at least ``TORCHTROUPE_ARENA_MIN_BYTES`` goes instead into the sender's
tensor arena when the encoder has one (Note [The tensor arena], ``arena.py``): its
size-table entry has bit 63 set, and where its bytes would be the message holds the
block's descriptor; the receiver's storage is the block itself (``arena_views.py``).
Functions and classes that cannot be imported by name in the receiver (defined in
``__main__``, in a notebook, or locally) are pickled by value with cloudpickle.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.multiprocessing.reductions import rebuild_storage_fd, reduce_tensor

from .arena import DESCRIPTOR, PlacedBlock, TensorArena
from .arena_views import block_storage
from .byvalue import dumps_by_value as dumps_by_value
from .byvalue import needs_value_pickling
from .layout import PRELUDE

# The prelude's target for a broadcast; callers address messages from here.
from .layout import TARGET_ALL as TARGET_ALL
from .region import raw_bytes
from .stream import IncomingMessage, MessageWriter

if TYPE_CHECKING:
    from ._ringcore_py import loads as loads
    from ._ringcore_py import plain_dumps
else:
    from .core import core

    loads, plain_dumps = core.loads, core.plain_dumps

_BASE_ALIGNMENT = 64
_PROTOCOL = 5
_IN_ARENA = 1 << 63  # a size-table entry's flag: the span is in the sender's arena


class _DecodeContext(threading.local):
    storages: list[torch.UntypedStorage]
    bases: list[int]
    fds: list[int]

    def __init__(self) -> None:
        self.storages = []
        self.bases = []
        self.fds = []


_decoding = _DecodeContext()


def _rebuild_tensor(
    storage_index: int,
    dtype: torch.dtype,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    byte_offset: int,
    requires_grad: bool,
) -> torch.Tensor:
    storage = _decoding.storages[storage_index]
    offset = (byte_offset - _decoding.bases[storage_index]) // dtype.itemsize
    tensor = torch.empty(0, dtype=dtype)
    tensor.set_(storage, offset, size, stride)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


class _Detachable:
    """What torch's ``rebuild_storage_fd`` expects: an object whose detach() gives an fd."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def detach(self) -> int:
        return self._fd


def _rebuild_shared_tensor(
    fd_index: int,
    nbytes: int,
    dtype: torch.dtype,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    offset: int,
    requires_grad: bool,
) -> torch.Tensor:
    # rebuild_storage_fd closes the fd it is given, and maps each segment once.
    fd = os.dup(_decoding.fds[fd_index])
    storage = rebuild_storage_fd(torch.UntypedStorage, _Detachable(fd), nbytes)  # type: ignore[no-untyped-call]
    tensor = torch.empty(0, dtype=dtype)
    tensor.set_(storage, offset, size, stride)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool) -> torch.nn.Parameter:
    return torch.nn.Parameter(data, requires_grad=requires_grad)


class _Pickler(pickle.Pickler):
    """A pickler that sends tensor storages out of band (Note [Tensors in the codec])."""

    def __init__(self, file: io.BytesIO, share_fds: bool) -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self.share_fds = share_fds
        self.fds: list[int] = []
        self._fd_index: dict[int, int] = {}
        self.spans: list[list[int]] = []  # per storage sent: [address, first byte, end]
        self.keepalive: list[torch.Tensor] = []
        self._storage_index: dict[int, int] = {}

    def reset(self) -> None:
        self.clear_memo()
        self.fds = []
        self._fd_index = {}
        self.spans = []
        self.keepalive = []
        self._storage_index = {}

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._reduce_tensor(obj)
        if isinstance(obj, (types.FunctionType, type)) and needs_value_pickling(obj):
            return (pickle.loads, (dumps_by_value(obj),))
        return NotImplemented

    def _reduce_cuda(self, tensor: torch.Tensor) -> Any:
        try:
            return reduce_tensor(tensor)  # type: ignore[no-untyped-call]
        except RuntimeError as error:
            if "received from another process" not in str(error):
                raise
        # CUDA IPC cannot re-export memory this process imported: copy it once on the
        # device, and send the copy by handle (see Note [Tensors in the codec]).
        copy = tensor.clone()
        self.keepalive.append(copy)
        return reduce_tensor(copy)  # type: ignore[no-untyped-call]

    def _reduce_shared(self, tensor: torch.Tensor, storage: torch.UntypedStorage) -> Any:
        try:
            fd, nbytes = storage._share_fd_cpu_()  # already shared: its fd, nothing moves
        except RuntimeError:
            return None  # shared some other way (a named segment): copy it instead
        index = self._fd_index.get(fd)
        if index is None:
            index = self._fd_index[fd] = len(self.fds)
            self.fds.append(fd)
        return (
            _rebuild_shared_tensor,
            (
                index,
                nbytes,
                tensor.dtype,
                tuple(tensor.size()),
                tuple(tensor.stride()),
                tensor.storage_offset(),
                tensor.requires_grad,
            ),
        )

    def _reduce_tensor(self, tensor: torch.Tensor) -> Any:
        if type(tensor) is torch.nn.Parameter:
            return (_rebuild_parameter, (tensor.data, tensor.requires_grad))
        if type(tensor) is not torch.Tensor:
            return NotImplemented
        if tensor.is_cuda:
            return self._reduce_cuda(tensor)
        if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_quantized:
            return NotImplemented
        if tensor.is_conj() or tensor.is_neg():
            # The raw storage does not hold the lazy conjugate/negative bit: send the
            # values it stands for (a copy), as torch's own pickling does.
            resolved = tensor.resolve_conj().resolve_neg()
            self.keepalive.append(resolved)  # its bytes are written after we return
            return self._reduce_tensor(resolved)
        if tensor.requires_grad and not tensor.is_leaf:
            raise TypeError(
                "cannot send a tensor that requires grad and is not a leaf of the autograd "
                "graph: send tensor.detach() (gradients do not cross processes)"
            )
        storage = tensor.untyped_storage()
        if self.share_fds and storage.is_shared() and storage.nbytes():
            shared = self._reduce_shared(tensor, storage)
            if shared is not None:
                return shared
        # Only the bytes this message's tensors cover are sent (Note [Tensors in the
        # codec]): a view of a big tensor does not drag the whole storage along.
        item = tensor.element_size()
        first = int(tensor.storage_offset()) * item
        end = first
        if tensor.numel():
            last = int(tensor.storage_offset()) + sum(
                (n - 1) * step for n, step in zip(tensor.size(), tensor.stride(), strict=True)
            )
            end = int(last + 1) * item
        key = storage.data_ptr()
        index = self._storage_index.get(key)
        if index is None:
            index = self._storage_index[key] = len(self.spans)
            self.spans.append([key, first, end])
        else:
            span = self.spans[index]
            if first < end:  # an empty tensor widens nothing
                span[1], span[2] = (
                    (first, end)
                    if span[1] == span[2]
                    else (
                        min(span[1], first),
                        max(span[2], end),
                    )
                )
        return (
            _rebuild_tensor,
            (
                index,
                tensor.dtype,
                tuple(tensor.size()),
                tuple(tensor.stride()),
                first,
                tensor.requires_grad,
            ),
        )


class EncodedMessage(NamedTuple):
    """A message ready to write.

    Attributes:
        chunks: Its bytes, in order; they reference the tensors' memory, so write
            them before the tensors change.
        nbytes: Total size.
        fds: Shared-memory fds to pass beside it (``fdpass.py``) before writing it.
        keepalive: Temporaries whose memory the chunks reference; hold the message
            until it is written.
        blocks: Arena blocks the message hands to its readers; give them back with
            :meth:`Encoder.cancel` if it is never published.
    """

    chunks: list[memoryview | bytes]
    nbytes: int
    fds: Sequence[int]
    keepalive: Sequence[torch.Tensor]
    blocks: Sequence[PlacedBlock] = ()


def _without_tensors(pickle_bytes: bytes, target: int, tag: int) -> EncodedMessage:
    """The message of a pickle that holds no tensors: the prelude, then the pickle."""
    prelude = PRELUDE.pack(target, tag, 0, 0, len(pickle_bytes))
    return EncodedMessage([prelude, pickle_bytes], len(prelude) + len(pickle_bytes), (), ())


class Encoder:
    """Encodes objects into messages; one per sending thread.

    Args:
        share_fds: Whether the destination can receive fds beside messages
            (``fdpass.py``). If so, tensors already in shared memory travel as fds,
            listed in :attr:`EncodedMessage.fds`; if not, they are copied.
        arena: This sender's tensor arena (it needs ``share_fds``), or None.
        arena_min_bytes: The smallest span that goes into the arena.
    """

    def __init__(
        self,
        *,
        share_fds: bool = False,
        arena: TensorArena | None = None,
        arena_min_bytes: int = 1 << 16,
    ) -> None:
        self._buffer = io.BytesIO()
        self._pickler = _Pickler(self._buffer, share_fds)
        self.arena = arena if share_fds else None
        self.arena_min_bytes = arena_min_bytes

    def encode(self, obj: Any, target: int = TARGET_ALL, tag: int = 0) -> EncodedMessage:
        """Pickles ``obj`` into a message addressed to ``target`` and tagged ``tag``.

        Raises:
            TypeError: ``obj`` (or something inside it) cannot be pickled. Nothing
                has been written anywhere.
        """
        message = self.encode_compact(obj, target, tag)
        if isinstance(message, EncodedMessage):
            return message
        return _without_tensors(message, target, tag)

    def encode_compact(
        self, obj: Any, target: int = TARGET_ALL, tag: int = 0
    ) -> bytes | EncodedMessage:
        """Like :meth:`encode`, but a message without tensors comes back as its pickle
        bytes alone, to be sent with :func:`send_encoded` (the hot path of calls).

        Raises:
            TypeError: As for :meth:`encode`.
        """
        plain = plain_dumps(obj)
        if plain is not None:
            # Builtin values only: the ring core pickles them as the stock pickler
            # would (ours never asks reducer_override about them), several times faster.
            return plain
        buffer, pickler = self._buffer, self._pickler
        buffer.seek(0)
        buffer.truncate()
        try:
            pickler.dump(obj)
        except Exception as error:
            pickler.reset()
            raise TypeError(
                f"torchtroupe cannot send this value: {type(error).__name__}: {error}"
            ) from error
        finally:
            pickler.clear_memo()
        payload = buffer.getvalue()
        if not pickler.spans and not pickler.fds and not pickler.keepalive:
            return payload  # the common case: no tensors
        spans, fds, keepalive = pickler.spans, pickler.fds, pickler.keepalive
        pickler.reset()
        storages: list[memoryview | bytes] = []
        table: list[int] = []
        blocks: list[PlacedBlock] = []
        arena = self.arena
        for address, first, end in spans:
            base = first & ~(_BASE_ALIGNMENT - 1)  # keeps every dtype's alignment
            nbytes = end - base
            block = None
            if arena is not None and nbytes >= self.arena_min_bytes:
                readers = range(arena.n_readers) if target == TARGET_ALL else (target,)
                block = arena.place(address + base, nbytes, readers)
            if block is None:
                storages.append(raw_bytes(address + base, nbytes))
                table += (nbytes, base)
                continue
            blocks.append(block)
            descriptor = block.descriptor
            if block.fd is not None:
                descriptor = (*descriptor[:-1], len(fds))
                fds.append(block.fd)
            storages.append(DESCRIPTOR.pack(*descriptor))
            table += (nbytes | _IN_ARENA, base)
        prelude = PRELUDE.pack(target, tag, len(storages), len(fds), len(payload))
        if table:
            prelude += struct.pack(f"<{len(table)}Q", *table)
        chunks: list[memoryview | bytes] = [prelude, payload, *storages]
        nbytes = len(prelude) + len(payload) + sum(len(storage) for storage in storages)
        return EncodedMessage(chunks, nbytes, fds, keepalive, blocks)

    def cancel(self, message: bytes | EncodedMessage) -> None:
        """Gives back the arena blocks of a message that was never published."""
        if self.arena is not None and isinstance(message, EncodedMessage) and message.blocks:
            self.arena.cancel(message.blocks)

    def send(
        self,
        writer: MessageWriter,
        obj: Any,
        *,
        target: int = TARGET_ALL,
        tag: int = 0,
        deadline: float | None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Encodes ``obj`` and writes it as one message (see :meth:`encode`).

        Raises:
            ValueError: ``obj`` holds shared-memory tensors to pass as fds: use
                :meth:`encode` and pass :attr:`EncodedMessage.fds` first.
        """
        message = self.encode(obj, target, tag)
        if message.fds:
            raise ValueError("this message passes fds: encode() it and send the fds first")
        writer.send(message.chunks, message.nbytes, deadline=deadline, alive=alive)


def peek_target(message: IncomingMessage) -> tuple[int, int]:
    """The ``(target, tag)`` words of a message, read without consuming anything."""
    target, tag, _, _, _ = PRELUDE.unpack_from(message.first)
    return target, tag


def send_encoded(
    writer: MessageWriter,
    message: bytes | EncodedMessage,
    target: int,
    tag: int,
    *,
    deadline: float | None,
    alive: Callable[[], bool] | None = None,
    wake: int = -1,
) -> None:
    """Writes a message from :meth:`Encoder.encode_compact` (its fds, if any, must
    have been passed already).

    Raises:
        TimeoutError, ChannelClosedError, ChannelBrokenError: As for
            :meth:`MessageWriter.send`.
    """
    if isinstance(message, EncodedMessage):
        writer.send(message.chunks, message.nbytes, deadline=deadline, alive=alive, wake=wake)
        return
    if not writer.abort_pending and writer.ring.send_message(target, tag, message, wake):
        return  # one record, room now: the whole message in one call of the ring core
    whole = _without_tensors(message, target, tag)
    writer.send(whole.chunks, whole.nbytes, deadline=deadline, alive=alive, wake=wake)


FdSource = Callable[[int, int], list[int]]
"""``(tag, count) -> fds``: claims the fds passed beside the message tagged ``tag``."""


def decode(message: IncomingMessage, fds: FdSource | None = None, reader: int = 0) -> Any:
    """Reads a whole message, rebuilds the object, and releases the message.

    Args:
        message: The message, as received.
        fds: Where the fds passed beside it come from, if the sender may pass any.
        reader: This process's reader index in the sender's arena (its rank, for a
            request; 0 for a reply).

    Raises:
        MessageAbortedError: The writer abandoned the message.
        Exception: Whatever unpickling raises (for example a class the receiver
            cannot import); the message is released either way.
    """
    try:
        return _decode(message, fds, reader)
    finally:
        message.finish()


def _decode(message: IncomingMessage, fd_source: FdSource | None, reader: int) -> Any:
    first = message.first
    _, tag, n_storages, n_fds, pickle_len = PRELUDE.unpack_from(first)
    if not n_storages and not n_fds and message.complete:  # the common case: no tensors
        return pickle.loads(first[PRELUDE.size : PRELUDE.size + pickle_len])
    received: list[int] = []
    if n_fds:
        if fd_source is None:
            raise ValueError("this message carries fds, but no fd channel was given")
        received = fd_source(tag, n_fds)
    try:
        return _decode_body(message, n_storages, pickle_len, received, reader)
    finally:
        for fd in received:
            os.close(fd)


def _decode_body(
    message: IncomingMessage, n_storages: int, pickle_len: int, fds: list[int], reader: int
) -> Any:
    first = message.first
    table_end = PRELUDE.size + 16 * n_storages
    storages: list[torch.UntypedStorage] = []
    if message.complete:
        table = struct.unpack_from(f"<{2 * n_storages}Q", first, PRELUDE.size)
        lengths, bases = table[0::2], table[1::2]
        payload: memoryview | bytearray = first[table_end : table_end + pickle_len]
        position = table_end + pickle_len
        for length in lengths:
            if length & _IN_ARENA:  # the span is a block of the sender's arena
                descriptor = DESCRIPTOR.unpack_from(first, position)
                storages.append(block_storage(descriptor, length ^ _IN_ARENA, fds, reader))
                position += DESCRIPTOR.size
                continue
            tensor = torch.empty(length, dtype=torch.uint8)
            raw_bytes(tensor.data_ptr(), length)[:] = first[position : position + length]
            position += length
            storages.append(tensor.untyped_storage())
    else:
        # The size table itself may span fragments when a message holds many tensors.
        message.skip(PRELUDE.size)
        raw_table = bytearray(16 * n_storages)
        message.readinto(memoryview(raw_table))
        table = struct.unpack(f"<{2 * n_storages}Q", raw_table)
        lengths, bases = table[0::2], table[1::2]
        payload = bytearray(pickle_len)
        message.readinto(memoryview(payload))
        for length in lengths:
            if length & _IN_ARENA:
                raw = bytearray(DESCRIPTOR.size)
                message.readinto(memoryview(raw))
                storages.append(
                    block_storage(DESCRIPTOR.unpack(raw), length ^ _IN_ARENA, fds, reader)
                )
                continue
            tensor = torch.empty(length, dtype=torch.uint8)
            message.readinto(raw_bytes(tensor.data_ptr(), length))
            storages.append(tensor.untyped_storage())
    _decoding.storages = storages
    _decoding.bases = list(bases)
    _decoding.fds = fds
    try:
        return pickle.loads(payload)
    finally:
        _decoding.storages = []
        _decoding.bases = []
        _decoding.fds = []
