"""The numbers of the ring's memory and of a message's prelude, each written once.

Runs in any process, at import: constants only, no imports from this package, so
every module of the transport floor may take its numbers from here.

The diagrams these numbers stand for are drawn beside the code that speaks them:
the ring's control lines and records in ``ring.py``, the message prelude in
``codec.py``. The last group are the limits both ring cores apply.

Note [One home for the ring's numbers]
--------------------------------------
Every Python module takes these numbers from this one: ``ring.py``, ``region.py``,
``doorbell.py``, ``mailbox.py``, ``stream.py``, ``codec.py``, and the pure-Python
ring core ``_ringcore_py.py``, which imports the ones a core uses and exports them
under the same names. The compiled core (``_ringcore.c``) cannot import them: it
repeats each as a ``#define`` and exports it as a module constant of the same name.
``tests/transport/test_ringcore_parity.py`` is what keeps the repetition honest: it
fails when a constant of the compiled core differs from this module's, when the two
cores (and the ``_ringcore.pyi`` stub) stop exporting the same names, and when the
compiled core writes a prelude that :data:`PRELUDE` does not read.

Changing a number here changes the shared-memory format, which both ends of a ring
must agree on: change the ``#define`` in ``_ringcore.c`` with it, and the version in
:data:`MAGIC` if the layout itself changes.
"""

from __future__ import annotations

import struct

# -- the ring's control lines (ring.py) -----------------------------------------------

MAGIC = 0x74726F7570650001
"""The first word of a formatted ring: ``"troupe"`` and the layout's version, 1."""
CACHE_LINE = 64
"""Bytes of one control line; each line is written by one process only."""
LINE_WORDS = CACHE_LINE // 8
"""u64 words in one control line."""

CAPACITY_WORD = 1
"""Word of line 0 (after :data:`MAGIC`) holding the data capacity in bytes."""
N_READERS_WORD = 2
"""Word of line 0 holding the number of readers."""
WRITER_BELL_WORD = 3
"""Word of line 0 holding the writer's doorbell: its byte offset in the region."""
WRITE_LINE = 1
"""Control line whose first word is the write cursor."""
STATE_LINE = 2
"""Control line whose first word is the ring's state (:data:`OPEN` ...)."""
FIRST_READER_LINE = 3
"""Control line of reader 0; reader ``r`` owns line ``FIRST_READER_LINE + r``."""
CURSOR_WORD = 0
"""Word of a reader's line holding its cursor."""
DETACHED_WORD = 1
"""Word of a reader's line that is 1 once the reader stopped holding the writer back."""
BELL_WORD = 2
"""Word of a reader's line holding its doorbell: the byte offset in the region."""

OPEN, CLOSED, BROKEN = 0, 1, 2
"""The ring's states: open; closed by its writer; broken (a peer died)."""

MIN_CAPACITY = 4096
"""The smallest data capacity; every capacity is a power of two."""
MAX_CAPACITY = 1 << 34
"""The largest data capacity: a record's length is 32 bits, and a record holds at
most a quarter of the ring."""

# -- records (ring.py) ---------------------------------------------------------------

HEADER_BYTES = 8
"""Bytes of a record's header: ``length: u32 | kind: u8 | flags: u8 | 0: u16``."""
LENGTH_MASK = 0xFFFFFFFF
"""The header's length bits (the payload's length in bytes)."""
KIND_SHIFT = 32
"""Where the header's kind byte starts."""
KIND_MASK = 0xFF
"""The kind byte, once shifted down."""
FLAGS_SHIFT = 40
"""Where the header's flags byte starts."""
RECORD_DIVISOR = 4
"""A record, header included, holds at most ``capacity // RECORD_DIVISOR`` bytes."""

DATA, PAD, ABORT = 1, 2, 3
"""Record kinds: a message or a fragment of one; filler up to the end of the data
area (readers skip it); a writer gave up on a multi-fragment message."""
MORE = 1
"""Flag bit: more fragments of the same message follow this record."""

# -- doorbells (doorbell.py) ----------------------------------------------------------

AWAKE, PARKED = 0, 1
"""A doorbell word's values: nobody waits on it; its waiter parks (or is about to)."""

# -- the message prelude (codec.py) ---------------------------------------------------

PRELUDE = struct.Struct("<qqQQQ")
"""The five words in front of every message: target, tag, n_storages, n_fds and the
pickle's length (little-endian; target and tag are signed)."""
PRELUDE_BYTES = PRELUDE.size
"""Bytes of the prelude."""
TARGET_ALL = -1
"""The prelude's target for a message every reader takes (a broadcast)."""

# -- limits both ring cores apply ----------------------------------------------------

MAX_GATHER = 8
"""Chunks ``WriterCore.send`` gathers into one record; more go the general way."""
PLAIN_BUDGET = 64
"""Objects a plain value may hold (``plain_dumps``, ``send_plain``)."""
PLAIN_MAX_DEPTH = 8
"""Levels of nesting a plain value may have."""
PLAIN_DUMP_MAX = 4096
"""The longest pickle ``plain_dumps`` returns; a longer value goes the general way."""
