# mmioread: per-exit cost of an MMIO read. Reads a dword from 0xC0000000
# (no RAM there: each read is one KVM_EXIT_MMIO) rdi times, then exits 0.
#include "common.h"
_start:
        mov     $0xC0000000, %rbx
        repeat_rdi
        movl    (%rbx), %eax
        end_repeat_rdi
