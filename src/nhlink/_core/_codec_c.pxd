from libc.string cimport memcpy


# What the compiled MessagePack codec (_msgpack_c.pyx) shares with the compiled JSON codec: the
# Message type itself (one type for every frame, whichever serializer), the short-string cache
# (keys repeat from message to message under both), the presized dict and the encoders' output
# buffer. Cython exports the cdef functions through _codec_c's C-API capsule, which _msgpack_c
# imports when it is imported; the inline ones are compiled into each module.

cdef class Message:
    cdef public object join_ref
    cdef public object ref
    cdef public object topic
    cdef public object event
    cdef public object payload


cdef Message _new_message(join_ref, ref, topic, event, payload)
cdef object _cached_ascii(const unsigned char* p, Py_ssize_t n)


cdef extern from *:
    """
    /* A dict with room for n items without rehashing (CPython), else a plain new dict. */
    #if defined(PYPY_VERSION) || defined(Py_LIMITED_API)
    #define __nhlink_new_presized_dict(n) PyDict_New()
    #else
    #define __nhlink_new_presized_dict(n) _PyDict_NewPresized(n)
    #endif
    """
    object _new_presized_dict "__nhlink_new_presized_dict" (Py_ssize_t n)


# The encoders' output: a stack buffer first, moved to the heap when it fills.
ctypedef struct _Out:
    char* buf
    Py_ssize_t len
    Py_ssize_t cap
    bint heap

cdef int _grow(_Out* o, Py_ssize_t need) except -1


cdef inline int _reserve(_Out* o, Py_ssize_t n) except -1:
    if o.cap - o.len < n:
        _grow(o, n)
    return 0


cdef inline int _put(_Out* o, const char* s, Py_ssize_t n) except -1:
    _reserve(o, n)
    memcpy(o.buf + o.len, s, n)
    o.len += n
    return 0


cdef inline int _putc(_Out* o, char c) except -1:
    _reserve(o, 1)
    o.buf[o.len] = c
    o.len += 1
    return 0
