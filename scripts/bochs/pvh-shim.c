// SPDX-License-Identifier: GPL-2.0
/*
 * pvh-shim: a Multiboot (v1) kernel that starts an uncompressed x86-64 Linux
 * vmlinux through its PVH entry point.
 *
 * Why: Debian's bzImage is xz-compressed, and decompressing ~66 MB inside
 * Bochs takes about 70 s of emulated instructions. GRUB loads this shim, the
 * vmlinux (decompressed on the host) and the initramfs as Multiboot modules;
 * the shim places the kernel's PT_LOAD segments at their physical addresses,
 * builds a PVH start-info (version 1: memory map, command line, initramfs
 * module, RSDP) and jumps to the address in the kernel's
 * XEN_ELFNOTE_PHYS32_ENTRY note in 32-bit flat protected mode with paging off
 * and %ebx pointing to the start-info (the PVH boot ABI). A kernel that finds no Xen takes its memory map from the
 * start-info, as under QEMU's or Firecracker's PVH boot.
 *
 * GRUB:  multiboot /boot/pvh-shim <kernel command line>
 *        module --nounzip /boot/vmlinux
 *        module --nounzip /boot/initrd.gz
 *
 * Messages go to COM1 as "XOS-PVH ..." lines; on an error the shim halts.
 */
#include <stdint.h>

/* Multiboot header: magic, flags (page-aligned modules, memory map), checksum. */
#define MB_BOOT_MAGIC 0x2BADB002u

__asm__(".section .multiboot, \"a\"\n"
	".align 4\n"
	".long 0x1BADB002\n"
	".long 0x00000003\n"
	".long -(0x1BADB002 + 0x00000003)\n"
	".text\n"
	".globl _start\n"
	"_start:\n"
	"	cli\n"
	"	cld\n"
	"	mov $stack_top, %esp\n"
	"	push %ebx\n"
	"	push %eax\n"
	"	call shim_main\n"
	"1:	hlt\n"
	"	jmp 1b\n");

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
	uint32_t mods_count, mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length, mmap_addr;
};
struct mb_module {
	uint32_t start, end, string, reserved;
};
struct mb_mmap {
	uint32_t size;
	uint32_t addr_lo, addr_hi, len_lo, len_hi;
	uint32_t type;
} __attribute__((packed));

/* The PVH boot ABI (Xen's public hvm/start_info.h, version 1). */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};
struct hvm_modlist_entry {
	uint64_t paddr, size, cmdline_paddr, reserved;
};
struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

#define MAX_MAP 64
static struct hvm_start_info start_info __attribute__((aligned(8)));
static struct hvm_modlist_entry modlist[1] __attribute__((aligned(8)));
static struct hvm_memmap_entry memmap[MAX_MAP] __attribute__((aligned(8)));
static char cmdline[2048];
static struct mb_module mods[2];
uint8_t stack[16384] __attribute__((aligned(16)));
__asm__(".globl stack_top\n.set stack_top, stack + 16384\n");
extern char _end[];

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static void putc_serial(char c)
{
	int i;

	for (i = 0; i < 100000 && !(inb(0x3fd) & 0x20); i++)
		;
	outb(0x3f8, (uint8_t)c);
}
static void puts_serial(const char *s)
{
	while (*s) {
		if (*s == '\n')
			putc_serial('\r');
		putc_serial(*s++);
	}
}
static void puthex(uint32_t v)
{
	int i;

	puts_serial("0x");
	for (i = 28; i >= 0; i -= 4)
		putc_serial("0123456789abcdef"[(v >> i) & 15]);
}
static void __attribute__((noreturn)) die(const char *msg)
{
	puts_serial("XOS-PVH error: ");
	puts_serial(msg);
	puts_serial("\n");
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void copy(uint32_t dst, uint32_t src, uint32_t n)
{
	uint32_t words = n / 4, bytes = n % 4;

	__asm__ volatile("rep movsl" : "+D"(dst), "+S"(src), "+c"(words) : : "memory");
	__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(bytes) : : "memory");
}
static void zero(uint32_t dst, uint32_t n)
{
	uint32_t words = n / 4, bytes = n % 4;

	__asm__ volatile("rep stosl" : "+D"(dst), "+c"(words) : "a"(0) : "memory");
	__asm__ volatile("rep stosb" : "+D"(dst), "+c"(bytes) : "a"(0) : "memory");
}
/* Physical memory reads (the empty asm hides constant addresses from GCC's bounds checks). */
static uint32_t rd32(uint32_t a)
{
	__asm__("" : "+r"(a));
	return *(volatile uint32_t *)a;
}
static uint16_t rd16(uint32_t a)
{
	__asm__("" : "+r"(a));
	return *(volatile uint16_t *)a;
}
/* A 64-bit ELF field that must fit in 32 bits (everything here is below 4 GiB). */
static uint32_t rd64_32(uint32_t a, const char *what)
{
	if (rd32(a + 4))
		die(what);
	return rd32(a);
}
static uint32_t align_up(uint32_t v, uint32_t a)
{
	return (v + a - 1) & ~(a - 1);
}
static int overlaps(uint32_t a, uint32_t alen, uint32_t b, uint32_t blen)
{
	return a < b + blen && b < a + alen;
}

