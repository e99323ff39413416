/* Shared by the Firmware/ programs (included through the C preprocessor:
 * gcc assembles .S files after cpp). Flat binaries loaded at 0x100000 and
 * entered in 64-bit mode by svmm's FirmwareRunner with rdi = --arg. */
        .set BASE, 0x100000
        .set EXIT_PORT, 0xF4
        .set REPORT_PORT, 0xF5

        .code64
        .text
        .globl _start

/* exit_ok: status 0 on the exit port, then halt. */
        .macro exit_ok
        xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
        .endm

/* repeat_rdi ... end_repeat_rdi: the instructions between run rdi times
 * (none when rdi is 0), then the program exits with status 0. The body may
 * use any register but rdi and must not define the local labels 8 and 9. */
        .macro repeat_rdi
        test    %rdi, %rdi
        jz      9f
8:
        .endm
        .macro end_repeat_rdi
        dec     %rdi
        jnz     8b
9:      exit_ok
        .endm

/* A 64-bit interrupt gate (Intel SDM Vol. 3A §6.14.1): selector 0x10,
 * present, DPL0, type 0xE, handler offset split across three fields. */
        .macro gate handler
        .word   (BASE + \handler - _start) & 0xFFFF
        .word   0x10
        .byte   0, 0x8E
        .word   ((BASE + \handler - _start) >> 16) & 0xFFFF
        .long   0, 0
        .endm

/* idtr from idt to idt_end, which the program defines. */
        .macro idt_pointer
idtr:
        .word   idt_end - idt - 1
        .quad   BASE + idt - _start
        .endm

/* Ends the program with status 0xBAD: for vectors it does not expect. */
        .macro bad_vector_handler
other_handler:
        mov     $0xBAD, %eax
        out     %eax, $EXIT_PORT
        hlt
        .endm
