# outloop: per-exit cost. Writes to the unhandled port 0x80 rdi times (each
# write is one exit to userspace), then exits with status 0 on port 0xF4.
        .set EXIT_PORT, 0xF4
        .code64
        .text
        .globl _start
_start:
        test    %rdi, %rdi
        jz      done
1:      out     %al, $0x80
        dec     %rdi
        jnz     1b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
