/*
 * _ringcore: the hot path of torchtroupe's shared-memory ring, in C.
 *
 * Runs in the writer's and the readers' processes, one thread per end at a time,
 * with the GIL held (every operation here is a few hundred nanoseconds at most).
 *
 * This module implements exactly the ring of ring.py, word for word: the same
 * layout, the same record format and the same publication order, so either end
 * may be this code or the pure-Python core in _ringcore_py.py (the tests run
 * one against the other). Waiting with deadlines, parking and liveness checks
 * stay in Python (ring.py, waiting.py); this module only answers "is there room /
 * data now", moves the bytes, publishes, and rings a doorbell when a peer parked.
 *
 * Ordering (Note [Publication order and fences] in fence.py): the payload and
 * header are stored, then the write cursor with release semantics; a reader loads
 * the cursor with acquire semantics before the header and payload. The doorbell
 * protocol needs a full fence between the cursor store and the load of the
 * doorbell, on both architectures.
 */

#ifndef __linux__
#error "torchtroupe's ring core needs Linux futexes"
#endif

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "_plainpickle.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the prelude is little-endian and the futex watches the bell word's low half");

/* The ring's numbers. Their one home is layout.py; C cannot import it, so they are
 * repeated here and exported under layout.py's names (exported_constants, at the end),
 * and tests/transport/test_ringcore_parity.py fails if one differs from layout.py's
 * (Note [One home for the ring's numbers], layout.py). The layout is drawn in ring.py. */
#define RING_MAGIC 0x74726F7570650001ULL /* MAGIC: "troupe", layout version 1 */
#define CACHE_LINE 64
#define LINE_WORDS (CACHE_LINE / 8)
#define CAPACITY_WORD 1    /* words of line 0, after the magic */
#define N_READERS_WORD 2
#define WRITER_BELL_WORD 3
#define WRITE_LINE 1       /* control lines */
#define STATE_LINE 2
#define FIRST_READER_LINE 3
#define CURSOR_WORD 0      /* words of a reader's line */
#define DETACHED_WORD 1
#define BELL_WORD 2
#define STATE_OPEN 0
#define STATE_BROKEN 2
#define MIN_CAPACITY 4096ULL
#define MAX_CAPACITY (1ULL << 34)
#define HEADER_BYTES 8
#define LENGTH_MASK 0xFFFFFFFFULL
#define KIND_SHIFT 32
#define KIND_MASK 0xFF
#define FLAGS_SHIFT 40
#define RECORD_DIVISOR 4 /* a record, header included, holds at most a quarter of the ring */
#define KIND_DATA 1
#define KIND_PAD 2
#define FLAG_MORE 1
#define BELL_AWAKE 0
#define TARGET_ALL (-1)
#define MAX_GATHER 8 /* chunks send() gathers in one record; more go the slow way */
/* A message's prelude (codec.py), little-endian u64 words in this order. */
enum {
    PRELUDE_TARGET,
    PRELUDE_TAG,
    PRELUDE_N_STORAGES,
    PRELUDE_N_FDS,
    PRELUDE_PICKLE_LEN,
    PRELUDE_WORDS
};
#define PRELUDE_BYTES (8 * PRELUDE_WORDS)

#define SPIN_CHECK_EVERY 64 /* spins between two looks at the clock */

static PyObject *fast_loads;  /* this module's loads() */
static PyObject *stock_loads; /* pickle.loads */
static PyObject *closed_error; /* torchtroupe.errors.ChannelClosedError */
static PyObject *broken_error; /* torchtroupe.errors.ChannelBrokenError */

/* -- memory order ----------------------------------------------------------------- */

static inline uint64_t load_acquire(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline uint64_t load_relaxed(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_RELAXED);
}

static inline void store_release(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

static inline void store_relaxed(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELAXED);
}

static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline uint64_t *word_at(char *base, uint64_t offset) {
    return (uint64_t *)(base + offset);
}

static inline uint64_t padded(uint64_t nbytes) { return (nbytes + 7) & ~7ULL; }

