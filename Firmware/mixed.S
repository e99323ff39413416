# mixed: the telemetry test's guest. rdi = N | M << 32: writes N dwords to
# port 0x510, then reads M dwords from MMIO 0xC0001000, then exits 0 on port
# 0xF4. Exactly N + 1 port exits and M MMIO exits reach svmm.
        .set EXIT_PORT, 0xF4
        .set PORT, 0x510
        .set MMIO_ADDRESS, 0xC0001000
        .code64
        .text
        .globl _start
_start:
        mov     %rdi, %rsi
        shr     $32, %rsi               # M
        mov     %edi, %edi              # N
        mov     $PORT, %dx
        mov     $MMIO_ADDRESS, %rbx
        test    %rdi, %rdi
        jz      2f
1:      out     %eax, %dx
        dec     %rdi
        jnz     1b
2:      test    %rsi, %rsi
        jz      done
3:      movl    (%rbx), %eax
        dec     %rsi
        jnz     3b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
