# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""WebSocket masking (RFC 6455 §5.3), compiled. The pure twin is :mod:`nhlink._core._mask_py`.

Masking is the one place where pointer arithmetic pays: the payload is XORed 64 bits at a time
with the 4-byte key repeated twice (rotated by ``offset`` so masking can continue across chunk
boundaries), then the tail byte by byte. Hand-written rather than pure-mode Cython because the
kernel needs raw buffers and unaligned 64-bit loads.

Contract: functions never keep a reference to their arguments. ``apply_mask`` and
``mask_with_header`` return a new ``bytes``; ``mask_inplace`` mutates the caller's buffer.

Also here, because it is the other place that needs raw buffers: :func:`payload_buffer`, the
destination the frame parser receives a large payload into (see ``FrameParser.payload_buffer``).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef inline void _xor_kernel(
    unsigned char *dst,
    const unsigned char *src,
    Py_ssize_t n,
    const unsigned char *key,
    unsigned int rot,
) noexcept nogil:
    """dst[i] = src[i] ^ key[(rot + i) % 4] for i < n; dst and src do not overlap."""
    cdef unsigned char k8[8]
    cdef uint64_t k64, w0, w1, w2, w3
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    # Byte j of every 8-byte word meets key[(rot + j) % 4]: words start at multiples of 8, and
    # 8 is a multiple of the key length. Built byte-wise so the word is right on any endianness.
    for j in range(8):
        k8[j] = key[(rot + j) & 3]
    memcpy(&k64, k8, 8)
    # memcpy, not a pointer cast: unaligned 64-bit loads through a cast are undefined behaviour
    # and fault on strict-alignment CPUs (armv7 LDRD); compilers turn these memcpys into plain
    # loads/stores, and the 4-word body below auto-vectorises at -O3.
    while i + 32 <= n:
        memcpy(&w0, src + i, 8)
        memcpy(&w1, src + i + 8, 8)
        memcpy(&w2, src + i + 16, 8)
        memcpy(&w3, src + i + 24, 8)
        w0 ^= k64
        w1 ^= k64
        w2 ^= k64
        w3 ^= k64
        memcpy(dst + i, &w0, 8)
        memcpy(dst + i + 8, &w1, 8)
        memcpy(dst + i + 16, &w2, 8)
        memcpy(dst + i + 24, &w3, 8)
        i += 32
    while i + 8 <= n:
        memcpy(&w0, src + i, 8)
        w0 ^= k64
        memcpy(dst + i, &w0, 8)
        i += 8
    # The tail starts at a multiple of 8, so its byte j meets k8[j].
    j = 0
    while i < n:
        dst[i] = src[i] ^ k8[j]
        i += 1
        j += 1


cdef inline void _xor_inplace(
    unsigned char *buf, Py_ssize_t n, const unsigned char *key, unsigned int rot
) noexcept nogil:
    """buf[i] ^= key[(rot + i) % 4] for i < n: ``_xor_kernel`` with one pointer, so the compiler
    needs no run-time aliasing check before it vectorises (it matters for small buffers)."""
    cdef unsigned char k8[8]
    cdef uint64_t k64, w0, w1, w2, w3
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    for j in range(8):
        k8[j] = key[(rot + j) & 3]
    memcpy(&k64, k8, 8)
    while i + 32 <= n:
        memcpy(&w0, buf + i, 8)
        memcpy(&w1, buf + i + 8, 8)
        memcpy(&w2, buf + i + 16, 8)
        memcpy(&w3, buf + i + 24, 8)
        w0 ^= k64
        w1 ^= k64
        w2 ^= k64
        w3 ^= k64
        memcpy(buf + i, &w0, 8)
        memcpy(buf + i + 8, &w1, 8)
        memcpy(buf + i + 16, &w2, 8)
        memcpy(buf + i + 24, &w3, 8)
        i += 32
    while i + 8 <= n:
        memcpy(&w0, buf + i, 8)
        w0 ^= k64
        memcpy(buf + i, &w0, 8)
        i += 8
    j = 0
    while i < n:
        buf[i] ^= k8[j]
        i += 1
        j += 1


cdef inline const unsigned char *_key_ptr(
    object key, Py_buffer *view, bint *acquired
) except NULL:
    """Point at the 4 bytes of ``key``. A buffer is acquired (``acquired[0]``) unless ``key`` is
    ``bytes``: the common case costs no buffer protocol round trip. The caller releases it."""
    acquired[0] = False
    if type(key) is bytes:
        if PyBytes_GET_SIZE(key) != 4:
            raise ValueError(f"mask key must be exactly 4 bytes, got {PyBytes_GET_SIZE(key)}")
        return <const unsigned char *>PyBytes_AS_STRING(key)
    PyObject_GetBuffer(key, view, PyBUF_SIMPLE)
    if view.len != 4:
        PyBuffer_Release(view)
        raise ValueError(f"mask key must be exactly 4 bytes, got {view.len}")
    acquired[0] = True
    return <const unsigned char *>view.buf