static double monotonic_s(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Wakes every thread parked on a doorbell word (not process-private: the word is
 * in memory shared between processes). */
static void futex_wake_all(uint64_t *bell) {
    syscall(SYS_futex, (uint32_t *)bell, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Rings a doorbell if its waiter announced that it parks (see doorbell.py). Call
 * after publishing and a full fence. */
static inline void notify(uint64_t *bell) {
    if (bell != NULL && load_relaxed(bell) != BELL_AWAKE) {
        store_relaxed(bell, BELL_AWAKE);
        futex_wake_all(bell);
    }
}

static PyObject *state_error(uint64_t state, const char *who) {
    if (state == STATE_BROKEN) {
        PyErr_Format(broken_error ? broken_error : PyExc_RuntimeError,
                     "the ring was broken while the %s waited (its peer died)", who);
    } else {
        PyErr_Format(closed_error ? closed_error : PyExc_RuntimeError,
                     "the ring was closed while the %s waited", who);
    }
    return NULL;
}

/* -- the ring's constant header ----------------------------------------------------- */

typedef struct {
    char *region;      /* the region's first byte: doorbell offsets count from here */
    uint64_t region_bytes;
    char *base;        /* the ring's first byte (its magic word) */
    char *data;        /* the first data byte */
    uint64_t capacity; /* data bytes, a power of two */
    uint64_t n_readers;
    uint64_t *write_cursor;
    uint64_t *state;
    uint64_t *writer_bell;
} RingHeader;

/* Reads the header of the ring at `offset` of `region` (a SharedRegion: anything
 * with an integer `address` attribute, the region's first byte in this process). */
static int read_header(RingHeader *ring, PyObject *region_object, unsigned long long offset) {
    PyObject *address_object = PyObject_GetAttrString(region_object, "address");
    if (address_object == NULL) {
        return -1;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(address_object);
    Py_DECREF(address_object);
    if (address == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *size_object = PyObject_GetAttrString(region_object, "nbytes");
    if (size_object == NULL) {
        return -1;
    }
    unsigned long long region_bytes = PyLong_AsUnsignedLongLong(size_object);
    Py_DECREF(size_object);
    if (region_bytes == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    char *region = (char *)(uintptr_t)address;
    if (region == NULL || offset % CACHE_LINE || offset > region_bytes ||
        region_bytes - offset < FIRST_READER_LINE * CACHE_LINE) {
        PyErr_Format(PyExc_ValueError, "no ring at offset %llu of this region", offset);
        return -1;
    }
    uint64_t *words = word_at(region, offset);
    if (load_acquire(&words[0]) != RING_MAGIC) {
        PyErr_Format(PyExc_ValueError, "no ring at offset %llu of this region", offset);
        return -1;
    }
    uint64_t room = region_bytes - offset; /* bytes from the ring's first byte to the region's end */
    uint64_t capacity = words[CAPACITY_WORD], n_readers = words[N_READERS_WORD],
             writer_bell = words[WRITER_BELL_WORD];
    if (capacity < MIN_CAPACITY || capacity > MAX_CAPACITY || (capacity & (capacity - 1)) ||
        n_readers < 1 || n_readers > room / CACHE_LINE ||
        (FIRST_READER_LINE + n_readers) * CACHE_LINE > room - capacity || capacity > room ||
        writer_bell % 8 || writer_bell > region_bytes - 8) {
        PyErr_SetString(PyExc_ValueError, "the ring's header is corrupt");
        return -1;
    }
    for (uint64_t r = 0; r < n_readers; r++) {
        uint64_t bell = words[(FIRST_READER_LINE + r) * LINE_WORDS + BELL_WORD];
        if (bell % 8 || bell > region_bytes - 8) {
            PyErr_SetString(PyExc_ValueError, "the ring's header is corrupt");
            return -1;
        }
    }
    ring->region = region;
    ring->region_bytes = region_bytes;
    ring->base = region + offset;
    ring->capacity = capacity;
    ring->n_readers = n_readers;
    ring->writer_bell = word_at(region, writer_bell);
    ring->write_cursor = &words[WRITE_LINE * LINE_WORDS];
    ring->state = &words[STATE_LINE * LINE_WORDS];
    ring->data = ring->base + (FIRST_READER_LINE + n_readers) * CACHE_LINE;
    return 0;
}

/* Reader r's control line: cursor, detached flag, doorbell offset (from the region);
 * index it with CURSOR_WORD, DETACHED_WORD and BELL_WORD. */
static inline uint64_t *reader_line(const RingHeader *ring, uint64_t reader) {
    return (uint64_t *)(ring->base + (FIRST_READER_LINE + reader) * CACHE_LINE);
}

/* Tiny keyword parser for METH_FASTCALL | METH_KEYWORDS methods: fills values[i]
 * for names[i]; positional arguments come first. */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, Py_ssize_t n_names, PyObject **values,
                      const char *function) {
    if (nargs > n_names) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments", function, n_names);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        values[i] = args[i];
    }
    if (kwnames == NULL) {
        return 0;
    }
    Py_ssize_t n_keywords = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < n_keywords; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < n_names && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) {
            i++;
        }
        if (i == n_names) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", function,
                         key);
            return -1;
        }
        if (values[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for %R", function, key);
            return -1;
        }
        values[i] = args[nargs + k];
    }
    return 0;
}

/* A size, offset or kind: an int from 0 to 2**64 - 1 (ValueError outside, as the
 * Python core's range checks). */
static int as_u64(PyObject *value, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%R is out of range (0 to 2**64 - 1)", value);
        }
        return -1;
    }
    *out = v;
    return 0;
}

/* ================================================================================= */
/* WriterCore                                                                         */
/* ================================================================================= */

typedef struct {
    PyObject_HEAD
    RingHeader ring;
    uint64_t mask;
    uint64_t max_payload;
    uint64_t cursor;      /* bytes written so far (our copy of the write cursor) */
    uint64_t known_floor; /* the slowest live reader's cursor, as last read */
    int64_t reserved;     /* data position of the reserved record, or -1 */
    uint64_t reserved_bytes;  /* payload bytes reserved */
    uint64_t cursor_before;   /* cursor before a PAD written by the reservation */
    /* Each reader's doorbell, read once: the offsets sit on the readers' own lines,
     * which they write on every record they release, so reading them per publish
     * would pull those lines over and back each time (Note in writer_init). */
    uint64_t **reader_bells;
    int ready;
} WriterCore;

static inline uint64_t *reader_bell(const RingHeader *ring, uint64_t reader);

static void writer_dealloc(WriterCore *self) {
    PyMem_Free(self->reader_bells);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int writer_init(WriterCore *self, PyObject *args, PyObject *kwargs) {
    PyObject *region, *offset_object;
    uint64_t offset;
    RingHeader ring;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "WriterCore(region, offset) takes no keywords");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OO", &region, &offset_object) ||
        as_u64(offset_object, &offset) < 0 || read_header(&ring, region, offset) < 0) {
        return -1;
    }
    /* The doorbell offsets are written when the ring is formatted and never again
     * (read_header checked them), so they are safe to keep. */
    uint64_t **bells = PyMem_Calloc(ring.n_readers, sizeof *bells);
    if (bells == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t r = 0; r < ring.n_readers; r++) {
        bells[r] = reader_bell(&ring, r);
    }
    PyMem_Free(self->reader_bells);
    self->reader_bells = bells;
    self->ring = ring;
    self->mask = self->ring.capacity - 1;
    self->max_payload = self->ring.capacity / RECORD_DIVISOR - HEADER_BYTES;
    self->cursor = load_acquire(self->ring.write_cursor);
    self->known_floor = self->cursor;
    self->reserved = -1;
    self->ready = 1;
    return 0;
}

static int writer_check(WriterCore *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "WriterCore.__init__ was not called");
        return -1;
    }
    return 0;
}

static uint64_t writer_floor(WriterCore *self) {
    uint64_t floor = self->cursor;
    for (uint64_t r = 0; r < self->ring.n_readers; r++) {
        uint64_t *line = reader_line(&self->ring, r);
        if (!load_relaxed(&line[DETACHED_WORD])) {
            uint64_t cursor = load_acquire(&line[CURSOR_WORD]);
            if (cursor < floor) {
                floor = cursor;
            }
        }
    }
    self->known_floor = floor;
    return floor;
}

/* The floor the readers must reach before a record of nbytes fits. */
static uint64_t writer_needed_floor(WriterCore *self, uint64_t nbytes) {
    uint64_t size = HEADER_BYTES + padded(nbytes);
    uint64_t position = self->cursor & self->mask;
    uint64_t tail = self->ring.capacity - position;
    uint64_t needed = size <= tail ? size : tail + size;
    return self->cursor + needed - self->ring.capacity;
}

/* The memory stays the region's: a core keeps no reference to it (nor does the
 * Python core), so whoever releases a region must first stop every core on it, as
 * the group runtime does (it closes the router before releasing the mailbox). */

/* Reserves a record of nbytes if there is room and the ring is open. Returns the
 * payload's address, or NULL with no exception set when there is no room or the
 * ring is not open (the caller decides), or NULL with an exception. */
