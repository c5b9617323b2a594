/*
 * _plainpickle: pickles of plain values, written and read in C (see _plainpickle.h).
 *
 * Runs wherever the ring core runs, with the GIL held. A call's request and reply are
 * small tuples of builtin values; the stock pickle module spends most of its time on
 * them setting up a Pickler or Unpickler (a few hundred nanoseconds each way, several
 * times per call). These two functions do only the work such values need.
 *
 * plain_dump writes the opcodes the stock pickler would choose for each value
 * (BININT1/2, BININT, LONG1, BINFLOAT, SHORT_BINUNICODE, BINUNICODE, SHORT_BINBYTES,
 * BINBYTES, the tuple, list and dict opcodes), without FRAME or MEMOIZE: framing is
 * optional to every unpickler, and without a memo the only thing lost is sharing,
 * which is why a list or dict met twice makes the value not plain here.
 *
 * plain_load reads those opcodes, plus FRAME and the memo opcodes the stock pickler
 * adds, from a bounded stack; anything else (another protocol feature, a truncated
 * pickle, a stack deeper than plain values need) makes it decline, and the caller
 * falls back to pickle.loads.
 */

#include "_plainpickle.h"

#include <stdint.h>
#include <string.h>

enum {
    OP_MARK = '(',
    OP_STOP = '.',
    OP_NONE = 'N',
    OP_BININT = 'J',
    OP_BININT1 = 'K',
    OP_BININT2 = 'M',
    OP_BINFLOAT = 'G',
    OP_BINUNICODE = 'X',
    OP_BINBYTES = 'B',
    OP_SHORT_BINBYTES = 'C',
    OP_EMPTY_TUPLE = ')',
    OP_TUPLE = 't',
    OP_EMPTY_LIST = ']',
    OP_APPEND = 'a',
    OP_APPENDS = 'e',
    OP_EMPTY_DICT = '}',
    OP_SETITEM = 's',
    OP_SETITEMS = 'u',
    OP_BINGET = 'h',
    OP_LONG_BINGET = 'j',
    OP_BINPUT = 'q',
    OP_LONG_BINPUT = 'r',
    OP_PROTO = 0x80,
    OP_TUPLE1 = 0x85,
    OP_TUPLE2 = 0x86,
    OP_TUPLE3 = 0x87,
    OP_NEWTRUE = 0x88,
    OP_NEWFALSE = 0x89,
    OP_LONG1 = 0x8a,
    OP_SHORT_BINUNICODE = 0x8c,
    OP_BINUNICODE8 = 0x8d,
    OP_BINBYTES8 = 0x8e,
    OP_MEMOIZE = 0x94,
    OP_FRAME = 0x95,
};

#define PICKLE_PROTOCOL 5

/* -- writing ---------------------------------------------------------------------- */

typedef struct {
    unsigned char *at;
    unsigned char *end;
    Py_ssize_t budget;
    PyObject *containers[PLAIN_BUDGET]; /* lists and dicts written so far */
    int n_containers;
} Dumper;

static int put(Dumper *d, const void *bytes, size_t n) {
    if ((size_t)(d->end - d->at) < n) {
        return 0;
    }
    memcpy(d->at, bytes, n);
    d->at += n;
    return 1;
}

static int put_op(Dumper *d, unsigned char op) { return put(d, &op, 1); }

static int put_op_le(Dumper *d, unsigned char op, uint64_t value, int nbytes) {
    unsigned char bytes[9];
    bytes[0] = op;
    for (int i = 0; i < nbytes; i++) {
        bytes[1 + i] = (unsigned char)(value >> (8 * i));
    }
    return put(d, bytes, (size_t)nbytes + 1);
}

/* Opcode, length and data of a str or bytes. */
static int put_sized(Dumper *d, unsigned char short_op, unsigned char long_op, const char *data,
                     Py_ssize_t length) {
    if (length < 256) {
        if (!put_op_le(d, short_op, (uint64_t)length, 1)) {
            return 0;
        }
    } else if ((uint64_t)length <= UINT32_MAX) {
        if (!put_op_le(d, long_op, (uint64_t)length, 4)) {
            return 0;
        }
    } else {
        return 0;
    }
    return put(d, data, (size_t)length);
}

