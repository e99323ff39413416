# mixed: the telemetry test's guest. rdi = N | M << 32: writes N dwords to
# port 0x510, then reads M dwords from MMIO 0xC0001000, then exits 0 on port
# 0xF4. Exactly N + 1 port exits and M MMIO exits reach svmm.
#include "common.h"
_start:
        mov     %rdi, %rsi
        shr     $32, %rsi               # M
        mov     %edi, %edi              # N
        mov     $0x510, %dx
        mov     $0xC0001000, %rbx
        test    %rdi, %rdi
        jz      2f
1:      out     %eax, %dx
        dec     %rdi
        jnz     1b
2:      mov     %rsi, %rdi              # the reads: M times
        repeat_rdi
        movl    (%rbx), %eax
        end_repeat_rdi
