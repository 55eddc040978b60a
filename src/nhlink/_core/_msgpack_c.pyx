# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Phoenix MessagePack message codec (vsn 3.0.0, PROTOCOL.md §4.6), compiled.

The pure twin is :mod:`nhlink._core._msgpack_py`, whose docstring states the format exactly;
both give the same results byte for byte, which the property tests check on random messages and
against the ``msgpack`` package. Hand-written Cython on char pointers: the encoder writes into
one growable buffer (on the stack until it fills) and builds the ``bytes`` once; the decoder
reads the frame in place, short ASCII strings come from the JSON codec's string cache (a hit
returns a str whose hash is already known), and messages are the JSON codec's
:class:`Message` type.

The decoder recurses once per nesting level (a small C frame, at most
:data:`MAX_MSGPACK_DEPTH` of them: ~40 KiB at the limit, within a musl thread's 128 KiB).

Contract: functions never keep a reference to their arguments and never mutate them.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport (
    PyLong_AsLongLongAndOverflow,
    PyLong_AsUnsignedLongLong,
    PyLong_FromLongLong,
    PyLong_FromUnsignedLongLong,
)
from cpython.mem cimport PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport isfinite
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from ._codec_c cimport (
    Message,
    _Out,
    _cached_ascii,
    _new_message,
    _new_presized_dict,
    _put,
    _putc,
    _reserve,
)

from ..errors import DecodeError, EncodeError

__all__ = ["MAX_MSGPACK_DEPTH", "decode_msgpack", "encode_msgpack"]


cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyList_Check(object o)
    bint PyTuple_Check(object o)
    bint PyDict_Check(object o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyUnicode_AsUTF8String(object o)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


#: Deepest nesting of arrays/maps accepted in a message, the outer 5-element array included.
MAX_MSGPACK_DEPTH = 256

cdef enum:
    _MAX_DEPTH = 256
    _STACK_OUT = 512        # encoder output that fits here needs no heap buffer
    _CACHE_MAX_LEN = 24     # ASCII strings up to this length go through the string cache


# -- encoding --------------------------------------------------------------------------------

class _TooDeep(Exception):
    pass


cdef inline void _be16(char* p, uint16_t v) noexcept:
    p[0] = <char>(v >> 8)
    p[1] = <char>v


cdef inline void _be32(char* p, uint32_t v) noexcept:
    p[0] = <char>(v >> 24)
    p[1] = <char>(v >> 16)
    p[2] = <char>(v >> 8)
    p[3] = <char>v


cdef inline void _be64(char* p, uint64_t v) noexcept:
    _be32(p, <uint32_t>(v >> 32))
    _be32(p + 4, <uint32_t>v)


cdef inline int _marker8(_Out* o, uint8_t marker, uint8_t v) except -1:
    _reserve(o, 2)
    o.buf[o.len] = <char>marker
    o.buf[o.len + 1] = <char>v
    o.len += 2
    return 0


cdef inline int _marker16(_Out* o, uint8_t marker, uint16_t v) except -1:
    _reserve(o, 3)
    o.buf[o.len] = <char>marker
    _be16(o.buf + o.len + 1, v)
    o.len += 3
    return 0


cdef inline int _marker32(_Out* o, uint8_t marker, uint32_t v) except -1:
    _reserve(o, 5)
    o.buf[o.len] = <char>marker
    _be32(o.buf + o.len + 1, v)
    o.len += 5
    return 0


cdef inline int _marker64(_Out* o, uint8_t marker, uint64_t v) except -1:
    _reserve(o, 9)
    o.buf[o.len] = <char>marker
    _be64(o.buf + o.len + 1, v)
    o.len += 9
    return 0


cdef int _write_ll(_Out* o, long long x) except -1:
    if x >= 0:
        if x < 0x80:
            return _putc(o, <char>x)
        if x <= 0xFF:
            return _marker8(o, 0xCC, <uint8_t>x)
        if x <= 0xFFFF:
            return _marker16(o, 0xCD, <uint16_t>x)
        if x <= 0xFFFFFFFF:
            return _marker32(o, 0xCE, <uint32_t>x)
        return _marker64(o, 0xCF, <uint64_t>x)
    if x >= -32:
        return _putc(o, <char>x)
    if x >= -0x80:
        return _marker8(o, 0xD0, <uint8_t>x)
    if x >= -0x8000:
        return _marker16(o, 0xD1, <uint16_t>x)
    if x >= -0x80000000LL:
        return _marker32(o, 0xD2, <uint32_t>x)
    return _marker64(o, 0xD3, <uint64_t>x)


cdef int _write_int(_Out* o, object v) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    cdef unsigned long long u
    if overflow == 0:
        return _write_ll(o, x)
    if overflow > 0:
        try:
            u = PyLong_AsUnsignedLongLong(v)
        except OverflowError:
            pass
        else:
            return _marker64(o, 0xCF, u)
    raise EncodeError(f"integer {v} does not fit in 64 bits")


cdef int _write_float(_Out* o, double d) except -1:
    cdef uint64_t bits
    if not isfinite(d):
        raise EncodeError(f"{d!r} has no place in a message (NaN and infinity are refused)")
    memcpy(&bits, &d, 8)
    return _marker64(o, 0xCB, bits)


cdef int _str_header(_Out* o, Py_ssize_t n) except -1:
    if n < 32:
        return _putc(o, <char>(0xA0 | n))
    if n <= 0xFF:
        return _marker8(o, 0xD9, <uint8_t>n)
    if n <= 0xFFFF:
        return _marker16(o, 0xDA, <uint16_t>n)
    if n <= 0xFFFFFFFF:
        return _marker32(o, 0xDB, <uint32_t>n)
    raise EncodeError("string longer than 4 GiB")


cdef int _write_str(_Out* o, object s) except -1:
    cdef Py_ssize_t n
    cdef bytes data
    if PyUnicode_IS_COMPACT_ASCII(s):  # the common case: the str's data is its UTF-8
        n = PyUnicode_GET_LENGTH(s)
        _str_header(o, n)
        return _put(o, <const char*>PyUnicode_DATA(s), n)
    try:
        # A new bytes object, not PyUnicode_AsUTF8AndSize: that one keeps a UTF-8 copy
        # attached to the str for its whole life.
        data = PyUnicode_AsUTF8String(s)
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string is not valid Unicode (lone surrogate?): {exc}") from None
    n = PyBytes_GET_SIZE(data)
    _str_header(o, n)
    return _put(o, PyBytes_AS_STRING(data), n)


cdef int _write_bin(_Out* o, object v) except -1:
    cdef Py_ssize_t n
    cdef const char* p
    if PyMemoryView_Check(v):
        v = bytes(v)  # any shape, as bytes
    if PyBytes_Check(v):
        p = PyBytes_AS_STRING(v)
        n = PyBytes_GET_SIZE(v)
    else:
        p = PyByteArray_AS_STRING(v)
        n = PyByteArray_GET_SIZE(v)
    if n <= 0xFF:
        _marker8(o, 0xC4, <uint8_t>n)
    elif n <= 0xFFFF:
        _marker16(o, 0xC5, <uint16_t>n)
    elif n <= 0xFFFFFFFF:
        _marker32(o, 0xC6, <uint32_t>n)
    else:
        raise EncodeError("binary value longer than 4 GiB")
    return _put(o, p, n)


cdef int _container(_Out* o, Py_ssize_t n, uint8_t fix, uint8_t m16, uint8_t m32) except -1:
    if n < 16:
        return _putc(o, <char>(fix | n))
    if n <= 0xFFFF:
        return _marker16(o, m16, <uint16_t>n)
    if n <= 0xFFFFFFFF:
        return _marker32(o, m32, <uint32_t>n)
    raise EncodeError("array or map with more than 2**32-1 elements")


cdef str _key(object k):
    """A map key as :mod:`json` writes it: str as is; int, float, bool, None coerced."""
    if PyUnicode_Check(k):
        return k
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if PyLong_Check(k):
        return int.__repr__(k)
    if PyFloat_Check(k):
        if not isfinite(PyFloat_AS_DOUBLE(k)):
            raise EncodeError(f"map key {k!r} is not a finite number")
        return float.__repr__(k)
    raise EncodeError(f"map keys must be str, int, float, bool or None, not {type(k).__name__}")


cdef int _enc_dict(_Out* o, object v, int depth) except -1:
    cdef Py_ssize_t pos = 0, n, done = 0
    cdef PyObject* key
    cdef PyObject* value
    if depth >= _MAX_DEPTH:
        raise _TooDeep
    if type(v) is dict:
        n = PyDict_Size(v)
        _container(o, n, 0x80, 0xDE, 0xDF)
        while PyDict_Next(v, &pos, &key, &value):
            # Strong references: encoding a value may run Python code (a list subclass's
            # __iter__) that changes this dict; then the count no longer matches the header.
            k = <object>key
            item = <object>value
            done += 1
            if done > n:
                break
            _write_str(o, k if PyUnicode_CheckExact(k) else _key(k))
            _enc(o, item, depth + 1)
        if done != n:
            raise EncodeError("dictionary changed size during encoding")
        return 0
    entries = list(v.items())  # a subclass: count what it yields
    _container(o, len(entries), 0x80, 0xDE, 0xDF)
    for k, item in entries:
        _write_str(o, _key(k))
        _enc(o, item, depth + 1)
    return 0


cdef int _enc_seq(_Out* o, object v, int depth) except -1:
    cdef Py_ssize_t i, n
    if depth >= _MAX_DEPTH:
        raise _TooDeep
    if type(v) is list:
        n = PyList_GET_SIZE(v)
        _container(o, n, 0x90, 0xDC, 0xDD)
        for i in range(n):
            # Encoding an item may run Python code (a list subclass's __iter__) that shrinks
            # this list: check the bound each step and hold the item.
            if i >= PyList_GET_SIZE(v):
                raise EncodeError("list changed size during encoding")
            item = <object>PyList_GET_ITEM(v, i)
            _enc(o, item, depth + 1)
        return 0
    if type(v) is tuple:
        n = PyTuple_GET_SIZE(v)
        _container(o, n, 0x90, 0xDC, 0xDD)
        for i in range(n):
            _enc(o, <object>PyTuple_GET_ITEM(v, i), depth + 1)
        return 0
    items = list(v)  # a subclass: count what it yields
    _container(o, len(items), 0x90, 0xDC, 0xDD)
    for item in items:
        _enc(o, item, depth + 1)
    return 0


cdef int _enc(_Out* o, object v, int depth) except -1:
    cdef type t = type(v)
    if t is str:
        return _write_str(o, v)
    if v is None:
        return _putc(o, <char>0xC0)
    if v is True:
        return _putc(o, <char>0xC3)
    if v is False:
        return _putc(o, <char>0xC2)
    if t is int:
        return _write_int(o, v)
    if t is float:
        return _write_float(o, PyFloat_AS_DOUBLE(v))
    if t is dict or (t is not list and t is not tuple and PyDict_Check(v)):
        return _enc_dict(o, v, depth)
    if t is list or t is tuple or PyList_Check(v) or PyTuple_Check(v):
        return _enc_seq(o, v, depth)
    if PyUnicode_Check(v):
        return _write_str(o, v)
    if PyLong_Check(v):  # int subclasses (IntEnum, ...); bool handled above
        return _write_int(o, int(v))
    if PyFloat_Check(v):
        return _write_float(o, PyFloat_AS_DOUBLE(v))
    if PyBytes_Check(v) or PyByteArray_Check(v) or PyMemoryView_Check(v):
        return _write_bin(o, v)
    raise EncodeError(f"Object of type {t.__name__} has no MessagePack form")


cdef int _enc_ref(_Out* o, object ref, str what) except -1:
    if ref is None:
        return _putc(o, <char>0xC0)
    if PyUnicode_Check(ref):
        return _write_str(o, ref)
    raise EncodeError(f"{what} must be a str or None, not {type(ref).__name__}")


def encode_msgpack(join_ref, ref, topic, event, payload):
    """The MessagePack bytes of ``[join_ref, ref, topic, event, payload]`` for a binary frame.

    Raises :class:`EncodeError` when the payload has no MessagePack form here (see
    :mod:`nhlink._core._msgpack_py`) or the refs, topic or event have the wrong type. Does not
    mutate ``payload``.
    """
    cdef char stack[_STACK_OUT]
    cdef _Out o
    if not PyUnicode_Check(topic):
        raise EncodeError(f"topic must be a str, not {type(topic).__name__}")
    if not PyUnicode_Check(event):
        raise EncodeError(f"event must be a str, not {type(event).__name__}")
    o.buf = stack
    o.len = 0
    o.cap = _STACK_OUT
    o.heap = False
    try:
        _putc(&o, <char>0x95)
        _enc_ref(&o, join_ref, "join_ref")
        _enc_ref(&o, ref, "ref")
        _write_str(&o, topic)
        _write_str(&o, event)
        # A circular reference needs no markers: it nests without end, so the depth limit
        # catches it.
        _enc(&o, payload, 1)
        return PyBytes_FromStringAndSize(o.buf, o.len)
    except _TooDeep:
        raise EncodeError(
            f"cannot encode the {event!r} message: nesting deeper than "
            f"{MAX_MSGPACK_DEPTH} levels"
        ) from None
    except EncodeError as exc:
        raise EncodeError(f"cannot encode the {event!r} message as MessagePack: {exc}") from None
    finally:
        if o.heap:
            PyMem_Free(o.buf)


# -- decoding --------------------------------------------------------------------------------

ctypedef struct _Rd:
    const unsigned char* start
    const unsigned char* p
    const unsigned char* end


cdef object _fail(_Rd* r, const unsigned char* at, str what):
    raise DecodeError(f"message is not valid MessagePack: {what} at byte {at - r.start}")


# Lengths are ``long long`` until checked against the bytes left: a 32-bit length from the frame
# does not fit Py_ssize_t on 32-bit platforms (armv7l), where it would turn negative.
cdef inline const unsigned char* _need(_Rd* r, long long n, str what) except NULL:
    """Start of the next ``n`` bytes (advancing past them); DecodeError if truncated."""
    cdef const unsigned char* at = r.p
    if <long long>(r.end - at) < n:
        _fail(r, at, "truncated " + what)
    r.p = at + n
    return at


cdef inline uint16_t _rd16(const unsigned char* p) noexcept:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _rd32(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t _rd64(const unsigned char* p) noexcept:
    return (<uint64_t>_rd32(p) << 32) | _rd32(p + 4)


cdef long long _length(_Rd* r, int size, str what) except -1:
    cdef const unsigned char* p = _need(r, size, what + " length")
    if size == 1:
        return p[0]
    if size == 2:
        return _rd16(p)
    return _rd32(p)


cdef object _text(_Rd* r, long long n):
    cdef const unsigned char* p = _need(r, n, "string")
    cdef Py_ssize_t i
    cdef unsigned char high = 0
    if n <= _CACHE_MAX_LEN:
        for i in range(n):
            high |= p[i]
        if high < 0x80:
            return _cached_ascii(p, n)
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError as exc:
        _fail(r, p, f"string is not valid UTF-8 ({exc.reason})")


cdef object _float(_Rd* r, double x, const unsigned char* at):
    if not isfinite(x):
        _fail(r, at, "NaN or infinity (refused)")
    return PyFloat_FromDouble(x)


cdef object _value(_Rd* r, int depth):
    cdef const unsigned char* at = _need(r, 1, "value")
    cdef unsigned char b = at[0]
    cdef const unsigned char* p
    cdef uint32_t bits32
    cdef uint64_t bits64
    cdef float f
    cdef double d
    cdef long long n
    if b <= 0x7F:
        return <long>b
    if b >= 0xE0:
        return <long>b - 0x100
    if b >= 0xA0 and b <= 0xBF:
        return _text(r, b & 0x1F)
    if b >= 0x90 and b <= 0x9F:
        return _array(r, b & 0x0F, depth, at)
    if b <= 0x8F:
        return _map(r, b & 0x0F, depth, at)
    if b == 0xC0:
        return None
    if b == 0xC2:
        return False
    if b == 0xC3:
        return True
    if b == 0xD9:
        return _text(r, _length(r, 1, "str 8"))
    if b == 0xDA:
        return _text(r, _length(r, 2, "str 16"))
    if b == 0xDB:
        return _text(r, _length(r, 4, "str 32"))
    if b == 0xCC:
        return <long>_need(r, 1, "uint 8")[0]
    if b == 0xCD:
        return <long>_rd16(_need(r, 2, "uint 16"))
    if b == 0xCE:
        return PyLong_FromUnsignedLongLong(_rd32(_need(r, 4, "uint 32")))
    if b == 0xCF:
        return PyLong_FromUnsignedLongLong(_rd64(_need(r, 8, "uint 64")))
    if b == 0xD0:
        return <long><signed char>_need(r, 1, "int 8")[0]
    if b == 0xD1:
        return <long><short>_rd16(_need(r, 2, "int 16"))
    if b == 0xD2:
        return PyLong_FromLongLong(<int>_rd32(_need(r, 4, "int 32")))
    if b == 0xD3:
        return PyLong_FromLongLong(<long long>_rd64(_need(r, 8, "int 64")))
    if b == 0xCA:
        bits32 = _rd32(_need(r, 4, "float 32"))
        memcpy(&f, &bits32, 4)
        return _float(r, <double>f, at)
    if b == 0xCB:
        bits64 = _rd64(_need(r, 8, "float 64"))
        memcpy(&d, &bits64, 8)
        return _float(r, d, at)
    if b >= 0xC4 and b <= 0xC6:
        n = _length(r, 1 << (b - 0xC4), "bin")
        p = _need(r, n, "bin")
        return PyBytes_FromStringAndSize(<const char*>p, <Py_ssize_t>n)
    if b == 0xDC:
        return _array(r, _length(r, 2, "array"), depth, at)
    if b == 0xDD:
        return _array(r, _length(r, 4, "array"), depth, at)
    if b == 0xDE:
        return _map(r, _length(r, 2, "map"), depth, at)
    if b == 0xDF:
        return _map(r, _length(r, 4, "map"), depth, at)
    if b == 0xC7 or b == 0xC8 or b == 0xC9 or (b >= 0xD4 and b <= 0xD8):
        _fail(r, at, "ext values are not accepted (PROTOCOL.md §4.6)")
    _fail(r, at, f"0x{b:02x} is not a MessagePack type")


cdef object _too_deep():
    raise DecodeError(f"message nests deeper than {MAX_MSGPACK_DEPTH} levels")


cdef object _array(_Rd* r, long long n, int depth, const unsigned char* at):
    cdef Py_ssize_t i
    cdef object item
    if depth >= _MAX_DEPTH:
        _too_deep()
    if n > <long long>(r.end - r.p):  # every element takes at least one byte
        _fail(r, at, f"array of {n} elements runs past the end")
    cdef list result = PyList_New(<Py_ssize_t>n)  # NULL slots until set: fine for list dealloc on error
    for i in range(<Py_ssize_t>n):
        item = _value(r, depth + 1)
        Py_INCREF(item)
        PyList_SET_ITEM(result, i, item)
    return result


cdef object _map_key(_Rd* r):
    cdef const unsigned char* at = _need(r, 1, "map key")
    cdef unsigned char b = at[0]
    if b >= 0xA0 and b <= 0xBF:
        return _text(r, b & 0x1F)
    if b == 0xD9:
        return _text(r, _length(r, 1, "str"))
    if b == 0xDA:
        return _text(r, _length(r, 2, "str"))
    if b == 0xDB:
        return _text(r, _length(r, 4, "str"))
    _fail(r, at, "map keys must be strings")


cdef object _map(_Rd* r, long long n, int depth, const unsigned char* at):
    cdef Py_ssize_t i
    if depth >= _MAX_DEPTH:
        _too_deep()
    if 2 * n > <long long>(r.end - r.p):  # every entry takes at least two bytes
        _fail(r, at, f"map of {n} entries runs past the end")
    cdef dict result = _new_presized_dict(<Py_ssize_t>n)
    for i in range(<Py_ssize_t>n):
        key = _map_key(r)
        PyDict_SetItem(result, key, _value(r, depth + 1))
    return result


cdef str _kind(object value):
    if value is True or value is False:
        return "a boolean"
    if PyLong_Check(value) or PyFloat_Check(value):
        return "a number"
    if PyUnicode_Check(value):
        return "a string"
    if PyBytes_Check(value):
        return "binary"
    if PyList_Check(value):
        return "an array"
    if PyDict_Check(value):
        return "a map"
    return "nil"


cdef object _ref_of(object value, str what):
    if value is None or type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise DecodeError(f"{what} must be a string, an integer or nil, got {_kind(value)}")


cdef Message _decode(const unsigned char* data, Py_ssize_t size):
    cdef _Rd r
    cdef long long count
    cdef unsigned char first
    r.start = data
    r.p = data
    r.end = data + size
    if size == 0:
        raise DecodeError("message is not valid MessagePack: empty frame")
    first = data[0]
    if first >= 0x90 and first <= 0x9F:
        count = first & 0x0F
        r.p = data + 1
    elif first == 0xDC or first == 0xDD:
        r.p = data + 1
        count = _length(&r, 2 if first == 0xDC else 4, "array")
    else:
        # Decode it anyway, for the error: invalid MessagePack says so before "not an array".
        value = _value(&r, 0)
        if r.p != r.end:
            _fail(&r, r.p, "extra data after the MessagePack value")
        raise DecodeError(f"a Phoenix message must be a MessagePack array, got {_kind(value)}")
    if count != 5:
        raise DecodeError(
            "a Phoenix message must be an array of 5 elements "
            f"[join_ref, ref, topic, event, payload], got {count}"
        )
    join_ref = _value(&r, 1)
    ref = _value(&r, 1)
    topic = _value(&r, 1)
    event = _value(&r, 1)
    payload = _value(&r, 1)
    if r.p != r.end:
        _fail(&r, r.p, "extra data after the MessagePack value")
    join_ref = _ref_of(join_ref, "join_ref")
    ref = _ref_of(ref, "ref")
    if type(topic) is not str:
        raise DecodeError(f"topic must be a string, got {_kind(topic)}")
    if type(event) is not str:
        raise DecodeError(f"event must be a string, got {_kind(event)}")
    return _new_message(join_ref, ref, topic, event, payload)


def decode_msgpack(data, /):
    """Parse one binary frame of the vsn 3.0.0 serializer into a :class:`Message`.

    Raises :class:`DecodeError` for anything but exactly one MessagePack value that is a
    5-element array ``[join_ref, ref, topic, event, payload]`` with string-or-nil refs (integers
    are turned into strings) and string topic and event. See :mod:`nhlink._core._msgpack_py`.
    """
    cdef Py_buffer view
    if type(data) is bytes:
        return _decode(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except BufferError:
        data = memoryview(data).tobytes()  # not contiguous: copy, as the pure twin does
        return _decode(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    except TypeError:
        raise TypeError(
            f"a MessagePack frame must be bytes-like, not {type(data).__name__}"
        ) from None
    try:
        return _decode(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
