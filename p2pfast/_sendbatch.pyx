# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled batched output: many datagrams per system call (``sendmmsg`` on Linux).

On Windows (no ``sendmmsg``, no POSIX sockets API) it takes no datagram: ``send`` hands every
pair back to the caller, and the event loop's transport sends them (the portable path).

Twin of :mod:`p2pfast._sendbatch_py` (same API and behaviour, one ``sendto`` per datagram
or ``sendmsg`` per offloaded run). A busy node answers most datagrams it reads with one of its own (an Ack, a Pong); the
endpoint collects what one event-loop iteration produced and hands it here, so the kernel
is entered once per batch instead of once per datagram. The socket stays the uvloop
datagram endpoint's: this only writes to its file descriptor while the transport has
nothing buffered, and hands back what it cannot send so that the transport queues it.

A fragmented message leaves as a run of equal-size datagrams to one peer: on Linux each run
is one ``mmsghdr`` with a ``UDP_SEGMENT`` control message in the same ``sendmmsg`` batch, so
1 MiB of 1,200-byte fragments is one system call and ~17 passes through the UDP stack
instead of 874 (see ``bench/test_bench_gso.py``).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport (
    errno, EAGAIN, EINTR, EINVAL, EIO, EMSGSIZE, ENOBUFS, ENOPROTOOPT, EOPNOTSUPP,
)

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
    /* UDP segmentation offload (Linux >= 4.18): one message carries a run of equal-size
       datagrams to one address, the kernel (or the NIC) cuts it into segments of gso_size
       bytes, the last one possibly shorter. The limits below are the kernel's, as checked in
       net/ipv4/udp.c udp_send_skb() and net/ipv6/udp.c udp_v6_send_skb():
         - "datalen > cork->gso_size * UDP_MAX_SEGMENTS" -> EINVAL, UDP_MAX_SEGMENTS being 64
           (include/linux/udp.h; 128 since Linux 6.10). Kernels before the fix "udp: Fix UDP
           GSO segment count check" compared skb->len (IP + UDP headers included) instead of
           datalen, so the total plus the largest header (IPv6 40 + UDP 8 = 48 bytes) must
           stay within 64 segments: P2P_GSO_HEADROOM.
         - udp_sendmsg() refuses len > 0xFFFF and __ip_append_data() refuses a payload beyond
           IP_MAX_MTU (65,535) - 20 (IPv4 header) - 8 (UDP header) = 65,507 with EMSGSIZE;
           IPv6 allows 65,527 (IP6_MAX_MTU counts no IPv6 header), but an AF_INET6 socket
           sends to a v4-mapped address through the IPv4 path, so 65,507 holds for both.
         - "hlen + min(datalen, gso_size) > cork->fragsize" -> EMSGSIZE (EINVAL before 5.x):
           a segment must fit the route's MTU; the caller backs off on that refusal. */
    #define P2P_GSO_MAX_SEGMENTS 64
    #define P2P_GSO_MAX_BYTES 65507
    #define P2P_GSO_HEADROOM 48
    #define P2P_IOV (P2P_BATCH * P2P_GSO_MAX_SEGMENTS)

    #ifdef _WIN32
    typedef struct { int unused; } p2p_batch;

    /* Windows: nothing ever resolves, so every pair goes to the transport. */
    static int p2p_resolve(p2p_batch* b, int family, const char* host, int port) { return 0; }
    static void p2p_msg_start(p2p_batch* b, int m, const char* buf, size_t len) {}
    static int p2p_msg_can_extend(p2p_batch* b, int m, size_t len, size_t max_seg) { return 0; }
    static void p2p_msg_extend(p2p_batch* b, int m, const char* buf, size_t len) {}
    static int p2p_msg_count(p2p_batch* b, int m) { return 1; }
    static size_t p2p_msg_segment(p2p_batch* b, int m) { return 0; }
    static int p2p_gso_probe(int fd, int family) { return 0; }
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
    #ifdef __linux__
    #include <stdint.h>
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #endif

    typedef struct {
        struct sockaddr_storage next;        /* the address being resolved */
        socklen_t next_len;
        struct sockaddr_storage addr[P2P_BATCH];
        socklen_t addrlen[P2P_BATCH];
        int iov_first[P2P_BATCH];            /* message m's datagrams: iov[first, first+count) */
        int iov_count[P2P_BATCH];
        size_t total[P2P_BATCH];             /* bytes in message m */
        int closed[P2P_BATCH];               /* a shorter datagram ended message m's run */
        int iov_used;
        struct iovec iov[P2P_IOV];
    #ifdef __linux__
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } ctl[P2P_BATCH];
        struct mmsghdr msgs[P2P_BATCH];
    #endif
    } p2p_batch;

    /* Resolve host:port into b->next; 0 if host is not an address literal of this socket's
       family (an AF_INET6 socket also takes IPv4, as a v4-mapped address). */
    static int p2p_resolve(p2p_batch* b, int family, const char* host, int port) {
        memset(&b->next, 0, sizeof(struct sockaddr_storage));
        if (family == AF_INET) {
            struct sockaddr_in* sa = (struct sockaddr_in*)&b->next;
            if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) return 0;
            sa->sin_family = AF_INET;
            sa->sin_port = htons((unsigned short)port);
            b->next_len = sizeof(struct sockaddr_in);
        } else if (family == AF_INET6) {
            struct sockaddr_in6* sa = (struct sockaddr_in6*)&b->next;
            if (inet_pton(AF_INET6, host, &sa->sin6_addr) != 1) {
                struct in_addr v4;
                if (inet_pton(AF_INET, host, &v4) != 1) return 0;
                sa->sin6_addr.s6_addr[10] = 0xff;
                sa->sin6_addr.s6_addr[11] = 0xff;
                memcpy(&sa->sin6_addr.s6_addr[12], &v4, 4);
            }
            sa->sin6_family = AF_INET6;
            sa->sin6_port = htons((unsigned short)port);
            b->next_len = sizeof(struct sockaddr_in6);
        } else {
            return 0;
        }
        return 1;
    }

    /* Message m: one datagram (buf, len) to the address just resolved. */
    static void p2p_msg_start(p2p_batch* b, int m, const char* buf, size_t len) {
        if (m == 0) b->iov_used = 0;
        memcpy(&b->addr[m], &b->next, sizeof(struct sockaddr_storage));
        b->addrlen[m] = b->next_len;
        b->iov_first[m] = b->iov_used;
        b->iov_count[m] = 1;
        b->total[m] = len;
        b->closed[m] = 0;
        b->iov[b->iov_used].iov_base = (void*)buf;
        b->iov[b->iov_used].iov_len = len;
        b->iov_used++;
    }

    /* The segment size of message m: its first datagram's length. */
    static size_t p2p_msg_segment(p2p_batch* b, int m) {
        return b->iov[b->iov_first[m]].iov_len;
    }

    static int p2p_msg_count(p2p_batch* b, int m) {
        return b->iov_count[m];
    }

    /* 1 if a datagram of len bytes to the address just resolved may join message m as one
       more segment (limits: see P2P_GSO_*). */
    static int p2p_msg_can_extend(p2p_batch* b, int m, size_t len, size_t max_seg) {
    #ifdef __linux__
        size_t seg = p2p_msg_segment(b, m);
        size_t total = b->total[m] + len;
        if (b->closed[m] || len == 0 || len > seg || seg > max_seg) return 0;
        if (b->iov_count[m] >= P2P_GSO_MAX_SEGMENTS || total > P2P_GSO_MAX_BYTES) return 0;
        if (total + P2P_GSO_HEADROOM > seg * P2P_GSO_MAX_SEGMENTS) return 0;
        if (b->iov_used >= P2P_IOV) return 0;
        if (b->addrlen[m] != b->next_len) return 0;
        return memcmp(&b->addr[m], &b->next, b->next_len) == 0;
    #else
        return 0;
    #endif
    }

    static void p2p_msg_extend(p2p_batch* b, int m, const char* buf, size_t len) {
        if (len < p2p_msg_segment(b, m)) b->closed[m] = 1;  /* a shorter one ends the run */
        b->iov[b->iov_used].iov_base = (void*)buf;
        b->iov[b->iov_used].iov_len = len;
        b->iov_used++;
        b->iov_count[m]++;
        b->total[m] += len;
    }

    /* 1 if this kernel knows UDP_SEGMENT on this socket (read, never set: a socket-wide
       gso_size would apply to the transport's own sends too). */
    static int p2p_gso_probe(int fd, int family) {
    #ifdef __linux__
        int val = 0;
        socklen_t len = sizeof(val);
        if (family != AF_INET && family != AF_INET6) return 0;
        return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &val, &len) == 0;
    #else
        return 0;
    #endif
    }

    /* Send messages [0, n): the number sent (>= 1), or -1 with errno set for message 0. */
    static int p2p_batch_send(p2p_batch* b, int fd, int n) {
    #ifdef __linux__
        int i;
        for (i = 0; i < n; i++) {
            struct msghdr* h = &b->msgs[i].msg_hdr;
            memset(&b->msgs[i], 0, sizeof(struct mmsghdr));
            h->msg_name = &b->addr[i];
            h->msg_namelen = b->addrlen[i];
            h->msg_iov = &b->iov[b->iov_first[i]];
            h->msg_iovlen = b->iov_count[i];
            if (b->iov_count[i] > 1) {
                struct cmsghdr* c;
                uint16_t seg = (uint16_t)p2p_msg_segment(b, i);
                memset(b->ctl[i].buf, 0, sizeof(b->ctl[i].buf));
                h->msg_control = b->ctl[i].buf;
                h->msg_controllen = sizeof(b->ctl[i].buf);
                c = CMSG_FIRSTHDR(h);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                memcpy(CMSG_DATA(c), &seg, sizeof(uint16_t));
            }
        }
        return sendmmsg(fd, b->msgs, (unsigned int)n, MSG_DONTWAIT);
    #else
        int i;
        for (i = 0; i < n; i++) {
            const struct iovec* v = &b->iov[b->iov_first[i]];
            if (sendto(fd, v->iov_base, v->iov_len, MSG_DONTWAIT,
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
    enum: P2P_GSO_MAX_SEGMENTS
    enum: P2P_GSO_MAX_BYTES
    int p2p_resolve(p2p_batch* b, int family, const char* host, int port) nogil
    void p2p_msg_start(p2p_batch* b, int m, const char* buf, size_t len) nogil
    int p2p_msg_can_extend(p2p_batch* b, int m, size_t len, size_t max_seg) nogil
    void p2p_msg_extend(p2p_batch* b, int m, const char* buf, size_t len) nogil
    int p2p_msg_count(p2p_batch* b, int m) nogil
    size_t p2p_msg_segment(p2p_batch* b, int m) nogil
    int p2p_gso_probe(int fd, int family) nogil
    int p2p_batch_send(p2p_batch* b, int fd, int n) nogil

from libc.stdlib cimport malloc, free
from libc.string cimport strlen

#: Datagrams per system call (without segmentation offload; messages per call with it).
BATCH = P2P_BATCH
#: Most datagrams one segmentation-offload message carries.
GSO_MAX_SEGMENTS = P2P_GSO_MAX_SEGMENTS
#: Most payload bytes one segmentation-offload message carries (IPv4's datagram limit).
GSO_MAX_BYTES = P2P_GSO_MAX_BYTES


@cython.final
cdef class BatchSender:
    """Writes ``(data, (host, port))`` pairs to a non-blocking UDP socket's descriptor.

    ``send`` returns the index of the first pair it did not send, for the caller to hand to
    the transport: ``blocked`` is then true if the socket buffer was full (send the rest
    through the transport too, to keep their order), false if that pair's address is not an
    IP literal of the socket's family (the transport knows what to do with it). Datagrams the
    kernel refuses for any other reason are counted in ``errors`` and skipped, as the
    transport would report them to ``error_received`` and drop them.

    On Linux (``gso_enabled``: the socket knows ``UDP_SEGMENT``, and ``gso`` was not turned
    off), a run of consecutive datagrams to one address, all of one size but the last, which
    may be shorter, goes as one message with segmentation offload: the receiver still gets
    each datagram on its own, the sender enters the kernel's UDP stack once per run. A
    refusal of such a message costs nothing: its datagrams are sent again one by one (the
    kernel refusing offload itself, EIO/EINVAL/ENOPROTOOPT/EOPNOTSUPP, turns it off for this
    sender; EMSGSIZE, a segment too large for the route, lowers ``gso_max_segment``);
    ``gso_failures`` counts those refusals.
    """

    cdef int fd
    cdef int family
    cdef p2p_batch* batch
    cdef public bint blocked
    cdef public unsigned long long errors
    cdef public unsigned long long syscalls
    cdef readonly bint gso_enabled
    cdef readonly Py_ssize_t gso_max_segment
    cdef readonly unsigned long long gso_sends
    cdef readonly unsigned long long gso_segments
    cdef readonly unsigned long long gso_failures

    def __cinit__(self, int fd, int family, bint gso=True):
        self.fd = fd
        self.family = family
        self.batch = <p2p_batch*>malloc(sizeof(p2p_batch))
        if self.batch is NULL:
            raise MemoryError()
        self.gso_enabled = gso and p2p_gso_probe(fd, family) == 1
        self.gso_max_segment = P2P_GSO_MAX_BYTES

    def __dealloc__(self):
        free(self.batch)

    def close(self):
        """Stop using the descriptor (the transport owns and closes it)."""
        self.fd = -1

    cpdef Py_ssize_t send(self, list items, Py_ssize_t start=0) except -1:
        """Send ``items[start:]``; return the index of the first pair not sent."""
        cdef Py_ssize_t n = len(items), i = start, j, plain_until = start
        cdef int m, k, sent, count, err
        cdef size_t length
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
            m = 0
            j = i
            while j < n:
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
                if not p2p_resolve(self.batch, self.family, chost, <int>cport):
                    break
                length = <size_t>PyBytes_GET_SIZE(data)
                if (m > 0 and self.gso_enabled and j >= plain_until
                        and p2p_msg_can_extend(self.batch, m - 1, length,
                                               <size_t>self.gso_max_segment)):
                    p2p_msg_extend(self.batch, m - 1, PyBytes_AS_STRING(data), length)
                elif m < P2P_BATCH:
                    p2p_msg_start(self.batch, m, PyBytes_AS_STRING(data), length)
                    m += 1
                else:
                    break
                j += 1
            if m == 0:
                return i  # items[i] is for the transport: an address it must resolve
            # `items` holds a reference to every buffer in the batch while the kernel copies.
            sent = p2p_batch_send(self.batch, self.fd, m)
            err = errno
            self.syscalls += 1
            if sent > 0:  # all of them, or up to the first the kernel did not take
                for k in range(sent):
                    count = p2p_msg_count(self.batch, k)
                    i += count
                    if count > 1:
                        self.gso_sends += 1
                        self.gso_segments += count
            elif err == EINTR:
                pass
            elif sent == 0 or err == EAGAIN or err == ENOBUFS:  # EWOULDBLOCK == EAGAIN
                self.blocked = True
                return i
            elif p2p_msg_count(self.batch, 0) > 1:
                # Offload refused: send this run again, one datagram at a time.
                self.gso_failures += 1
                plain_until = i + p2p_msg_count(self.batch, 0)
                if err == EMSGSIZE:  # a segment beyond the route's MTU
                    self.gso_max_segment = min(self.gso_max_segment,
                                               <Py_ssize_t>p2p_msg_segment(self.batch, 0) - 1)
                elif err == EIO or err == EINVAL or err == ENOPROTOOPT or err == EOPNOTSUPP:
                    self.gso_enabled = False  # no offload here (device, kernel, socket)
            else:  # e.g. EMSGSIZE, EACCES: the transport would drop it too, and report it
                self.errors += 1
                i += 1
        return n
