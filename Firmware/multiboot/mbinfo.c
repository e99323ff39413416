/* Prints what a Multiboot loader handed over (the magic, the information's
 * fields, the command line, the module's bytes, the memory map) and what
 * fw_cfg says, one "MB ..." line each, for a test to compare with what it
 * asked svmm (or QEMU) for; then ends through isa-debug-exit with the
 * number after "exit=" on its command line (0 without one). */
#include "lib.h"

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length, mmap_addr, drives_length, drives_addr, config_table, boot_loader_name, apm_table;
};
struct mb_module { uint32_t start, end, string, reserved; };
struct mb_mmap { uint32_t size; uint64_t base, length; uint32_t type; } __attribute__((packed));

static uint32_t fnv1a(const uint8_t *p, uint32_t n) {
	uint32_t h = 2166136261u;
	while (n--) { h ^= *p++; h *= 16777619u; }
	return h;
}

static uint64_t fw_cfg(uint16_t key, int bytes) {
	uint64_t v = 0;
	outw(0x510, key);
	for (int i = 0; i < bytes; i++) v |= (uint64_t)inb(0x511) << (8 * i);
	return v;
}

static uint32_t exit_code(const char *s) {
	for (; *s; s++) {
		if (s[0] == 'e' && s[1] == 'x' && s[2] == 'i' && s[3] == 't' && s[4] == '=') {
			uint32_t v = 0;
			for (s += 5; *s >= '0' && *s <= '9'; s++) v = v * 10 + (uint32_t)(*s - '0');
			return v;
		}
	}
	return 0;
}

void main(uint32_t magic, struct mb_info *mb) {
	puts_("MB magic="); puthex(magic); puts_(" flags="); puthex(mb->flags); puts_("\n");
	if (mb->flags & 1) { puts_("MB mem_lower="); putdec(mb->mem_lower); puts_(" mem_upper="); putdec(mb->mem_upper); puts_("\n"); }
	const char *cmdline = (mb->flags & 4) ? (const char *)mb->cmdline : "";
	puts_("MB cmdline=["); puts_(cmdline); puts_("]\n");
	if (mb->flags & 512) { puts_("MB loader=["); puts_((const char *)mb->boot_loader_name); puts_("]\n"); }
	if (mb->flags & 8) {
		puts_("MB mods_count="); putdec(mb->mods_count); puts_("\n");
		struct mb_module *m = (struct mb_module *)mb->mods_addr;
		for (uint32_t i = 0; i < mb->mods_count; i++) {
			puts_("MB module start="); puthex(m[i].start); puts_(" size="); putdec(m[i].end - m[i].start);
			puts_(" fnv1a="); puthex(fnv1a((const uint8_t *)m[i].start, m[i].end - m[i].start));
			puts_(" string=["); puts_((const char *)m[i].string); puts_("]\n");
		}
	}
	if (mb->flags & 64) {
		for (uint32_t at = mb->mmap_addr; at < mb->mmap_addr + mb->mmap_length;) {
			struct mb_mmap *e = (struct mb_mmap *)at;
			puts_("MB mmap base="); puthex(e->base); puts_(" length="); puthex(e->length);
			puts_(" type="); putdec(e->type); puts_("\n");
			at += e->size + 4;
		}
	}
	char sig[5] = {0};
	outw(0x510, 0);
	for (int i = 0; i < 4; i++) sig[i] = (char)inb(0x511);
	puts_("MB fw_cfg signature=["); puts_(sig); puts_("] cpus="); putdec((uint32_t)fw_cfg(5, 2));
	puts_(" ram="); puthex(fw_cfg(3, 8)); puts_("\n");
	debug_exit(exit_code(cmdline));
}
