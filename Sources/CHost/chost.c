#define _GNU_SOURCE
#include "chost.h"

#include <fcntl.h>
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