static int put_int(Dumper *d, PyObject *obj) {
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (value == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0; /* beyond 64 bits: the stock pickler writes it */
    }
    if (value >= 0 && value < 256) {
        return put_op_le(d, OP_BININT1, (uint64_t)value, 1);
    }
    if (value >= 0 && value < 65536) {
        return put_op_le(d, OP_BININT2, (uint64_t)value, 2);
    }
    if (value >= INT32_MIN && value <= INT32_MAX) {
        return put_op_le(d, OP_BININT, (uint64_t)value, 4);
    }
    /* LONG1: the shortest little-endian two's complement that keeps the sign. */
    uint64_t bits = (uint64_t)value;
    int nbytes = 8;
    while (nbytes > 1) {
        int64_t shorter = (int64_t)(bits << (8 * (8 - (nbytes - 1)))) >> (8 * (8 - (nbytes - 1)));
        if (shorter != value) {
            break;
        }
        nbytes--;
    }
    unsigned char bytes[10];
    bytes[0] = OP_LONG1;
    bytes[1] = (unsigned char)nbytes;
    for (int i = 0; i < nbytes; i++) {
        bytes[2 + i] = (unsigned char)(bits >> (8 * i));
    }
    return put(d, bytes, (size_t)nbytes + 2);
}

static int first_time(Dumper *d, PyObject *container) {
    for (int i = 0; i < d->n_containers; i++) {
        if (d->containers[i] == container) {
            return 0;
        }
    }
    d->containers[d->n_containers++] = container; /* fewer than PLAIN_BUDGET: budgeted */
    return 1;
}

static int dump(Dumper *d, PyObject *obj, int depth) {
    if (--d->budget < 0 || depth > PLAIN_MAX_DEPTH) {
        return 0;
    }
    PyTypeObject *type = Py_TYPE(obj);
    if (obj == Py_None) {
        return put_op(d, OP_NONE);
    }
    if (type == &PyBool_Type) {
        return put_op(d, obj == Py_True ? OP_NEWTRUE : OP_NEWFALSE);
    }
    if (type == &PyLong_Type) {
        return put_int(d, obj);
    }
    if (type == &PyFloat_Type) {
        unsigned char bytes[9];
        bytes[0] = OP_BINFLOAT;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(obj), (char *)bytes + 1, 0) < 0) {
            PyErr_Clear();
            return 0;
        }
        return put(d, bytes, sizeof bytes);
    }
    if (type == &PyUnicode_Type) {
        Py_ssize_t length;
        const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &length);
        if (utf8 == NULL) { /* lone surrogates: the stock pickler escapes them */
            PyErr_Clear();
            return 0;
        }
        return put_sized(d, OP_SHORT_BINUNICODE, OP_BINUNICODE, utf8, length);
    }
    if (type == &PyBytes_Type) {
        return put_sized(d, OP_SHORT_BINBYTES, OP_BINBYTES, PyBytes_AS_STRING(obj),
                         PyBytes_GET_SIZE(obj));
    }
    if (type == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (n == 0) {
            return put_op(d, OP_EMPTY_TUPLE);
        }
        if (n > 3 && !put_op(d, OP_MARK)) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!dump(d, PyTuple_GET_ITEM(obj, i), depth + 1)) {
                return 0;
            }
        }
        return put_op(d, n > 3 ? OP_TUPLE : (unsigned char)(OP_TUPLE1 + n - 1));
    }
    if (type == &PyList_Type) {
        if (!first_time(d, obj) || !put_op(d, OP_EMPTY_LIST)) {
            return 0;
        }
        Py_ssize_t n = PyList_GET_SIZE(obj);
        if (n == 0) {
            return 1;
        }
        if (!put_op(d, OP_MARK)) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj); i++) {
            if (!dump(d, PyList_GET_ITEM(obj, i), depth + 1)) {
                return 0;
            }
        }
        return put_op(d, OP_APPENDS);
    }
    if (type == &PyDict_Type) {
        if (!first_time(d, obj) || !put_op(d, OP_EMPTY_DICT)) {
            return 0;
        }
        if (PyDict_GET_SIZE(obj) == 0) {
            return 1;
        }
        if (!put_op(d, OP_MARK)) {
            return 0;
        }
        Py_ssize_t position = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &position, &key, &value)) {
            if (!dump(d, key, depth + 1) || !dump(d, value, depth + 1)) {
                return 0;
            }
        }
        return put_op(d, OP_SETITEMS);
    }
    return 0;
}

Py_ssize_t plain_dump(PyObject *obj, char *out) {
    Dumper d = {(unsigned char *)out, (unsigned char *)out + PLAIN_DUMP_MAX, PLAIN_BUDGET, {0}, 0};
    unsigned char proto[2] = {OP_PROTO, PICKLE_PROTOCOL};
    if (!put(&d, proto, 2) || !dump(&d, obj, 0) || !put_op(&d, OP_STOP)) {
        return 0;
    }
    return (Py_ssize_t)(d.at - (unsigned char *)out);
}

/* -- reading ---------------------------------------------------------------------- */

#define LOAD_STACK 256
#define LOAD_MARKS 32
#define LOAD_MEMO 256

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
    PyObject *stack[LOAD_STACK];
    Py_ssize_t depth;
    Py_ssize_t marks[LOAD_MARKS];
    int n_marks;
    PyObject *memo[LOAD_MEMO];
    Py_ssize_t n_memo;    /* entries from 0 up to here are initialised (maybe NULL) */
    Py_ssize_t n_entries; /* entries set: where MEMOIZE puts the next one, as pickle does */
} Loader;

