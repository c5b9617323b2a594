"""Tests for torchtroupe/transport/codec.py: objects and tensors survive the ring."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from tests.timeouts import SHORT_TIMEOUT
from tests.transport.rings import FormattedRing, in_thread, new_ring
from torchtroupe.transport.codec import TARGET_ALL, Encoder, decode, peek_target
from torchtroupe.transport.layout import BROKEN
from torchtroupe.transport.ring import RingReader, RingWriter, monotonic_deadline
from torchtroupe.transport.stream import MessageReader, MessageWriter


class Channel:
    """One ring with an encoder at one end and a message reader at the other."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.ring: FormattedRing = new_ring(capacity)
        self.writer = MessageWriter(RingWriter(self.ring.layout))
        self.reader = MessageReader(RingReader(self.ring.layout, 0))
        self.encoder = Encoder()

    def send(self, obj: Any, target: int = TARGET_ALL, tag: int = 0) -> None:
        self.encoder.send(
            self.writer, obj, target=target, tag=tag, deadline=monotonic_deadline(SHORT_TIMEOUT)
        )

    def receive(self) -> Any:
        return decode(self.reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT)))

    def round_trip(self, obj: Any) -> Any:
        """Sends ``obj`` from a thread (it may be larger than the ring) and decodes it."""
        with in_thread(lambda: self.send(obj), unblock=self.breaker) as sending:
            received = self.receive()
            sending.result(SHORT_TIMEOUT)
        return received

    def breaker(self) -> None:
        self.ring.layout.set_state(BROKEN)

    def nothing_waiting(self) -> bool:
        return self.reader.poll() is None


def round_trip(obj: Any, capacity: int = 1 << 16) -> Any:
    return Channel(capacity).round_trip(obj)


