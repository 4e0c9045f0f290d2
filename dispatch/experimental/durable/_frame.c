/*
 * Read and write the suspended frame of a generator, coroutine or async
 * generator.
 *
 * This file is deliberately small: it moves the instruction offset, the
 * value-stack and local slots, the frame state and the exception being
 * handled in and out of a frame, and checks only what keeps the interpreter
 * memory-safe (bounds, slot kinds, the target being a fresh frame). Every
 * decision about *whether* a snapshot is valid for a code object (legal
 * resume points, exact stack depth, which slots may be NULL) is made in
 * Python before write() is called; see _analysis.py.
 *
 * It is compiled against the running interpreter's own internal headers, so
 * the compiler checks every struct layout it touches.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#endif
#include <Python.h>
#include <limits.h>
#include <stddef.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030E0000
#error "dispatch's frame core supports CPython 3.11, 3.12 and 3.13"
#endif
#ifdef Py_GIL_DISABLED
#error "free-threaded builds are not supported"
#endif

#include "internal/pycore_code.h"
#include "internal/pycore_frame.h"

#if PY_VERSION_HEX >= 0x030D0000
#define FRAME_CODE(f) _PyFrame_GetCode(f)
#define FRAME_FUNC(f) ((f)->f_funcobj)
#define FRAME_IP(f) ((f)->instr_ptr)
#define HAVE_YIELD_FROM_STATE 1
#elif PY_VERSION_HEX >= 0x030C0000
#define FRAME_CODE(f) ((f)->f_code)
#define FRAME_FUNC(f) ((f)->f_funcobj)
#define FRAME_IP(f) ((f)->prev_instr)
#define HAVE_YIELD_FROM_STATE 0
#else
#define FRAME_CODE(f) ((f)->f_code)
#define FRAME_FUNC(f) ((PyObject *)(f)->f_func)
#define FRAME_IP(f) ((f)->prev_instr)
#define HAVE_YIELD_FROM_STATE 0
#endif

/* Two objects whose structs live in Objects/genobject.c rather than in a
 * header. Their layout is checked against tp_basicsize before every use. */
typedef struct {
    PyObject_HEAD
    PyObject *cw_coroutine;
} CoroWrapper;

typedef struct {
    PyObject_HEAD
    PyObject *ags_gen;
    PyObject *ags_sendval;
    int ags_state;
} AsyncGenASend;

static int
is_generator_like(PyObject *obj)
{
    return PyGen_CheckExact(obj) || PyCoro_CheckExact(obj) ||
           PyAsyncGen_CheckExact(obj);
}

