// Typed wrappers over the /dev/kvm ioctls that svmm uses.
//
// ioctl(2) is variadic and its request numbers are function-like macros, so
// neither can be called from Swift directly. Each wrapper here issues exactly
// one ioctl and returns its result, or -errno on failure (read at once, so no
// other call can overwrite errno before Swift sees it). No logic lives here.
#ifndef CKVM_H
#define CKVM_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#define CKVM_RESULT(expr) ({ int _r = (expr); _r < 0 ? -errno : _r; })

// System ioctls (on the /dev/kvm fd).
static inline int ckvm_get_api_version(int fd) { return CKVM_RESULT(ioctl(fd, KVM_GET_API_VERSION, 0)); }
static inline int ckvm_check_extension(int fd, int cap) { return CKVM_RESULT(ioctl(fd, KVM_CHECK_EXTENSION, cap)); }
static inline int ckvm_create_vm(int fd, unsigned long type) { return CKVM_RESULT(ioctl(fd, KVM_CREATE_VM, type)); }
static inline int ckvm_get_vcpu_mmap_size(int fd) { return CKVM_RESULT(ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0)); }

static inline int ckvm_get_supported_cpuid(int fd, struct kvm_cpuid2 *c) { return CKVM_RESULT(ioctl(fd, KVM_GET_SUPPORTED_CPUID, c)); }
// kvm_cpuid2 ends in a flexible array, which Swift does not import.
static inline struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }

// VM ioctls.
static inline int ckvm_set_user_memory_region(int fd, const struct kvm_userspace_memory_region *r) {
    return CKVM_RESULT(ioctl(fd, KVM_SET_USER_MEMORY_REGION, r));
}
// KVM_GET_DIRTY_LOG: the slot's pages written since the last call, one bit
// per page into `bitmap` (which must hold the slot's pages, rounded up to 64).
static inline int ckvm_get_dirty_log(int fd, uint32_t slot, uint64_t *bitmap) {
    struct kvm_dirty_log log = { .slot = slot, .dirty_bitmap = bitmap };
    return CKVM_RESULT(ioctl(fd, KVM_GET_DIRTY_LOG, &log));
}
static inline int ckvm_create_vcpu(int fd, unsigned long id) { return CKVM_RESULT(ioctl(fd, KVM_CREATE_VCPU, id)); }
static inline int ckvm_set_tss_addr(int fd, unsigned long addr) { return CKVM_RESULT(ioctl(fd, KVM_SET_TSS_ADDR, addr)); }
static inline int ckvm_set_identity_map_addr(int fd, const uint64_t *addr) {
    return CKVM_RESULT(ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, addr));
}

static inline int ckvm_create_irqchip(int fd) { return CKVM_RESULT(ioctl(fd, KVM_CREATE_IRQCHIP, 0)); }
static inline int ckvm_create_pit2(int fd, const struct kvm_pit_config *c) { return CKVM_RESULT(ioctl(fd, KVM_CREATE_PIT2, c)); }
// KVM_GET_STATS_FD works on VM and vCPU fds alike (Linux 5.14+).
static inline int ckvm_get_stats_fd(int fd) { return CKVM_RESULT(ioctl(fd, KVM_GET_STATS_FD, 0)); }
static inline int ckvm_irq_line(int fd, uint32_t irq, uint32_t level) {
    struct kvm_irq_level l = { .irq = irq, .level = level };
    return CKVM_RESULT(ioctl(fd, KVM_IRQ_LINE, &l));
}

// KVM_IRQFD: a write to eventfd `efd` raises GSI `gsi` (flags: KVM_IRQFD_FLAG_DEASSIGN).
static inline int ckvm_irqfd(int fd, int efd, uint32_t gsi, uint32_t flags) {
    struct kvm_irqfd r = { .fd = (uint32_t)efd, .gsi = gsi, .flags = flags };
    return CKVM_RESULT(ioctl(fd, KVM_IRQFD, &r));
}
// KVM_IOEVENTFD: a guest write of `len` bytes at `addr` (MMIO, or a port
// with KVM_IOEVENTFD_FLAG_PIO) signals eventfd `efd` without leaving KVM.
static inline int ckvm_ioeventfd(int fd, int efd, uint64_t addr, uint32_t len, uint32_t flags, uint64_t datamatch) {
    struct kvm_ioeventfd r = { .datamatch = datamatch, .addr = addr, .len = len, .fd = efd, .flags = flags };
    return CKVM_RESULT(ioctl(fd, KVM_IOEVENTFD, &r));
}
// One GSI route, flattened for Swift: an irqchip pin (a = chip, b = pin) or
// an MSI message (a = address_lo, b = address_hi, c = data).
struct ckvm_route { uint32_t gsi, type, a, b, c; };
// KVM_SET_GSI_ROUTING replaces the VM's whole routing table; kvm_irq_routing
// ends in a flexible array, so it is assembled here.
int ckvm_set_gsi_routing(int fd, const struct ckvm_route *routes, uint32_t count);
static inline int ckvm_signal_msi(int fd, uint32_t address_lo, uint32_t address_hi, uint32_t data) {
    struct kvm_msi m = { .address_lo = address_lo, .address_hi = address_hi, .data = data };
    return CKVM_RESULT(ioctl(fd, KVM_SIGNAL_MSI, &m));
}

