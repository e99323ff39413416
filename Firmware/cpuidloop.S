# cpuidloop: cost of CPUID, which always exits to the hypervisor and is
# answered inside KVM (no exit to userspace). rdi iterations, then exits 0.
#include "common.h"
_start:
        repeat_rdi
        xor     %eax, %eax
        xor     %ecx, %ecx
        cpuid
        end_repeat_rdi
