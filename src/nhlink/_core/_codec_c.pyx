# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Phoenix Channels v2 message codec (PROTOCOL.md §4), compiled.

The pure twin is :mod:`nhlink._core._codec_py` (the standard library's :mod:`json`); both give
the same results byte for byte, which the property tests check on random payloads. This one is
hand-written Cython because the speed comes from working on char pointers: a JSON encoder that
writes UTF-8 straight into one growable buffer (then builds the ``bytes`` once), and a
recursive-descent scanner that reads the UTF-8 bytes of the frame directly (never building the
intermediate ``str`` that ``json.loads`` needs).

Exactly the JSON of ``json.dumps(..., ensure_ascii=False, separators=(",", ":"),
allow_nan=False)`` out and of ``json.loads`` in, including its corners: json's coercion of
non-str keys, ``float.__repr__`` (the same ``PyOS_double_to_string`` call), ``float(text)`` and
``int(text)`` (same C functions, same digit limit), surrogate-pair escapes combined and lone
ones kept. Except: NaN/Infinity are rejected both ways, and nesting deeper than
:data:`MAX_JSON_DEPTH` (the outer array included) is refused. The scanner does not recurse at
all (decoding needs the same few KiB of C stack at any depth, safe on musl's 128 KiB thread
stacks); the encoder recurses once per level, ~200 bytes each, at most MAX_JSON_DEPTH times.

Contract: functions never keep a reference to their arguments and never mutate them.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_Append, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong, PyLong_FromString
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport isfinite
from libc.string cimport memcmp, memcpy, strlen

from ..errors import DecodeError, EncodeError

__all__ = [
    "MAX_JSON_DEPTH",
    "Message",
    "decode_binary",
    "decode_message",
    "encode_message",
]


cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyList_Check(object o)
    bint PyList_CheckExact(object o)
    bint PyTuple_Check(object o)
    bint PyTuple_CheckExact(object o)
    bint PyDict_Check(object o)
    bint PyDict_CheckExact(object o)
    bint PyMemoryView_Check(object o)

    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    int PyUnicode_KIND(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    bint PyUnicode_IS_ASCII(object o)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index)
    object PyUnicode_FromKindAndData(int kind, const void* buffer, Py_ssize_t size)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    object PyUnicode_AsEncodedString(object o, const char* encoding, const char* errors)
    int PyUnicode_4BYTE_KIND

    char* PyOS_double_to_string(
        double val, char format_code, int precision, int flags, int* ptype
    ) except NULL
    double PyOS_string_to_double(
        const char* s, char** endptr, PyObject* overflow_exception
    ) except? -1.0
    int Py_DTSF_ADD_DOT_0

    void _decref "Py_DECREF" (PyObject* o)
    object PySequence_Fast(object o, const char* message)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    PyObject* PySequence_Fast_GET_ITEM(object o, Py_ssize_t i)
    object PyMapping_Items(object o)

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__) && defined(__GNUC__) && !defined(NHLINK_NO_SIMD)
    #include <emmintrin.h>
    #endif

    /* An unaligned 8-byte load: memcpy, not a pointer cast, so strict-alignment CPUs are fine;
       compilers turn it into one load instruction. */
    static inline uint64_t __nhlink_load8(const unsigned char *p) {
        uint64_t w;
        memcpy(&w, p, 8);
        return w;
    }

    /* The first byte at or after p that ends a plain run inside a JSON string: a quote (0x22),
       a backslash (0x5C) or a control character (< 0x20); `end` if none. Clears *ascii when a
       byte >= 0x80 is passed. 16 bytes per step with SSE2 (every x86-64), else 8 with SWAR
       ("Bit Twiddling Hacks" haszero/hasless, exact for "does this word hold a hit"; the byte
       loop then finds where). NHLINK_NO_SIMD forces the SWAR path (to test it on x86). */
    static inline const unsigned char *
    __nhlink_scan_str(const unsigned char *p, const unsigned char *end, int *ascii) {
    #if defined(__SSE2__) && defined(__GNUC__) && !defined(NHLINK_NO_SIMD)
        const __m128i quote = _mm_set1_epi8(0x22), bslash = _mm_set1_epi8(0x5C);
        const __m128i flip = _mm_set1_epi8((char)0x80), below = _mm_set1_epi8((char)(0x20 ^ 0x80));
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            /* unsigned v < 0x20, as a signed compare of v ^ 0x80 */
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                _mm_cmplt_epi8(_mm_xor_si128(v, flip), below));
            int stops = _mm_movemask_epi8(hit);
            int high = _mm_movemask_epi8(v);
            if (stops) {
                int k = __builtin_ctz((unsigned)stops);
                if (high & ((1 << k) - 1))
                    *ascii = 0;
                return p + k;
            }
            if (high)
                *ascii = 0;
            p += 16;
        }
    #else
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        while (end - p >= 8) {
            uint64_t w = __nhlink_load8(p);
            uint64_t q = w ^ (ones * 0x22), b = w ^ (ones * 0x5C);
            if ((((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w)) & highs)
                break;
            if (w & highs)
                *ascii = 0;
            p += 8;
        }
    #endif
        for (; p < end; p++) {
            unsigned char c = *p;
            if (c == 0x22 || c == 0x5C || c < 0x20)
                return p;
            if (c >= 0x80)
                *ascii = 0;
        }
        return end;
    }

    /* n bytes at a and b equal, for n <= 24 (b is a str's data: n bytes plus a NUL). */
    static inline int __nhlink_eq_short(const unsigned char *a, const unsigned char *b,
                                        Py_ssize_t n) {
        if (n >= 8) {
            if (__nhlink_load8(a) != __nhlink_load8(b)
                    || __nhlink_load8(a + n - 8) != __nhlink_load8(b + n - 8))
                return 0;
            return n <= 16 || __nhlink_load8(a + 8) == __nhlink_load8(b + 8);
        }
        for (Py_ssize_t i = 0; i < n; i++)
            if (a[i] != b[i])
                return 0;
        return 1;
    }

    /* Slot of a short string (n <= 24) in the string cache: its first, middle and last
       8 bytes, mixed. A collision only costs a cache miss. */
    static inline uint32_t __nhlink_slot(const unsigned char *p, Py_ssize_t n, int bits) {
        uint64_t a = 0, b = 0, c = 0;
        if (n >= 8) {
            a = __nhlink_load8(p);
            b = __nhlink_load8(p + n - 8);
            if (n > 16)
                c = __nhlink_load8(p + 8);
        } else {
            /* Byte by byte into a register: a memcpy into `a` would stall the next load
               (store-to-load forwarding fails on partial writes). */
            for (Py_ssize_t i = 0; i < n; i++)
                a = (a << 8) | p[i];
        }
        uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ULL) ^ (c * 0xC2B2AE3D27D4EB4FULL) ^ (uint64_t)n)
                     * 0xFF51AFD7ED558CCDULL;
        return (uint32_t)(h >> (64 - bits));
    }
    """
    unsigned long long __nhlink_load8(const unsigned char* p) noexcept nogil
    const unsigned char* __nhlink_scan_str(
        const unsigned char* p, const unsigned char* end, int* ascii
    ) noexcept nogil
    bint __nhlink_eq_short(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil
    unsigned int __nhlink_slot(const unsigned char* p, Py_ssize_t n, int bits) noexcept nogil


cdef extern from *:
    """
    /* Strings made by legacy (pre-PEP 393) APIs must be made ready before PyUnicode_DATA;
       Python 3.12 removed them and deprecated the call. */
    #if PY_VERSION_HEX < 0x030C0000
    #define __nhlink_unicode_ready(o) PyUnicode_READY(o)
    #else
    #define __nhlink_unicode_ready(o) 0
    #endif
    """
    int __nhlink_unicode_ready(object o) except -1


#: Deepest nesting of arrays/objects accepted in a message, the outer 5-element array included.
MAX_JSON_DEPTH = 256

cdef enum:
    _MAX_DEPTH = 256
    _STACK_OUT = 512        # encoder output that fits here needs no heap buffer
    _STACK_UCS4 = 256       # escaped strings up to this many bytes decode on the stack
    _CACHE_BITS = 10
    _CACHE_SIZE = 1024      # slots of the short-string cache: 1 << _CACHE_BITS
    _CACHE_MAX_LEN = 24     # ASCII strings up to this length go through the cache

# Binary frame kinds of the V2 serializer (Phoenix.Socket.V2.JSONSerializer, phoenix.js).
cdef enum:
    _PUSH = 0
    _REPLY = 1
    _BROADCAST = 2


# -- Message ---------------------------------------------------------------------------------

@cython.freelist(16)   # decoding makes and drops one per frame: recycle the memory
cdef class Message:
    """One Phoenix Channels message: ``[join_ref, ref, topic, event, payload]``.

    Compares equal to any object with the same five attributes (so a compiled ``Message``
    equals a pure one) and unpacks like a tuple: ``join_ref, ref, topic, event, payload = m``.
    """

    # The five attributes are declared in _codec_c.pxd (``cdef public object``).

    def __init__(self, join_ref, ref, topic, event, payload):
        self.join_ref = join_ref
        self.ref = ref
        self.topic = topic
        self.event = event
        self.payload = payload

    def __eq__(self, other):
        cdef Message that
        if type(other) is Message:
            that = <Message>other
            return bool(
                self.topic == that.topic
                and self.event == that.event
                and self.ref == that.ref
                and self.join_ref == that.join_ref
                and self.payload == that.payload
            )
        try:
            return bool(
                self.topic == other.topic
                and self.event == other.event
                and self.ref == other.ref
                and self.join_ref == other.join_ref
                and self.payload == other.payload
            )
        except AttributeError:
            return NotImplemented

    # A mutable value object: unhashable, like the pure twin (which defines __eq__ only).
    __hash__ = None

    def __repr__(self):
        return (
            f"Message(join_ref={self.join_ref!r}, ref={self.ref!r}, topic={self.topic!r}, "
            f"event={self.event!r}, payload={self.payload!r})"
        )

    def __iter__(self):
        return iter((self.join_ref, self.ref, self.topic, self.event, self.payload))


cdef Message _new_message(join_ref, ref, topic, event, payload):
    # tp_new without __init__: the cheapest way to make one.
    cdef Message m = Message.__new__(Message)
    m.join_ref = join_ref
    m.ref = ref
    m.topic = topic
    m.event = event
    m.payload = payload
    return m


# -- encoding --------------------------------------------------------------------------------

# The output buffer (_Out) and its inline writers live in _codec_c.pxd, shared with _msgpack_c.

cdef int _grow(_Out* o, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = o.cap * 2
    cdef char* nbuf
    if cap < o.len + need:
        cap = o.len + need
    if o.heap:
        nbuf = <char*>PyMem_Realloc(o.buf, cap)
        if nbuf == NULL:
            raise MemoryError()
    else:
        nbuf = <char*>PyMem_Malloc(cap)
        if nbuf == NULL:
            raise MemoryError()
        memcpy(nbuf, o.buf, o.len)
        o.heap = True
    o.buf = nbuf
    o.cap = cap
    return 0


# json's escape_unicode with ensure_ascii=False: the two-character escapes, \u00XX (lower-case
# hex) for other controls, everything else (0x7f and non-ASCII included) as is.
cdef unsigned char _ESCAPE[128]
cdef Py_ssize_t _i
for _i in range(128):
    _ESCAPE[_i] = 0
for _i in range(32):
    _ESCAPE[_i] = c'u'
_ESCAPE[c'"'] = c'"'
_ESCAPE[c'\\'] = c'\\'
_ESCAPE[8] = c'b'
_ESCAPE[12] = c'f'
_ESCAPE[10] = c'n'
_ESCAPE[13] = c'r'
_ESCAPE[9] = c't'

cdef const char* _HEX = b"0123456789abcdef"


cdef inline void _write_escape(_Out* o, unsigned int c) noexcept:
    # The caller reserved 6 bytes.
    cdef unsigned char e = _ESCAPE[c]
    cdef char* w = o.buf + o.len
    w[0] = c'\\'
    if e == c'u':
        w[1] = c'u'
        w[2] = c'0'
        w[3] = c'0'
        w[4] = _HEX[c >> 4]
        w[5] = _HEX[c & 15]
        o.len += 6
    else:
        w[1] = <char>e
        o.len += 2


cdef int _write_str(_Out* o, object s) except -1:
    cdef Py_ssize_t n, i, run
    cdef const unsigned char* a
    cdef void* data
    cdef int kind, width
    cdef unsigned int c   # a code point (Py_UCS4 would be a Python character)
    cdef char* w
    __nhlink_unicode_ready(s)
    n = PyUnicode_GET_LENGTH(s)
    data = PyUnicode_DATA(s)
    if PyUnicode_IS_ASCII(s):
        # Copy runs that need no escape with memcpy. Invariant: room for every remaining
        # character plus the closing quote.
        a = <const unsigned char*>data
        _reserve(o, n + 2)
        o.buf[o.len] = c'"'
        o.len += 1
        run = 0
        for i in range(n):
            if _ESCAPE[a[i]]:
                if i > run:
                    memcpy(o.buf + o.len, a + run, i - run)
                    o.len += i - run
                _reserve(o, 6 + (n - i - 1) + 1)
                _write_escape(o, a[i])
                run = i + 1
        if n > run:
            memcpy(o.buf + o.len, a + run, n - run)
            o.len += n - run
        o.buf[o.len] = c'"'
        o.len += 1
        return 0
    # Non-ASCII: encode UTF-8 ourselves (PyUnicode_AsUTF8 would cache a copy on the string).
    # Invariant: room for `width` bytes per remaining character plus the closing quote.
    kind = PyUnicode_KIND(s)
    width = kind + 1 if kind < 4 else 4    # 1-byte kind: <= 2 bytes; 2-byte: <= 3; 4: <= 4
    _reserve(o, <Py_ssize_t>width * n + 2)
    o.buf[o.len] = c'"'
    o.len += 1
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        w = o.buf + o.len
        if c < 0x80:
            if _ESCAPE[c]:
                _reserve(o, 6 + <Py_ssize_t>width * (n - i - 1) + 1)
                _write_escape(o, c)
            else:
                w[0] = <char>c
                o.len += 1
        elif c < 0x800:
            w[0] = <char>(0xC0 | (c >> 6))
            w[1] = <char>(0x80 | (c & 0x3F))
            o.len += 2
        elif c < 0x10000:
            if 0xD800 <= c <= 0xDFFF:
                raise EncodeError(
                    f"cannot encode a string holding the lone surrogate U+{c:04X} as UTF-8"
                )
            w[0] = <char>(0xE0 | (c >> 12))
            w[1] = <char>(0x80 | ((c >> 6) & 0x3F))
            w[2] = <char>(0x80 | (c & 0x3F))
            o.len += 3
        else:
            w[0] = <char>(0xF0 | (c >> 18))
            w[1] = <char>(0x80 | ((c >> 12) & 0x3F))
            w[2] = <char>(0x80 | ((c >> 6) & 0x3F))
            w[3] = <char>(0x80 | (c & 0x3F))
            o.len += 4
    o.buf[o.len] = c'"'
    o.len += 1
    return 0


cdef int _write_ascii_str(_Out* o, object s) except -1:
    # Contents of an ASCII str made by repr (big ints): no escapes needed.
    _put(o, <const char*>PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s))
    return 0


cdef int _write_ll(_Out* o, long long x) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef unsigned long long u = <unsigned long long>x
    if x < 0:
        u = 0 - u   # well defined for LLONG_MIN too
    while True:
        i -= 1
        tmp[i] = <char>(c'0' + u % 10)
        u //= 10
        if u == 0:
            break
    if x < 0:
        i -= 1
        tmp[i] = c'-'
    _put(o, tmp + i, 24 - i)
    return 0


_int_repr = int.__repr__   # what json uses for ints (and int subclasses such as IntEnum)


cdef int _write_int(_Out* o, object v) except -1:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow == 0:
        return _write_ll(o, x)
    try:
        text = _int_repr(v)
    except ValueError as exc:   # more digits than sys.get_int_max_str_digits() allows
        raise EncodeError(f"cannot encode an int as JSON: {exc}") from exc
    return _write_ascii_str(o, text)


cdef int _write_float(_Out* o, double d) except -1:
    cdef char* text
    if not isfinite(d):
        raise EncodeError(f"cannot encode {d!r} as JSON: out of range float values are not JSON")
    # Exactly float.__repr__: the same call with the same arguments.
    text = PyOS_double_to_string(d, c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        _put(o, text, <Py_ssize_t>strlen(text))
    finally:
        PyMem_Free(text)
    return 0


cdef int _enc(_Out* o, object v, int depth) except -1:
    # json's order of checks (c_make_encoder's encoder_listencode_obj): None, True, False
    # before int (bool is an int), then str, int, float, list/tuple, dict.
    if v is None:
        return _put(o, b"null", 4)
    if v is True:
        return _put(o, b"true", 4)
    if v is False:
        return _put(o, b"false", 5)
    if PyUnicode_Check(v):
        return _write_str(o, v)
    if PyLong_Check(v):
        return _write_int(o, v)
    if PyFloat_Check(v):
        return _write_float(o, PyFloat_AS_DOUBLE(v))
    if PyList_Check(v) or PyTuple_Check(v):
        return _enc_seq(o, v, depth)
    if PyDict_Check(v):
        return _enc_dict(o, v, depth)
    raise EncodeError(f"Object of type {type(v).__name__} is not JSON serializable")


cdef int _too_deep_enc() except -1:
    raise EncodeError(f"cannot encode the message: nesting deeper than {_MAX_DEPTH} levels")


cdef int _enc_seq(_Out* o, object v, int depth) except -1:
    cdef Py_ssize_t i
    cdef object item
    if depth >= _MAX_DEPTH:
        return _too_deep_enc()
    _putc(o, c'[')
    if PyList_CheckExact(v):
        # The size is read again on every turn: encoding an item may run user code (a
        # subclass's __iter__ or items()) that shrinks this list.
        i = 0
        while i < PyList_GET_SIZE(v):
            if i:
                _putc(o, c',')
            item = <object>PyList_GET_ITEM(v, i)
            _enc(o, item, depth + 1)
            i += 1
    elif PyTuple_CheckExact(v):
        for i in range(PyTuple_GET_SIZE(v)):
            if i:
                _putc(o, c',')
            _enc(o, <object>PyTuple_GET_ITEM(v, i), depth + 1)
    else:
        # Subclasses: json iterates them (PySequence_Fast), so __iter__ is honoured.
        seq = PySequence_Fast(v, b"expected a sequence")
        for i in range(PySequence_Fast_GET_SIZE(seq)):
            if i:
                _putc(o, c',')
            _enc(o, <object>PySequence_Fast_GET_ITEM(seq, i), depth + 1)
    return _putc(o, c']')


cdef int _enc_key(_Out* o, object key) except -1:
    # json's coercion of dict keys: str as is; float, True/False/None and int as their JSON
    # text, quoted. Order matters: bool before int.
    if PyUnicode_Check(key):
        return _write_str(o, key)
    if PyFloat_Check(key):
        _putc(o, c'"')
        _write_float(o, PyFloat_AS_DOUBLE(key))
        return _putc(o, c'"')
    if key is True:
        return _put(o, b'"true"', 6)
    if key is False:
        return _put(o, b'"false"', 7)
    if key is None:
        return _put(o, b'"null"', 6)
    if PyLong_Check(key):
        _putc(o, c'"')
        _write_int(o, key)
        return _putc(o, c'"')
    raise EncodeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


cdef int _enc_dict(_Out* o, object v, int depth) except -1:
    cdef Py_ssize_t pos = 0
    cdef PyObject* kp
    cdef PyObject* vp
    cdef object key, value
    cdef bint first = True
    if depth >= _MAX_DEPTH:
        return _too_deep_enc()
    if PyDict_Size(v) == 0:   # json tests the dict's own size first, subclasses included
        return _put(o, b"{}", 2)
    _putc(o, c'{')
    if PyDict_CheckExact(v):
        while PyDict_Next(v, &pos, &kp, &vp):
            key = <object>kp     # strong references: encoding may run user code
            value = <object>vp
            if not first:
                _putc(o, c',')
            first = False
            _enc_key(o, key)
            _putc(o, c':')
            _enc(o, value, depth + 1)
    else:
        # Subclasses: json asks for items(), so an override is honoured.
        for item in PyMapping_Items(v):
            if not PyTuple_Check(item) or PyTuple_GET_SIZE(item) != 2:
                raise EncodeError("cannot encode a mapping whose items() are not 2-tuples")
            if not first:
                _putc(o, c',')
            first = False
            _enc_key(o, <object>PyTuple_GET_ITEM(item, 0))
            _putc(o, c':')
            _enc(o, <object>PyTuple_GET_ITEM(item, 1), depth + 1)
    return _putc(o, c'}')


cdef int _enc_ref(_Out* o, object ref, str what) except -1:
    if ref is None:
        return _put(o, b"null", 4)
    if PyUnicode_Check(ref):
        return _write_str(o, ref)
    raise EncodeError(f"{what} must be a str or None, not {type(ref).__name__}")


def encode_message(join_ref, ref, topic, event, payload):
    """The UTF-8 JSON text of ``[join_ref, ref, topic, event, payload]`` for a text frame.

    Raises :class:`EncodeError` when the payload has no JSON form (unsupported type, NaN or
    infinity, a lone surrogate, a circular reference, nesting deeper than MAX_JSON_DEPTH) or
    the refs, topic or event have the wrong type. Does not mutate ``payload``.
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
        _putc(&o, c'[')
        _enc_ref(&o, join_ref, "join_ref")
        _putc(&o, c',')
        _enc_ref(&o, ref, "ref")
        _putc(&o, c',')
        _write_str(&o, topic)
        _putc(&o, c',')
        _write_str(&o, event)
        _putc(&o, c',')
        # A circular reference needs no markers: it nests without end, so the depth limit
        # catches it.
        _enc(&o, payload, 1)
        _putc(&o, c']')
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        if o.heap:
            PyMem_Free(o.buf)