static inline uint32_t ckvm_ioeventfd_deassign_flag(void) { return KVM_IOEVENTFD_FLAG_DEASSIGN; }
// vCPU ioctls.
static inline int ckvm_run(int fd) { return CKVM_RESULT(ioctl(fd, KVM_RUN, 0)); }
// KVM_GET_TSC_KHZ: the vCPU's TSC rate in kHz (the host's, without TSC scaling).
static inline int ckvm_get_tsc_khz(int fd) { return CKVM_RESULT(ioctl(fd, KVM_GET_TSC_KHZ, 0)); }
static inline int ckvm_get_regs(int fd, struct kvm_regs *r) { return CKVM_RESULT(ioctl(fd, KVM_GET_REGS, r)); }
static inline int ckvm_set_regs(int fd, const struct kvm_regs *r) { return CKVM_RESULT(ioctl(fd, KVM_SET_REGS, r)); }
static inline int ckvm_get_sregs(int fd, struct kvm_sregs *r) { return CKVM_RESULT(ioctl(fd, KVM_GET_SREGS, r)); }
static inline int ckvm_set_sregs(int fd, const struct kvm_sregs *r) { return CKVM_RESULT(ioctl(fd, KVM_SET_SREGS, r)); }

static inline int ckvm_set_cpuid2(int fd, const struct kvm_cpuid2 *c) { return CKVM_RESULT(ioctl(fd, KVM_SET_CPUID2, c)); }
static inline int ckvm_get_lapic(int fd, struct kvm_lapic_state *s) { return CKVM_RESULT(ioctl(fd, KVM_GET_LAPIC, s)); }
static inline int ckvm_set_lapic(int fd, const struct kvm_lapic_state *s) { return CKVM_RESULT(ioctl(fd, KVM_SET_LAPIC, s)); }
static inline int ckvm_get_mp_state(int fd, uint32_t *state) {
    struct kvm_mp_state s = {0};
    int r = CKVM_RESULT(ioctl(fd, KVM_GET_MP_STATE, &s));
    *state = s.mp_state;
    return r;
}
static inline int ckvm_get_vcpu_events(int fd, struct kvm_vcpu_events *e) { return CKVM_RESULT(ioctl(fd, KVM_GET_VCPU_EVENTS, e)); }
static inline int ckvm_set_fpu(int fd, const struct kvm_fpu *f) { return CKVM_RESULT(ioctl(fd, KVM_SET_FPU, f)); }
static inline int ckvm_set_msrs(int fd, const struct kvm_msrs *m) { return CKVM_RESULT(ioctl(fd, KVM_SET_MSRS, m)); }
static inline int ckvm_translate(int fd, struct kvm_translation *t) { return CKVM_RESULT(ioctl(fd, KVM_TRANSLATE, t)); }
static inline int ckvm_kvmclock_ctrl(int fd) { return CKVM_RESULT(ioctl(fd, KVM_KVMCLOCK_CTRL, 0)); }

