// SPDX-License-Identifier: GPL-2.0
/*
 * kvm_ud: stock KVM must give the guest #UD for VMFUNC.
 *
 * Needs only /dev/kvm (no xos_vmfunc module): the scripts/bochs/run stage runs
 * it before loading the module.  XOS_BOCHS_NO_MODULE
 *
 * A tiny real-mode guest (VMX "unrestricted guest" runs real mode directly):
 *   0x1000: mov al,0x11; out 0x10,al       -> first exit: the guest runs
 *           xor eax,eax; xor ecx,ecx       (EPTP switching, list entry 0)
 *           vmfunc                         -> must raise #UD
 *           mov al,0x22; out 0x11,al       -> reached only if VMFUNC did not fault
 *           hlt
 * IVT vector 6 -> 0x2000: mov al,6; out 0x12,al; pop ax (faulting IP);
 *           mov dx,0x13; out dx,ax; hlt
 * every other vector N -> 0x3000+8N: mov al,N; out 0x1f,al; hlt
 *
 * Prints TAP on stdout.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM_SIZE 0x10000u
#define CODE_GPA 0x1000u
#define UD_GPA 0x2000u
#define STUB_GPA 0x3000u
#define STACK_TOP 0x8000u

#define PORT_RAN 0x10
#define PORT_NO_FAULT 0x11
#define PORT_UD 0x12
#define PORT_UD_IP 0x13
#define PORT_OTHER_VEC 0x1f

#define NCHECKS 7

static int test_no;
static int failures;

static void ok(int cond, const char *fmt, ...)
{
	va_list ap;

	printf("%sok %d - ", cond ? "" : "not ", ++test_no);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!cond)
		failures++;
}

/* A check that cannot go on: report it, mark the rest not reached, exit 1. */
static void fatal(const char *fmt, ...)
{
	va_list ap;

	printf("not ok %d - ", ++test_no);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	while (test_no < NCHECKS)
		printf("not ok %d - not reached after a failure\n", ++test_no);
	fflush(stdout);
	exit(1);
}

static void on_alarm(int sig)
{
	static const char msg[] = "Bail out! kvm_ud: timed out (60 s)\n";

	(void)sig;
	if (write(1, msg, sizeof(msg) - 1) < 0)
		_exit(2);
	_exit(2);
}

static const char *exit_name(uint32_t reason)
{
	switch (reason) {
	case KVM_EXIT_IO: return "IO";
	case KVM_EXIT_HLT: return "HLT";
	case KVM_EXIT_MMIO: return "MMIO";
	case KVM_EXIT_SHUTDOWN: return "SHUTDOWN (triple fault)";
	case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
	case KVM_EXIT_EXCEPTION: return "EXCEPTION";
	default: return "other";
	}
}

struct io_exit {
	uint32_t reason;
	uint8_t direction;
	uint8_t size;
	uint16_t port;
	uint32_t count;
	uint32_t value;
};

static struct io_exit run_once(int vcpu, struct kvm_run *run)
{
	struct io_exit e;
	int r;