def assert_same_tensor(received: torch.Tensor, sent: torch.Tensor) -> None:
    assert type(received) is type(sent)
    assert received.dtype == sent.dtype
    assert received.shape == sent.shape
    assert received.stride() == sent.stride()
    assert torch.equal(received, sent)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -(2**70),
        3.5,
        "",
        "ünïcødé",
        b"\x00" * 100_000,  # larger than the ring: fragments
        None,
        (1, "a", (2.0, None)),
        {"a": {"b": [1, 2, {"c": (3, 4)}]}, 5: {6, 7}},
        [list(range(1000))] * 3,
    ],
    ids=repr,
)
def test_plain_values_survive_a_round_trip(value: Any) -> None:
    assert round_trip(value) == value


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 4), (40_000,)], ids=str)
def test_tensors_of_every_dtype_and_shape_survive_a_round_trip(
    dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    generator = torch.Generator().manual_seed(0)
    sent = (torch.randn(shape, generator=generator) * 100).to(dtype)
    assert_same_tensor(round_trip(sent), sent)


def test_zero_size_tensors_survive_a_round_trip() -> None:
    sent = [torch.empty(0), torch.empty(0, 3, dtype=torch.int64), torch.ones(4)[4:]]
    received = round_trip(sent)
    for r, s in zip(received, sent, strict=True):
        assert_same_tensor(r, s)


def test_views_of_one_storage_stay_views_of_one_storage() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    transposed, strided = base.t(), base[1:, ::2]
    assert not transposed.is_contiguous()
    received_t, received_s, received_base = round_trip((transposed, strided, base))
    assert_same_tensor(received_t, transposed)
    assert_same_tensor(received_s, strided)
    assert received_s.storage_offset() == strided.storage_offset()
    storage = received_base.untyped_storage().data_ptr()
    assert received_t.untyped_storage().data_ptr() == storage
    assert received_s.untyped_storage().data_ptr() == storage
    received_base[1, 2] = -1.0  # element [1, 2] is [2, 1] of the transpose, [0, 1] of the slice
    assert received_t[2, 1] == -1.0
    assert received_s[0, 1] == -1.0


def test_one_tensor_sent_twice_arrives_as_one_tensor() -> None:
    tensor = torch.ones(3)
    first, second = round_trip([tensor, tensor])
    assert first is second


def test_the_received_tensor_does_not_share_memory_with_the_ring() -> None:
    channel = Channel()
    sent = torch.arange(10)
    received = channel.round_trip(sent)
    channel.send(torch.zeros(10))  # reuses the ring's bytes
    assert channel.receive().sum() == 0
    assert torch.equal(received, sent)


def test_a_parameter_arrives_as_a_parameter() -> None:
    for requires_grad in (True, False):
        sent = torch.nn.Parameter(torch.randn(3, 2), requires_grad=requires_grad)
        received = round_trip(sent)
        assert type(received) is torch.nn.Parameter
        assert received.requires_grad is requires_grad
        assert torch.equal(received.detach(), sent.detach())


def test_a_leaf_tensor_that_requires_grad_keeps_requires_grad() -> None:
    sent = torch.randn(4, requires_grad=True)
    received = round_trip(sent)
    assert received.requires_grad
    assert received.is_leaf
    assert torch.equal(received.detach(), sent.detach())


def test_a_non_leaf_tensor_that_requires_grad_is_refused_with_a_hint_to_detach() -> None:
    channel = Channel()
    non_leaf = torch.randn(4, requires_grad=True) * 2
    with pytest.raises(TypeError, match="detach"):
        channel.send({"x": non_leaf})
    assert channel.nothing_waiting()
    channel.send(non_leaf.detach())
    assert torch.equal(channel.receive(), non_leaf.detach())


def test_lambdas_and_closures_survive_a_round_trip() -> None:
    offset = 10

    def add_offset(x: int) -> int:
        return x + offset

    square, add = round_trip((lambda x: x * x, add_offset))
    assert square(7) == 49
    assert add(1) == 11


def test_a_class_defined_inside_a_function_and_its_instances_survive_a_round_trip() -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

    cls, point = round_trip((Point, Point(3, -4)))
    assert cls.__name__ == "Point"
    assert isinstance(point, cls)
    assert point.norm1() == 7


def test_an_unpicklable_value_raises_type_error_writes_nothing_and_the_next_message_works() -> None:
    channel = Channel()
    for unpicklable in (threading.Lock(), (b"x" * 200_000, threading.Lock()), (x for x in ())):
        with pytest.raises(TypeError):
            channel.send({"ok": torch.ones(2), "bad": unpicklable})
        assert channel.nothing_waiting()
    channel.send({"ok": torch.ones(2)})
    received = channel.receive()
    assert received.keys() == {"ok"}
    assert torch.equal(received["ok"], torch.ones(2))


def test_peek_target_names_target_and_tag_without_consuming_the_message() -> None:
    channel = Channel()
    channel.send("for rank 3", target=3, tag=2**40 + 7)
    channel.send("for everyone")
    incoming = channel.reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    assert peek_target(incoming) == (3, 2**40 + 7)
    assert decode(incoming) == "for rank 3"
    incoming = channel.reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    assert peek_target(incoming) == (TARGET_ALL, 0)
    incoming.finish()  # skipped unread
    assert channel.nothing_waiting()


def test_peek_target_works_on_a_message_larger_than_the_ring() -> None:
    channel = Channel(4096)
    sent = torch.randn(10_000)

    with in_thread(lambda: channel.send(sent, target=1, tag=5), unblock=channel.breaker) as sending:
        incoming = channel.reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
        assert peek_target(incoming) == (1, 5)
        assert_same_tensor(decode(incoming), sent)
        sending.result(SHORT_TIMEOUT)


def test_many_tensors_in_one_message_survive_a_small_ring() -> None:
    # 200 storages make a prelude (24 + 8 * 200 bytes) longer than one record of a
    # 4096-byte ring, so the prelude itself spans fragments.
    sent = [torch.full((2,), float(n)) for n in range(200)]
    received = round_trip(sent, capacity=4096)
    for r, s in zip(received, sent, strict=True):
        assert_same_tensor(r, s)


def test_a_conjugated_complex_tensor_keeps_its_values() -> None:
    base = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    sent = base.conj()  # a lazy view: the conj bit is set, the storage is unchanged
    assert sent.is_conj()
    received = round_trip(sent)
    assert torch.equal(received.resolve_conj(), sent.resolve_conj())


def test_a_tensor_with_the_negative_bit_keeps_its_values() -> None:
    base = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    sent = base.conj().imag  # a lazy negation of the imaginary parts
    assert sent.is_neg()
    received = round_trip(sent)
    assert torch.equal(received.resolve_neg(), sent.resolve_neg())


def test_a_view_sends_only_the_bytes_it_covers() -> None:
    whole = torch.arange(1 << 20, dtype=torch.float32)
    quarter = whole[1 << 18 : 1 << 19]
    message = Encoder().encode(quarter)
    assert message.nbytes < quarter.numel() * 4 + 4096  # not the whole 4 MiB storage
    received = round_trip(quarter)
    assert torch.equal(received, quarter)


def test_views_of_one_storage_stay_aliased_when_only_a_span_is_sent() -> None:
    whole = torch.arange(100, dtype=torch.float64)
    first, second = whole[10:20], whole[15:40:5]
    got_first, got_second = round_trip((first, second))
    assert torch.equal(got_first, first) and torch.equal(got_second, second)
    got_first[5] = -1.0  # element 15 of the original, shared by both views
    assert got_second[0].item() == -1.0