# -- decoding --------------------------------------------------------------------------------

# The scanner is iterative: open arrays and objects live in an explicit stack of levels, so the
# C stack stays the same at any depth (a recursive scanner needs ~200 KiB at depth 256, more than
# the 128 KiB of a musl thread). Owned references are tracked in _In at every step, so _release
# can drop them whatever the scan fails on.
ctypedef struct _Level:
    PyObject* items     # an array's list (owned); NULL for an object
    PyObject* key       # an object's pending key (owned), or NULL
    Py_ssize_t base     # an object's first pair in the pair stack


ctypedef struct _In:
    const unsigned char* start
    const unsigned char* p
    const unsigned char* end
    bint surrogates     # the input was a str holding lone surrogates (UTF-8 surrogatepass)
    int open            # levels in use
    _Level levels[_MAX_DEPTH]
    # Objects' members as (key, value) pairs, owned, until the object closes: then its dict is
    # made presized, with no rehashing while it grows. A heap array once `pairs_inline` is full.
    PyObject** pairs
    Py_ssize_t top
    Py_ssize_t cap
    PyObject* pairs_inline[64]


# The short-string cache: small ASCII strings (keys above all) repeat from message to message.
# A hit costs a hash and a compare and returns a str whose hash is already computed, which makes
# the dict insertion cheaper too. Each slot holds a strong reference; the GIL guards it.
cdef PyObject* _cache[_CACHE_SIZE]
for _i in range(_CACHE_SIZE):
    _cache[_i] = NULL


