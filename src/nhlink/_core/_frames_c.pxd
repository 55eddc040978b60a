# C types for _frames_c.py, the symlink through which Cython compiles _frames_py.py (pure-Python
# mode: this file augments that source; the source itself never imports cython). Everything
# declared here must keep the meaning it has in Python: module constants typed here become C
# values invisible to Python, so only private names are typed.

cimport cython

cdef int _OP_CONT
cdef int _OP_TEXT
cdef int _OP_BINARY
cdef int _OP_CLOSE
cdef int _OP_PING
cdef int _OP_PONG
cdef int _NO_MESSAGE

cdef int _ST_HEADER
cdef int _ST_PAYLOAD

cdef Py_ssize_t _MAX_HEADER
cdef Py_ssize_t _MAX_CONTROL_PAYLOAD
cdef long long _DIRECT_MIN
cdef long long _DIRECT_MAX

cdef int _CLOSE_PROTOCOL_ERROR
cdef int _CLOSE_INVALID_DATA
cdef int _CLOSE_MESSAGE_TOO_BIG

cdef unsigned int _UTF8_ACCEPT
cdef unsigned int _UTF8_REJECT
cdef bytes _UTF8_CLASSES
cdef bytes _UTF8_TRANSITIONS

cdef bint _COMPILED

cdef object _pack_header_7
cdef object _pack_header_16
cdef object _pack_header_64
cdef object _pack_close_code
cdef object _utf8_decode
cdef object _mask_with_header
cdef object _payload_buffer


@cython.locals(
    i=Py_ssize_t,
    classes="const unsigned char *",
    transitions="const unsigned char *",
)
cdef unsigned int _utf8_scan(unsigned int state, const unsigned char *data, Py_ssize_t n) noexcept

cdef bint _utf8_valid(bytes payload) except -1

@cython.locals(code=int, n=Py_ssize_t)
cpdef tuple parse_close_payload(object payload)

cdef bint _close_code_valid(int code) noexcept


cdef class Utf8Validator:
    cdef unsigned int _state
    cdef bytes _pending

    cpdef reset(self)

    @cython.locals(state="unsigned int", consumed=Py_ssize_t, pending=bytes)
    cpdef feed(self, object data, bint final=*)


@cython.freelist(64)
cdef class Frame:
    cdef public int opcode
    cdef public bint fin
    cdef public bint rsv1
    cdef public bytes payload


@cython.locals(frame=Frame)
cdef Frame _new_frame(int opcode, bytes payload, bint fin, bint rsv1)


cdef class FrameParser:
    cdef long long _max_frame_size
    cdef long long _max_message_size
    cdef bint _allow_rsv1
    cdef bint _validate_utf8

    cdef int _state
    cdef bytes _tail

    cdef int _opcode
    cdef bint _fin
    cdef bint _rsv1
    cdef bint _check_text
    cdef long long _remaining
    cdef list _parts
    cdef object _direct
    cdef object _direct_view
    cdef Py_ssize_t _filled
    cdef object _lent

    cdef int _msg_opcode
    cdef bint _msg_rsv1
    cdef long long _msg_size

    cdef Utf8Validator _validator
    cdef object _error

    @cython.locals(take=Py_ssize_t)
    cpdef list feed(self, object data)

    cpdef object payload_buffer(self)

    cpdef list payload_received(self, Py_ssize_t nbytes)

    cdef object _start_direct(self, long long size)

    @cython.locals(start=Py_ssize_t, remaining="long long")
    cdef void _received(self, Py_ssize_t nbytes, list frames) except *

    @cython.locals(
        n=Py_ssize_t,
        pos=Py_ssize_t,
        end=Py_ssize_t,
        tail_len=Py_ssize_t,
        avail=Py_ssize_t,
        remaining="long long",
        head=bytes,
        piece=bytes,
        payload=bytes,
        view=object,
    )
    cdef void _parse(self, bytes data, list frames) except *

    @cython.locals(
        p="const unsigned char *",
        b0="unsigned char",
        b1="unsigned char",
        opcode=int,
        rsv1=bint,
        hlen=Py_ssize_t,
        size="long long",
    )
    cdef Py_ssize_t _header(self, bytes buf, Py_ssize_t pos, Py_ssize_t n) except -2

    @cython.locals(opcode=int, fin=bint, rsv1=bint, length7=int)
    cdef inline Py_ssize_t _first_bytes(self, int b0, int b1) except -1

    # (except *, not except -1: Cython 3.3 emits "-1LLLL" for a long long return in pure mode)
    @cython.locals(
        p="const unsigned char *", i=Py_ssize_t, length="unsigned long long", size="long long"
    )
    cdef inline long long _length(
        self, bytes buf, Py_ssize_t pos, Py_ssize_t hlen, int length7
    ) except *

    @cython.locals(check_text=bint)
    cdef inline bint _within_limits(self, int opcode, bint rsv1, long long size) except -1

    @cython.locals(opcode=int, fin=bint)
    cdef Frame _complete(self, bytes payload)