def apply_mask(object data, object key, long long offset=0):
    """Return ``data`` masked with ``key`` as new ``bytes``: byte i is XORed with
    ``key[(offset + i) % 4]`` (RFC 6455 §5.3). Masking is its own inverse, so this also unmasks.

    ``data`` is any C-contiguous buffer; ``key`` must be exactly 4 bytes (else ``ValueError``).
    Neither argument is modified or kept.
    """
    cdef Py_buffer kview
    cdef Py_buffer dview
    cdef bint kacquired
    cdef const unsigned char *k = _key_ptr(key, &kview, &kacquired)
    cdef const unsigned char *src
    cdef Py_ssize_t n
    cdef bytes out
    try:
        # bytes and bytearray (what frames are made of) skip the buffer protocol.
        if type(data) is bytes:
            src = <const unsigned char *>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        elif type(data) is bytearray:
            src = <const unsigned char *>PyByteArray_AS_STRING(data)
            n = PyByteArray_GET_SIZE(data)
        else:
            PyObject_GetBuffer(data, &dview, PyBUF_SIMPLE)
            try:
                out = PyBytes_FromStringAndSize(NULL, dview.len)
                _xor_kernel(
                    <unsigned char *>PyBytes_AS_STRING(out),
                    <const unsigned char *>dview.buf,
                    dview.len,
                    k,
                    offset & 3,
                )
                return out
            finally:
                PyBuffer_Release(&dview)
        out = PyBytes_FromStringAndSize(NULL, n)
        _xor_kernel(<unsigned char *>PyBytes_AS_STRING(out), src, n, k, offset & 3)
        return out
    finally:
        if kacquired:
            PyBuffer_Release(&kview)


# The offsets as ready-made int objects: returning one costs no conversion, which shows when the
# call itself is most of the cost (a 125-byte control frame).
cdef tuple _OFFSETS = (0, 1, 2, 3)


def mask_inplace(object buf, object key, long long offset=0):
    """Mask the writable buffer ``buf`` (a ``bytearray`` or writable ``memoryview``) in place:
    byte i is XORed with ``key[(offset + i) % 4]`` (RFC 6455 §5.3).

    Returns ``(offset + len(buf)) % 4``: pass it as ``offset`` with the next chunk to continue
    masking one payload across chunk boundaries. Raises ``TypeError`` for a read-only buffer and
    ``ValueError`` when ``key`` is not exactly 4 bytes.
    """
    cdef Py_buffer kview
    cdef Py_buffer bview
    cdef bint kacquired
    cdef const unsigned char *k
    cdef Py_ssize_t n
    if type(buf) is bytearray and type(key) is bytes and PyBytes_GET_SIZE(key) == 4:
        # The common case, without the buffer protocol.
        n = PyByteArray_GET_SIZE(buf)
        _xor_inplace(
            <unsigned char *>PyByteArray_AS_STRING(buf),
            n,
            <const unsigned char *>PyBytes_AS_STRING(key),
            offset & 3,
        )
        return _OFFSETS[(offset + n) & 3]
    k = _key_ptr(key, &kview, &kacquired)
    try:
        PyObject_GetBuffer(buf, &bview, PyBUF_SIMPLE)
        try:
            if bview.readonly:
                raise TypeError("mask_inplace needs a writable buffer (bytearray or memoryview)")
            n = bview.len
            _xor_inplace(<unsigned char *>bview.buf, n, k, offset & 3)
        finally:
            PyBuffer_Release(&bview)
    finally:
        if kacquired:
            PyBuffer_Release(&kview)
    return _OFFSETS[(offset + n) & 3]


def mask_with_header(bytes header not None, object data, object key):
    """Return ``header + apply_mask(data, key)`` built in one allocation and one pass.

    This is how a client frame is assembled (RFC 6455 §5.2: header, masking key, masked payload)
    without copying the payload twice. ``key`` must be exactly 4 bytes (else ``ValueError``).
    """
    cdef Py_buffer kview
    cdef Py_buffer dview
    cdef bint kacquired
    cdef const unsigned char *k = _key_ptr(key, &kview, &kacquired)
    cdef bytes out
    cdef unsigned char *dst
    cdef Py_ssize_t hlen = PyBytes_GET_SIZE(header)
    try:
        PyObject_GetBuffer(data, &dview, PyBUF_SIMPLE)
        try:
            out = PyBytes_FromStringAndSize(NULL, hlen + dview.len)
            dst = <unsigned char *>PyBytes_AS_STRING(out)
            memcpy(dst, PyBytes_AS_STRING(header), hlen)
            _xor_kernel(dst + hlen, <const unsigned char *>dview.buf, dview.len, k, 0)
            return out
        finally:
            PyBuffer_Release(&dview)
    finally:
        if kacquired:
            PyBuffer_Release(&kview)


# -- payload destinations -------------------------------------------------------------------------


cdef class _Filling:
    """A ``bytes`` object under construction, exported as a writable buffer.

    CPython itself builds ``bytes`` this way (``PyBytes_FromStringAndSize(NULL, n)``, then fill):
    a new object nobody else has seen yet, whose hash is not computed before it is handed out.
    Views of this exporter keep it, and so the ``bytes``, alive: no view can outlive the memory.
    """

    cdef bytes data

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self.data is None:
            raise BufferError("not made by payload_buffer()")
        PyBuffer_FillInfo(
            view, self, PyBytes_AS_STRING(self.data), PyBytes_GET_SIZE(self.data), 0, flags
        )

    def __releasebuffer__(self, Py_buffer *view):
        pass


def payload_buffer(Py_ssize_t n):
    """Return ``(owner, view)``: ``owner`` becomes the payload, ``view`` is a writable
    ``memoryview`` of its ``n`` bytes to receive into (``recv_into``, ``SSLObject.read``).

    Compiled, ``owner`` is a new ``bytes`` written in place through ``view``: the socket's bytes
    land in the final payload, copied once. Its contents are undefined until every byte has been
    written, and ``view`` must be released (``view.release()``) before ``owner`` is handed out.
    """
    if n < 0:
        raise ValueError("payload size must be >= 0")
    cdef _Filling filling = _Filling.__new__(_Filling)
    filling.data = PyBytes_FromStringAndSize(NULL, n)
    return filling.data, memoryview(filling)
