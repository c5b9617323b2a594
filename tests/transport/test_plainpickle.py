"""Tests for the pickles of plain values: transport/_plainpickle.c (through the compiled
ring core's plain_dumps, loads and send_plain) and their twins in _ringcore_py.py.

The contract: plain_dumps writes a pickle that the stock pickle.loads reads back as an
equal value of the same types, or declines (None); loads reads every pickle exactly as
pickle.loads does, including the stock pickler's own, and raises what it raises.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transport.test_ringcore import load_core
from torchtroupe.transport import _ringcore_py
from torchtroupe.transport.layout import PLAIN_BUDGET

CORES = ["C", "Python"]

int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
atoms = (
    st.none()
    | st.booleans()
    | int64s
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
plain_values = st.recursive(
    atoms,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8) | int64s, children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return load_core(request.param)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(value=plain_values)
def test_plain_dumps_writes_a_pickle_the_stock_loads_reads_back(value: Any) -> None:
    for name in CORES:
        dumped = load_core(name).plain_dumps(value)
        assert dumped is not None
        assert same(pickle.loads(dumped), value)


@settings(max_examples=300, deadline=None)
@given(value=plain_values, protocol=st.integers(min_value=2, max_value=5))
def test_loads_reads_what_the_stock_pickler_writes(value: Any, protocol: int) -> None:
    for name in CORES:
        core = load_core(name)
        assert same(core.loads(pickle.dumps(value, protocol)), value)
        assert same(core.loads(core.plain_dumps(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        0,
        255,
        256,
        65535,
        65536,
        -1,
        (1 << 31) - 1,
        -(1 << 31),
        1 << 31,
        -(1 << 31) - 1,
        (1 << 63) - 1,
        -(1 << 63),
        -0.0,
        math.inf,
        "é" * 200,
        "x" * 300,
        b"y" * 300,
        (1, 2, 3, 4),
    ],
)
def test_values_at_the_edges_of_each_opcode_keep_value_and_type(
    core: ModuleType, value: Any
) -> None:
    dumped = core.plain_dumps(value)
    assert dumped is not None
    assert same(pickle.loads(dumped), value) and same(core.loads(dumped), value)
    if isinstance(value, float):
        assert math.copysign(1.0, core.loads(dumped)) == math.copysign(1.0, value)


def test_a_nan_comes_back_a_nan(core: ModuleType) -> None:
    assert math.isnan(core.loads(core.plain_dumps(math.nan)))


@pytest.mark.parametrize(
    "value",
    [
        object(),
        OrderedDict(a=1),
        (1, [2, {"k": 1.5j}]),
        1 << 64,  # more than 64 bits: C declines it, the twin's pickle carries it
        "\ud800",  # a lone surrogate: likewise
    ],
    ids=["object", "dict-subclass", "complex-inside", "big-int", "surrogate"],
)
def test_plain_dumps_declines_values_it_does_not_write(value: Any) -> None:
    assert load_core("C").plain_dumps(value) is None
    twin = _ringcore_py.plain_dumps(value)
    assert twin is None or same(pickle.loads(twin), value)


def test_a_list_held_twice_is_left_to_the_stock_pickler_which_keeps_the_sharing(
    core: ModuleType,
) -> None:
    shared = [1]
    value = (shared, shared)

    dumped = core.plain_dumps(value)
    if dumped is not None:  # the twin's stock pickle memoizes it
        loaded = pickle.loads(dumped)
        assert loaded[0] is loaded[1]
    loaded = core.loads(pickle.dumps(value, 5))
    assert loaded == ([1], [1]) and loaded[0] is loaded[1]


def test_values_past_the_budget_or_the_depth_are_declined(core: ModuleType) -> None:
    assert core.plain_dumps(list(range(PLAIN_BUDGET))) is None
    nested: Any = 1
    for _ in range(10):
        nested = [nested]
    assert core.plain_dumps(nested) is None
    assert core.plain_dumps("x" * 5000) is None  # longer than one plain pickle


def test_loads_reads_pickles_of_other_values_and_a_self_referencing_list(
    core: ModuleType,
) -> None:
    loop: list[Any] = []
    loop.append(loop)
    again = core.loads(pickle.dumps(loop, 5))
    assert again[0] is again
    assert core.loads(pickle.dumps(OrderedDict(a=1), 5)) == OrderedDict(a=1)
    assert core.loads(pickle.dumps(1 << 100, 5)) == 1 << 100
    assert core.loads(memoryview(pickle.dumps(("in", "a", "view")))) == ("in", "a", "view")


def outcome(loads: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "returned", loads(data)
    except Exception as error:
        return "raised", type(error)


ODD_PICKLES = {
    "empty": b"",
    "truncated": b"\x80\x05K",
    "two-left": b"\x80\x05K\x01K\x02.",
    "mark-left": b"\x80\x05(K\x01.",
    "appends-without-list": b"\x80\x05e.",
    "protocol-9": b"\x80\x09N.",
    "append-below-mark": b"\x80\x05](K\x01a(e.",
    "setitem-below-mark": b"\x80\x05}(K\x01K\x02s(u.",
    "memoize-on-a-mark": b"\x80\x05K\x01(\x94h\x00t\x86.",
    "tuple2-below-mark": b"\x80\x05]K\x01(\x86K\x02(e.",
    "memoize-after-binput": b"\x80\x05K\x01q\x01K\x02\x94h\x01\x87.",
    "frame-past-the-end": b"\x80\x05\x95\x00\x01\x00\x00\x00\x00\x00\x00N.",
    "binget-unset": b"\x80\x05h\x03.",
}


@pytest.mark.parametrize("odd", ODD_PICKLES.values(), ids=ODD_PICKLES.keys())
def test_loads_does_what_pickle_loads_does_with_an_odd_pickle(core: ModuleType, odd: bytes) -> None:
    # The stock loads forgives some of these (it returns the top of the stack).
    assert outcome(core.loads, odd) == outcome(pickle.loads, odd)