/* The ACPI RSDP: "RSD PTR " on a 16-byte boundary in the EBDA's first KiB or 0xE0000-0xFFFFF. */
static uint32_t find_rsdp(void)
{
	uint32_t ebda = (uint32_t)rd16(0x40e) << 4, a;

	if (ebda >= 0x80000 && ebda < 0xa0000)
		for (a = ebda; a < ebda + 1024; a += 16)
			if (rd32(a) == 0x20445352 && rd32(a + 4) == 0x20525450)
				return a;
	for (a = 0xe0000; a < 0x100000; a += 16)
		if (rd32(a) == 0x20445352 && rd32(a + 4) == 0x20525450)
			return a;
	return 0;
}

void __attribute__((noreturn, used)) shim_main(uint32_t magic, uint32_t mbi_addr);
void shim_main(uint32_t magic, uint32_t mbi_addr)
{
	const struct mb_info *mbi = (const struct mb_info *)mbi_addr;
	uint32_t elf, elf_size, rd, rd_size, phoff, phnum, phentsize, i, entry = 0;
	uint32_t lo = 0xffffffffu, hi = 0, top, mem_top = 0, n;
	const char *s;
	char *d;

	puts_serial("XOS-PVH shim: placing the kernel\n");
	if (magic != MB_BOOT_MAGIC)
		die("not started by a Multiboot loader");
	if (!(mbi->flags & (1u << 3)) || mbi->mods_count < 2)
		die("need two modules: vmlinux, initramfs");
	if (!(mbi->flags & (1u << 6)))
		die("no memory map from the loader");

	/*
	 * Copy what is needed from the loader's structures first: they may lie
	 * where the kernel or the moved modules go.
	 */
	mods[0] = ((const struct mb_module *)mbi->mods_addr)[0];
	mods[1] = ((const struct mb_module *)mbi->mods_addr)[1];
	/* The memory map (Multiboot's types are E820's). */
	n = 0;
	for (i = 0; i + 4 <= mbi->mmap_length && n < MAX_MAP;) {
		const struct mb_mmap *m = (const struct mb_mmap *)(mbi->mmap_addr + i);
		uint64_t end;

		memmap[n].addr = ((uint64_t)m->addr_hi << 32) | m->addr_lo;
		memmap[n].size = ((uint64_t)m->len_hi << 32) | m->len_lo;
		memmap[n].type = m->type;
		memmap[n].reserved = 0;
		end = memmap[n].addr + memmap[n].size;
		if (m->type == 1 && end <= 0x100000000ull && end > mem_top)
			mem_top = (uint32_t)end;
		n++;
		i += m->size + 4;
	}
	/* The command line: Multiboot's, without its first word (the shim's path). */
	s = (const char *)(mbi->flags & (1u << 2) ? mbi->cmdline : 0);
	d = cmdline;
	if (s) {
		while (*s && *s != ' ')
			s++;
		while (*s == ' ')
			s++;
		while (*s && d < cmdline + sizeof(cmdline) - 1)
			*d++ = *s++;
	}
	*d = 0;

	elf = mods[0].start;
	elf_size = mods[0].end - mods[0].start;
	rd = mods[1].start;
	rd_size = mods[1].end - mods[1].start;

	if (elf_size < 64 || rd32(elf) != 0x464c457f || *(uint8_t *)(elf + 4) != 2 ||
	    rd16(elf + 18) != 62)
		die("module 0 is not an x86-64 ELF (vmlinux)");
	phoff = rd64_32(elf + 32, "e_phoff");
	phentsize = rd16(elf + 54);
	phnum = rd16(elf + 56);
	if (phentsize < 56 || phoff + phnum * phentsize > elf_size)
		die("bad program headers");

	/* The kernel's physical extent, and its PVH entry point. */
	for (i = 0; i < phnum; i++) {
		uint32_t ph = elf + phoff + i * phentsize, type = rd32(ph);

		if (type == 1) { /* PT_LOAD */
			uint32_t pa = rd64_32(ph + 24, "p_paddr"), msz = rd64_32(ph + 40, "p_memsz");

			if (pa < lo)
				lo = pa;
			if (pa + msz > hi)
				hi = pa + msz;
		} else if (type == 4) { /* PT_NOTE: look for Xen's PHYS32_ENTRY (18) */
			uint32_t off = rd64_32(ph + 8, "p_offset"), sz = rd64_32(ph + 32, "p_filesz");
			uint32_t p = elf + off, end = p + sz;

			while (p + 12 <= end) {
				uint32_t namesz = rd32(p), descsz = rd32(p + 4), ntype = rd32(p + 8);
				uint32_t name = p + 12, desc = name + align_up(namesz, 4);

				if (namesz == 4 && rd32(name) == 0x006e6558 /* "Xen\0" */ && ntype == 18 &&
				    descsz >= 4)
					entry = rd32(desc);
				p = desc + align_up(descsz, 4);
			}
		}
	}
	if (!entry)
		die("the kernel has no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)");
	if (lo >= hi || lo < (uint32_t)_end)
		die("the kernel's segments overlap the shim");

	/* Move the modules out of the kernel's way, above everything. */
	top = hi;
	if (mods[0].end > top)
		top = mods[0].end;
	if (mods[1].end > top)
		top = mods[1].end;
	top = align_up(top, 0x200000);
	if (overlaps(elf, elf_size, lo, hi - lo)) {
		copy(top, elf, elf_size);
		elf = top;
		top = align_up(top + elf_size, 0x1000);
	}
	if (overlaps(rd, rd_size, lo, hi - lo)) {
		copy(top, rd, rd_size);
		rd = top;
		top = align_up(top + rd_size, 0x1000);
	}

	if (top > mem_top)
		die("not enough memory for the kernel and the moved modules");

	/* Place the segments. */
	for (i = 0; i < phnum; i++) {
		uint32_t ph = elf + phoff + i * phentsize;

		if (rd32(ph) == 1) {
			uint32_t off = rd64_32(ph + 8, "p_offset"), pa = rd64_32(ph + 24, "p_paddr");
			uint32_t fsz = rd64_32(ph + 32, "p_filesz"), msz = rd64_32(ph + 40, "p_memsz");

			if (off + fsz > elf_size || fsz > msz)
				die("a segment lies outside the file");
			copy(pa, elf + off, fsz);
			zero(pa + fsz, msz - fsz);
		}
	}

	modlist[0].paddr = rd;
	modlist[0].size = rd_size;
	start_info.magic = HVM_START_MAGIC;
	start_info.version = 1;
	start_info.nr_modules = 1;
	start_info.modlist_paddr = (uint32_t)modlist;
	start_info.cmdline_paddr = (uint32_t)cmdline;
	start_info.rsdp_paddr = find_rsdp();
	start_info.memmap_paddr = (uint32_t)memmap;
	start_info.memmap_entries = n;

	puts_serial("XOS-PVH kernel at ");
	puthex(lo);
	puts_serial("-");
	puthex(hi);
	puts_serial(", initramfs at ");
	puthex(rd);
	puts_serial(", entry ");
	puthex(entry);
	puts_serial("\n");
	__asm__ volatile("cld\n\tjmp *%0" : : "r"(entry), "b"((uint32_t)&start_info) : "memory");
	__builtin_unreachable();
}
