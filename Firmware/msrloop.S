# msrloop: cost of RDMSR + WRMSR of IA32_SYSENTER_CS (0x174), which KVM
# handles in the kernel: rdi iterations of one read and one write of the
# value read, then exits 0. Two exits to the hypervisor per iteration.
#include "common.h"
_start:
        repeat_rdi
        mov     $0x174, %ecx
        rdmsr
        wrmsr
        end_repeat_rdi