static PyGenObject *
as_generator(PyObject *obj)
{
    if (!is_generator_like(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "expected a generator, coroutine or async generator, "
                     "not %.200s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (PyGenObject *)obj;
}

static _PyInterpreterFrame *
generator_frame(PyGenObject *gen)
{
    return (_PyInterpreterFrame *)gen->gi_iframe;
}

/* Set bit i of *mask (a Python int, owned reference, may be replaced). */
static int
mask_set(PyObject **mask, Py_ssize_t i)
{
    PyObject *one = PyLong_FromLong(1), *shift = PyLong_FromSsize_t(i);
    PyObject *bit = NULL, *result = NULL;
    if (one && shift) {
        bit = PyNumber_Lshift(one, shift);
    }
    if (bit) {
        result = PyNumber_Or(*mask, bit);
    }
    Py_XDECREF(one);
    Py_XDECREF(shift);
    Py_XDECREF(bit);
    if (result == NULL) {
        return -1;
    }
    Py_SETREF(*mask, result);
    return 0;
}

/* Return 1 if bit i of mask is set, 0 if not, -1 on error. */
static int
mask_get(PyObject *mask, unsigned long long small, int is_small, Py_ssize_t i)
{
    if (is_small) {
        return i < 64 ? (int)((small >> i) & 1ULL) : 0;
    }
    PyObject *shift = PyLong_FromSsize_t(i);
    if (shift == NULL) {
        return -1;
    }
    PyObject *shifted = PyNumber_Rshift(mask, shift);
    Py_DECREF(shift);
    if (shifted == NULL) {
        return -1;
    }
    PyObject *one = PyLong_FromLong(1);
    PyObject *bit = one ? PyNumber_And(shifted, one) : NULL;
    Py_XDECREF(one);
    Py_DECREF(shifted);
    if (bit == NULL) {
        return -1;
    }
    int odd = PyObject_IsTrue(bit);
    Py_DECREF(bit);
    return odd;
}

PyDoc_STRVAR(read_doc,
"read(gen) -> (state, lasti, slots, nullmask, exc_value, function, code)\n\n"
"Read the frame of a generator, coroutine or async generator. `slots` are\n"
"the local, cell and value-stack slots in frame order, free-variable slots\n"
"left out; a NULL slot reads as None with its bit set in `nullmask`.\n"
"`lasti` counts code units. For a running or finished generator only the\n"
"state is meaningful.");

static PyObject *
frame_read(PyObject *module, PyObject *obj)
{
    PyGenObject *gen = as_generator(obj);
    if (gen == NULL) {
        return NULL;
    }
    int state = gen->gi_frame_state;
    if (state >= FRAME_EXECUTING) {
        return Py_BuildValue("(ii()iOOO)", state, -1, 0, Py_None, Py_None, Py_None);
    }
    _PyInterpreterFrame *frame = generator_frame(gen);
    PyCodeObject *code = FRAME_CODE(frame);
    int nlocalsplus = code->co_nlocalsplus;
    int nfree = code->co_nfreevars;
    int top = frame->stacktop;
    if (top < nlocalsplus || top > nlocalsplus + code->co_stacksize) {
        PyErr_Format(PyExc_SystemError, "inconsistent frame: stack top %d", top);
        return NULL;
    }
    Py_ssize_t nslots = top - nfree;
    PyObject *slots = PyTuple_New(nslots);
    if (slots == NULL) {
        return NULL;
    }
    PyObject *mask = PyLong_FromLong(0);
    if (mask == NULL) {
        Py_DECREF(slots);
        return NULL;
    }
    for (Py_ssize_t j = 0; j < nslots; j++) {
        Py_ssize_t i = j < nlocalsplus - nfree ? j : j + nfree;
        PyObject *value = frame->localsplus[i];
        if (value == NULL) {
            if (mask_set(&mask, j) < 0) {
                Py_DECREF(slots);
                Py_DECREF(mask);
                return NULL;
            }
            value = Py_None;
        }
        PyTuple_SET_ITEM(slots, j, Py_NewRef(value));
    }
    PyObject *exc = gen->gi_exc_state.exc_value;
    PyObject *func = FRAME_FUNC(frame);
    PyObject *result = Py_BuildValue(
        "(iiNNOOO)", state, _PyInterpreterFrame_LASTI(frame), slots, mask,
        exc ? exc : Py_None, func ? func : Py_None, (PyObject *)code);
    return result;
}

PyDoc_STRVAR(write_doc,
"write(gen, state, lasti, slots, nullmask, exc_value)\n\n"
"Write a frame read by read() into a freshly created generator of the same\n"
"code (its state must be CREATED). Checks bounds and slot kinds so that no\n"
"input can make the interpreter read outside the frame.");

static PyObject *
frame_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyLong_Check(args[1]) || !PyLong_Check(args[2]) ||
        !PyTuple_Check(args[3]) || !PyLong_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "write(gen, state: int, lasti: int, slots: tuple, "
                        "nullmask: int, exc_value)");
        return NULL;
    }
    PyObject *obj = args[0], *slots = args[3], *mask = args[4], *exc = args[5];
    int overflow_state = 0, overflow_lasti = 0;
    long state = PyLong_AsLongAndOverflow(args[1], &overflow_state);
    long lasti = PyLong_AsLongAndOverflow(args[2], &overflow_lasti);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (overflow_state || overflow_lasti || lasti > INT_MAX || lasti < INT_MIN) {
        PyErr_SetString(PyExc_ValueError, "frame state or instruction offset out of range");
        return NULL;
    }
    PyGenObject *gen = as_generator(obj);
    if (gen == NULL) {
        return NULL;
    }
    _PyInterpreterFrame *frame = generator_frame(gen);
    PyCodeObject *code = FRAME_CODE(frame);
    int nlocalsplus = code->co_nlocalsplus;
    int nfree = code->co_nfreevars;
    int nfixed = nlocalsplus - nfree;
    if (gen->gi_frame_state != FRAME_CREATED || frame->stacktop != nlocalsplus ||
        frame->owner != FRAME_OWNED_BY_GENERATOR) {
        PyErr_SetString(PyExc_ValueError,
                        "can only write into a freshly created generator");
        return NULL;
    }
    int suspended = state == FRAME_SUSPENDED;
