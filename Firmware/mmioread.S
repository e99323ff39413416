# mmioread: per-exit cost of an MMIO read. Reads a dword from 0xC0000000
# (no RAM there: each read is one KVM_EXIT_MMIO) rdi times, then exits 0.
        .set EXIT_PORT, 0xF4
        .set MMIO_ADDRESS, 0xC0000000
        .code64
        .text
        .globl _start
_start:
        mov     $MMIO_ADDRESS, %rbx
        test    %rdi, %rdi
        jz      done
1:      movl    (%rbx), %eax
        dec     %rdi
        jnz     1b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