cdef object _fail(_In* s, const unsigned char* at, str what):
    raise DecodeError(f"message is not valid JSON: {what} at byte {at - s.start}")


cdef inline object _ascii_str(const unsigned char* p, Py_ssize_t n):
    cdef object r = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(r), p, n)
    return r


cdef object _cached_ascii(const unsigned char* p, Py_ssize_t n):
    cdef unsigned int h = __nhlink_slot(p, n, _CACHE_BITS)
    cdef PyObject* hit = _cache[h]
    if hit != NULL and PyUnicode_GET_LENGTH(<object>hit) == n and __nhlink_eq_short(
        p, <const unsigned char*>PyUnicode_DATA(<object>hit), n
    ):
        return <object>hit
    r = _ascii_str(p, n)
    Py_INCREF(r)
    _cache[h] = <PyObject*>r
    Py_XDECREF(hit)
    return r


cdef inline void _ws(_In* s) noexcept:
    cdef const unsigned char* p = s.p
    cdef const unsigned char* end = s.end
    # JSON whitespace only: space, tab, LF, CR.
    while p < end and (p[0] == 32 or p[0] == 10 or p[0] == 13 or p[0] == 9):
        p += 1
    s.p = p


cdef inline int _hex4(const unsigned char* p) noexcept:
    """The value of 4 hex digits at p, or -1."""
    cdef int v = 0
    cdef int i, d
    cdef unsigned char c
    for i in range(4):
        c = p[i]
        if c'0' <= c <= c'9':
            d = c - c'0'
        elif c'a' <= c <= c'f':
            d = c - c'a' + 10
        elif c'A' <= c <= c'F':
            d = c - c'A' + 10
        else:
            return -1
        v = (v << 4) | d
    return v


