"""Tests that the two ring cores name the same things, with layout.py's numbers.

The compiled core (transport/_ringcore.c), its Python twin (transport/_ringcore_py.py)
and the stub (transport/_ringcore.pyi) must expose the same public classes, functions
and constants, the classes the same public methods and attributes, and every constant
must have the value transport/layout.py gives it: the C repeats those numbers, and
these tests are what keeps them equal (Note [One home for the ring's numbers],
layout.py). Their behaviour is compared in test_ringcore.py.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.transport.test_ringcore import CorePair, MakeRing, load_core, ring_factory
from torchtroupe.transport import _ringcore_py, layout
from torchtroupe.transport.ring import RingLayout

STUB = Path(_ringcore_py.__file__).with_name("_ringcore.pyi")
CLASSES = ("WriterCore", "ReaderCore")


@dataclass(frozen=True, slots=True)
class Names:
    """A core's public names, by what they are."""

    classes: frozenset[str]
    functions: frozenset[str]
    constants: frozenset[str]


def _kind_of(value: object) -> str:
    if isinstance(value, type):
        return "classes"
    if callable(value):
        return "functions"
    return "constants"


def module_names(module: ModuleType, public: list[str]) -> Names:
    """The names in ``public``, sorted by what ``module`` binds them to."""
    found: dict[str, set[str]] = {"classes": set(), "functions": set(), "constants": set()}
    for name in public:
        found[_kind_of(getattr(module, name))].add(name)
    return Names(*(frozenset(found[kind]) for kind in ("classes", "functions", "constants")))


def compiled_names(core: ModuleType) -> Names:
    """The public names of the compiled core: all it has, since it imports nothing."""
    return module_names(core, [name for name in dir(core) if not name.startswith("_")])


def twin_names() -> Names:
    """The public names of the Python core: its ``__all__``."""
    return module_names(_ringcore_py, list(_ringcore_py.__all__))


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def stub_names() -> Names:
    """The public names the stub declares (its imports are not its names)."""
    classes: set[str] = set()
    functions: set[str] = set()
    constants: set[str] = set()
    for node in _stub_tree().body:
        if isinstance(node, ast.ClassDef):
            classes.add(node.name)
        elif isinstance(node, ast.FunctionDef):
            functions.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            constants.add(node.target.id)
    return Names(
        *(
            frozenset(name for name in names if not name.startswith("_"))
            for names in (classes, functions, constants)
        )
    )


def stub_class_members(class_name: str) -> dict[str, str]:
    """The stub's public members of ``class_name``: name -> "method" or "attribute"."""
    for node in _stub_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            members = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    is_property = any(
                        isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list
                    )
                    members[item.name] = "attribute" if is_property else "method"
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = "attribute"
            return {name: kind for name, kind in members.items() if not name.startswith("_")}
    raise AssertionError(f"the stub declares no class {class_name}")


def stub_parameters() -> dict[str, list[str]]:
    """Parameter names of every function and method in the stub, keyed like
    ``"spin_any"`` or ``"WriterCore.commit"``."""
    found = {}
    for node in _stub_tree().body:
        functions = [("", node)] if isinstance(node, ast.FunctionDef) else []
        if isinstance(node, ast.ClassDef):
            functions = [
                (f"{node.name}.", item) for item in node.body if isinstance(item, ast.FunctionDef)
            ]
        for prefix, function in functions:
            arguments = function.args
            found[prefix + function.name] = [
                a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            ]
    return found


def instance_members(instance: object) -> dict[str, str]:
    """Public members of a core object: name -> "method" or "attribute"."""
    return {
        name: "method" if callable(getattr(instance, name)) else "attribute"
        for name in dir(instance)
        if not name.startswith("_")
    }


@pytest.fixture
def c_core() -> ModuleType:
    """The compiled core; the test skips where it is not built."""
    return load_core("C")


@pytest.fixture
def make_c_ring(c_core: ModuleType) -> Iterator[MakeRing]:
    """Rings written and read by the compiled core."""
    with ring_factory(CorePair("C", "C", c_core, c_core)) as make:
        yield make


def _describe(difference: dict[str, set[str]]) -> str:
    return "; ".join(
        f"only in {where}: {sorted(names)}" for where, names in difference.items() if names
    )


# -- names --------------------------------------------------------------------------------


def test_the_compiled_core_the_twin_and_the_stub_expose_the_same_names(c_core: ModuleType) -> None:
    compiled, twin, stub = compiled_names(c_core), twin_names(), stub_names()
    for kind in ("classes", "functions", "constants"):
        c_set, twin_set, stub_set = (getattr(names, kind) for names in (compiled, twin, stub))
        assert c_set == twin_set == stub_set, f"{kind}: " + _describe(
            {
                "_ringcore.c": c_set - twin_set - stub_set,
                "_ringcore_py.py": twin_set - c_set - stub_set,
                "_ringcore.pyi": stub_set - c_set - twin_set,
                "the twin and the stub, not the C": (twin_set & stub_set) - c_set,
                "the C and the stub, not the twin": (c_set & stub_set) - twin_set,
                "the C and the twin, not the stub": (c_set & twin_set) - stub_set,
            }
        )
    assert set(CLASSES) <= compiled.classes


def test_the_twin_lists_every_public_class_function_and_constant_it_defines() -> None:
    # The twin's imports (pickle, Callable, STORES_ARE_ORDERED...) are not its names, so
    # its __all__ says which are; nothing it defines or takes from layout.py may be left out.
    unlisted = []
    for name in dir(_ringcore_py):
        if name.startswith("_") or name in _ringcore_py.__all__:
            continue
        value = getattr(_ringcore_py, name)
        defined_here = getattr(value, "__module__", None) == _ringcore_py.__name__
        from_layout = name.isupper() and getattr(layout, name, None) is value
        if defined_here or (from_layout and type(value) is int):
            unlisted.append(name)
    assert unlisted == [], f"public in _ringcore_py.py but not in its __all__: {unlisted}"