/* The bottom of the innermost MARK's items: as in pickle's own unpickler, nothing
 * below it may be popped or memoized until that MARK is closed. */
static Py_ssize_t fence(const Loader *l) { return l->n_marks > 0 ? l->marks[l->n_marks - 1] : 0; }

static int take(Loader *l, size_t n, const unsigned char **bytes) {
    if ((size_t)(l->end - l->at) < n) {
        return 0;
    }
    *bytes = l->at;
    l->at += n;
    return 1;
}

static int take_le(Loader *l, int nbytes, uint64_t *value) {
    const unsigned char *bytes;
    if (!take(l, (size_t)nbytes, &bytes)) {
        return 0;
    }
    *value = 0;
    for (int i = 0; i < nbytes; i++) {
        *value |= (uint64_t)bytes[i] << (8 * i);
    }
    return 1;
}

/* Pushes a new reference; 0 (and the reference dropped) if it is NULL or no room. */
static int push(Loader *l, PyObject *obj) {
    if (obj == NULL || l->depth >= LOAD_STACK) {
        Py_XDECREF(obj);
        return 0;
    }
    l->stack[l->depth++] = obj;
    return 1;
}

static Py_ssize_t pop_mark(Loader *l) {
    return l->n_marks > 0 ? l->marks[--l->n_marks] : -1;
}

/* The items from `from` to the top, as a tuple; they leave the stack. */
static int push_tuple_from(Loader *l, Py_ssize_t from) {
    if (from < fence(l) || from > l->depth) {
        return 0;
    }
    Py_ssize_t n = l->depth - from;
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(tuple, i, l->stack[from + i]);
    }
    l->depth = from;
    return push(l, tuple);
}

static int load_sized(Loader *l, int length_bytes, int is_text) {
    uint64_t length;
    const unsigned char *data;
    if (!take_le(l, length_bytes, &length) || length > (uint64_t)PY_SSIZE_T_MAX ||
        !take(l, (size_t)length, &data)) {
        return 0;
    }
    if (is_text) {
        return push(l, PyUnicode_DecodeUTF8((const char *)data, (Py_ssize_t)length,
                                            "surrogatepass"));
    }
    return push(l, PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)length));
}

/* APPENDS and SETITEMS: the items above the mark go into the container below it. */
static int fill_from_mark(Loader *l, int is_dict) {
    Py_ssize_t from = pop_mark(l);
    if (from < 0 || from - 1 < fence(l) || from > l->depth) {
        return 0; /* no mark, or no container between it and the enclosing one */
    }
    PyObject *container = l->stack[from - 1];
    Py_ssize_t n = l->depth - from;
    int ok = 1;
    if (is_dict) {
        if (!PyDict_CheckExact(container) || n % 2 != 0) {
            return 0;
        }
        for (Py_ssize_t i = 0; ok && i < n; i += 2) {
            ok = PyDict_SetItem(container, l->stack[from + i], l->stack[from + i + 1]) == 0;
        }
    } else {
        if (!PyList_CheckExact(container)) {
            return 0;
        }
        for (Py_ssize_t i = 0; ok && i < n; i++) {
            ok = PyList_Append(container, l->stack[from + i]) == 0;
        }
    }
    for (Py_ssize_t i = from; i < l->depth; i++) {
        Py_DECREF(l->stack[i]);
    }
    l->depth = from;
    return ok;
}

static int memo_get(Loader *l, uint64_t index) {
    if (index >= (uint64_t)l->n_memo || l->memo[index] == NULL) {
        return 0;
    }
    return push(l, Py_NewRef(l->memo[index]));
}

static int memo_put(Loader *l, uint64_t index) {
    if (index >= LOAD_MEMO || l->depth <= fence(l)) {
        return 0;
    }
    while (l->n_memo <= (Py_ssize_t)index) {
        l->memo[l->n_memo++] = NULL;
    }
    if (l->memo[index] == NULL) {
        l->n_entries++;
    }
    Py_XSETREF(l->memo[index], Py_NewRef(l->stack[l->depth - 1]));
    return 1;
}

