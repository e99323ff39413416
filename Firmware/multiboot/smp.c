/* kvm-unit-tests' SMP start and interrupt path: the boot CPU learns the CPU
 * count from fw_cfg, copies a real-mode trampoline to physical 0 and sends
 * INIT and a SIPI (vector 0) to all but itself through the local APIC; each
 * application processor comes up in real mode at 0000:0000, enters 32-bit
 * protected mode and reports its APIC id. Then pc-testdev raises ISA IRQ
 * line 10, routed by the I/O APIC (level, active high) to vector 0x40 on
 * the boot CPU: taken once while unmasked, never while masked (skipped with
 * "no-irq" on the command line). PASS:/FAIL:
 * lines and a SUMMARY; ends through isa-debug-exit (status 1: all passed). */
#include "lib.h"

#define LAPIC 0xfee00000u
#define IOAPIC 0xfec00000u
#define IRQ_LINE 10
#define VECTOR 0x40

static unsigned passes, failures;
static void report(const char *what, int ok) {
	puts_(ok ? "PASS: " : "FAIL: "); puts_(what); puts_("\n");
	if (ok) passes++; else failures++;
}

static int x2apic;   /* the boot CPU's local APIC in x2APIC mode (MSRs 0x800 + reg / 16) */
static inline uint64_t rdmsr(uint32_t msr) { uint32_t lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return lo | (uint64_t)hi << 32; }
static inline void wrmsr(uint32_t msr, uint64_t v) { __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32))); }
static inline uint32_t lapic_read(uint32_t reg) {
	if (x2apic) { uint32_t v = (uint32_t)rdmsr(0x800 + reg / 16); return reg == 0x20 ? v << 24 : v; }
	return *(volatile uint32_t *)(LAPIC + reg);
}
static inline void lapic_write(uint32_t reg, uint32_t v) {
	if (x2apic) wrmsr(0x800 + reg / 16, v);
	else *(volatile uint32_t *)(LAPIC + reg) = v;
}
/* The APs start in xAPIC mode: their id from the MMIO page. */
static inline uint32_t xapic_id(void) { return *(volatile uint32_t *)(LAPIC + 0x20) >> 24; }
static void ioapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)IOAPIC = reg; *(volatile uint32_t *)(IOAPIC + 0x10) = v; }

/* Flat 32-bit code (0x08) and data (0x10), for the boot CPU and the APs. */
uint64_t gdt[3] __attribute__((aligned(8))) = { 0, 0x00cf9a000000ffffull, 0x00cf92000000ffffull };
struct { uint16_t limit; uint32_t base; } __attribute__((packed)) gdt_ptr = { sizeof(gdt) - 1, (uint32_t)gdt };
uint64_t idt[256] __attribute__((aligned(8)));
struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idt_ptr = { sizeof(idt) - 1, (uint32_t)idt };

volatile uint32_t online, slots, ap_ids[16], interrupts, exceptions;
uint8_t ap_stacks[16][1024] __attribute__((aligned(16)));

/* The trampoline, assembled for address 0 and copied there; then the APs'
 * 32-bit entry and the interrupt stubs. */
__asm__(
	".code16\n"
	".globl trampoline, trampoline_end\n"
	"trampoline:\n"
	"  cli\n"
	"  xor %ax, %ax\n"
	"  mov %ax, %ds\n"
	"  lgdtl (tramp_gdt_ptr - trampoline)\n"
	"  mov %cr0, %eax\n"
	"  or $1, %al\n"
	"  mov %eax, %cr0\n"
	"  ljmpl $0x08, $ap_entry32\n"
	"  .align 4\n"
	"tramp_gdt_ptr: .word 23\n"
	"  .long gdt\n"
	"trampoline_end:\n"
	".code32\n"
	"ap_entry32:\n"
	"  mov $0x10, %ax\n"
	"  mov %ax, %ds\n"
	"  mov %ax, %es\n"
	"  mov %ax, %ss\n"
	"  mov $1, %eax\n"
	"  lock xadd %eax, next_stack\n"
	"  shl $10, %eax\n"
	"  lea ap_stacks+1024(%eax), %esp\n"
	"  call ap_main\n"
	"1: cli\n"
	"  hlt\n"
	"  jmp 1b\n"
	".globl irq_stub, exception_stub\n"
	"irq_stub:\n"
	"  pusha\n"
	"  call irq_handler\n"
	"  popa\n"
	"  iret\n"
	"exception_stub:\n"
	"  lock incl exceptions\n"
	"2: cli\n"
	"  hlt\n"
	"  jmp 2b\n");
extern char trampoline[], trampoline_end[], irq_stub[], exception_stub[];
volatile uint32_t next_stack;

void ap_main(void) {
	/* The id is in its slot before the AP counts as online: the boot CPU
	 * reads ap_ids[0..online) as soon as online reaches N-1. */
	uint32_t n = __atomic_fetch_add(&slots, 1, __ATOMIC_SEQ_CST);
	if (n < 16) ap_ids[n] = xapic_id();
	__atomic_fetch_add(&online, 1, __ATOMIC_SEQ_CST);
}

void irq_handler(void) {
	interrupts++;
	outb(0x2000 + IRQ_LINE, 0);   /* lower the level before the EOI, or it fires again */
	lapic_write(0xb0, 0);
}

static void set_gate(int v, void *handler) {
	uint32_t h = (uint32_t)handler;
	idt[v] = (uint64_t)(h & 0xffff) | (uint64_t)0x08 << 16 | (uint64_t)0x8e00 << 32 | (uint64_t)(h >> 16) << 48;
}

static void delay(uint32_t n) { for (volatile uint32_t i = 0; i < n; i++) {} }

static uint32_t fw_cfg_cpus(void) {
	outw(0x510, 5);
	return inb(0x511) | (uint32_t)inb(0x511) << 8;
}

struct mb_info { uint32_t flags, mem_lower, mem_upper, boot_device, cmdline; };

static int has_word(const char *s, const char *w) {
	for (; *s; s++) {
		const char *a = s, *b = w;
		while (*b && *a == *b) { a++; b++; }
		if (!*b && (!*a || *a == ' ')) return 1;
	}
	return 0;
}

void main(uint32_t magic, struct mb_info *info) {
	report("Multiboot magic", magic == 0x2badb002);
	/* "no-irq": the SMP checks alone (a KVM that cannot run an interrupt handler). */
	int irq = !((info->flags & 4) && has_word((const char *)info->cmdline, "no-irq"));
	__asm__ volatile("lgdt %0; ljmp $0x08, $1f; 1: mov $0x10, %%ax; mov %%ax, %%ds; mov %%ax, %%es; mov %%ax, %%ss" : : "m"(gdt_ptr) : "eax", "memory");
	for (int v = 0; v < 32; v++) set_gate(v, exception_stub);
	set_gate(VECTOR, irq_stub);
	__asm__ volatile("lidt %0" : : "m"(idt_ptr));
	outb(0x21, 0xff); outb(0xa1, 0xff);                 /* the 8259s masked */
	/* x2APIC when CPUID offers it, as kvm-unit-tests does. */
	uint32_t a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if (c & (1u << 21)) {
		wrmsr(0x1b, rdmsr(0x1b) | 1u << 11 | 1u << 10);
		x2apic = 1;
	}
	lapic_write(0xf0, 0x1ff);                           /* APIC software enable, spurious vector 0xff */
	uint32_t cpus = fw_cfg_cpus();
	puts_("SMP fw_cfg cpus="); putdec(cpus); puts_(" bsp_apic_id="); putdec(lapic_read(0x20) >> 24);
	puts_(x2apic ? " x2apic\n" : " xapic\n");

	for (uint32_t i = 0; i < (uint32_t)(trampoline_end - trampoline); i++) ((volatile uint8_t *)0)[i] = (uint8_t)trampoline[i];
	/* INIT, then SIPI (vector 0) twice, to all excluding self (one 64-bit ICR write in x2APIC mode). */
	lapic_write(0x300, 0x000c4500);
	delay(1000000);
	for (int k = 0; k < 2; k++) { lapic_write(0x300, 0x000c4600); delay(100000); }
	for (uint32_t spin = 0; online < cpus - 1 && spin < 2000000000u; spin++) __asm__ volatile("pause");
	puts_("SMP online="); putdec(online + 1); puts_(" ap_ids=");
	uint32_t seen = 0;
	for (uint32_t i = 0; i < online && i < 16; i++) { putdec(ap_ids[i]); puts_(" "); seen |= 1u << ap_ids[i]; }
	puts_("\n");
	report("every CPU fw_cfg counts came up through INIT/SIPI", online + 1 == cpus);
	report("the application processors have APIC ids 1..N-1", seen == ((1u << cpus) - 2));

	if (!irq) goto done;
	/* The I/O APIC: line 10 level-triggered, active high, to vector 0x40 on APIC 0. */
	ioapic_write(0x10 + 2 * IRQ_LINE + 1, 0);
	ioapic_write(0x10 + 2 * IRQ_LINE, VECTOR | 1u << 15 | 1u << 16);   /* masked first */
	__asm__ volatile("sti");
	outb(0x2000 + IRQ_LINE, 1);
	delay(2000000);
	report("no interrupt while the I/O APIC entry is masked", interrupts == 0);
	ioapic_write(0x10 + 2 * IRQ_LINE, VECTOR | 1u << 15);                /* unmasked: the raised level delivers */
	for (uint32_t spin = 0; interrupts == 0 && spin < 200000000u; spin++) __asm__ volatile("pause");
	delay(2000000);
	report("pc-testdev IRQ line 10 through the I/O APIC: taken once", interrupts == 1);
	outb(0x2000 + IRQ_LINE, 1);
	for (uint32_t spin = 0; interrupts == 1 && spin < 200000000u; spin++) __asm__ volatile("pause");
	report("and again when raised again", interrupts == 2);
	__asm__ volatile("cli");
done:
	report("no exception", exceptions == 0);
	puts_("SUMMARY: "); putdec(passes + failures); puts_(" tests, "); putdec(failures); puts_(" unexpected failures\n");
	debug_exit(failures ? 1 : 0);
}