static char *writer_try_reserve(WriterCore *self, uint64_t nbytes) {
    if (nbytes > self->max_payload) {
        PyErr_Format(PyExc_ValueError, "a record holds at most %llu bytes, not %llu",
                     (unsigned long long)self->max_payload, (unsigned long long)nbytes);
        return NULL;
    }
    if (self->reserved >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "reserve() again before commit()");
        return NULL;
    }
    uint64_t limit = writer_needed_floor(self, nbytes);
    /* Cursors only grow, so a comparison that wraps needs 2**64 bytes written. */
    if ((int64_t)(self->known_floor - limit) < 0 && (int64_t)(writer_floor(self) - limit) < 0) {
        return NULL;
    }
    if (load_acquire(self->ring.state) != STATE_OPEN) {
        return NULL;
    }
    uint64_t size = HEADER_BYTES + padded(nbytes);
    uint64_t position = self->cursor & self->mask;
    uint64_t tail = self->ring.capacity - position;
    self->cursor_before = self->cursor;
    self->reserved_bytes = nbytes;
    if (size > tail) {
        store_relaxed(word_at(self->ring.data, position),
                      (tail - HEADER_BYTES) | ((uint64_t)KIND_PAD << KIND_SHIFT));
        self->cursor += tail;
        position = 0;
    }
    self->reserved = (int64_t)position;
    return self->ring.data + position + HEADER_BYTES;
}

/* Reader r's doorbell word. */
static inline uint64_t *reader_bell(const RingHeader *ring, uint64_t reader) {
    uint64_t offset = load_relaxed(&reader_line(ring, reader)[BELL_WORD]);
    return offset % 8 || offset > ring->region_bytes - 8 ? NULL : word_at(ring->region, offset);
}

/* Publishes the reserved record and wakes its reader (wake >= 0) or every reader
 * that parked (wake < 0). */
static void writer_publish(WriterCore *self, uint64_t nbytes, uint64_t kind, int more,
                           int64_t wake) {
    uint64_t position = (uint64_t)self->reserved;
    self->reserved = -1;
    store_relaxed(word_at(self->ring.data, position),
                  nbytes | (kind << KIND_SHIFT) |
                      ((uint64_t)(more ? FLAG_MORE : 0) << FLAGS_SHIFT));
    self->cursor += HEADER_BYTES + padded(nbytes);
    store_release(self->ring.write_cursor, self->cursor);
    full_fence();
    if (wake >= 0) {
        if ((uint64_t)wake < self->ring.n_readers) {
            notify(self->reader_bells[wake]);
        }
        return;
    }
    for (uint64_t r = 0; r < self->ring.n_readers; r++) {
        notify(self->reader_bells[r]);
    }
}

static PyObject *writer_try_reserve_py(WriterCore *self, PyObject *arg) {
    uint64_t nbytes;
    if (writer_check(self) < 0 || as_u64(arg, &nbytes) < 0) {
        return NULL;
    }
    char *payload = writer_try_reserve(self, nbytes);
    if (payload == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return PyMemoryView_FromMemory(payload, (Py_ssize_t)nbytes, PyBUF_WRITE);
}

static int check_wake(WriterCore *self, int64_t wake) {
    if (wake >= (int64_t)self->ring.n_readers) {
        PyErr_Format(PyExc_ValueError, "wake=%lld names no reader of a ring of %llu readers",
                     (long long)wake, (unsigned long long)self->ring.n_readers);
        return -1;
    }
    return 0;
}

static PyObject *writer_commit_py(WriterCore *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    static const char *const names[] = {"nbytes", "more", "kind", "wake"};
    PyObject *values[4] = {NULL, NULL, NULL, NULL};
    if (writer_check(self) < 0 ||
        parse_args(args, nargs, kwnames, names, 4, values, "commit") < 0) {
        return NULL;
    }
    if (values[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "commit() needs nbytes");
        return NULL;
    }
    uint64_t nbytes, kind = KIND_DATA;
    long long wake = -1;
    int more = 0;
    if (as_u64(values[0], &nbytes) < 0) {
        return NULL;
    }
    if (values[1] != NULL && (more = PyObject_IsTrue(values[1])) < 0) {
        return NULL;
    }
    if (values[2] != NULL && as_u64(values[2], &kind) < 0) {
        return NULL;
    }
    if (values[3] != NULL && (wake = PyLong_AsLongLong(values[3])) == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->reserved < 0) {
        PyErr_SetString(PyExc_RuntimeError, "commit() without reserve()");
        return NULL;
    }
    if (nbytes > self->reserved_bytes) {
        PyErr_Format(PyExc_ValueError, "commit() of %llu bytes, but reserve() was for %llu",
                     (unsigned long long)nbytes, (unsigned long long)self->reserved_bytes);
        return NULL;
    }
    if (kind == 0 || kind == KIND_PAD || kind > KIND_MASK) {
        PyErr_Format(PyExc_ValueError, "commit() of a record of kind %llu", (unsigned long long)kind);
        return NULL;
    }
    if (check_wake(self, wake) < 0) {
        return NULL;
    }
    writer_publish(self, nbytes, kind, more, wake);
    Py_RETURN_NONE;
}

/* send(chunks, nbytes, wake) -> bool: the whole message as one record, if it fits a
 * record and there is room now. False: nothing was written (no room, the ring is
 * not open, the message needs fragments, or it has many chunks); use reserve(). */
static PyObject *writer_send_py(WriterCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (writer_check(self) < 0) {
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send(chunks, nbytes, wake) takes 3 arguments");
        return NULL;
    }
    uint64_t nbytes;
    long long wake = PyLong_AsLongLong(args[2]);
    if ((wake == -1 && PyErr_Occurred()) || as_u64(args[1], &nbytes) < 0 ||
        check_wake(self, wake) < 0) {
        return NULL;
    }
    PyObject *chunks = PySequence_Fast(args[0], "send() needs a sequence of buffers");
    if (chunks == NULL) {
        return NULL;
    }
    Py_ssize_t n_chunks = PySequence_Fast_GET_SIZE(chunks);
    if (nbytes > self->max_payload || n_chunks > MAX_GATHER) {
        Py_DECREF(chunks);
        Py_RETURN_FALSE;
    }
    Py_buffer views[MAX_GATHER];
    Py_ssize_t held = 0;
    uint64_t total = 0;
    PyObject *result = NULL;
    for (; held < n_chunks; held++) {
        PyObject *chunk = PySequence_Fast_GET_ITEM(chunks, held);
        if (PyObject_GetBuffer(chunk, &views[held], PyBUF_C_CONTIGUOUS) < 0) {
            goto done;
        }
        total += (uint64_t)views[held].len;
    }
    if (total != nbytes) {
        PyErr_Format(PyExc_ValueError, "the chunks hold %llu bytes, not nbytes=%llu",
                     (unsigned long long)total, (unsigned long long)nbytes);
        goto done;
    }
    char *payload = writer_try_reserve(self, nbytes);
    if (payload == NULL) {
        if (!PyErr_Occurred()) {
            result = Py_NewRef(Py_False);
        }
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_chunks; i++) {
        memcpy(payload, views[i].buf, (size_t)views[i].len);
        payload += views[i].len;
    }
    writer_publish(self, nbytes, KIND_DATA, 0, wake);
    result = Py_NewRef(Py_True);
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        PyBuffer_Release(&views[i]);
    }
    Py_DECREF(chunks);
    return result;
}

