/* Runs one of svmm's flat 64-bit micro-benchmark programs (Firmware/NAME.bin:
 * its Multiboot module, or linked into it as mb-NAME.elf) as `svmm firmware`
 * enters it, under any Multiboot loader (QEMU's -kernel, svmm boot): copies
 * the program to 0x100000,
 * identity-maps the first 4 GiB with 2 MiB pages (tables at 0x9000-0xEFFF),
 * loads a GDT with 64-bit code at selector 0x10 and data at 0x18, and jumps
 * there in 64-bit mode with rdi = the number after "arg=" on the command
 * line and rsp = 0x80000, the 8259s masked. The program ends with its
 * write to port 0xF4. */
#include "lib.h"

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr; };
struct mb_module { uint32_t start, end, string, reserved; };

uint64_t gdt64[4] __attribute__((aligned(8))) = {
	0, 0x00cf9a000000ffffull, 0x00af9a000000ffffull, 0x00cf92000000ffffull,
};
struct { uint16_t limit; uint32_t base; } __attribute__((packed)) gdt64_ptr = { sizeof(gdt64) - 1, (uint32_t)gdt64 };
uint64_t program_arg;
extern const uint8_t program_start[], program_end[];

__asm__(
	".globl enter_long_mode\n"
	"enter_long_mode:\n"
	"  mov $0x20, %eax\n"            /* CR4.PAE */
	"  mov %eax, %cr4\n"
	"  mov $0x9000, %eax\n"
	"  mov %eax, %cr3\n"
	"  mov $0xc0000080, %ecx\n"      /* EFER.LME */
	"  rdmsr\n"
	"  or $0x100, %eax\n"
	"  wrmsr\n"
	"  lgdt gdt64_ptr\n"
	"  mov program_arg, %edi\n"
	"  mov program_arg+4, %esi\n"
	"  mov %cr0, %eax\n"
	"  or $0x80000001, %eax\n"       /* PG | PE */
	"  mov %eax, %cr0\n"
	"  ljmp $0x10, $long_mode\n"
	".code64\n"
	"long_mode:\n"
	"  mov $0x18, %eax\n"
	"  mov %eax, %ds\n"
	"  mov %eax, %es\n"
	"  mov %eax, %ss\n"
	"  mov %edi, %edi\n"               /* rdi = esi:edi, the upper halves made explicit */
	"  shl $32, %rsi\n"
	"  or %rsi, %rdi\n"
	"  mov $0x80000, %esp\n"
	"  mov $0x100000, %eax\n"
	"  jmp *%rax\n"
	".code32\n");
void enter_long_mode(void) __attribute__((noreturn));

static uint64_t argument(const char *s) {
	for (; *s; s++) {
		if (s[0] == 'a' && s[1] == 'r' && s[2] == 'g' && s[3] == '=') {
			uint64_t v = 0;
			for (s += 4; *s >= '0' && *s <= '9'; s++) v = v * 10 + (uint64_t)(*s - '0');
			return v;
		}
	}
	return 0;
}

void main(uint32_t magic, struct mb_info *mb) {
	const uint8_t *from = program_start;
	uint32_t size = (uint32_t)(program_end - program_start);
	if (magic == 0x2badb002 && (mb->flags & 8) && mb->mods_count == 1) {
		struct mb_module *m = (struct mb_module *)mb->mods_addr;
		from = (const uint8_t *)m->start;
		size = m->end - m->start;
	}
	if (magic != 0x2badb002 || size == 0) {
		puts_("longmode: no program (a Multiboot module, or one linked in)\n");
		debug_exit(0x7f);
	}
	program_arg = (mb->flags & 4) ? argument((const char *)mb->cmdline) : 0;
	uint8_t *to = (uint8_t *)0x100000;
	for (uint32_t i = 0; i < size; i++) to[i] = from[i];
	uint64_t *pml4 = (uint64_t *)0x9000, *pdpt = (uint64_t *)0xa000, *pd = (uint64_t *)0xb000;
	for (int i = 0; i < 512; i++) { pml4[i] = 0; pdpt[i] = 0; }
	pml4[0] = 0xa000 | 3;
	for (int i = 0; i < 4; i++) pdpt[i] = (0xb000 + 0x1000 * (uint32_t)i) | 3;
	for (uint32_t i = 0; i < 2048; i++) pd[i] = ((uint64_t)i << 21) | 0x83;   /* present, writable, 2 MiB */
	outb(0x21, 0xff);   /* the 8259s masked: `svmm firmware` has none, a BIOS leaves them open */
	outb(0xa1, 0xff);
	enter_long_mode();
}
