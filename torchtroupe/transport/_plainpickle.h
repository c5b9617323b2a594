/*
 * _plainpickle: pickles of plain values (None, bool, int, float, str, bytes and exact
 * tuples, lists and dicts of them), written and read in C for the ring core's hot path.
 *
 * The bytes are ordinary pickles (protocol 5, without frames or memo), so any reader
 * may use pickle.loads on them; plain_load reads those and what the stock pickler
 * writes for plain values, and declines anything else. See _plainpickle.c.
 */

#ifndef TORCHTROUPE_PLAINPICKLE_H
#define TORCHTROUPE_PLAINPICKLE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Objects a plain value may hold, and how deeply nested. These limits are layout.py's
 * PLAIN_BUDGET, PLAIN_MAX_DEPTH and PLAIN_DUMP_MAX, which the Python core applies too;
 * _ringcore.c exports them and the parity test checks them (Note [One home for the
 * ring's numbers], layout.py). */
#define PLAIN_BUDGET 64
#define PLAIN_MAX_DEPTH 8
/* The longest pickle plain_dump writes; a longer value is left to the stock pickler. */
#define PLAIN_DUMP_MAX 4096

/* Writes the pickle of `obj` into `out` (at least PLAIN_DUMP_MAX bytes). Returns its
 * length, or 0 if `obj` is not plain, holds a list or dict twice (the stock pickler
 * keeps that sharing) or does not fit. Never sets an exception. */
Py_ssize_t plain_dump(PyObject *obj, char *out);

/* Unpickles `data` if it uses only the opcodes of plain values. Returns a new
 * reference, or NULL without an exception if it declined (use pickle.loads, which
 * also reports what is wrong with a bad pickle). */
PyObject *plain_load(const char *data, Py_ssize_t length);

#endif