#if HAVE_YIELD_FROM_STATE
    suspended = suspended || state == FRAME_SUSPENDED_YIELD_FROM;
#endif
    if (!suspended && state != FRAME_CREATED) {
        PyErr_Format(PyExc_ValueError, "invalid frame state %ld", state);
        return NULL;
    }
    Py_ssize_t nslots = PyTuple_GET_SIZE(slots);
    Py_ssize_t depth = nslots - nfixed;
    if (depth < 0 || depth > code->co_stacksize ||
        (state == FRAME_CREATED && depth != 0)) {
        PyErr_Format(PyExc_ValueError,
                     "invalid slot count %zd for a frame of %d fixed slots "
                     "and a stack of at most %d",
                     nslots, nfixed, code->co_stacksize);
        return NULL;
    }
    if (suspended && (lasti < 0 || lasti >= Py_SIZE(code))) {
        PyErr_Format(PyExc_ValueError, "instruction offset %ld out of range", lasti);
        return NULL;
    }
    if (Py_SIZE(mask) < 0) {
        PyErr_SetString(PyExc_ValueError, "negative null mask");
        return NULL;
    }
    int overflow = 0;
    unsigned long long small = PyLong_AsUnsignedLongLong(mask);
    if (small == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return NULL;
        }
        PyErr_Clear();
        overflow = 1;
    }
    if (!overflow && nslots < 64 && (small >> nslots) != 0) {
        PyErr_SetString(PyExc_ValueError, "null mask names slots past the end");
        return NULL;
    }
    if (overflow && (Py_ssize_t)_PyLong_NumBits(mask) > nslots) {
        PyErr_SetString(PyExc_ValueError, "null mask names slots past the end");
        return NULL;
    }
    if (exc != Py_None && !PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError,
                        "the handled exception must be an exception or None");
        return NULL;
    }
    /* Check every slot before touching the frame. */
    for (Py_ssize_t j = 0; j < nslots; j++) {
        int is_null = mask_get(mask, small, !overflow, j);
        if (is_null < 0) {
            return NULL;
        }
        PyObject *value = PyTuple_GET_ITEM(slots, j);
        if (is_null && value != Py_None) {
            PyErr_Format(PyExc_ValueError, "slot %zd is marked NULL but holds a value", j);
            return NULL;
        }
        if (j < nfixed &&
            (_PyLocals_GetKind(code->co_localspluskinds, (int)j) & CO_FAST_CELL) &&
            (is_null || !PyCell_Check(value))) {
            PyErr_Format(PyExc_TypeError, "slot %zd must hold a cell", j);
            return NULL;
        }
    }
#if HAVE_YIELD_FROM_STATE
    if (state == FRAME_SUSPENDED_YIELD_FROM) {
        int top_null = depth ? mask_get(mask, small, !overflow, nslots - 1) : 1;
        if (top_null) {
            PyErr_SetString(PyExc_ValueError,
                            "a delegating frame needs its delegate on the stack");
            return NULL;
        }
    }
