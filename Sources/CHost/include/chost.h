// The host calls Swift's Glibc module does not reach: eventfd(2) and
// getrandom(2) live in headers it does not import, and the time-stamp counter
// and atomic views of raw memory have no Swift spelling. No logic lives here.
#ifndef CHOST_H
#define CHOST_H

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>

// A non-blocking, close-on-exec eventfd; -errno on failure.
static inline int chost_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

// getrandom(2) from the kernel's pool; bytes filled, or -errno.
static inline long chost_getrandom(void *buf, unsigned long len) {
    long n = getrandom(buf, len, 0);
    return n < 0 ? -errno : n;
}

// Exit telemetry counters: each is written by one vCPU thread only and read
// by the stats sampler at any time. Relaxed atomic loads and stores (no lock
// prefix: there is a single writer) keep both sides free of tearing and of
// data races without a lock on the exit path. Swift's Synchronization has no
// atomic view of raw memory, hence these three lines of C.
static inline void chost_counter_add(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline void chost_counter_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t chost_counter_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
// A bitmap of dirty pages that several device threads mark at once (a
// snapshot's Diff): an atomic OR per mark, an exchange to take a word.
static inline void chost_bits_or(uint64_t *p, uint64_t v) { __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
static inline uint64_t chost_bits_take(uint64_t *p) { return __atomic_exchange_n(p, 0, __ATOMIC_ACQ_REL); }
// Whether n bytes at p are all zero (a sparse memory file's holes): the
// first byte, then the range against itself shifted by one, with memcmp's
// vectorized loop.
static inline int chost_is_zero(const void *p, unsigned long n) {
    const unsigned char *b = (const unsigned char *)p;
    return n == 0 || (b[0] == 0 && __builtin_memcmp(b, b + 1, n - 1) == 0);
}
// The time-stamp counter: the exit path's clock. clock_gettime can be a
// system call plus a device read (an HPET in the nested sandbox), which would
// cost more than the exits being measured.
static inline uint64_t chost_rdtsc(void) { return __builtin_ia32_rdtsc(); }
// CLOCK_MONOTONIC in nanoseconds.
static inline uint64_t chost_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// Disk images (VMCore's DiskImage): fallocate(2) and open-file-description
// locks need _GNU_SOURCE, which Swift's Glibc module is built without.
// Each returns 0 or -errno.
enum { CHOST_PUNCH_HOLE = 1, CHOST_ZERO_RANGE = 2 };
int chost_fallocate(int fd, int what, int64_t offset, int64_t length);
// A whole-file lock held until the file description is closed: shared
// (exclusive = 0) or exclusive; fails at once with -EAGAIN when another
// description holds a conflicting one.
int chost_lock_file(int fd, int exclusive);
// O_DIRECT, for open(2) (a _GNU_SOURCE flag).
int chost_o_direct(void);

// TAP devices (VMCore's Tap): the tun ioctls of <linux/if_tun.h>. Each
// returns 0 (or an fd) or -errno.
// Attaches one queue of the existing TAP `name`: /dev/net/tun opened
// non-blocking and close-on-exec, TUNSETIFF with IFF_TAP | IFF_NO_PI |
// IFF_VNET_HDR (| IFF_MULTI_QUEUE), then TUNSETVNETHDRSZ `header_size`.
int chost_tap_attach(const char *name, int multi_queue, int header_size);
// TUNSETOFFLOAD: what the reader of the TAP (the guest) accepts.
int chost_tap_set_offload(int fd, unsigned offloads);
// TUNSETQUEUE: attach (1) or detach (0) a multi-queue TAP's queue.
int chost_tap_set_queue(int fd, int attach);
// vhost-net (VMCore's VhostNet), the ioctls of <linux/vhost.h>. Each
// returns 0 (or an fd) or -errno.
// Opens /dev/vhost-net (close-on-exec) and takes ownership (VHOST_SET_OWNER).
int chost_vhost_net_open(void);
int chost_vhost_get_features(int fd, uint64_t *features);
int chost_vhost_set_features(int fd, uint64_t features);
// VHOST_SET_MEM_TABLE: `count` regions, each (guest address, size, host address).
int chost_vhost_set_mem_table(int fd, const uint64_t *regions, int count);
// Vring `index`: its size, ring addresses (host), first available index,
// kick and call eventfds (VHOST_SET_VRING_NUM, _ADDR, _BASE, _KICK, _CALL).
int chost_vhost_set_vring(int fd, unsigned index, unsigned num, uint64_t desc, uint64_t avail, uint64_t used,
                          unsigned base, int kick, int call);
// VHOST_GET_VRING_BASE: the next available index vring `index` would take.
int chost_vhost_get_vring_base(int fd, unsigned index, unsigned *base);
// VHOST_NET_SET_BACKEND: the TAP (or -1: none, the ring stops) for vring `index`.
int chost_vhost_net_set_backend(int fd, unsigned index, int backend);
// SIOCGIFMTU of the interface `name`, or -errno.
int chost_if_mtu(const char *name);

// Hands the process's last references to its files (the VM's fds) and
// memory to a helper that outlives it: KVM's VM teardown (the irqchip's
// io-bus unregistrations wait in synchronize_srcu, ~10 ms) then runs in the
// helper after this process has exited, so whoever waits for svmm does not
// wait for it. Returns 0, or -errno (nothing detached; the caller exits as usual).
int chost_detach_teardown(void);

// Advises each segment of the running program's own file MADV_RANDOM (no
// fault-around: svmm's resident set holds the pages it touches, not their
// neighbours; chost.c). An optimized build calls it as the process starts,
// before the Swift runtime; a debug build never does (tests call it).
void chost_map_own_binary_sparsely(void);

#endif