cdef inline int _utf8_char(
    const unsigned char* q, const unsigned char* stop, unsigned int* out, bint surrogates
) noexcept:
    """Decode one multi-byte UTF-8 sequence at q (q[0] >= 0x80): its length, or 0 if invalid.

    Strict (RFC 3629): no overlong forms, nothing above U+10FFFF, no encoded surrogates unless
    ``surrogates`` (input that came from a str, encoded with surrogatepass).
    """
    cdef unsigned char c = q[0]
    cdef unsigned char b1, b2, b3
    if c < 0xC2:
        return 0
    if c < 0xE0:
        if q + 1 >= stop or (q[1] & 0xC0) != 0x80:
            return 0
        out[0] = ((c & 0x1F) << 6) | (q[1] & 0x3F)
        return 2
    if c < 0xF0:
        if q + 2 >= stop:
            return 0
        b1 = q[1]
        b2 = q[2]
        if (b1 & 0xC0) != 0x80 or (b2 & 0xC0) != 0x80:
            return 0
        if c == 0xE0 and b1 < 0xA0:
            return 0
        if c == 0xED and b1 >= 0xA0 and not surrogates:
            return 0
        out[0] = ((c & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
        return 3
    if c < 0xF5:
        if q + 3 >= stop:
            return 0
        b1 = q[1]
        b2 = q[2]
        b3 = q[3]
        if (b1 & 0xC0) != 0x80 or (b2 & 0xC0) != 0x80 or (b3 & 0xC0) != 0x80:
            return 0
        if (c == 0xF0 and b1 < 0x90) or (c == 0xF4 and b1 >= 0x90):
            return 0
        out[0] = ((c & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F)
        return 4
    return 0


cdef object _string(_In* s, bint cache):
    """The string whose opening quote is just before s.p; leaves s.p after the closing one."""
    cdef const unsigned char* start = s.p
    cdef const unsigned char* p
    cdef int ascii = 1
    cdef Py_ssize_t n
    cdef const char* errors = NULL
    p = __nhlink_scan_str(start, s.end, &ascii)
    if p >= s.end:
        return _fail(s, start - 1, "unterminated string")
    if p[0] == c'\\':
        return _string_escaped(s)
    if p[0] != c'"':
        return _fail(s, p, "invalid control character in string")
    n = p - start
    s.p = p + 1
    if ascii:
        if cache and n <= _CACHE_MAX_LEN:
            return _cached_ascii(start, n)
        return _ascii_str(start, n)
    if s.surrogates:
        errors = b"surrogatepass"
    try:
        return PyUnicode_DecodeUTF8(<const char*>start, n, errors)
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"message is not valid UTF-8: {exc.reason} at byte {start - s.start + exc.start}"
        ) from None


cdef object _string_escaped(_In* s):
    """Slow path of _string: the string holds escapes. Decoded into UCS-4, then one str."""
    cdef const unsigned char* start = s.p
    cdef const unsigned char* stop = start
    cdef const unsigned char* end = s.end
    cdef const unsigned char* q
    cdef Py_UCS4 stack[_STACK_UCS4]
    cdef Py_UCS4* out = stack
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t cap
    cdef unsigned int c   # a code point
    cdef unsigned char e
    cdef int u, u2, k
    # Find the closing quote first, to size the output: one code point per input byte at most.
    while stop < end and stop[0] != c'"':
        stop += 2 if stop[0] == c'\\' else 1
    if stop >= end:
        return _fail(s, start - 1, "unterminated string")
    cap = stop - start
    if cap > _STACK_UCS4:
        out = <Py_UCS4*>PyMem_Malloc(cap * sizeof(Py_UCS4))
        if out == NULL:
            raise MemoryError()
    try:
        q = start
        while q < stop:
            e = q[0]
            if e == c'\\':
                e = q[1]
                if e == c'"' or e == c'\\' or e == c'/':
                    c = e
                elif e == c'n':
                    c = 10
                elif e == c't':
                    c = 9
                elif e == c'r':
                    c = 13
                elif e == c'b':
                    c = 8
                elif e == c'f':
                    c = 12
                elif e == c'u':
                    # \uXXXX; a high surrogate followed by a \u low surrogate combines into one
                    # code point, any other surrogate stays as is (json.loads does the same).
                    if q + 5 >= stop or (u := _hex4(q + 2)) < 0:
                        return _fail(s, q, "invalid \\uXXXX escape")
                    c = u
                    if 0xD800 <= u <= 0xDBFF and q + 11 < stop and q[6] == c'\\' and q[7] == c'u':
                        u2 = _hex4(q + 8)
                        if u2 < 0:
                            return _fail(s, q + 6, "invalid \\uXXXX escape")
                        if 0xDC00 <= u2 <= 0xDFFF:
                            c = 0x10000 + (((u - 0xD800) << 10) | (u2 - 0xDC00))
                            q += 6
                    q += 4
                else:
                    return _fail(s, q, "invalid \\escape")
                q += 2
            elif e < 0x80:
                if e < 0x20:
                    return _fail(s, q, "invalid control character in string")
                c = e
                q += 1
            else:
                k = _utf8_char(q, stop, &c, s.surrogates)
                if k == 0:
                    raise DecodeError(f"message is not valid UTF-8 at byte {q - s.start}")
                q += k
            out[n] = c
            n += 1
        s.p = stop + 1
        return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, n)
    finally:
        if out != stack:
            PyMem_Free(out)


cdef object _number(_In* s):
    cdef const unsigned char* start = s.p
    cdef const unsigned char* p = start
    cdef const unsigned char* end = s.end
    cdef const unsigned char* digits
    cdef bint neg = False
    cdef bint is_float = False
    cdef long long v = 0
    cdef Py_ssize_t n
    cdef char tmp[64]
    cdef double d
    if p[0] == c'-':
        neg = True
        p += 1
    digits = p
    # JSON: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?  (json.loads backtracks on a bad
    # fraction or exponent, then fails on the leftover "." or "e": an error either way.)
    if p < end and p[0] == c'0':
        p += 1
    elif p < end and c'1' <= p[0] <= c'9':
        p += 1
        while p < end and c'0' <= p[0] <= c'9':
            p += 1
    else:
        return _fail(s, p, "expecting a digit")
    n = p - digits
    if p < end and p[0] == c'.':
        p += 1
        if p >= end or not (c'0' <= p[0] <= c'9'):
            return _fail(s, p, "expecting a digit after '.'")
        while p < end and c'0' <= p[0] <= c'9':
            p += 1
        is_float = True
    if p < end and (p[0] == c'e' or p[0] == c'E'):
        p += 1
        if p < end and (p[0] == c'+' or p[0] == c'-'):
            p += 1
        if p >= end or not (c'0' <= p[0] <= c'9'):
            return _fail(s, p, "expecting a digit in the exponent")
        while p < end and c'0' <= p[0] <= c'9':
            p += 1
        is_float = True
    s.p = p
    if not is_float:
        if n <= 18:   # fits a long long: no string, no PyLong parsing
            while digits < p:
                v = v * 10 + (digits[0] - c'0')
                digits += 1
            return PyLong_FromLongLong(-v if neg else v)
        # int(text), digit limit included (ValueError past sys.get_int_max_str_digits()).
        text = PyBytes_FromStringAndSize(<const char*>start, p - start)
        try:
            return PyLong_FromString(PyBytes_AS_STRING(text), NULL, 10)
        except ValueError as exc:
            raise DecodeError(f"message holds an integer too long to convert: {exc}") from None
    # float(text): the same C function, on a NUL-terminated copy of the validated token.
    n = p - start
    if n < 64:
        memcpy(tmp, start, n)
        tmp[n] = 0
        d = PyOS_string_to_double(tmp, NULL, NULL)
    else:
        text = PyBytes_FromStringAndSize(<const char*>start, n)
        d = PyOS_string_to_double(PyBytes_AS_STRING(text), NULL, NULL)
    return PyFloat_FromDouble(d)


cdef object _scalar(_In* s):
    """The string, number or literal at s.p (whitespace already skipped)."""
    cdef const unsigned char* p = s.p
    cdef unsigned char c
    if p >= s.end:
        return _fail(s, p, "unexpected end, expecting a value")
    c = p[0]
    if c == c'"':
        s.p = p + 1
        return _string(s, True)
    if c == c'-' or c'0' <= c <= c'9':
        return _number(s)
    if c == c'n' and s.end - p >= 4 and memcmp(p, b"null", 4) == 0:
        s.p = p + 4
        return None
    if c == c't' and s.end - p >= 4 and memcmp(p, b"true", 4) == 0:
        s.p = p + 4
        return True
    if c == c'f' and s.end - p >= 5 and memcmp(p, b"false", 5) == 0:
        s.p = p + 5
        return False
    if c == c'N' or c == c'I':
        return _fail(s, p, "NaN and Infinity are not JSON")
    return _fail(s, p, "expecting a value")


cdef object _key(_In* s):
    """An object member's name and its ':' (whitespace before the name already skipped)."""
    if s.p >= s.end or s.p[0] != c'"':
        return _fail(s, s.p, "expecting a property name in double quotes")
    s.p += 1
    key = _string(s, True)
    _ws(s)
    if s.p >= s.end or s.p[0] != c':':
        return _fail(s, s.p, "expecting ':'")
    s.p += 1
    _ws(s)
    return key


cdef int _push_pair(_In* s, _Level* level, object value) except -1:
    """Move the level's pending key and ``value`` onto the pair stack."""
    cdef PyObject** grown
    cdef Py_ssize_t cap
    if s.top + 2 > s.cap:
        cap = s.cap * 2
        if s.pairs == s.pairs_inline:
            grown = <PyObject**>PyMem_Malloc(cap * sizeof(PyObject*))
            if grown != NULL:
                memcpy(grown, s.pairs, s.top * sizeof(PyObject*))
        else:
            grown = <PyObject**>PyMem_Realloc(s.pairs, cap * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError()
        s.pairs = grown
        s.cap = cap
    Py_INCREF(value)
    s.pairs[s.top] = level.key     # the reference moves from the level to the stack
    s.pairs[s.top + 1] = <PyObject*>value
    level.key = NULL
    s.top += 2
    return 0


cdef object _close_object(_In* s, _Level* level):
    """The dict of the level's pairs; drops them from the pair stack."""
    cdef Py_ssize_t i
    cdef Py_ssize_t base = level.base
    d = _new_presized_dict((s.top - base) // 2)
    # In order: with duplicate keys the last one wins, at the first one's place (json.loads).
    i = base
    while i < s.top:
        PyDict_SetItem(d, <object>s.pairs[i], <object>s.pairs[i + 1])
        i += 2
    i = base
    while i < s.top:
        _decref(s.pairs[i])
        i += 1
    s.top = base
    return d


cdef void _release(_In* s) noexcept:
    """Drop every reference the scan still holds (after an error; a no-op after success)."""
    cdef int i
    cdef Py_ssize_t j
    for i in range(s.open):
        if s.levels[i].items != NULL:
            _decref(s.levels[i].items)
        if s.levels[i].key != NULL:
            _decref(s.levels[i].key)
    s.open = 0
    for j in range(s.top):
        _decref(s.pairs[j])
    s.top = 0
    if s.pairs != s.pairs_inline:
        PyMem_Free(s.pairs)
        s.pairs = s.pairs_inline


cdef object _value(_In* s, int depth):
    """The JSON value at s.p (whitespace already skipped), inside ``depth`` levels of nesting.

    Iterative: opening "[" or "{" pushes a level and goes on with its first member; a complete
    value is handed to the innermost open level, which either wants another member (",") or
    closes ("]" or "}") and becomes the complete value handed to the level below.
    """
    cdef int first = s.open
    cdef _Level* level
    cdef unsigned char c
    cdef object value
    while True:
        # A value starts here.
        if s.p >= s.end:
            return _fail(s, s.p, "unexpected end, expecting a value")
        c = s.p[0]
        if c == c'[' or c == c'{':
            if depth + (s.open - first) >= _MAX_DEPTH:
                return _fail(s, s.p, f"nesting deeper than {_MAX_DEPTH} levels")
            s.p += 1
            _ws(s)
            if c == c'[':
                if s.p < s.end and s.p[0] == c']':
                    s.p += 1
                    value = []
                else:
                    level = &s.levels[s.open]
                    items = []
                    Py_INCREF(items)
                    level.items = <PyObject*>items
                    level.key = NULL
                    s.open += 1
                    continue
            else:
                if s.p < s.end and s.p[0] == c'}':
                    s.p += 1
                    value = {}
                else:
                    level = &s.levels[s.open]
                    level.items = NULL
                    level.key = NULL
                    level.base = s.top
                    s.open += 1
                    key = _key(s)
                    Py_INCREF(key)
                    level.key = <PyObject*>key
                    continue
        else:
            value = _scalar(s)
        # A value is complete: give it to the innermost open level, closing levels as they end.
        while True:
            if s.open == first:
                return value
            level = &s.levels[s.open - 1]
            _ws(s)
            if s.p >= s.end:
                return _fail(s, s.p, "unterminated array or object")
            c = s.p[0]
            s.p += 1
            if level.items != NULL:
                PyList_Append(<object>level.items, value)
                if c == c',':
                    _ws(s)
                    break
                if c != c']':
                    return _fail(s, s.p - 1, "expecting ',' or ']'")
                value = <object>level.items
                _decref(level.items)
                level.items = NULL
                s.open -= 1
            else:
                _push_pair(s, level, value)
                if c == c',':
                    _ws(s)
                    key = _key(s)
                    Py_INCREF(key)
                    level.key = <PyObject*>key
                    break
                if c != c'}':
                    return _fail(s, s.p - 1, "expecting ',' or '}'")
                value = _close_object(s, level)
                s.open -= 1


cdef str _json_type(object v):
    if v is None:
        return "null"
    if v is True or v is False:
        return "a boolean"
    if PyLong_Check(v) or PyFloat_Check(v):
        return "a number"
    if PyUnicode_Check(v):
        return "a string"
    if PyList_Check(v):
        return "an array"
    return "an object"


cdef Message _decode(const unsigned char* data, Py_ssize_t size, bint surrogates):
    cdef _In s
    s.start = data
    s.p = data
    s.end = data + size
    s.surrogates = surrogates
    s.open = 0
    s.pairs = s.pairs_inline
    s.top = 0
    s.cap = 64
    try:
        return _decode_message(&s)
    finally:
        _release(&s)


cdef Message _decode_message(_In* s_):
    cdef _In* s = s_
    cdef object join_ref = None, ref = None, topic = None, event = None, payload = None
    cdef object value
    cdef int count = 0
    cdef unsigned char c
    _ws(s)
    if s.p >= s.end:
        raise DecodeError("message is empty")
    if s.p[0] != c'[':
        raise DecodeError(
            "a Phoenix message must be a JSON array [join_ref, ref, topic, event, payload]"
        )
    s.p += 1
    _ws(s)
    if s.p < s.end and s.p[0] == c']':
        raise DecodeError("a Phoenix message must be an array of 5 elements, got 0")
    while True:
        if count == 5:
            raise DecodeError("a Phoenix message must be an array of 5 elements, got more")
        value = _value(s, 1)
        if count == 0:
            join_ref = value
        elif count == 1:
            ref = value
        elif count == 2:
            topic = value
        elif count == 3:
            event = value
        else:
            payload = value
        count += 1
        _ws(s)
        if s.p >= s.end:
            _fail(s, s.p, "unterminated array")
        c = s.p[0]
        s.p += 1
        if c == c',':
            _ws(s)
        elif c == c']':
            break
        else:
            _fail(s, s.p - 1, "expecting ',' or ']'")
    _ws(s)
    if s.p != s.end:
        _fail(s, s.p, "extra data after the message")
    if count != 5:
        raise DecodeError(
            f"a Phoenix message must be an array of 5 elements "
            f"[join_ref, ref, topic, event, payload], got {count}"
        )
    if join_ref is not None and not PyUnicode_Check(join_ref):
        raise DecodeError(f"join_ref must be a string or null, got {_json_type(join_ref)}")
    if ref is not None and not PyUnicode_Check(ref):
        raise DecodeError(f"ref must be a string or null, got {_json_type(ref)}")
    if not PyUnicode_Check(topic):
        raise DecodeError(f"topic must be a string, got {_json_type(topic)}")
    if not PyUnicode_Check(event):
        raise DecodeError(f"event must be a string, got {_json_type(event)}")
    return _new_message(join_ref, ref, topic, event, payload)


def decode_message(data, /):
    """Parse one text frame into a :class:`Message`.

    ``data``: the frame payload, bytes-like (strict UTF-8) or str. Raises
    :class:`DecodeError` for invalid UTF-8 or JSON, NaN/Infinity, nesting deeper than
    MAX_JSON_DEPTH, or a value that is not a 5-element array of the right types.
    """
    cdef Py_buffer view
    cdef const char* text
    cdef Py_ssize_t n
    if PyBytes_Check(data):
        return _decode(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), False)
    if PyUnicode_Check(data):
        # The str's own UTF-8 (cached on it; the data itself for an ASCII str).
        try:
            text = PyUnicode_AsUTF8AndSize(data, &n)
        except UnicodeEncodeError:
            # Lone surrogates, which json.loads keeps: scan their surrogatepass encoding.
            encoded = PyUnicode_AsEncodedString(data, b"utf-8", b"surrogatepass")
            return _decode(
                <const unsigned char*>PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded), True
            )
        return _decode(<const unsigned char*>text, n, False)
    if PyMemoryView_Check(data) and not data.c_contiguous:
        data = data.tobytes()
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)   # TypeError for non bytes-like objects
    try:
        return _decode(<const unsigned char*>view.buf, view.len, False)
    finally:
        PyBuffer_Release(&view)


