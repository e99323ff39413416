# cpuidloop: cost of CPUID, which always exits to the hypervisor and is
# answered inside KVM (no exit to userspace). rdi iterations, then exits 0.
        .set EXIT_PORT, 0xF4
        .code64
        .text
        .globl _start
_start:
        test    %rdi, %rdi
        jz      done
1:      xor     %eax, %eax
        xor     %ecx, %ecx
        cpuid
        dec     %rdi
        jnz     1b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
