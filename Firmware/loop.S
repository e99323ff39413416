# loop: guest instruction speed. Runs `dec/jnz` rdi times, then exits with
# status 0 on port 0xF4. Time per iteration = run time / rdi.
        .set EXIT_PORT, 0xF4
        .code64
        .text
        .globl _start
_start:
        test    %rdi, %rdi
        jz      done
1:      dec     %rdi
        jnz     1b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
