// rawrun: the floor for svmm's exit benchmarks. Runs one Firmware/ program
// with the least a VMM can do: the same long-mode entry state as svmm's
// FirmwareRunner (flat GDT, 4 GiB identity map, rdi = argument), then a bare
// KVM_RUN loop that answers reads with all-ones and stops at the exit port.
// No devices, no bookkeeping: what is left is KVM's own cost per exit.
//
//   rawrun PROGRAM.bin ARG [--irqchip]
//   prints: outcome=exited(status: 0) exits=N ns=T ns_per_iteration=T/ARG
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (4u << 20)
#define LOAD 0x100000u
#define GDT 0x500u
#define PML4 0x9000u
#define PDPT 0xA000u
#define PD 0xB000u
#define EXIT_PORT 0xF4

static void die(const char *what) { perror(what); exit(70); }

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static struct kvm_segment seg(uint16_t sel, uint64_t d) {
    struct kvm_segment s = {0};
    s.selector = sel;
    s.limit = 0xFFFFFFFF;
    s.type = (d >> 40) & 0xF;
    s.s = (d >> 44) & 1;
    s.dpl = (d >> 45) & 3;
    s.present = (d >> 47) & 1;
    s.avl = (d >> 52) & 1;
    s.l = (d >> 53) & 1;
    s.db = (d >> 54) & 1;
    s.g = (d >> 55) & 1;
    return s;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: rawrun PROGRAM.bin ARG [--irqchip]\n"); return 64; }
    int irqchip = argc > 3 && strcmp(argv[3], "--irqchip") == 0;
    uint64_t arg = strtoull(argv[2], 0, 0);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);
    if (irqchip && ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
    uint8_t *mem = mmap(0, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    size_t n = fread(mem + LOAD, 1, MEM_SIZE - LOAD, f);
    fclose(f);
    if (n == 0) { fprintf(stderr, "rawrun: %s is empty\n", argv[1]); return 65; }

    static const uint64_t gdt[4] = {0, 0x00CF9B000000FFFF, 0x00AF9B000000FFFF, 0x00CF93000000FFFF};
    memcpy(mem + GDT, gdt, sizeof gdt);
    uint64_t *pml4 = (uint64_t *)(mem + PML4), *pdpt = (uint64_t *)(mem + PDPT);
    pml4[0] = PDPT | 3;
    for (uint64_t d = 0; d < 4; d++) {
        uint64_t *pd = (uint64_t *)(mem + PD + d * 0x1000);
        pdpt[d] = (PD + d * 0x1000) | 3;
        for (uint64_t e = 0; e < 512; e++) pd[e] = ((d * 512 + e) << 21) | 0x83;
    }

    int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (cpu < 0) die("KVM_CREATE_VCPU");
    if (irqchip) {
        struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } cpuid = {.h.nent = 256};
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
        if (ioctl(cpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");
    }
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    struct kvm_sregs sregs;
    if (ioctl(cpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs = seg(0x10, gdt[2]);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg(0x18, gdt[3]);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = sizeof gdt - 1;
    struct kvm_segment tr = {.type = 11, .present = 1, .limit = 0x67};
    sregs.tr = tr;
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20;
    sregs.cr0 = 0x80000033;
    sregs.efer = 0x500;
    if (ioctl(cpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = LOAD, .rsp = 0x80000, .rflags = 2, .rdi = arg};
    if (ioctl(cpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    uint64_t exits = 0, start = now_ns();
    const char *outcome = "shutdown";
    uint32_t status = 0;
    for (;;) {
        if (ioctl(cpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        exits++;
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_IN) { memset(data, 0xFF, run->io.size * run->io.count); continue; }
            if (run->io.port == EXIT_PORT) {
                memcpy(&status, data, run->io.size < 4 ? run->io.size : 4);
                outcome = "exited";
                break;
            }
            continue;
        }
        if (run->exit_reason == KVM_EXIT_MMIO) {
            if (!run->mmio.is_write) memset(run->mmio.data, 0xFF, run->mmio.len);
            continue;
        }
        if (run->exit_reason == KVM_EXIT_HLT) { outcome = "halted"; break; }
        if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR) { outcome = "internalError"; break; }
        break;
    }
    uint64_t ns = now_ns() - start;
    if (strcmp(outcome, "exited") == 0)
        printf("outcome=exited(status: %u) exits=%llu ns=%llu ns_per_iteration=%.2f\n", status,
               (unsigned long long)exits, (unsigned long long)ns, arg ? (double)ns / (double)arg : 0.0);
    else
        printf("outcome=%s exits=%llu ns=%llu\n", outcome, (unsigned long long)exits, (unsigned long long)ns);
    return strcmp(outcome, "exited") == 0 && status == 0 ? 0 : 4;
}