/* Writes a message without tensors (prelude and pickle) as one record, if it fits a
 * record and there is room now: a new reference to True, to False (nothing written),
 * or NULL with an exception. */
static PyObject *writer_put_message(WriterCore *self, long long target, long long tag,
                                    const char *pickle, Py_ssize_t pickle_len, long long wake) {
    uint64_t nbytes = PRELUDE_BYTES + (uint64_t)pickle_len;
    if (nbytes > self->max_payload) {
        Py_RETURN_FALSE;
    }
    char *payload = writer_try_reserve(self, nbytes);
    if (payload == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    uint64_t prelude[PRELUDE_WORDS] = {0};
    prelude[PRELUDE_TARGET] = (uint64_t)target;
    prelude[PRELUDE_TAG] = (uint64_t)tag;
    prelude[PRELUDE_PICKLE_LEN] = (uint64_t)pickle_len;
    memcpy(payload, prelude, PRELUDE_BYTES);
    memcpy(payload + PRELUDE_BYTES, pickle, (size_t)pickle_len);
    writer_publish(self, nbytes, KIND_DATA, 0, wake);
    Py_RETURN_TRUE;
}

/* Parses the (target, tag, ..., wake) arguments of send_message and send_plain. */
static int parse_message_args(WriterCore *self, PyObject *const *args, Py_ssize_t nargs,
                              const char *usage, long long *target, long long *tag,
                              long long *wake) {
    if (writer_check(self) < 0) {
        return -1;
    }
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s takes 4 arguments", usage);
        return -1;
    }
    *target = PyLong_AsLongLong(args[0]);
    if (*target == -1 && PyErr_Occurred()) {
        return -1;
    }
    *tag = PyLong_AsLongLong(args[1]);
    if (*tag == -1 && PyErr_Occurred()) {
        return -1;
    }
    *wake = PyLong_AsLongLong(args[3]);
    if ((*wake == -1 && PyErr_Occurred()) || check_wake(self, *wake) < 0) {
        return -1;
    }
    return 0;
}

/* send_message(target, tag, pickle, wake) -> bool: a message without tensors as one
 * record, prelude and pickle, if it fits a record and there is room now. False:
 * nothing was written; use codec.py's general path. */
