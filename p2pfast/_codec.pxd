# cython: language_level=3
"""C-level declarations of the compiled codec (see ``_codec.pyx``).

The compiled receive path (``_receive.pyx``) cimports these to read a decoded message's
fields and encode Acks without Python attribute or call overhead.
"""


cdef class Message:
    cdef public object id
    cdef public object type
    cdef public object timestamp
    cdef public object payload
    cdef public object sender_addr
    cdef public object sequence_number
    cdef public object requires_ack
    cdef public object ack_for


cpdef object decode(object data)
cdef bytes encode_ack_c(object ack_for, object timestamp, object sender_addr)
cdef bytes encode_bare_c(object type, object timestamp)
cdef bytes encode_reply_c(object type, object timestamp, object ack_for)