	do
		r = ioctl(vcpu, KVM_RUN, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		fatal("KVM_RUN: %s", strerror(errno));

	memset(&e, 0, sizeof(e));
	e.reason = run->exit_reason;
	if (e.reason == KVM_EXIT_IO) {
		const uint8_t *data = (const uint8_t *)run + run->io.data_offset;

		e.direction = run->io.direction;
		e.size = run->io.size;
		e.port = run->io.port;
		e.count = run->io.count;
		if (e.size >= 1 && e.size <= 4)
			memcpy(&e.value, data, e.size);
	} else if (e.reason == KVM_EXIT_FAIL_ENTRY) {
		printf("# fail_entry hardware_entry_failure_reason=0x%llx\n",
		       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
	} else if (e.reason == KVM_EXIT_INTERNAL_ERROR) {
		printf("# internal error suberror=%u\n", run->internal.suberror);
	}
	return e;
}

static void describe(const char *what, const struct io_exit *e)
{
	if (e->reason == KVM_EXIT_IO)
		printf("# %s: exit IO %s port 0x%x size %u count %u value 0x%x\n", what,
		       e->direction == KVM_EXIT_IO_OUT ? "out" : "in", e->port, e->size,
		       e->count, e->value);
	else
		printf("# %s: exit %s (%u)\n", what, exit_name(e->reason), e->reason);
	fflush(stdout);
}

static int is_out(const struct io_exit *e, uint16_t port, uint8_t size)
{
	return e->reason == KVM_EXIT_IO && e->direction == KVM_EXIT_IO_OUT &&
	       e->port == port && e->size == size && e->count == 1;
}

int main(void)
{
	static const uint8_t code[] = {
		0xb0, 0x11,		/* mov al,0x11 */
		0xe6, PORT_RAN,		/* out PORT_RAN,al */
		0x66, 0x31, 0xc0,	/* xor eax,eax */
		0x66, 0x31, 0xc9,	/* xor ecx,ecx */
		0x0f, 0x01, 0xd4,	/* vmfunc */
		0xb0, 0x22,		/* mov al,0x22 */
		0xe6, PORT_NO_FAULT,	/* out PORT_NO_FAULT,al */
		0xf4,			/* hlt */
	};
	const uint16_t vmfunc_ip = CODE_GPA + 10;
	static const uint8_t ud_handler[] = {
		0xb0, 0x06,		/* mov al,6 */
		0xe6, PORT_UD,		/* out PORT_UD,al */
		0x58,			/* pop ax: IP of the faulting instruction */
		0xba, PORT_UD_IP, 0x00,	/* mov dx,PORT_UD_IP */
		0xef,			/* out dx,ax */
		0xf4,			/* hlt */
	};
	struct kvm_userspace_memory_region region;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_run *run;
	struct io_exit e;
	uint8_t *mem;
	int kvm, vm, vcpu, run_size, api, v;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);
	alarm(60);

	printf("1..%d\n", NCHECKS);
	printf("# kvm_ud: stock KVM must inject #UD for VMFUNC in a non-nested guest\n");

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		fatal("open /dev/kvm: %s", strerror(errno));
	api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	ok(api == KVM_API_VERSION, "/dev/kvm opens, KVM_GET_API_VERSION = %d", api);

	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		fatal("KVM_CREATE_VM: %s", strerror(errno));
	/* Needed by VMX for real mode without unrestricted guest; harmless with it. */
	if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
		fatal("KVM_SET_TSS_ADDR: %s", strerror(errno));

	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		fatal("mmap guest memory: %s", strerror(errno));
	memset(mem, 0xf4, MEM_SIZE); /* hlt everywhere */

	/* IVT: every vector to its own stub, vector 6 (#UD) to the #UD handler. */
	for (v = 0; v < 32; v++) {
		uint16_t off = (uint16_t)(STUB_GPA + 8 * v);
		uint8_t *stub = mem + off;

		stub[0] = 0xb0; /* mov al,v */
		stub[1] = (uint8_t)v;
		stub[2] = 0xe6; /* out PORT_OTHER_VEC,al */
		stub[3] = PORT_OTHER_VEC;
		stub[4] = 0xf4; /* hlt */
		if (v == 6)
			off = UD_GPA;
		mem[4 * v + 0] = (uint8_t)off;
		mem[4 * v + 1] = (uint8_t)(off >> 8);
		mem[4 * v + 2] = 0; /* segment 0 */
		mem[4 * v + 3] = 0;
	}
	memcpy(mem + CODE_GPA, code, sizeof(code));
	memcpy(mem + UD_GPA, ud_handler, sizeof(ud_handler));

	memset(&region, 0, sizeof(region));
	region.slot = 0;
	region.guest_phys_addr = 0;
	region.memory_size = MEM_SIZE;
	region.userspace_addr = (uintptr_t)mem;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		fatal("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));

	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		fatal("KVM_CREATE_VCPU: %s", strerror(errno));
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(*run))
		fatal("KVM_GET_VCPU_MMAP_SIZE: %d", run_size);
	run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		fatal("mmap kvm_run: %s", strerror(errno));

	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		fatal("KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.cs;
	sregs.ds.type = sregs.es.type = sregs.fs.type = sregs.gs.type = sregs.ss.type = 3;
	sregs.cr0 &= ~1ull; /* real mode */
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		fatal("KVM_SET_SREGS: %s", strerror(errno));

	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA;
	regs.rsp = STACK_TOP;
	regs.rflags = 0x2;
	regs.rax = 0x5a5a; /* the guest clears eax/ecx itself */
	regs.rcx = 0xa5a5;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		fatal("KVM_SET_REGS: %s", strerror(errno));
	ok(1, "real-mode VM with one vCPU created (64 KiB at GPA 0, IVT installed)");

	printf("# running the guest\n");
	e = run_once(vcpu, run);
	describe("first exit", &e);
	if (!is_out(&e, PORT_RAN, 1) || e.value != 0x11)
		fatal("guest ran: first exit is OUT port 0x%x size 1 value 0x11", PORT_RAN);
	ok(1, "guest ran: first exit is KVM_EXIT_IO OUT port 0x%x size 1 count 1 value 0x11",
	   PORT_RAN);

	e = run_once(vcpu, run);
	describe("after VMFUNC", &e);
	if (is_out(&e, PORT_NO_FAULT, 1))
		fatal("VMFUNC raised #UD (it executed without a fault instead)");
	if (is_out(&e, PORT_OTHER_VEC, 1))
		fatal("VMFUNC raised #UD (the guest took vector %u instead)", e.value);
	if (!is_out(&e, PORT_UD, 1))
		fatal("VMFUNC raised #UD (unexpected exit instead)");
	ok(e.value == 6, "VMFUNC raised #UD: the vector 6 handler ran (OUT port 0x%x value %u)",
	   PORT_UD, e.value);

	e = run_once(vcpu, run);
	describe("#UD handler", &e);
	if (!is_out(&e, PORT_UD_IP, 2))
		fatal("#UD handler reported the faulting IP (OUT port 0x%x size 2)", PORT_UD_IP);
	ok(e.value == vmfunc_ip, "#UD is a fault at the VMFUNC instruction: IP 0x%x (want 0x%x)",
	   e.value, vmfunc_ip);

	e = run_once(vcpu, run);
	describe("last exit", &e);
	ok(e.reason == KVM_EXIT_HLT, "guest halted after the handler (KVM_EXIT_HLT)");

	if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0)
		fatal("KVM_GET_REGS: %s", strerror(errno));
	ok((regs.rax & 0xffff) == vmfunc_ip && (regs.rcx & 0xffffffff) == 0 &&
		   regs.rsp == STACK_TOP - 4,
	   "guest registers after #UD: ax=0x%llx ecx=0x%llx sp=0x%llx (want 0x%x, 0, 0x%x)",
	   (unsigned long long)(regs.rax & 0xffff), (unsigned long long)(regs.rcx & 0xffffffff),
	   (unsigned long long)regs.rsp, vmfunc_ip, STACK_TOP - 4);

	munmap(run, (size_t)run_size);
	close(vcpu);
	close(vm);
	close(kvm);
	munmap(mem, MEM_SIZE);
	printf("# kvm_ud: %d failure(s)\n", failures);
	return failures ? 1 : 0;
}
