// kvmhold: keeps KVM's VM-lifecycle static keys from flipping in the nested
// sandbox. Started by the sandbox's init before the command, it never returns.
//
// KVM flips static keys (kvm_has_noapic_vcpu, and the local APIC's
// apic_sw_disabled / apic_hw_disabled) when the first vCPU of a kind is
// created and when the last one goes away. Each flip live-patches L1's kernel
// text through int3 breakpoints (text_poke_bp), and QEMU's multi-threaded TCG
// can leave a vCPU re-executing a stale int3 forever: L1 wedges (seen with
// one vCPU at asm_exc_int3 and another in a spinlock). Holding one vCPU of
// each kind for the sandbox's life keeps every count above zero, so svmm's
// VMs coming and going never patch the kernel.
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) { perror("kvmhold: /dev/kvm"); return 1; }
    // A VM without an in-kernel irqchip: its vCPU holds kvm_has_noapic_vcpu.
    int plain = ioctl(kvm, KVM_CREATE_VM, 0);
    if (plain < 0 || ioctl(plain, KVM_CREATE_VCPU, 0) < 0) { perror("kvmhold: plain VM"); return 1; }
    // A VM with one: vCPU 0's local APIC stays software-disabled (holds
    // apic_sw_disabled); vCPU 1's is hardware-disabled through IA32_APIC_BASE
    // (holds apic_hw_disabled).
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0 || ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) { perror("kvmhold: irqchip VM"); return 1; }
    if (ioctl(vm, KVM_CREATE_VCPU, 0) < 0) { perror("kvmhold: vCPU 0"); return 1; }
    int cpu1 = ioctl(vm, KVM_CREATE_VCPU, 1);
    if (cpu1 < 0) { perror("kvmhold: vCPU 1"); return 1; }
    struct { struct kvm_msrs h; struct kvm_msr_entry e; } msrs = {.h.nmsrs = 1, .e = {.index = 0x1B, .data = 0xFEE00000}};
    if (ioctl(cpu1, KVM_SET_MSRS, &msrs) != 1) perror("kvmhold: IA32_APIC_BASE");
    printf("kvmhold: holding KVM's static keys\n");
    fflush(stdout);
    for (;;) pause();
}
