# inloop: per-exit cost of a port read. Reads the unhandled port 0x80 rdi
# times (one exit to userspace each), then exits with status 0 on port 0xF4.
        .set EXIT_PORT, 0xF4
        .code64
        .text
        .globl _start
_start:
        test    %rdi, %rdi
        jz      done
1:      in      $0x80, %al
        dec     %rdi
        jnz     1b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