/* One opcode; 1 to go on, 0 to decline, 2 at STOP. */
static int step(Loader *l) {
    const unsigned char *bytes;
    uint64_t value;
    if (!take(l, 1, &bytes)) {
        return 0;
    }
    switch (bytes[0]) {
    case OP_PROTO:
        return take(l, 1, &bytes) && bytes[0] >= 2 && bytes[0] <= PICKLE_PROTOCOL;
    case OP_FRAME: /* a frame may not promise more bytes than there are */
        return take_le(l, 8, &value) && value <= (uint64_t)(l->end - l->at);
    case OP_STOP:
        return 2;
    case OP_NONE:
        return push(l, Py_NewRef(Py_None));
    case OP_NEWTRUE:
        return push(l, Py_NewRef(Py_True));
    case OP_NEWFALSE:
        return push(l, Py_NewRef(Py_False));
    case OP_BININT1:
        return take_le(l, 1, &value) && push(l, PyLong_FromUnsignedLongLong(value));
    case OP_BININT2:
        return take_le(l, 2, &value) && push(l, PyLong_FromUnsignedLongLong(value));
    case OP_BININT:
        return take_le(l, 4, &value) && push(l, PyLong_FromLong((int32_t)(uint32_t)value));
    case OP_LONG1: {
        uint64_t nbytes;
        if (!take_le(l, 1, &nbytes) || nbytes > 8 || !take_le(l, (int)nbytes, &value)) {
            return 0; /* wider than 64 bits: left to pickle.loads */
        }
        if (nbytes == 0) {
            return push(l, PyLong_FromLong(0));
        }
        int shift = 64 - 8 * (int)nbytes;
        return push(l, PyLong_FromLongLong((int64_t)(value << shift) >> shift));
    }
    case OP_BINFLOAT: {
        if (!take(l, 8, &bytes)) {
            return 0;
        }
        double number = PyFloat_Unpack8((const char *)bytes, 0);
        if (number == -1.0 && PyErr_Occurred()) {
            return 0;
        }
        return push(l, PyFloat_FromDouble(number));
    }
    case OP_SHORT_BINUNICODE:
        return load_sized(l, 1, 1);
    case OP_BINUNICODE:
        return load_sized(l, 4, 1);
    case OP_BINUNICODE8:
        return load_sized(l, 8, 1);
    case OP_SHORT_BINBYTES:
        return load_sized(l, 1, 0);
    case OP_BINBYTES:
        return load_sized(l, 4, 0);
    case OP_BINBYTES8:
        return load_sized(l, 8, 0);
    case OP_EMPTY_TUPLE:
        return push(l, PyTuple_New(0));
    case OP_TUPLE1:
    case OP_TUPLE2:
    case OP_TUPLE3:
        return push_tuple_from(l, l->depth - (bytes[0] - OP_TUPLE1 + 1));
    case OP_MARK:
        if (l->n_marks >= LOAD_MARKS) {
            return 0;
        }
        l->marks[l->n_marks++] = l->depth;
        return 1;
    case OP_TUPLE: {
        Py_ssize_t from = pop_mark(l);
        return from >= 0 && push_tuple_from(l, from);
    }
    case OP_EMPTY_LIST:
        return push(l, PyList_New(0));
    case OP_EMPTY_DICT:
        return push(l, PyDict_New());
    case OP_APPEND:
    case OP_SETITEM: {
        int is_dict = bytes[0] == OP_SETITEM;
        Py_ssize_t from = l->depth - (is_dict ? 2 : 1);
        if (l->n_marks == LOAD_MARKS || from - 1 < fence(l)) {
            return 0; /* the item(s) and their container must lie above the fence */
        }
        l->marks[l->n_marks++] = from; /* as if a mark stood below the item(s) */
        return fill_from_mark(l, is_dict);
    }
    case OP_APPENDS:
        return fill_from_mark(l, 0);
    case OP_SETITEMS:
        return fill_from_mark(l, 1);
    case OP_MEMOIZE:
        return memo_put(l, (uint64_t)l->n_entries);
    case OP_BINPUT:
        return take_le(l, 1, &value) && memo_put(l, value);
    case OP_LONG_BINPUT:
        return take_le(l, 4, &value) && memo_put(l, value);
    case OP_BINGET:
        return take_le(l, 1, &value) && memo_get(l, value);
    case OP_LONG_BINGET:
        return take_le(l, 4, &value) && memo_get(l, value);
    default:
        return 0;
    }
}

PyObject *plain_load(const char *data, Py_ssize_t length) {
    Loader l; /* about 4 KiB of C stack; the memo is initialised as it grows */
    l.at = (const unsigned char *)data;
    l.end = l.at + length;
    l.depth = 0;
    l.n_marks = 0;
    l.n_memo = 0;
    l.n_entries = 0;
    int status;
    do {
        status = step(&l);
    } while (status == 1);
    PyObject *result = NULL;
    if (status == 2 && l.depth == 1 && l.n_marks == 0) {
        result = l.stack[0];
        l.depth = 0;
    }
    for (Py_ssize_t i = 0; i < l.depth; i++) {
        Py_DECREF(l.stack[i]);
    }
    for (Py_ssize_t i = 0; i < l.n_memo; i++) {
        Py_XDECREF(l.memo[i]);
    }
    if (result == NULL) {
        PyErr_Clear();
    }
    return result;
}
