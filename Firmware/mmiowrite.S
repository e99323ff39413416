# mmiowrite: per-exit cost of an MMIO write. Writes a dword to 0xC0000000
# (no RAM there: each write is one KVM_EXIT_MMIO) rdi times, then exits 0.
#include "common.h"
_start:
        mov     $0xC0000000, %rbx
        repeat_rdi
        movl    %edi, (%rbx)
        end_repeat_rdi
