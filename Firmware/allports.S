# allports: the telemetry exactness test's guest. Reads every port 0x0000-
# 0xFFFF once and writes every port but the exit port once (a byte each),
# then reads 100 distinct MMIO addresses (0xC0000000 + 8 i, more than the
# 64 the per-address table holds) and exits 0 on port 0xF4: exactly one exit
# for each of the 131,072 port/direction pairs, 100 MMIO exits.
#include "common.h"
_start:
        xor     %edx, %edx              # port 0
1:      in      %dx, %al
        cmp     $EXIT_PORT, %dx
        je      2f
        out     %al, %dx
2:      inc     %dx                     # 0xFFFF + 1 wraps to 0: all done
        jnz     1b
        mov     $0xC0000000, %rbx
        mov     $100, %rdi
        repeat_rdi
        movl    (%rbx), %eax
        add     $8, %rbx
        end_repeat_rdi
