#define _GNU_SOURCE
#include "chost.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
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

int chost_tap_set_queue(int fd, int attach) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = attach ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    return ioctl(fd, TUNSETQUEUE, &ifr) == 0 ? 0 : -errno;
}

int chost_tap_set_offload(int fd, unsigned offloads) {
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)offloads) == 0 ? 0 : -errno;
}
