# probe: the functional test of "does this KVM run a real guest?".
#
# Entered in 64-bit mode at 0x100000 (see FirmwareRunner). It installs an IDT,
# raises #BP (int3, a trap) and #UD (ud2, a fault whose handler must step over
# the instruction), and reports each vector it handled on port 0xF5. If both
# arrive and return through iretq, it exits with status 0 on port 0xF4.
# A KVM that cannot deliver exceptions in 64-bit mode never reaches the exit.
#include "common.h"
_start:
        lidt    idtr(%rip)
        int3                            # vector 3: handler reports 3, returns after int3
        ud2                             # vector 6: handler reports 6, skips 2 bytes
        exit_ok

breakpoint_handler:
        mov     $3, %eax
        out     %eax, $REPORT_PORT
        iretq

invalid_opcode_handler:
        mov     $6, %eax
        out     %eax, $REPORT_PORT
        addq    $2, (%rsp)              # return past the 2-byte ud2
        iretq

# Anything else (a double fault, a #GP from a bad frame) ends the probe with
# status 0xBAD and the vector unknown.
        bad_vector_handler

        .balign 16
idt:
        gate other_handler              # 0 #DE
        gate other_handler              # 1 #DB
        gate other_handler              # 2 NMI
        gate breakpoint_handler         # 3 #BP
        gate other_handler              # 4 #OF
        gate other_handler              # 5 #BR
        gate invalid_opcode_handler     # 6 #UD
        .rept 25
        gate other_handler              # 7–31
        .endr
idt_end:

        idt_pointer
