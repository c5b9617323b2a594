"""A block of shared memory: a torch uint8 tensor seen as bytes and as words.

Runs in any process. A region travels to a child process by pickling its tensor
through ``torch.multiprocessing`` (the file-descriptor strategy), so the segment
has no name in ``/dev/shm`` at any time after creation: a crash leaks nothing.
"""

from __future__ import annotations

import ctypes

import torch
import torch.multiprocessing

from .layout import CACHE_LINE


def align_up(value: int, alignment: int) -> int:
    """Rounds ``value`` up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def raw_bytes(address: int, nbytes: int) -> memoryview:
    """A writable byte view of ``nbytes`` of memory at ``address`` (no copy)."""
    if nbytes == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")


class SharedRegion:
    """Shared memory for rings and doorbells, mapped once per process.

    Attributes:
        tensor: The backing uint8 tensor (kept alive by the region).
        address: Address of the first byte in this process.
        nbytes: Size in bytes.
        bytes: A byte view of the whole region.
        words: The same memory as unsigned 64-bit words.
    """

    __slots__ = ("address", "bytes", "nbytes", "tensor", "words")

    def __init__(self, tensor: torch.Tensor) -> None:
        if tensor.dtype != torch.uint8 or tensor.dim() != 1 or not tensor.is_contiguous():
            raise ValueError("a shared region needs a contiguous 1-D uint8 tensor")
        self.tensor = tensor
        self.address = tensor.data_ptr()
        self.nbytes = tensor.numel()
        self.bytes = raw_bytes(self.address, self.nbytes)
        self.words = self.bytes.cast("Q")

    @classmethod
    def allocate(cls, nbytes: int) -> SharedRegion:
        """Creates a zeroed region of at least ``nbytes`` in shared memory.

        Raises:
            RuntimeError: If torch's sharing strategy is not ``file_descriptor``:
                the other strategy names the segment in ``/dev/shm``, where a crash
                would leak it.
        """
        strategy = torch.multiprocessing.get_sharing_strategy()  # type: ignore[no-untyped-call]
        if strategy != "file_descriptor":
            raise RuntimeError(
                f"torchtroupe needs torch's 'file_descriptor' sharing strategy, not {strategy!r}: "
                "call torch.multiprocessing.set_sharing_strategy('file_descriptor') first"
            )
        size = align_up(max(nbytes, CACHE_LINE), 4096)
        tensor = torch.zeros(size, dtype=torch.uint8)
        tensor.share_memory_()  # type: ignore[no-untyped-call]
        return cls(tensor)

    def release(self) -> None:
        """Drops this process's mapping: the memory (and its fd) goes once no other
        reference to the tensor remains. The region must not be used afterwards."""
        self.tensor = torch.empty(0, dtype=torch.uint8)
        self.address = 0
        self.nbytes = 0
        self.bytes = memoryview(bytearray())
        self.words = memoryview(bytearray()).cast("Q")

    def __reduce__(self) -> tuple[object, ...]:
        return (SharedRegion, (self.tensor,))