#endif
    PyObject *replaced = PyList_New(0);
    if (replaced == NULL) {
        return NULL;
    }
    /* Slots above the fresh frame's stack top hold garbage: clear them
     * before raising stacktop so the GC never sees them. */
    for (Py_ssize_t i = nlocalsplus; i < nlocalsplus + depth; i++) {
        frame->localsplus[i] = NULL;
    }
    frame->stacktop = (int)(nlocalsplus + depth);
    for (Py_ssize_t j = 0; j < nslots; j++) {
        Py_ssize_t i = j < nfixed ? j : j + nfree;
        int is_null = mask_get(mask, small, !overflow, j);
        PyObject *value = is_null ? NULL : Py_NewRef(PyTuple_GET_ITEM(slots, j));
        PyObject *old = frame->localsplus[i];
        frame->localsplus[i] = value;
        if (old != NULL) {
            /* Decref after the whole frame is written: a finalizer must not
             * observe a half-restored frame. */
            if (PyList_Append(replaced, old) < 0) {
                PyErr_Clear();
            }
            Py_DECREF(old);
        }
    }
    if (suspended) {
        FRAME_IP(frame) = _PyCode_CODE(code) + lasti;
        Py_XSETREF(gen->gi_exc_state.exc_value, exc == Py_None ? NULL : Py_NewRef(exc));
        gen->gi_frame_state = (int8_t)state;
    }
    Py_DECREF(replaced);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(unwrap_doc,
"unwrap(obj) -> (generator, sendval, started)\n\n"
"The coroutine behind a coroutine_wrapper (from coro.__await__()), or the\n"
"async generator behind an async_generator_asend awaitable.");

static PyObject *
frame_unwrap(PyObject *module, PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (strcmp(type->tp_name, "coroutine_wrapper") == 0 &&
        type->tp_basicsize == sizeof(CoroWrapper)) {
        PyObject *coro = ((CoroWrapper *)obj)->cw_coroutine;
        return Py_BuildValue("(OOi)", coro, Py_None, 1);
    }
    if (strcmp(type->tp_name, "async_generator_asend") == 0 &&
        type->tp_basicsize == sizeof(AsyncGenASend)) {
        AsyncGenASend *asend = (AsyncGenASend *)obj;
        PyObject *sendval = asend->ags_sendval ? asend->ags_sendval : Py_None;
        return Py_BuildValue("(OOi)", asend->ags_gen, sendval, asend->ags_state);
    }
    PyErr_Format(PyExc_TypeError, "cannot unwrap %.200s", type->tp_name);
    return NULL;
}

PyDoc_STRVAR(discard_doc,
"discard(gen)\n\n"
"Mark a generator finished without running any of its code: no finally\n"
"block runs and no 'never awaited' warning is issued; its frame's\n"
"references are released when it is deallocated. Used to drop frames of a\n"
"snapshot whose restore failed part way.");

