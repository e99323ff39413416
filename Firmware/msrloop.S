# msrloop: cost of RDMSR + WRMSR of IA32_SYSENTER_CS (0x174), which KVM
# handles in the kernel: rdi iterations of one read and one write of the
# value read, then exits 0. Two exits to the hypervisor per iteration.
        .set EXIT_PORT, 0xF4
        .set MSR, 0x174
        .code64
        .text
        .globl _start
_start:
        test    %rdi, %rdi
        jz      done
1:      mov     $MSR, %ecx
        rdmsr
        wrmsr
        dec     %rdi
        jnz     1b
done:   xor     %eax, %eax
        out     %eax, $EXIT_PORT
        hlt
