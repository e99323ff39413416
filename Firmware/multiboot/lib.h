/* Port I/O and a polled COM1 for svmm's Multiboot test programs (the
 * 16550 at 0x3f8 written when LSR bit 5 says the holding register is empty,
 * as kvm-unit-tests' console does). */
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void putc_(char c) {
	while (!(inb(0x3f8 + 5) & 0x20)) {}
	outb(0x3f8, (uint8_t)c);
}
static inline void puts_(const char *s) { while (*s) putc_(*s++); }
static inline void puthex(uint64_t v) {
	char b[17]; int i = 16;
	b[16] = 0;
	do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v && i > 0);
	puts_("0x"); puts_(b + i);
}
static inline void putdec(uint32_t v) {
	char b[11]; int i = 10;
	b[10] = 0;
	do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
	puts_(b + i);
}
/* QEMU's isa-debug-exit at 0xf4: the run ends with status (code << 1) | 1. */
static inline void debug_exit(uint32_t code) {
	outl(0xf4, code);
	for (;;) __asm__ volatile("cli; hlt");
}
static inline void outw16(uint16_t port, uint16_t v) { outw(port, v); }
static inline uint16_t inw16(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
