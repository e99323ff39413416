#define _GNU_SOURCE
#include "chost.h"

#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/if_tun.h>
#include <linux/vhost.h>
#include <stdlib.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// svmm's own binary is mapped a page at a time: MADV_RANDOM on each of the
// program's segments as the process starts, before the Swift runtime runs
// (shared libraries, in a dynamically linked build, are left as they are).
// Otherwise the kernel maps up to 16 pages of the page cache around each
// page first touched (fault-around; Linux 6.1 skips it in MADV_RANDOM
// mappings), and svmm's resident set held the neighbours of every function
// and descriptor it used: 1,361 pages of its binary in a boot of the
// default test guest in the sandbox, 851 with the advice, of the 615 it
// touches (docs/boot.md, "svmm's own memory"). The pages stay in the page
// cache, shared; only svmm's mappings of them shrink. It costs a minor fault
// per page rather than per 16, and a page not yet cached is read alone,
// without its neighbours.
//
// Optimized builds only (the svmm users run and the benchmarks measure). A
// debug build is what the tests run, from the host's files over the
// sandbox's 9p share, and there the advice also turns read-ahead off: a
// debug svmm booting the default test guest in the sandbox took 517 major
// faults (each a 9p round trip through the emulation) with it, 93 without,
// most of them while its guest ran (docs/platform.md, "L1's own work while
// L2 runs").
static int advise_random(struct dl_phdr_info *info, size_t size, void *unused) {
    (void)size;
    (void)unused;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || ph->p_filesz == 0) continue;
        uintptr_t start = (info->dlpi_addr + ph->p_vaddr) & ~(page - 1);
        uintptr_t end = info->dlpi_addr + ph->p_vaddr + ph->p_filesz;
        (void)madvise((void *)start, end - start, MADV_RANDOM);   // advice only: a refusal changes nothing
    }
    return 1;   // the program itself is reported first: stop there
}

void chost_map_own_binary_sparsely(void) {
    dl_iterate_phdr(advise_random, 0);
}

#if !DEBUG
__attribute__((constructor(101))) static void map_own_binary_sparsely_at_start(void) {
    chost_map_own_binary_sparsely();
}
#endif

// The helper shares the address space and the file table (CLONE_VM |
// CLONE_FILES), so it holds them after the parent exits. It waits, with raw
// system calls only (it runs on its own small stack, beside the parent's
// threads), until it has been reparented, then exits: dropping the last
// references tears the VM down in the helper's exit.
static int helper(void *arg) {
    pid_t parent = (pid_t)(long)arg;
    struct timespec tick = {0, 1000000};
    while (syscall(SYS_getppid) == parent) syscall(SYS_nanosleep, &tick, 0);
    syscall(SYS_exit, 0);
    return 0;
}

int chost_detach_teardown(void) {
    size_t size = 64 * 1024;
    void *stack = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return -errno;
    // SIGCHLD as its exit signal, so that init (its parent by then) reaps it.
    int pid = clone(helper, (char *)stack + size, CLONE_VM | CLONE_FILES | CLONE_FS | SIGCHLD, (void *)(long)getpid());
    return pid < 0 ? -errno : 0;
}

int chost_fallocate(int fd, int what, int64_t offset, int64_t length) {
    int mode = FALLOC_FL_KEEP_SIZE | (what == CHOST_PUNCH_HOLE ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
    return fallocate(fd, mode, offset, length) == 0 ? 0 : -errno;
}

int chost_lock_file(int fd, int exclusive) {
    struct flock lock = {.l_type = exclusive ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    return fcntl(fd, F_OFD_SETLK, &lock) == 0 ? 0 : -errno;
}

int chost_o_direct(void) { return O_DIRECT; }

int chost_tap_attach(const char *name, int multi_queue, int header_size) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(name) >= IFNAMSIZ) return -ENAMETOOLONG;
    strcpy(ifr.ifr_name, name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi_queue ? IFF_MULTI_QUEUE : 0);
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (ioctl(fd, TUNSETIFF, &ifr) != 0 || ioctl(fd, TUNSETVNETHDRSZ, &header_size) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int chost_if_mtu(const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(name) >= IFNAMSIZ) return -ENAMETOOLONG;
    strcpy(ifr.ifr_name, name);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    int r = ioctl(s, SIOCGIFMTU, &ifr) == 0 ? ifr.ifr_mtu : -errno;
    close(s);
    return r;
}

int chost_vhost_net_open(void) {
    int fd = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (ioctl(fd, VHOST_SET_OWNER) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int chost_vhost_get_features(int fd, uint64_t *features) {
    return ioctl(fd, VHOST_GET_FEATURES, features) == 0 ? 0 : -errno;
}

int chost_vhost_set_features(int fd, uint64_t features) {
    return ioctl(fd, VHOST_SET_FEATURES, &features) == 0 ? 0 : -errno;
}

int chost_vhost_set_mem_table(int fd, const uint64_t *regions, int count) {
    struct vhost_memory *m = calloc(1, sizeof *m + (size_t)count * sizeof m->regions[0]);
    if (!m) return -ENOMEM;
    m->nregions = (uint32_t)count;
    for (int i = 0; i < count; i++) {
        m->regions[i].guest_phys_addr = regions[3 * i];
        m->regions[i].memory_size = regions[3 * i + 1];
        m->regions[i].userspace_addr = regions[3 * i + 2];
    }
    int r = ioctl(fd, VHOST_SET_MEM_TABLE, m) == 0 ? 0 : -errno;
    free(m);
    return r;
}

int chost_vhost_set_vring(int fd, unsigned index, unsigned num, uint64_t desc, uint64_t avail, uint64_t used,
                          unsigned base, int kick, int call) {
    struct vhost_vring_state size = {.index = index, .num = num};
    struct vhost_vring_state first = {.index = index, .num = base};
    struct vhost_vring_addr addr = {.index = index, .desc_user_addr = desc, .avail_user_addr = avail, .used_user_addr = used};
    struct vhost_vring_file k = {.index = index, .fd = kick}, c = {.index = index, .fd = call};
    if (ioctl(fd, VHOST_SET_VRING_NUM, &size) != 0 || ioctl(fd, VHOST_SET_VRING_BASE, &first) != 0 ||
        ioctl(fd, VHOST_SET_VRING_ADDR, &addr) != 0 || ioctl(fd, VHOST_SET_VRING_KICK, &k) != 0 ||
        ioctl(fd, VHOST_SET_VRING_CALL, &c) != 0)
        return -errno;
    return 0;
}

int chost_vhost_get_vring_base(int fd, unsigned index, unsigned *base) {
    struct vhost_vring_state s = {.index = index};
    if (ioctl(fd, VHOST_GET_VRING_BASE, &s) != 0) return -errno;
    *base = s.num;
    return 0;
}

int chost_vhost_net_set_backend(int fd, unsigned index, int backend) {
    struct vhost_vring_file f = {.index = index, .fd = backend};
    return ioctl(fd, VHOST_NET_SET_BACKEND, &f) == 0 ? 0 : -errno;
}

int chost_tap_set_queue(int fd, int attach) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = attach ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    return ioctl(fd, TUNSETQUEUE, &ifr) == 0 ? 0 : -errno;
}

int chost_tap_set_offload(int fd, unsigned offloads) {
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)offloads) == 0 ? 0 : -errno;
}
