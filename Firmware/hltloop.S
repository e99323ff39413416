# hltloop: cost of HLT woken by a timer. Enables the local APIC (in-kernel:
# run with `svmm firmware hltloop --irqchip`), programs its timer periodic on
# vector 0x40 and halts rdi times; each tick's handler acknowledges the
# interrupt (EOI) and returns past the HLT. Then masks the timer and exits 0.
# A KVM that cannot deliver interrupts (kvm_pvm) never comes back from HLT.
        .set BASE, 0x100000
        .set EXIT_PORT, 0xF4
        .set APIC, 0xFEE00000
        .set VECTOR, 0x40
        .code64
        .text
        .globl _start
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
        xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt

timer_handler:
        movl    $0, 0xB0(%rbx)                  # EOI
        iretq

other_handler:
        mov     $0xBAD, %eax
        out     %eax, $EXIT_PORT
        hlt

        .macro gate handler
        .word   (BASE + \handler - _start) & 0xFFFF
        .word   0x10
        .byte   0, 0x8E
        .word   ((BASE + \handler - _start) >> 16) & 0xFFFF
        .long   0, 0
        .endm

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

idtr:
        .word   idt_end - idt - 1
        .quad   BASE + idt - _start