# -- binary frames ---------------------------------------------------------------------------

cdef object _binary_field(const unsigned char* p, Py_ssize_t n, str what):
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"binary frame: {what} is not valid UTF-8: {exc}") from None


def decode_binary(data, /):
    """Parse one V2 binary frame (PROTOCOL.md §4.5) sent by the server.

    * push (kind 0): ``join_ref, topic, event`` then the raw data: the payload is ``bytes``;
    * reply (kind 1): ``join_ref, ref, topic, status`` then the data: the event is
      ``"phx_reply"`` and the payload ``{"status": status, "response": bytes}``;
    * broadcast (kind 2): ``topic, event`` then the data.

    Field sizes are single bytes; an empty join_ref or ref is ``None``. Raises
    :class:`DecodeError` for an unknown kind, a truncated frame, or a field that is not UTF-8.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t n, header, pos, i, total
    cdef unsigned char kind
    if PyMemoryView_Check(data) and not data.c_contiguous:
        data = data.tobytes()
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        if n == 0:
            raise DecodeError("binary frame: empty")
        kind = p[0]
        if kind == _PUSH:
            header = 4
        elif kind == _REPLY:
            header = 5
        elif kind == _BROADCAST:
            header = 3
        else:
            raise DecodeError(
                f"binary frame: unknown kind {kind} (expected 0 push, 1 reply, 2 broadcast)"
            )
        if n < header:
            raise DecodeError(f"binary frame: truncated header ({n} of {header} bytes)")
        total = header
        for i in range(1, header):
            total += p[i]
        if total > n:
            raise DecodeError(
                f"binary frame: truncated: header announces {total} bytes of fields, "
                f"frame has {n}"
            )
        pos = header
        if kind == _PUSH:
            join_ref = _binary_field(p + pos, p[1], "join_ref")
            pos += p[1]
            topic = _binary_field(p + pos, p[2], "topic")
            pos += p[2]
            event = _binary_field(p + pos, p[3], "event")
            pos += p[3]
            payload = PyBytes_FromStringAndSize(<const char*>p + pos, n - pos)
            return _new_message(join_ref or None, None, topic, event, payload)
        if kind == _REPLY:
            join_ref = _binary_field(p + pos, p[1], "join_ref")
            pos += p[1]
            ref = _binary_field(p + pos, p[2], "ref")
            pos += p[2]
            topic = _binary_field(p + pos, p[3], "topic")
            pos += p[3]
            status = _binary_field(p + pos, p[4], "status")
            pos += p[4]
            payload = PyBytes_FromStringAndSize(<const char*>p + pos, n - pos)
            return _new_message(
                join_ref or None,
                ref or None,
                topic,
                "phx_reply",
                {"status": status, "response": payload},
            )
        topic = _binary_field(p + pos, p[1], "topic")
        pos += p[1]
        event = _binary_field(p + pos, p[2], "event")
        pos += p[2]
        payload = PyBytes_FromStringAndSize(<const char*>p + pos, n - pos)
        return _new_message(None, None, topic, event, payload)
    finally:
        PyBuffer_Release(&view)
