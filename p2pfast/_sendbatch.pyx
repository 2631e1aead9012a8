# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled batched output: many datagrams per system call (``sendmmsg`` on Linux).

On Windows (no ``sendmmsg``, no POSIX sockets API) it takes no datagram: ``send`` hands every
pair back to the caller, and the event loop's transport sends them (the portable path).

Twin of :mod:`p2pfast._sendbatch_py` (same API and behaviour, one ``sendto`` per datagram).
A busy node answers most datagrams it reads with one of its own (an Ack, a Pong); the
endpoint collects what one event-loop iteration produced and hands it here, so the kernel
is entered once per batch instead of once per datagram. The socket stays the uvloop
datagram endpoint's: this only writes to its file descriptor while the transport has
nothing buffered, and hands back what it cannot send so that the transport queues it.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport errno, EAGAIN, EINTR, ENOBUFS

cdef extern from "Python.h":
    bint PyBytes_CheckExact(object)
    bint PyTuple_CheckExact(object)
    bint PyUnicode_CheckExact(object)
    bint PyLong_CheckExact(object)
    bint PyUnicode_IS_ASCII(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    const char* _ascii_data "(const char*)PyUnicode_1BYTE_DATA"(object)

cdef extern from *:
    """
    #include <string.h>
    #include <errno.h>
    #define P2P_BATCH 64

    #ifdef _WIN32
    typedef struct { int unused; } p2p_batch;

    /* Windows: no slot is ever filled, so every pair goes to the transport. */
    static int p2p_batch_set(p2p_batch* b, int i, int family, const char* host, int port,
                             const char* buf, size_t len) {
        return 0;
    }

    static int p2p_batch_send(p2p_batch* b, int fd, int n) {
        errno = EINVAL;
        return -1;
    }
    #else
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>

    typedef struct {
        struct sockaddr_storage addr[P2P_BATCH];
        socklen_t addrlen[P2P_BATCH];
        struct iovec iov[P2P_BATCH];
    #ifdef __linux__
        struct mmsghdr msgs[P2P_BATCH];
    #endif
    } p2p_batch;

    /* Fill slot i with (buf, len) to host:port; 0 if host is not an address literal of
       this socket's family (an AF_INET6 socket also takes IPv4, as a v4-mapped address). */
    static int p2p_batch_set(p2p_batch* b, int i, int family, const char* host, int port,
                             const char* buf, size_t len) {
        memset(&b->addr[i], 0, sizeof(struct sockaddr_storage));
        if (family == AF_INET) {
            struct sockaddr_in* sa = (struct sockaddr_in*)&b->addr[i];
            if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) return 0;
            sa->sin_family = AF_INET;
            sa->sin_port = htons((unsigned short)port);
            b->addrlen[i] = sizeof(struct sockaddr_in);
        } else if (family == AF_INET6) {
            struct sockaddr_in6* sa = (struct sockaddr_in6*)&b->addr[i];
            if (inet_pton(AF_INET6, host, &sa->sin6_addr) != 1) {
                struct in_addr v4;
                if (inet_pton(AF_INET, host, &v4) != 1) return 0;
                sa->sin6_addr.s6_addr[10] = 0xff;
                sa->sin6_addr.s6_addr[11] = 0xff;
                memcpy(&sa->sin6_addr.s6_addr[12], &v4, 4);
            }
            sa->sin6_family = AF_INET6;
            sa->sin6_port = htons((unsigned short)port);
            b->addrlen[i] = sizeof(struct sockaddr_in6);
        } else {
            return 0;
        }
        b->iov[i].iov_base = (void*)buf;
        b->iov[i].iov_len = len;
        return 1;
    }

    /* Send slots [0, n): the number sent (>= 1), or -1 with errno set for slot 0. */
    static int p2p_batch_send(p2p_batch* b, int fd, int n) {
    #ifdef __linux__
        int i;
        for (i = 0; i < n; i++) {
            memset(&b->msgs[i], 0, sizeof(struct mmsghdr));
            b->msgs[i].msg_hdr.msg_name = &b->addr[i];
            b->msgs[i].msg_hdr.msg_namelen = b->addrlen[i];
            b->msgs[i].msg_hdr.msg_iov = &b->iov[i];
            b->msgs[i].msg_hdr.msg_iovlen = 1;
        }
        return sendmmsg(fd, b->msgs, (unsigned int)n, MSG_DONTWAIT);
    #else
        int i;
        for (i = 0; i < n; i++) {
            if (sendto(fd, b->iov[i].iov_base, b->iov[i].iov_len, MSG_DONTWAIT,
                       (struct sockaddr*)&b->addr[i], b->addrlen[i]) < 0) {
                return i > 0 ? i : -1;
            }
        }
        return n;
    #endif
    }
    #endif  /* _WIN32 */
    """
    ctypedef struct p2p_batch:
        pass
    enum: P2P_BATCH
    int p2p_batch_set(p2p_batch* b, int i, int family, const char* host, int port,
                      const char* buf, size_t len) nogil
    int p2p_batch_send(p2p_batch* b, int fd, int n) nogil

from libc.stdlib cimport malloc, free
from libc.string cimport strlen

#: Datagrams per system call.
BATCH = P2P_BATCH


@cython.final
cdef class BatchSender:
    """Writes ``(data, (host, port))`` pairs to a non-blocking UDP socket's descriptor.

    ``send`` returns the index of the first pair it did not send, for the caller to hand to
    the transport: ``blocked`` is then true if the socket buffer was full (send the rest
    through the transport too, to keep their order), false if that pair's address is not an
    IP literal of the socket's family (the transport knows what to do with it). Datagrams the
    kernel refuses for any other reason are counted in ``errors`` and skipped, as the
    transport would report them to ``error_received`` and drop them.
    """

    cdef int fd
    cdef int family
    cdef p2p_batch* batch
    cdef public bint blocked
    cdef public unsigned long long errors
    cdef public unsigned long long syscalls

    def __cinit__(self, int fd, int family):
        self.fd = fd
        self.family = family
        self.batch = <p2p_batch*>malloc(sizeof(p2p_batch))
        if self.batch is NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.batch)

    def close(self):
        """Stop using the descriptor (the transport owns and closes it)."""
        self.fd = -1

    cpdef Py_ssize_t send(self, list items, Py_ssize_t start=0) except -1:
        """Send ``items[start:]``; return the index of the first pair not sent."""
        cdef Py_ssize_t n = len(items), i = start, j
        cdef int filled, sent
        cdef object item, data, addr, host, port
        cdef const char* chost
        cdef long cport
        if not 0 <= start <= n:
            raise ValueError(f"start {start} outside 0..{n}")
        self.blocked = False
        if self.fd < 0:
            self.blocked = True
            return start
        while i < n:
            filled = 0
            j = i
            while j < n and filled < P2P_BATCH:
                item = items[j]
                if not PyTuple_CheckExact(item) or len(<tuple>item) != 2:
                    break
                data = (<tuple>item)[0]
                addr = (<tuple>item)[1]
                if not PyBytes_CheckExact(data) or not PyTuple_CheckExact(addr) or len(<tuple>addr) < 2:
                    break
                host = (<tuple>addr)[0]
                port = (<tuple>addr)[1]
                if not PyUnicode_CheckExact(host) or not PyLong_CheckExact(port):
                    break
                if not 0 <= port <= 65535:
                    break
                cport = port
                # An IP literal is ASCII, and NUL-free (inet_pton would stop at a NUL).
                if not PyUnicode_IS_ASCII(host) or PyUnicode_GET_LENGTH(host) > 63:
                    break
                chost = _ascii_data(host)
                if strlen(chost) != <size_t>PyUnicode_GET_LENGTH(host):
                    break
                if not p2p_batch_set(self.batch, filled, self.family, chost, <int>cport,
                                     PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data)):
                    break
                filled += 1
                j += 1
            if filled == 0:
                return i  # items[i] is for the transport: an address it must resolve
            # `items` holds a reference to every buffer in the batch while the kernel copies.
            sent = p2p_batch_send(self.batch, self.fd, filled)
            self.syscalls += 1
            if sent > 0:
                i += sent  # all of them, or up to the first the kernel did not take
            elif errno == EINTR:
                pass
            elif sent == 0 or errno == EAGAIN or errno == ENOBUFS:  # EWOULDBLOCK == EAGAIN
                self.blocked = True
                return i
            else:  # e.g. EMSGSIZE, EACCES: the transport would drop it too, and report it
                self.errors += 1
                i += 1
        return n
