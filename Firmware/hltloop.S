# hltloop: cost of HLT woken by a timer. Enables the local APIC (in-kernel:
# run with `svmm firmware hltloop --irqchip`), programs its timer periodic on
# vector 0x40 and halts rdi times; each tick's handler acknowledges the
# interrupt (EOI) and returns past the HLT. Then masks the timer and exits 0.
# A KVM that cannot deliver interrupts (kvm_pvm) never comes back from HLT.
#include "common.h"
        .set APIC, 0xFEE00000
        .set VECTOR, 0x40
_start:
        lidt    idtr(%rip)
        mov     $APIC, %rbx
        movl    $0x1FF, 0xF0(%rbx)              # spurious vector 0xFF, APIC enabled
        movl    $0xB, 0x3E0(%rbx)               # timer divide by 1
        movl    $(0x20000 | VECTOR), 0x320(%rbx) # LVT timer: periodic, vector 0x40
        movl    $100000, 0x380(%rbx)            # initial count (bus clock ticks)
        test    %rdi, %rdi
        jz      done
        sti
1:      hlt
        dec     %rdi
        jnz     1b
done:   cli
        movl    $0x10000, 0x320(%rbx)           # mask the timer
        exit_ok

timer_handler:
        movl    $0, 0xB0(%rbx)                  # EOI
        iretq

        bad_vector_handler

        .balign 16
idt:
        .rept VECTOR
        gate other_handler              # exceptions and unused vectors
        .endr
        gate timer_handler              # 0x40: the local APIC timer
        .rept 0xFF - VECTOR
        gate timer_handler              # spurious and others: just return
        .endr
idt_end:

        idt_pointer