// The state a snapshot saves and a restore sets (vCPU ioctls).
static inline int ckvm_get_fpu(int fd, struct kvm_fpu *f) { return CKVM_RESULT(ioctl(fd, KVM_GET_FPU, f)); }
// KVM_GET_XSAVE2 (any size KVM_CAP_XSAVE2 names) or KVM_GET_XSAVE (4 KiB): `buf` holds a struct kvm_xsave.
static inline int ckvm_get_xsave(int fd, void *buf, int two) { return CKVM_RESULT(ioctl(fd, two ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, buf)); }
static inline int ckvm_set_xsave(int fd, const void *buf) { return CKVM_RESULT(ioctl(fd, KVM_SET_XSAVE, buf)); }
static inline int ckvm_get_xcrs(int fd, struct kvm_xcrs *x) { return CKVM_RESULT(ioctl(fd, KVM_GET_XCRS, x)); }
static inline int ckvm_set_xcrs(int fd, const struct kvm_xcrs *x) { return CKVM_RESULT(ioctl(fd, KVM_SET_XCRS, x)); }
static inline int ckvm_set_mp_state(int fd, uint32_t state) {
    struct kvm_mp_state s = { .mp_state = state };
    return CKVM_RESULT(ioctl(fd, KVM_SET_MP_STATE, &s));
}
static inline int ckvm_set_vcpu_events(int fd, const struct kvm_vcpu_events *e) { return CKVM_RESULT(ioctl(fd, KVM_SET_VCPU_EVENTS, e)); }
static inline int ckvm_get_debugregs(int fd, struct kvm_debugregs *d) { return CKVM_RESULT(ioctl(fd, KVM_GET_DEBUGREGS, d)); }
static inline int ckvm_set_debugregs(int fd, const struct kvm_debugregs *d) { return CKVM_RESULT(ioctl(fd, KVM_SET_DEBUGREGS, d)); }
// The MSRs KVM saves and restores (system fd): up to `capacity` indices;
// the count, or -E2BIG with *needed set when there are more.
int ckvm_get_msr_index_list(int fd, uint32_t *indices, uint32_t capacity, uint32_t *needed);
// KVM_GET_MSRS / KVM_SET_MSRS over flat arrays: how many, from the first,
// KVM read or wrote (it stops at the first it refuses), or -errno.
int ckvm_get_msrs_flat(int fd, const uint32_t *indices, uint64_t *values, uint32_t count);
int ckvm_set_msrs_flat(int fd, const uint32_t *indices, const uint64_t *values, uint32_t count);

// The VM's own state: the in-kernel irqchip (chip 0/1 the PICs, 2 the I/O APIC), kvm-clock, the PIT.
static inline int ckvm_get_irqchip(int fd, struct kvm_irqchip *c) { return CKVM_RESULT(ioctl(fd, KVM_GET_IRQCHIP, c)); }
static inline int ckvm_set_irqchip(int fd, const struct kvm_irqchip *c) { return CKVM_RESULT(ioctl(fd, KVM_SET_IRQCHIP, c)); }
static inline int ckvm_get_clock(int fd, struct kvm_clock_data *c) { return CKVM_RESULT(ioctl(fd, KVM_GET_CLOCK, c)); }
static inline int ckvm_set_clock(int fd, const struct kvm_clock_data *c) { return CKVM_RESULT(ioctl(fd, KVM_SET_CLOCK, c)); }
static inline int ckvm_get_pit2(int fd, struct kvm_pit_state2 *s) { return CKVM_RESULT(ioctl(fd, KVM_GET_PIT2, s)); }
static inline int ckvm_set_pit2(int fd, const struct kvm_pit_state2 *s) { return CKVM_RESULT(ioctl(fd, KVM_SET_PIT2, s)); }

// The kvm_run exit payload is an anonymous union; these accessors give Swift
// a named view of the members svmm reads.
static inline struct kvm_run_io_view { uint8_t direction, size; uint16_t port; uint32_t count; uint64_t data_offset; }
ckvm_run_io(const struct kvm_run *run) {
    struct kvm_run_io_view v = { run->io.direction, run->io.size, run->io.port, run->io.count, run->io.data_offset };
    return v;
}
static inline uint64_t ckvm_run_mmio_phys_addr(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }
static inline uint32_t ckvm_run_mmio_len(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint32_t ckvm_run_internal_ndata(const struct kvm_run *run) { return run->internal.ndata; }
static inline uint64_t ckvm_run_internal_data(const struct kvm_run *run, uint32_t i) {
    return i < 16 ? run->internal.data[i] : 0;
}
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run) { return run->fail_entry.hardware_entry_failure_reason; }
static inline uint32_t ckvm_run_system_event_type(const struct kvm_run *run) { return run->system_event.type; }

// immediate_exit is written by another thread to stop a vCPU; volatile so
// the store is not elided or reordered by the compiler.
static inline void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t v) {
    *(volatile uint8_t *)&run->immediate_exit = v;
}

// A no-op handler for the signal that kicks a vCPU thread out of KVM_RUN.
// Installed without SA_RESTART so the ioctl returns EINTR.
static void ckvm_kick_handler(int sig) { (void)sig; }
static inline int ckvm_install_kick_handler(int sig) {
    struct sigaction sa = {0};
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, 0) < 0 ? -errno : 0;
}
// Threads inherit their creator's signal mask, and Dispatch's worker threads
// block most signals: a vCPU thread unblocks its kick signal itself.
static inline int ckvm_unblock_signal(int sig) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    return -pthread_sigmask(SIG_UNBLOCK, &set, 0);
}

#endif
