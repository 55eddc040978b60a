# C types for _digest_c.py (a symlink to _digest_py.py), compiled in Cython's pure-Python mode.
# Sizes and offsets are `long long`: firmware can exceed 2 GiB, also on 32-bit ARM.

cimport cython

cdef int _OPEN, _FLUSHED, _FAILED
cdef int _GATE_NONE, _GATE_PARTS, _GATE_WHOLE
cdef Py_ssize_t _HASH_ON_ARRIVAL


@cython.locals(view=memoryview)
cdef memoryview _as_byte_view(object data)


@cython.final
cdef class StreamingDigest:
    cdef Py_ssize_t _block_size
    cdef long long _part_size
    cdef list _expected
    cdef Py_ssize_t _part_count
    cdef long long _offset
    cdef long long _total
    cdef list _pieces
    cdef Py_ssize_t _pending
    cdef Py_ssize_t _hashed_pieces
    cdef Py_ssize_t _hashed_bytes
    cdef int _state
    cdef str _hexdigest
    cdef object _whole
    cdef object _whole_update
    cdef object _part
    cdef long long _part_index
    cdef long long _part_fill
    cdef list _part_digests
    cdef long long _verified_offset
    cdef object _checksum
    cdef int _gate
    cdef list _held
    cdef long long _held_bytes
    cdef long long _released

    cdef void _start(self, long long offset) except *

    @cython.locals(n=Py_ssize_t, pending=Py_ssize_t, pieces=list)
    cpdef list feed(self, object data)

    @cython.locals(
        immutable=bint,
        view=memoryview,
        n=Py_ssize_t,
        pos=Py_ssize_t,
        end=Py_ssize_t,
        need=Py_ssize_t,
        block_size=Py_ssize_t,
        blocks=list,
    )
    cdef list _feed(self, object data)

    @cython.locals(pieces=list, last=Py_ssize_t, n=Py_ssize_t)
    cdef void _keep(self, memoryview piece, bint immutable) except *

    @cython.locals(pieces=list, index=Py_ssize_t, count=Py_ssize_t)
    cdef void _hash_kept(self) except *

    @cython.locals(pieces=list, hashed=Py_ssize_t)
    cdef object _take_pending(self)

    cdef void _emit_pending(self, list blocks) except *

    cdef void _hash(self, object data) except *

    @cython.locals(gate=int, part_done=bint)
    cdef void _block_done(self, object block, list blocks) except *

    cdef void _release(self, list blocks) except *

    cdef void _fail(self)

    @cython.locals(limit=cython.longlong)
    cdef void _too_long(self) except *

    @cython.locals(actual=str, index=cython.longlong, expected=str, end=cython.longlong)
    cdef void _finish_part(self) except *