@pytest.mark.parametrize("class_name", CLASSES)
def test_each_core_class_has_the_same_public_methods_and_attributes(
    class_name: str, c_core: ModuleType
) -> None:
    # Instances, not classes: the twin's attributes (kind, more, resync) are set in
    # __init__, where the C's are slots of the type.
    with ring_factory(CorePair("C", "Python", c_core, _ringcore_py)) as make:
        ring = make()
        if class_name == "WriterCore":
            c_object = ring.writer
            twin_object = _ringcore_py.WriterCore(ring.ring.region, ring.ring.offset)
        else:
            c_object = c_core.ReaderCore(ring.ring.region, ring.ring.offset, 0)
            twin_object = ring.readers[0]
        assert type(c_object).__name__ == type(twin_object).__name__ == class_name
        assert instance_members(c_object) == instance_members(twin_object)
        assert instance_members(twin_object) == stub_class_members(class_name)


def test_the_twin_and_the_stub_name_the_same_parameters() -> None:
    stub = stub_parameters()
    checked = 0
    for key, parameters in stub.items():
        owner, _, name = key.rpartition(".")
        where = getattr(_ringcore_py, owner) if owner else _ringcore_py
        function = getattr(where, name)
        if getattr(function, "__module__", None) != _ringcore_py.__name__:
            continue  # full_fence and loads are the fence's and the compiled core's own
        signature = inspect.signature(function)
        assert list(signature.parameters) == parameters, key
        checked += 1
    assert checked >= 20


# -- numbers ------------------------------------------------------------------------------


def test_every_constant_of_the_compiled_core_is_layouts(c_core: ModuleType) -> None:
    constants = compiled_names(c_core).constants
    assert constants, "the compiled core exports no constants"
    differ = {
        name: (getattr(c_core, name), getattr(layout, name, "missing"))
        for name in sorted(constants)
        if getattr(layout, name, None) != getattr(c_core, name)
        or type(getattr(c_core, name)) is not int
    }
    assert differ == {}, f"(compiled core, layout.py) values that differ: {differ}"
    for name in constants:
        assert getattr(_ringcore_py, name) is getattr(layout, name), name


def test_the_compiled_core_writes_records_where_layout_says(make_c_ring: MakeRing) -> None:
    ring = make_c_ring()
    region, ring_layout = ring.ring.region, ring.ring.layout
    words = region.words
    view = ring.writer.try_reserve(5)
    assert view is not None
    view[:] = b"hello"
    ring.writer.commit(5, more=True, kind=layout.ABORT)
    header = int(words[ring_layout.data // 8])
    assert header & layout.LENGTH_MASK == 5
    assert (header >> layout.KIND_SHIFT) & layout.KIND_MASK == layout.ABORT
    assert (header >> layout.FLAGS_SHIFT) & layout.MORE
    record_bytes = layout.HEADER_BYTES + 8
    assert words[ring_layout.word_index(layout.WRITE_LINE)] == record_bytes
    assert ring.writer.max_payload == ring_layout.max_record_payload

    reader = ring.readers[0]
    assert reader.poll() is not None
    reader.consume()
    line = ring_layout.reader_line(0)
    assert words[ring_layout.word_index(line, layout.CURSOR_WORD)] == record_bytes
    reader.detach()
    assert words[ring_layout.word_index(line, layout.DETACHED_WORD)] == 1
    assert ring.writer.detached_readers() == [0]

    ring_layout.set_state(layout.BROKEN)
    assert words[ring_layout.word_index(layout.STATE_LINE)] == layout.BROKEN
    assert ring.writer.state() == layout.BROKEN


def test_the_compiled_core_writes_and_reads_the_prelude_that_layout_packs(
    make_c_ring: MakeRing,
) -> None:
    ring = make_c_ring()
    assert ring.writer.send_message(5, -7, b"pickle", -1)
    record = ring.readers[0].poll()
    assert record is not None
    assert layout.PRELUDE.unpack_from(record) == (5, -7, 0, 0, len(b"pickle"))
    assert bytes(record[layout.PRELUDE_BYTES :]) == b"pickle"
    ring.readers[0].consume()

    packed = layout.PRELUDE.pack(layout.TARGET_ALL, 11, 0, 0, 3) + b"abc"
    assert ring.writer.send((packed,), len(packed), -1)
    polled = ring.readers[0].poll_message()
    assert polled is not None
    _, target, tag, pickle = polled
    assert (target, tag, bytes(pickle)) == (layout.TARGET_ALL, 11, b"abc")
    ring.readers[0].consume()


def test_a_ring_the_compiled_core_opens_is_the_one_ring_py_formats(
    make_c_ring: MakeRing, c_core: ModuleType
) -> None:
    ring = make_c_ring(capacity=layout.MIN_CAPACITY, n_readers=2)
    words = ring.ring.region.words
    base = ring.ring.offset // 8
    assert words[base] == layout.MAGIC
    assert isinstance(ring.ring.layout, RingLayout)
    words[base] = layout.MAGIC + 1  # another layout version: neither core opens it
    for core in (c_core, _ringcore_py):
        with pytest.raises(ValueError, match="no ring"):
            core.WriterCore(ring.ring.region, ring.ring.offset)
    words[base] = layout.MAGIC
    words[base + layout.CAPACITY_WORD] = layout.MIN_CAPACITY // 2
    for core in (c_core, _ringcore_py):
        with pytest.raises(ValueError, match="corrupt"):
            core.ReaderCore(ring.ring.region, ring.ring.offset, 1)
