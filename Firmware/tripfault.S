# tripfault: a triple fault with a chosen GS base. Sets the GS base (MSR
# 0xC0000101) to rdi, loads an empty IDT and executes ud2: #UD finds no
# gate, nor does the #GP that follows, nor the #DF: the CPU shuts down.
# For kvm-sandbox's tests: L1's record of an L2 shutdown (the GS base among
# it) is checked against L1's own per-CPU areas.
#include "common.h"
_start:
        mov     %rdi, %rax
        mov     %rdi, %rdx
        shr     $32, %rdx
        mov     $0xC0000101, %ecx
        wrmsr
        lidt    idtr(%rip)
        ud2

        .balign 8
idtr:   .word   0
        .quad   0
