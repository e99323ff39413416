/* The Multiboot header and entry shared by svmm's Multiboot test programs:
 * flags 0 (loaded by the ELF32 program headers, as kvm-unit-tests' are),
 * entered in 32-bit protected mode with EAX the loader's magic and EBX the
 * Multiboot information; calls main(magic, info) on a stack of its own. */
	.section .multiboot, "a"
	.align 4
	.long 0x1BADB002
	.long 0
	.long -0x1BADB002

	.text
	.globl _start
_start:
	mov $stack_top, %esp
	push %ebx
	push %eax
	call main
1:	hlt
	jmp 1b

	.bss
	.align 16
	.space 16384
stack_top:
