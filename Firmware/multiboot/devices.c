/* kvm-unit-tests' devices, checked as its tests use them: the ACPI tables
 * found by a scan of the BIOS area (RSDP -> RSDT -> FACP), the PM timer the
 * FADT names, the CMOS clock, pc-testdev's latch, flush-page and ioram, and
 * pci-testdev found on bus 0 with its BARs assigned. Prints PASS:/FAIL:
 * lines and a SUMMARY, then ends through isa-debug-exit: 0 (status 1) when
 * every check passed, 1 (status 3) otherwise. Needs no interrupt. */
#include "lib.h"

static unsigned passes, failures;
static void report(const char *what, int ok) {
	puts_(ok ? "PASS: " : "FAIL: "); puts_(what); puts_("\n");
	if (ok) passes++; else failures++;
}
static uint32_t sig(const char *s) { return (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24; }

static uint32_t pm_timer_port(void) {
	uint32_t addr;
	for (addr = 0xe0000; addr < 0x100000; addr += 16)
		if (*(uint32_t *)addr == sig("RSD ") && *(uint32_t *)(addr + 4) == sig("PTR ")) break;
	report("RSDP found by a scan of 0xE0000-0xFFFFF", addr < 0x100000);
	if (addr >= 0x100000) return 0;
	uint8_t sum = 0;
	for (int i = 0; i < 20; i++) sum += *(uint8_t *)(addr + i);
	report("RSDP checksum", sum == 0);
	uint32_t rsdt = *(uint32_t *)(addr + 16);
	report("RSDT at the RSDP's 32-bit address", rsdt && *(uint32_t *)rsdt == sig("RSDT"));
	if (!rsdt) return 0;
	uint32_t length = *(uint32_t *)(rsdt + 4);
	for (uint32_t e = rsdt + 36; e + 4 <= rsdt + length; e += 4) {
		uint32_t t = *(uint32_t *)e;
		if (*(uint32_t *)t == sig("FACP")) {
			uint32_t port = *(uint32_t *)(t + 76);
			puts_("DEV pm_tmr_blk="); puthex(port); puts_(" flags="); puthex(*(uint32_t *)(t + 112)); puts_("\n");
			report("FADT names a PM timer", port != 0 && *(uint8_t *)(t + 91) == 4);
			return port;
		}
	}
	report("FACP in the RSDT", 0);
	return 0;
}

static void pm_timer(uint32_t port) {
	if (!port) return;
	uint32_t last = inl((uint16_t)port), wraps = 0, backwards = 0, wide = 0, reads = 0;
	/* A 24-bit counter at 3.58 MHz wraps every ~4.7 s: read until it has. */
	while (!wraps && reads < 400000000u) {
		uint32_t now = inl((uint16_t)port);
		reads++;
		if (now > 0xffffff) wide++;
		if (now < last) {
			if (((now - last) & 0xffffff) > 0x800000) backwards++;
			else wraps++;
		}
		last = now;
	}
	report("PM timer stays within 24 bits", wide == 0);
	report("PM timer never goes backwards", backwards == 0);
	report("PM timer wraps at 24 bits", wraps == 1);
}

static uint8_t cmos(uint8_t index) { outb(0x70, index); return inb(0x71); }
static int bcd(uint8_t v, uint8_t max) { return (v & 15) < 10 && (v >> 4) < 10 && ((v >> 4) * 10 + (v & 15)) <= max; }

static void rtc(void) {
	uint8_t s = cmos(0), m = cmos(2), h = cmos(4), day = cmos(7), month = cmos(8);
	report("CMOS clock: BCD time and date", bcd(s, 59) && bcd(m, 59) && bcd(h, 23) && bcd(day, 31) && bcd(month, 12) && day && month);
}

static void pc_testdev(void) {
	outl(0xe0, 0x12345678);
	report("pc-testdev latch: 32-bit write, read back", inl(0xe0) == 0x12345678);
	report("pc-testdev latch: byte and word reads", inb(0xe1) == 0x56 && inb(0xe3) == 0x12 && inw16(0xe2) == 0x1234);
	outb(0xea, 0xab);
	report("pc-testdev latch: byte window at 0xe8", inl(0xe0) == 0x12ab5678 && inl(0xe8) == 0x12ab5678 && inb(0xe9) == 0x56);
	outw16(0xe0, 0xbeef);
	report("pc-testdev latch: word write", inl(0xe0) == 0x12abbeef);
	volatile uint32_t *page = (uint32_t *)0x800000;
	for (int i = 0; i < 1024; i++) page[i] = 0x9e3779b9u * (uint32_t)i;
	outl(0xe4, 0x800000);
	int ok = 1;
	for (int i = 0; i < 1024; i++) ok &= page[i] == 0x9e3779b9u * (uint32_t)i;
	page[7] = 7;
	report("pc-testdev flush-page: the page keeps its bytes and stays writable", ok && page[7] == 7);
	volatile uint8_t *ioram = (uint8_t *)0xff000000;
	for (int i = 0; i < 65536; i += 4099) ioram[i] = (uint8_t)(i * 7);
	ok = 1;
	for (int i = 0; i < 65536; i += 4099) ok &= ioram[i] == (uint8_t)(i * 7);
	*(volatile uint32_t *)(ioram + 100) = 0xcafef00d;
	report("pc-testdev ioram at 0xff000000", ok && *(volatile uint32_t *)(ioram + 100) == 0xcafef00d && ioram[101] == 0xf0);
}

static uint32_t pci_read(int dev, int off) { outl(0xcf8, 0x80000000u | (uint32_t)dev << 11 | (uint32_t)off); return inl(0xcfc); }
static void pci_write(int dev, int off, uint32_t v) { outl(0xcf8, 0x80000000u | (uint32_t)dev << 11 | (uint32_t)off); outl(0xcfc, v); }

/* kvm-unit-tests' protocol: select test i, read its header, write its data
 * byte 16 times at its offset, read the count (16, or 0 where an ioeventfd
 * took the writes); a test number past the last reads an empty name. */
static uint8_t rd8(int io, uint32_t base, uint32_t off) { return io ? inb((uint16_t)(base + off)) : *(volatile uint8_t *)(base + off); }
static uint32_t rd32(int io, uint32_t base, uint32_t off) { return io ? inl((uint16_t)(base + off)) : *(volatile uint32_t *)(base + off); }
static void wr8(int io, uint32_t base, uint32_t off, uint8_t v) { if (io) outb((uint16_t)(base + off), v); else *(volatile uint8_t *)(base + off) = v; }

static void pci_tests(int io, uint32_t base) {
	int i;
	for (i = 0;; i++) {
		wr8(io, base, 0, (uint8_t)i);
		char name[32];
		int n;
		for (n = 0; n < 31 && (name[n] = (char)rd8(io, base, 16 + (uint32_t)n)); n++) {}
		name[n] = 0;
		if (!name[0]) break;
		uint32_t count0 = rd32(io, base, 12), width = rd8(io, base, 1), off = rd32(io, base, 4), data = rd8(io, base, 8);
		for (int k = 0; k < 16; k++) wr8(io, base, off, (uint8_t)data);
		uint32_t count = rd32(io, base, 12);
		puts_("DEV pci-testdev "); puts_(name); puts_(" width="); putdec(width); puts_(" offset="); putdec(off);
		puts_(" data="); puthex(data); puts_(" count="); putdec(count); puts_("\n");
		char what[64] = "pci-testdev ";
		int w = 12;
		for (int k = 0; name[k]; k++) what[w++] = name[k];
		what[w] = 0;
		report(what, count0 == 0 && width == 1 && (count == 16 || count == 0));
	}
	report(io ? "pci-testdev: three portio tests" : "pci-testdev: three mmio tests", i == 3);
}

static void pci_testdev(void) {
	int dev;
	for (dev = 0; dev < 32; dev++) if (pci_read(dev, 0) == 0x00051b36) break;
	report("pci-testdev 1b36:0005 on bus 0", dev < 32);
	if (dev == 32) return;
	uint32_t bar0 = pci_read(dev, 0x10), bar1 = pci_read(dev, 0x14);
	pci_write(dev, 0x10, 0xffffffff); uint32_t size0 = ~(pci_read(dev, 0x10) & ~0xfu) + 1; pci_write(dev, 0x10, bar0);
	pci_write(dev, 0x14, 0xffffffff); uint32_t size1 = (~(pci_read(dev, 0x14) & ~0x3u) + 1) & 0xffff; pci_write(dev, 0x14, bar1);
	puts_("DEV pci-testdev bar0="); puthex(bar0); puts_(" size="); putdec(size0);
	puts_(" bar1="); puthex(bar1); puts_(" size="); putdec(size1); puts_("\n");
	report("pci-testdev BARs assigned: 4 KiB memory, 256 ports", (bar0 & 1) == 0 && bar0 >= 0x80000000u && size0 == 4096 && (bar1 & 1) && size1 == 256);
	report("pci-testdev BARs keep their addresses after sizing", pci_read(dev, 0x10) == bar0 && pci_read(dev, 0x14) == bar1);
	pci_write(dev, 0x04, 0x3);
	pci_tests(0, bar0 & ~0xfu);
	pci_tests(1, bar1 & ~0x3u);
}

void main(uint32_t magic, void *info) {
	(void)info;
	report("Multiboot magic", magic == 0x2badb002);
	pm_timer(pm_timer_port());
	rtc();
	pc_testdev();
	pci_testdev();
	puts_("SUMMARY: "); putdec(passes + failures); puts_(" tests, "); putdec(failures); puts_(" unexpected failures\n");
	debug_exit(failures ? 1 : 0);
}