static PyObject *writer_send_message_py(WriterCore *self, PyObject *const *args,
                                        Py_ssize_t nargs) {
    long long target, tag, wake;
    if (parse_message_args(self, args, nargs, "send_message(target, tag, pickle, wake)", &target,
                           &tag, &wake) < 0) {
        return NULL;
    }
    Py_buffer pickle;
    if (PyObject_GetBuffer(args[2], &pickle, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    PyObject *result = writer_put_message(self, target, tag, pickle.buf, pickle.len, wake);
    PyBuffer_Release(&pickle);
    return result;
}

/* send_plain(target, tag, obj, wake) -> bool: send_message of obj's pickle, if obj
 * is a plain value (_plainpickle.h) whose pickle is short; pickled here, in C. False:
 * nothing was written (not plain, too long, no room); use the general path. */
static PyObject *writer_send_plain_py(WriterCore *self, PyObject *const *args,
                                      Py_ssize_t nargs) {
    long long target, tag, wake;
    if (parse_message_args(self, args, nargs, "send_plain(target, tag, obj, wake)", &target, &tag,
                           &wake) < 0) {
        return NULL;
    }
    char pickle[PLAIN_DUMP_MAX];
    Py_ssize_t length = plain_dump(args[2], pickle);
    if (length == 0) {
        Py_RETURN_FALSE;
    }
    return writer_put_message(self, target, tag, pickle, length, wake);
}

static PyObject *writer_cancel_py(WriterCore *self, PyObject *Py_UNUSED(ignored)) {
    if (writer_check(self) < 0) {
        return NULL;
    }
    if (self->reserved >= 0) { /* nothing was published: forget the reservation and its PAD */
        self->reserved = -1;
        self->cursor = self->cursor_before;
    }
    Py_RETURN_NONE;
}

static PyObject *writer_floor_py(WriterCore *self, PyObject *Py_UNUSED(ignored)) {
    if (writer_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(writer_floor(self));
}

static PyObject *writer_needed_floor_py(WriterCore *self, PyObject *arg) {
    uint64_t nbytes;
    if (writer_check(self) < 0 || as_u64(arg, &nbytes) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong((long long)writer_needed_floor(self, nbytes));
}

static PyObject *writer_notify_all_py(WriterCore *self, PyObject *Py_UNUSED(ignored)) {
    if (writer_check(self) < 0) {
        return NULL;
    }
    full_fence();
    for (uint64_t r = 0; r < self->ring.n_readers; r++) {
        notify(self->reader_bells[r]);
    }
    Py_RETURN_NONE;
}

static PyObject *writer_detached_readers_py(WriterCore *self, PyObject *Py_UNUSED(ignored)) {
    if (writer_check(self) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    for (uint64_t r = 0; r < self->ring.n_readers; r++) {
        if (load_relaxed(&reader_line(&self->ring, r)[DETACHED_WORD])) {
            PyObject *index = PyLong_FromUnsignedLongLong(r);
            if (index == NULL || PyList_Append(list, index) < 0) {
                Py_XDECREF(index);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(index);
        }
    }
    return list;
}

static PyObject *writer_state_py(WriterCore *self, PyObject *Py_UNUSED(ignored)) {
    if (writer_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(load_acquire(self->ring.state));
}

static PyObject *writer_get_cursor(WriterCore *self, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(self->cursor);
}

static PyObject *writer_get_max_payload(WriterCore *self, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(self->max_payload);
}

static PyMethodDef writer_methods[] = {
    {"try_reserve", (PyCFunction)writer_try_reserve_py, METH_O,
     "try_reserve(nbytes) -> memoryview | None: room for one record's payload now, or None "
     "(no room, or the ring is not open)."},
    {"commit", (PyCFunction)(void (*)(void))writer_commit_py, METH_FASTCALL | METH_KEYWORDS,
     "commit(nbytes, more=False, kind=DATA, wake=-1): publishes the reserved record."},
    {"send", (PyCFunction)(void (*)(void))writer_send_py, METH_FASTCALL,
     "send(chunks, nbytes, wake) -> bool: one whole record now, or False (nothing written)."},
    {"send_message", (PyCFunction)(void (*)(void))writer_send_message_py, METH_FASTCALL,
     "send_message(target, tag, pickle, wake) -> bool: a message without tensors as one "
     "record now, or False (nothing written)."},
    {"send_plain", (PyCFunction)(void (*)(void))writer_send_plain_py, METH_FASTCALL,
     "send_plain(target, tag, obj, wake) -> bool: send_message of obj pickled here, if it "
     "is a short plain value; or False (nothing written)."},
    {"cancel", (PyCFunction)writer_cancel_py, METH_NOARGS,
     "cancel(): forgets an uncommitted reservation (nothing is published)."},
    {"floor", (PyCFunction)writer_floor_py, METH_NOARGS,
     "floor() -> int: the slowest live reader's cursor."},
    {"needed_floor", (PyCFunction)writer_needed_floor_py, METH_O,
     "needed_floor(nbytes) -> int: the floor at which a record of nbytes fits."},
    {"notify_all", (PyCFunction)writer_notify_all_py, METH_NOARGS,
     "notify_all(): wakes every parked reader."},
    {"detached_readers", (PyCFunction)writer_detached_readers_py, METH_NOARGS,
     "detached_readers() -> list[int]: readers that no longer hold the writer back."},
    {"state", (PyCFunction)writer_state_py, METH_NOARGS, "state() -> int: OPEN, CLOSED or BROKEN."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef writer_getset[] = {
    {"cursor", (getter)writer_get_cursor, NULL, "Bytes written so far (the write cursor).", NULL},
    {"max_payload", (getter)writer_get_max_payload, NULL, "Largest payload of one record.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "torchtroupe.transport._ringcore.WriterCore",
    .tp_basicsize = sizeof(WriterCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "WriterCore(region, offset): the writing end of the ring at offset of a "
              "SharedRegion.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_init = (initproc)writer_init,
    .tp_methods = writer_methods,
    .tp_getset = writer_getset,
};

/* ================================================================================= */
/* ReaderCore                                                                         */
/* ================================================================================= */

typedef struct {
    PyObject_HEAD
    RingHeader ring;
    uint64_t mask;
    uint64_t cursor;  /* bytes consumed so far (our copy of the read cursor) */
    uint64_t pending; /* bytes the record returned by poll() occupies, or 0 */
    uint64_t *line;        /* this reader's control line */
    uint64_t *cursor_word; /* its cursor, a word of that line */
    int kind;
    char more;
    char resync; /* the rest of an abandoned message is still to skip (stream.py) */
    int ready;
} ReaderCore;

static int reader_init(ReaderCore *self, PyObject *args, PyObject *kwargs) {
    PyObject *region, *offset_object, *reader_object;
    uint64_t offset, reader;
    RingHeader ring;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "ReaderCore(region, offset, reader) takes no keywords");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOO", &region, &offset_object, &reader_object) ||
        as_u64(offset_object, &offset) < 0 || read_header(&ring, region, offset) < 0) {
        return -1;
    }
    if (!PyLong_Check(reader_object)) {
        PyErr_SetString(PyExc_TypeError, "the reader index must be an int");
        return -1;
    }
    int overflow = 0;
    long long index = PyLong_AsLongLongAndOverflow(reader_object, &overflow);
    if (index == -1 && PyErr_Occurred()) {
        return -1;
    }
    reader = (uint64_t)index;
    if (overflow || index < 0 || reader >= ring.n_readers) {
        PyErr_Format(PyExc_ValueError, "reader %R out of range for a ring of %llu readers",
                     reader_object, (unsigned long long)ring.n_readers);
        return -1;
    }
    self->ring = ring;
    self->mask = self->ring.capacity - 1;
    self->line = reader_line(&self->ring, reader);
    self->cursor_word = &self->line[CURSOR_WORD];
    self->cursor = load_acquire(self->cursor_word);
    self->pending = 0;
    self->kind = KIND_DATA;
    self->more = 0;
    self->resync = 0;
    self->ready = 1;
    return 0;
}

static int reader_check(ReaderCore *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "ReaderCore.__init__ was not called");
        return -1;
    }
    return 0;
}

static inline int reader_has_data(ReaderCore *self) {
    return load_relaxed(self->ring.write_cursor) != self->cursor ||
           load_relaxed(self->ring.state) != STATE_OPEN;
}

/* The next record (skipping PADs): its payload address and length, or NULL with no
 * exception when nothing is published, or NULL with an exception when the ring is
 * closed or broken and drained. */
static char *reader_next(ReaderCore *self, uint64_t *length_out) {
    if (reader_check(self) < 0) {
        return NULL;
    }
    if (self->pending) {
        PyErr_SetString(PyExc_RuntimeError, "poll() again before consume()");
        return NULL;
    }
    for (;;) {
        uint64_t published = load_acquire(self->ring.write_cursor);
        if (published == self->cursor) {
            uint64_t state = load_acquire(self->ring.state);
            if (state != STATE_OPEN && load_acquire(self->ring.write_cursor) == self->cursor) {
                state_error(state, "reader");
            }
            return NULL;
        }
        uint64_t position = self->cursor & self->mask;
        uint64_t header = load_relaxed(word_at(self->ring.data, position));
        uint64_t length = header & LENGTH_MASK;
        int kind = (int)((header >> KIND_SHIFT) & KIND_MASK);
        uint64_t tail = self->ring.capacity - position;
        if (published - self->cursor > self->ring.capacity ||
            (kind == KIND_PAD ? length != tail - HEADER_BYTES
                              : HEADER_BYTES + padded(length) > tail ||
                                    HEADER_BYTES + padded(length) > published - self->cursor)) {
            PyErr_SetString(broken_error ? broken_error : PyExc_RuntimeError,
                            "the ring is corrupt (a record overruns it)");
            return NULL;
        }
        if (kind == KIND_PAD) {
            self->cursor += HEADER_BYTES + length;
            continue;
        }
        self->kind = kind;
        self->more = (char)(((header >> FLAGS_SHIFT) & FLAG_MORE) != 0);
        self->pending = HEADER_BYTES + padded(length);
        *length_out = length;
        return self->ring.data + position + HEADER_BYTES;
    }
}

static PyObject *reader_poll_py(ReaderCore *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t length;
    char *payload = reader_next(self, &length);
    if (payload == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return PyMemoryView_FromMemory(payload, (Py_ssize_t)length, PyBUF_WRITE);
}

/* poll_message() -> None | (record, target, tag, pickle): poll(), and for a record
 * that starts a message, its prelude (codec.py). target and tag are None for a
 * record too short to hold a prelude (ABORT); pickle is the pickle bytes when the
 * whole message is this one record and carries no tensors, else None. */
/* Reads the prelude of the record just polled (codec.py) into `prelude`. Returns 0 if
 * the record is too short to start a message (or not DATA), 1 if it starts one, and 2
 * if moreover the whole message is this record and carries no tensors: its pickle is
 * the prelude[PRELUDE_PICKLE_LEN] bytes after the prelude. */
static int read_prelude(ReaderCore *self, const char *payload, uint64_t length,
                        uint64_t prelude[PRELUDE_WORDS]) {
    if (self->kind != KIND_DATA || length < PRELUDE_BYTES) {
        return 0;
    }
    memcpy(prelude, payload, PRELUDE_BYTES);
    int plain = !self->more && prelude[PRELUDE_N_STORAGES] == 0 && prelude[PRELUDE_N_FDS] == 0 &&
                prelude[PRELUDE_PICKLE_LEN] <= length - PRELUDE_BYTES;
    return plain ? 2 : 1;
}

static PyObject *reader_poll_message_py(ReaderCore *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t length;
    char *payload = reader_next(self, &length);
    if (payload == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *record = PyMemoryView_FromMemory(payload, (Py_ssize_t)length, PyBUF_WRITE);
    if (record == NULL) {
        return NULL;
    }
    uint64_t prelude[PRELUDE_WORDS];
    int found = read_prelude(self, payload, length, prelude);
    if (found == 0) {
        return Py_BuildValue("(NOOO)", record, Py_None, Py_None, Py_None);
    }
    PyObject *pickle = NULL;
    if (found == 2) {
        pickle = PyMemoryView_FromMemory(payload + PRELUDE_BYTES,
                                         (Py_ssize_t)prelude[PRELUDE_PICKLE_LEN], PyBUF_WRITE);
        if (pickle == NULL) {
            Py_DECREF(record);
            return NULL;
        }
    } else {
        pickle = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(NLLN)", record, (long long)prelude[PRELUDE_TARGET],
                         (long long)prelude[PRELUDE_TAG], pickle);
}

static void reader_release(ReaderCore *self) {
    self->cursor += self->pending;
    self->pending = 0;
    store_release(self->cursor_word, self->cursor);
    full_fence();
    notify(self->ring.writer_bell);
}

/* take(loads, rank) -> None | tuple | memoryview: the hot path of a reader that
 * decodes messages (codec.py). Skips one-record messages without tensors that are
 * addressed to neither `rank` nor every rank (-1); returns the next one that is,
 * unpickled with `loads` (a tuple) and consumed. Any other record (a message with
 * tensors or fragments, an ABORT, a pickle that loads() refused or that is not a
 * tuple) comes back as poll() would return it, still to consume: decode it the
 * general way. None: nothing is published. */
/* One step of take(): a new reference to the unpickled tuple (record released), to
 * the record's memoryview (still pending), None (nothing published), or NULL with
 * an exception. */
static PyObject *reader_take_one(ReaderCore *self, PyObject *loads, long long rank) {
    for (;;) {
        uint64_t length;
        char *payload = reader_next(self, &length);
        if (payload == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        uint64_t prelude[PRELUDE_WORDS];
        if (self->resync || read_prelude(self, payload, length, prelude) != 2) {
            return PyMemoryView_FromMemory(payload, (Py_ssize_t)length, PyBUF_WRITE);
        }
        long long target = (long long)prelude[PRELUDE_TARGET];
        if (target != TARGET_ALL && target != rank) {
            reader_release(self);
            continue;
        }
        Py_ssize_t pickle_len = (Py_ssize_t)prelude[PRELUDE_PICKLE_LEN];
        PyObject *value = NULL;
        if (loads == fast_loads) { /* this module's loads(): plain pickles in C */
            value = plain_load(payload + PRELUDE_BYTES, pickle_len);
            loads = stock_loads;
        }
        if (value == NULL) {
            PyObject *pickle =
                PyMemoryView_FromMemory(payload + PRELUDE_BYTES, pickle_len, PyBUF_READ);
            if (pickle == NULL) {
                return NULL;
            }
            value = PyObject_CallOneArg(loads, pickle);
            Py_DECREF(pickle);
        }
        if (value == NULL && !PyErr_ExceptionMatches(PyExc_Exception)) {
            /* KeyboardInterrupt, SystemExit: the record stays unread for the next call */
            self->pending = 0;
            return NULL;
        }
        if (value == NULL || !PyTuple_CheckExact(value)) {
            /* Leave the record to the general path, which reports the error with the
             * message's tag. */
            Py_XDECREF(value);
            PyErr_Clear();
            return PyMemoryView_FromMemory(payload, (Py_ssize_t)length, PyBUF_WRITE);
        }
        reader_release(self);
        return value;
    }
}

static int parse_rank(PyObject *object, long long *rank) {
    *rank = PyLong_AsLongLong(object);
    return *rank == -1 && PyErr_Occurred() ? -1 : 0;
}

/* take(loads, rank) -> None | tuple | memoryview: the hot path of a reader that
 * decodes messages (codec.py). Skips one-record messages without tensors that are
 * addressed to neither `rank` nor every rank (-1); returns the next one that is,
 * unpickled with `loads` (a tuple) and consumed. Any other record (a message with
 * tensors or fragments, an ABORT, anything while `resync` is set, a pickle that
 * loads() refused or that is not a tuple) comes back as poll() would return it,
 * still to consume: decode it the general way. None: nothing is published. */
static PyObject *reader_take_py(ReaderCore *self, PyObject *const *args, Py_ssize_t nargs) {
    long long rank;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take(loads, rank) takes 2 arguments");
        return NULL;
    }
    if (reader_check(self) < 0 || parse_rank(args[1], &rank) < 0) {
        return NULL;
    }
    return reader_take_one(self, args[0], rank);
}

static PyObject *reader_consume_py(ReaderCore *self, PyObject *Py_UNUSED(ignored)) {
    if (reader_check(self) < 0) {
        return NULL;
    }
    reader_release(self);
    Py_RETURN_NONE;
}

static PyObject *reader_has_data_py(ReaderCore *self, PyObject *Py_UNUSED(ignored)) {
    if (reader_check(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(reader_has_data(self));
}

static int parse_seconds(PyObject *arg, double *seconds) {
    *seconds = PyFloat_AsDouble(arg);
    if (*seconds == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(*seconds >= 0.0)) { /* negative or NaN */
        PyErr_Format(PyExc_ValueError, "spin seconds must be >= 0, not %R", arg);
        return -1;
    }
    return 0;
}

/* The longest spin made with the GIL held. A longer one lets the GIL go, so the
 * process's other threads run meanwhile (a caller's other senders, its monitor, an
 * actor's own threads); taking it back may then cost a thread switch, which a spin
 * that long can afford. Signals are checked only at the end of such a spin. */
#define SPIN_WITH_GIL_S 200e-6

/* 1 once a reader has data, 0 at `end`, -1 if a signal handler raised (checked only
 * with check_signals, which needs the GIL). */
static int spin_loop(ReaderCore *const *readers, Py_ssize_t n, double end, int check_signals) {
    for (unsigned long spins = 0;; spins++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (reader_has_data(readers[i])) {
                return 1;
            }
        }
        if (spins % SPIN_CHECK_EVERY == 0) {
            if (monotonic_s() >= end) {
                return 0;
            }
            if (check_signals && PyErr_CheckSignals() < 0) {
                return -1;
            }
        }
        cpu_relax();
    }
}

/* Spins until one of n readers has data or `seconds` pass (-1 on an exception from a
 * signal handler); with seconds <= 0 it looks once. */
static int spin_until(ReaderCore *const *readers, Py_ssize_t n, double seconds) {
    double end = monotonic_s() + seconds;
    if (seconds <= SPIN_WITH_GIL_S) {
        return spin_loop(readers, n, end, 1);
    }
    int found;
    Py_BEGIN_ALLOW_THREADS
    found = spin_loop(readers, n, end, 0);
    Py_END_ALLOW_THREADS
    return PyErr_CheckSignals() < 0 ? -1 : found;
}

static PyObject *reader_spin_py(ReaderCore *self, PyObject *arg) {
    double seconds;
    if (reader_check(self) < 0 || parse_seconds(arg, &seconds) < 0) {
        return NULL;
    }
    ReaderCore *readers[1] = {self};
    int found = spin_until(readers, 1, seconds);
    return found < 0 ? NULL : PyBool_FromLong(found);
}

static PyObject *reader_detach_py(ReaderCore *self, PyObject *Py_UNUSED(ignored)) {
    if (reader_check(self) < 0) {
        return NULL;
    }
    store_release(&self->line[DETACHED_WORD], 1);
    full_fence();
    store_relaxed(self->ring.writer_bell, BELL_AWAKE);
    futex_wake_all(self->ring.writer_bell);
    Py_RETURN_NONE;
}

static PyMethodDef reader_methods[] = {
    {"poll", (PyCFunction)reader_poll_py, METH_NOARGS,
     "poll() -> memoryview | None: the next record's payload (see kind and more)."},
    {"poll_message", (PyCFunction)reader_poll_message_py, METH_NOARGS,
     "poll_message() -> None | (record, target, tag, pickle): poll() with the message's "
     "prelude read (pickle: the pickle bytes of a one-record message without tensors)."},
    {"take", (PyCFunction)(void (*)(void))reader_take_py, METH_FASTCALL,
     "take(loads, rank) -> None | tuple | memoryview: the next one-record message "
     "without tensors for rank (or for all), unpickled and consumed; any other record "
     "as poll() returns it."},
    {"consume", (PyCFunction)reader_consume_py, METH_NOARGS,
     "consume(): releases the record returned by poll() to the writer."},
    {"has_data", (PyCFunction)reader_has_data_py, METH_NOARGS,
     "has_data() -> bool: a record waits, or the ring is no longer open."},
    {"spin", (PyCFunction)reader_spin_py, METH_O,
     "spin(seconds) -> bool: busy-waits until has_data(), at most seconds."},
    {"detach", (PyCFunction)reader_detach_py, METH_NOARGS,
     "detach(): stops holding the writer back, for good."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef reader_members[] = {
    {"kind", T_INT, offsetof(ReaderCore, kind), READONLY, "Kind of the polled record."},
    {"more", T_BOOL, offsetof(ReaderCore, more), READONLY,
     "True if more fragments of the polled record's message follow."},
    {"resync", T_BOOL, offsetof(ReaderCore, resync), 0,
     "True while the rest of an abandoned message is to be skipped: take() then "
     "returns every record as it is (stream.py does the skipping)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReaderCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "torchtroupe.transport._ringcore.ReaderCore",
    .tp_basicsize = sizeof(ReaderCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "ReaderCore(region, offset, reader): reading end number reader of the ring "
              "at offset of a SharedRegion.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_methods = reader_methods,
    .tp_members = reader_members,
};

/* ================================================================================= */
/* Module                                                                             */
/* ================================================================================= */

static PyObject *module_full_fence(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored)) {
    full_fence();
    Py_RETURN_NONE;
}

static PyObject *module_spin_any(PyObject *Py_UNUSED(module), PyObject *const *args,
                                 Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "spin_any(readers: tuple[ReaderCore, ...], seconds)");
        return NULL;
    }
    double seconds;
    if (parse_seconds(args[1], &seconds) < 0) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args[0]);
    ReaderCore *stack[16];
    ReaderCore **readers = n <= 16 ? stack : PyMem_Malloc((size_t)n * sizeof(ReaderCore *));
    if (readers == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(args[0], i);
        if (!PyObject_TypeCheck(item, &ReaderCoreType) || !((ReaderCore *)item)->ready) {
            PyErr_SetString(PyExc_TypeError, "spin_any() needs initialised ReaderCore objects");
            goto done;
        }
        readers[i] = (ReaderCore *)item;
    }
    int found = n ? spin_until(readers, n, seconds) : 0;
    result = found < 0 ? NULL : PyBool_FromLong(found);
done:
    if (readers != stack) {
        PyMem_Free(readers);
    }
    return result;
}

/* take_each(readers, loads, rank) -> list[(index, tuple | memoryview)]: take() on
 * each reader in turn until it has nothing more; a record take() leaves to the
 * general path ends that reader's turn (it stays pending). */
static PyObject *module_take_each(PyObject *Py_UNUSED(module), PyObject *const *args,
                                  Py_ssize_t nargs) {
    long long rank;
    if (nargs != 3 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "take_each(readers: tuple[ReaderCore, ...], loads, rank)");
        return NULL;
    }
    if (parse_rank(args[2], &rank) < 0) {
        return NULL;
    }
    PyObject *taken = PyList_New(0);
    if (taken == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[0]); i++) {
        PyObject *item = PyTuple_GET_ITEM(args[0], i);
        if (!PyObject_TypeCheck(item, &ReaderCoreType) || reader_check((ReaderCore *)item) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "take_each() needs ReaderCore objects");
            }
            Py_DECREF(taken);
            return NULL;
        }
        for (;;) {
            PyObject *value = reader_take_one((ReaderCore *)item, args[1], rank);
            if (value == NULL) {
                if ((closed_error && PyErr_ExceptionMatches(closed_error)) ||
                    (broken_error && PyErr_ExceptionMatches(broken_error))) {
                    PyErr_Clear(); /* that ring is done; its peer's death is news elsewhere */
                    break;
                }
                if (PyList_GET_SIZE(taken) == 0) {
                    Py_DECREF(taken);
                    return NULL;
                }
                /* The records already taken are released: hand them back. The record
                 * that failed stays unread, so the error comes again on the next call;
                 * an interrupt is raised again at the next signal check. */
                int interrupted = PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
                PyErr_Clear();
                if (interrupted) {
                    PyErr_SetInterrupt();
                }
                return taken;
            }
            if (value == Py_None) {
                Py_DECREF(value);
                break;
            }
            PyObject *entry = Py_BuildValue("(nN)", i, value);
            if (entry == NULL || PyList_Append(taken, entry) < 0) {
                Py_XDECREF(entry);
                Py_DECREF(taken);
                return NULL;
            }
            Py_DECREF(entry);
            if (!PyTuple_CheckExact(value)) {
                break; /* a record for the general path: this reader's turn ends */
            }
        }
    }
    return taken;
}

/* loads(data): pickle.loads, for plain values without its set-up (_plainpickle.h). */
static PyObject *module_loads(PyObject *Py_UNUSED(module), PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    PyObject *value = plain_load(view.buf, view.len);
    PyBuffer_Release(&view);
    return value != NULL ? value : PyObject_CallOneArg(stock_loads, data);
}

/* plain_dumps(obj) -> bytes | None: the pickle send_plain() would write, or None. */
static PyObject *module_plain_dumps(PyObject *Py_UNUSED(module), PyObject *obj) {
    char pickle[PLAIN_DUMP_MAX];
    Py_ssize_t length = plain_dump(obj, pickle);
    if (length == 0) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize(pickle, length);
}

static PyObject *module_set_errors(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *closed, *broken;
    if (!PyArg_ParseTuple(args, "OO", &closed, &broken)) {
        return NULL;
    }
    if (!PyExceptionClass_Check(closed) || !PyExceptionClass_Check(broken)) {
        PyErr_SetString(PyExc_TypeError, "set_errors() needs two exception classes");
        return NULL;
    }
    Py_XSETREF(closed_error, Py_NewRef(closed));
    Py_XSETREF(broken_error, Py_NewRef(broken));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"full_fence", module_full_fence, METH_NOARGS, "full_fence(): a full memory fence."},
    {"spin_any", (PyCFunction)(void (*)(void))module_spin_any, METH_FASTCALL,
     "spin_any(readers, seconds) -> bool: busy-waits until one reader has data."},
    {"take_each", (PyCFunction)(void (*)(void))module_take_each, METH_FASTCALL,
     "take_each(readers, loads, rank) -> list[(index, tuple | memoryview)]: take() on "
     "each reader until it has nothing more (a record left to the general path ends its "
     "turn)."},
    {"loads", module_loads, METH_O,
     "loads(data): pickle.loads, for plain values in C; take() with it unpickles in place."},
    {"plain_dumps", module_plain_dumps, METH_O,
     "plain_dumps(obj) -> bytes | None: obj pickled in C if it is a short plain value."},
    {"set_errors", module_set_errors, METH_VARARGS,
     "set_errors(closed, broken): the exceptions poll() raises for a closed or broken ring."},
    {NULL, NULL, 0, NULL},
};

/* The numbers this module shares with layout.py, under layout.py's names; the Python
 * core exports the same (Note [One home for the ring's numbers], layout.py). */
static const struct {
    const char *name;
    long long value;
} exported_constants[] = {
    {"MAGIC", (long long)RING_MAGIC},
    {"CACHE_LINE", CACHE_LINE},
    {"LINE_WORDS", LINE_WORDS},
    {"CAPACITY_WORD", CAPACITY_WORD},
    {"N_READERS_WORD", N_READERS_WORD},
    {"WRITER_BELL_WORD", WRITER_BELL_WORD},
    {"WRITE_LINE", WRITE_LINE},
    {"STATE_LINE", STATE_LINE},
    {"FIRST_READER_LINE", FIRST_READER_LINE},
    {"CURSOR_WORD", CURSOR_WORD},
    {"DETACHED_WORD", DETACHED_WORD},
    {"BELL_WORD", BELL_WORD},
    {"OPEN", STATE_OPEN},
    {"BROKEN", STATE_BROKEN},
    {"MIN_CAPACITY", (long long)MIN_CAPACITY},
    {"MAX_CAPACITY", (long long)MAX_CAPACITY},
    {"HEADER_BYTES", HEADER_BYTES},
    {"LENGTH_MASK", (long long)LENGTH_MASK},
    {"KIND_SHIFT", KIND_SHIFT},
    {"KIND_MASK", KIND_MASK},
    {"FLAGS_SHIFT", FLAGS_SHIFT},
    {"RECORD_DIVISOR", RECORD_DIVISOR},
    {"DATA", KIND_DATA},
    {"PAD", KIND_PAD},
    {"MORE", FLAG_MORE},
    {"AWAKE", BELL_AWAKE},
    {"PRELUDE_BYTES", PRELUDE_BYTES},
    {"TARGET_ALL", TARGET_ALL},
    {"MAX_GATHER", MAX_GATHER},
    {"PLAIN_BUDGET", PLAIN_BUDGET},
    {"PLAIN_MAX_DEPTH", PLAIN_MAX_DEPTH},
    {"PLAIN_DUMP_MAX", PLAIN_DUMP_MAX},
};

static int add_constants(PyObject *module) {
    size_t n = sizeof exported_constants / sizeof exported_constants[0];
    for (size_t i = 0; i < n; i++) {
        PyObject *value = PyLong_FromLongLong(exported_constants[i].value);
        if (value == NULL) {
            return -1;
        }
        int added = PyModule_AddObjectRef(module, exported_constants[i].name, value);
        Py_DECREF(value);
        if (added < 0) {
            return -1;
        }
    }
    return 0;
}

static struct PyModuleDef ringcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "torchtroupe.transport._ringcore",
    .m_doc = "The hot path of torchtroupe's shared-memory ring (see ring.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__ringcore(void) {
    if (PyType_Ready(&WriterCoreType) < 0 || PyType_Ready(&ReaderCoreType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&ringcore_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "WriterCore", (PyObject *)&WriterCoreType) < 0 ||
        PyModule_AddObjectRef(module, "ReaderCore", (PyObject *)&ReaderCoreType) < 0 ||
        add_constants(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    PyObject *pickle_module = PyImport_ImportModule("pickle");
    if (pickle_module == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    Py_XSETREF(stock_loads, PyObject_GetAttrString(pickle_module, "loads"));
    Py_DECREF(pickle_module);
    Py_XSETREF(fast_loads, PyObject_GetAttrString(module, "loads"));
    if (stock_loads == NULL || fast_loads == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