static PyObject *
frame_discard(PyObject *module, PyObject *obj)
{
    PyGenObject *gen = as_generator(obj);
    if (gen == NULL) {
        return NULL;
    }
    if (gen->gi_frame_state < FRAME_EXECUTING) {
        gen->gi_frame_state = FRAME_COMPLETED;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(is_iterator_doc,
"is_iterator(obj) -> bool\n\n"
"True if the interpreter can call next() on obj directly (PyIter_Check).");

static PyObject *
frame_is_iterator(PyObject *module, PyObject *obj)
{
    return PyBool_FromLong(PyIter_Check(obj));
}

PyDoc_STRVAR(reduce_dispatch_doc,
"reduce_dispatch(reducers, reachable, prepared, reduce_exception, obj)\n\n"
"The body of a Pickler.reducer_override, in C because pickle calls it for\n"
"every object it meets: call reducers[type(obj)](obj), except for functions\n"
"with a prepared reduction (returned as is) or known to be reachable by name\n"
"(NotImplemented: pickle writes them by name); reduce_exception(obj) for\n"
"exceptions; NotImplemented otherwise.");

static PyObject *
frame_reduce_dispatch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[0]) || !PyAnySet_Check(args[1]) ||
        !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "reduce_dispatch(reducers: dict, reachable: set, "
                        "prepared: dict, reduce_exception, obj)");
        return NULL;
    }
    PyObject *obj = args[4];
    PyObject *handler = PyDict_GetItemWithError(args[0], (PyObject *)Py_TYPE(obj));
    if (handler != NULL) {
        if (PyFunction_Check(obj)) {
            PyObject *reduced = PyDict_GetItemWithError(args[2], obj);
            if (reduced != NULL) {
                return Py_NewRef(reduced);
            }
            if (PyErr_Occurred()) {
                return NULL;
            }
            int known = PySet_Contains(args[1], obj);
            if (known < 0) {
                return NULL;
            }
            if (known) {
                Py_RETURN_NOTIMPLEMENTED;
            }
        }
        return PyObject_CallOneArg(handler, obj);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (PyExceptionInstance_Check(obj)) {
        return PyObject_CallOneArg(args[3], obj);
    }
    Py_RETURN_NOTIMPLEMENTED;
}

static PyMethodDef frame_methods[] = {
    {"reduce_dispatch", (PyCFunction)(void (*)(void))frame_reduce_dispatch, METH_FASTCALL,
     reduce_dispatch_doc},
    {"discard", frame_discard, METH_O, discard_doc},
    {"is_iterator", frame_is_iterator, METH_O, is_iterator_doc},
    {"read", frame_read, METH_O, read_doc},
    {"write", (PyCFunction)(void (*)(void))frame_write, METH_FASTCALL, write_doc},
    {"unwrap", frame_unwrap, METH_O, unwrap_doc},
    {NULL, NULL, 0, NULL},
};

static int
frame_exec(PyObject *module)
{
    /* A cheap guard against running on an interpreter whose layout differs
     * from the headers this file was compiled with. */
    Py_ssize_t expected = offsetof(PyGenObject, gi_iframe) +
                          offsetof(_PyInterpreterFrame, localsplus);
    if (PyGen_Type.tp_basicsize != expected || PyCoro_Type.tp_basicsize != expected ||
        PyAsyncGen_Type.tp_basicsize != expected) {
        PyErr_Format(PyExc_ImportError,
                     "generator layout differs from the headers this module "
                     "was built with (basicsize %zd, expected %zd): rebuild it",
                     PyGen_Type.tp_basicsize, expected);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "CREATED", FRAME_CREATED) < 0 ||
        PyModule_AddIntConstant(module, "SUSPENDED", FRAME_SUSPENDED) < 0 ||
#if HAVE_YIELD_FROM_STATE
        PyModule_AddIntConstant(module, "SUSPENDED_YIELD_FROM",
                                FRAME_SUSPENDED_YIELD_FROM) < 0 ||
#else
        PyModule_AddIntConstant(module, "SUSPENDED_YIELD_FROM", FRAME_SUSPENDED) < 0 ||
#endif
        PyModule_AddIntConstant(module, "EXECUTING", FRAME_EXECUTING) < 0 ||
        PyModule_AddIntConstant(module, "COMPLETED", FRAME_COMPLETED) < 0 ||
        PyModule_AddIntConstant(module, "CLEARED", FRAME_CLEARED) < 0 ||
        PyModule_AddIntConstant(module, "PY_VERSION_HEX", PY_VERSION_HEX) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot frame_slots[] = {
    {Py_mod_exec, frame_exec},
    {0, NULL},
};

static struct PyModuleDef frame_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dispatch.experimental.durable._frame",
    .m_doc = "Read and write suspended generator and coroutine frames.",
    .m_size = 0,
    .m_methods = frame_methods,
    .m_slots = frame_slots,
};

PyMODINIT_FUNC
PyInit__frame(void)
{
    return PyModuleDef_Init(&frame_module);
}
