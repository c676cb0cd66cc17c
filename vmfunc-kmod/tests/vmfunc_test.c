// SPDX-License-Identifier: GPL-2.0
/*
 * vmfunc_test: end-to-end test of xos_vmfunc.ko on a real (or Bochs) VMX CPU
 * with kvm_intel loaded, /dev/kvm and /dev/xos-vmfunc present. Prints TAP.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -Ivmfunc-kmod/include \
 *            -o vmfunc_test vmfunc-kmod/tests/vmfunc_test.c
 * Run as root (the unload check calls delete_module; skipped otherwise).
 *
 * The guest is 16-bit real mode code (VMX "unrestricted guest"), CS=DS=0:
 *   memory 0..64 KiB, one memslot; GPA X=0x8000 holds 0xA0, S1=0x9000 0xB1,
 *   S2=0xA000 0xB2. View 1 maps X -> S1 (RWX), view 2 maps X -> S2 (RX).
 *   Values are reported with `out 0x10,al`, a #UD (IVT vector 6) with
 *   `out 0x11,al`, any other exception with `out 0x12,al`; then `hlt`.
 */
#define _GNU_SOURCE
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
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uapi/xos_vmfunc.h>

#define MEM_SIZE 0x10000u
#define X_GPA 0x8000u
#define S1_GPA 0x9000u
#define S2_GPA 0xA000u
#define SLOT1_GPA 0x20000u
#define STACK_TOP 0x7000u
#define UD_HANDLER 0x1800u
#define OTHER_HANDLER 0x1900u

#define PORT_VAL 0x10
#define PORT_UD 0x11
#define PORT_OTHER 0x12

/* Entry points of the guest's code sequences. */
#define PH_PRE 0x1000u    /* read X, vmfunc(1), read X */
#define PH_SWITCH 0x1100u /* read X, 1: read, write C1, read; 2: read; 0: read */
#define PH_EMPTY 0x1200u  /* vmfunc(5): an empty list slot */
#define PH_BIG 0x1300u    /* vmfunc(600): beyond the 512-entry list */
#define PH_Y 0x1400u      /* vmfunc(1), read Y */
#define PH_READ 0x1500u   /* read X (no vmfunc) */
#define Y_GPA 0xC000u

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

static void skip(const char *why, const char *fmt, ...)
{
	va_list ap;

	printf("ok %d - ", ++test_no);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" # SKIP %s\n", why);
	fflush(stdout);
}

static void note(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static void finish(void)
{
	printf("1..%d\n", test_no);
	fflush(stdout);
	exit(failures ? 1 : 0);
}

static void bail(const char *fmt, ...)
{
	va_list ap;

	printf("not ok %d - ", ++test_no);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" (cannot go on)\n");
	failures++;
	finish();
}

static void on_alarm(int sig)
{
	static const char msg[] = "\nnot ok 999 - vmfunc_test timed out (60 s)\nBail out! timeout\n";

	(void)sig;
	if (write(1, msg, sizeof(msg) - 1) < 0)
		_exit(2);
	_exit(2);
}

/* ioctl returning 0 or the errno. */
static int xioctl(int fd, unsigned long req, void *arg)
{
	return ioctl(fd, req, arg) < 0 ? errno : 0;
}

static const char *err_name(int e)
{
	return e ? strerror(e) : "success";
}

/* --------------------------------------------------------------- the VM */

struct vm {
	int vm, vcpu;
	uint8_t *mem;
	struct kvm_run *run;
	struct kvm_sregs sregs0;
};

struct outcome {
	uint8_t vals[16];
	int nvals;
	int ud;      /* #UD handler ran */
	int other;   /* another exception handler ran */
	int halted;  /* ended with HLT */
	uint32_t exit_reason; /* the last exit */
};

static int kvm_fd = -1;

static void put(uint8_t *mem, uint32_t at, const uint8_t *code, size_t n)
{
	memcpy(mem + at, code, n);
}

/* vmfunc with eax = 0, ecx = slot (16-bit code: 66-prefixed 32-bit ops). */
static size_t emit_vmfunc(uint8_t *p, uint32_t slot)
{
	static const uint8_t head[] = { 0x66, 0x31, 0xc0, 0x66, 0xb9 };
	size_t n = 0;

	memcpy(p, head, sizeof(head));
	n += sizeof(head);
	memcpy(p + n, &slot, 4);
	n += 4;
	p[n++] = 0x0f;
	p[n++] = 0x01;
	p[n++] = 0xd4;
	return n;
}

/* mov al,[X]; out PORT_VAL,al */
static size_t emit_read_x(uint8_t *p)
{
	p[0] = 0xa0;
	p[1] = X_GPA & 0xff;
	p[2] = X_GPA >> 8;
	p[3] = 0xe6;
	p[4] = PORT_VAL;
	return 5;
}

static void load_guest(uint8_t *mem)
{
	uint8_t *p;
	unsigned int v;

	memset(mem, 0, MEM_SIZE);
	/* IVT: vector 6 -> UD_HANDLER, all others -> OTHER_HANDLER (segment 0). */
	for (v = 0; v < 256; v++) {
		uint16_t off = v == 6 ? UD_HANDLER : OTHER_HANDLER;

		memcpy(mem + v * 4, &off, 2);
	}
	{
		const uint8_t ud[] = { 0xb0, 0xee, 0xe6, PORT_UD, 0xf4 };
		const uint8_t other[] = { 0xb0, 0xff, 0xe6, PORT_OTHER, 0xf4 };

		put(mem, UD_HANDLER, ud, sizeof(ud));
		put(mem, OTHER_HANDLER, other, sizeof(other));
	}
	mem[X_GPA] = 0xa0;
	mem[S1_GPA] = 0xb1;
	mem[S2_GPA] = 0xb2;

	p = mem + PH_PRE;
	p += emit_read_x(p);
	p += emit_vmfunc(p, 1);
	p += emit_read_x(p);
	*p++ = 0xf4;

	p = mem + PH_SWITCH;
	p += emit_read_x(p);
	p += emit_vmfunc(p, 1);
	p += emit_read_x(p);
	/* mov byte [X],0xC1 */
	*p++ = 0xc6;
	*p++ = 0x06;
	*p++ = X_GPA & 0xff;
	*p++ = X_GPA >> 8;
	*p++ = 0xc1;
	p += emit_read_x(p);
	p += emit_vmfunc(p, 2);
	p += emit_read_x(p);
	p += emit_vmfunc(p, 0);
	p += emit_read_x(p);
	*p++ = 0xf4;

	p = mem + PH_EMPTY;
	p += emit_vmfunc(p, 5);
	*p++ = 0xb0; /* mov al,0x55; out PORT_VAL,al: only without a fault */
	*p++ = 0x55;
	*p++ = 0xe6;
	*p++ = PORT_VAL;
	*p++ = 0xf4;

	p = mem + PH_Y;
	p += emit_vmfunc(p, 1);
	*p++ = 0xa0; /* mov al,[Y]; out PORT_VAL,al; hlt */
	*p++ = Y_GPA & 0xff;
	*p++ = Y_GPA >> 8;
	*p++ = 0xe6;
	*p++ = PORT_VAL;
	*p++ = 0xf4;

	p = mem + PH_READ;
	p += emit_read_x(p);
	*p++ = 0xf4;

	p = mem + PH_BIG;
	p += emit_vmfunc(p, 600);
	*p++ = 0xb0;
	*p++ = 0x55;
	*p++ = 0xe6;
	*p++ = PORT_VAL;
	*p++ = 0xf4;
}

static int set_slot(struct vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
		    uint64_t size, void *host)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot,
		.flags = flags,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uintptr_t)host,
	};

	return xioctl(vm->vm, KVM_SET_USER_MEMORY_REGION, &r);
}

static int vm_create(struct vm *vm)
{
	long run_size;

	memset(vm, 0, sizeof(*vm));
	vm->vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm < 0)
		return errno;
	vm->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (vm->mem == MAP_FAILED)
		return errno;
	load_guest(vm->mem);
	if (set_slot(vm, 0, 0, 0, MEM_SIZE, vm->mem))
		return errno;
	(void)ioctl(vm->vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
	vm->vcpu = ioctl(vm->vm, KVM_CREATE_VCPU, 0);
	if (vm->vcpu < 0)
		return errno;
	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		return errno;
	vm->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		       vm->vcpu, 0);
	if (vm->run == MAP_FAILED)
		return errno;
	if (ioctl(vm->vcpu, KVM_GET_SREGS, &vm->sregs0) < 0)
		return errno;
	vm->sregs0.cs.selector = 0;
	vm->sregs0.cs.base = 0;
	return 0;
}

static void vm_destroy(struct vm *vm)
{
	if (vm->run && vm->run != MAP_FAILED)
		munmap(vm->run, (size_t)ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0));
	if (vm->mem && vm->mem != MAP_FAILED)
		munmap(vm->mem, MEM_SIZE);
	if (vm->vcpu > 0)
		close(vm->vcpu);
	if (vm->vm > 0)
		close(vm->vm);
	memset(vm, 0, sizeof(*vm));
}

/* Run the guest from `ip` until HLT or an unexpected exit (at most 32 exits). */
static struct outcome run_phase(struct vm *vm, uint16_t ip)
{
	struct outcome o;
	struct kvm_regs regs;
	int i;

	memset(&o, 0, sizeof(o));
	memset(&regs, 0, sizeof(regs));
	regs.rip = ip;
	regs.rflags = 2;
	regs.rsp = STACK_TOP;
	if (ioctl(vm->vcpu, KVM_SET_SREGS, &vm->sregs0) < 0 ||
	    ioctl(vm->vcpu, KVM_SET_REGS, &regs) < 0) {
		note("KVM_SET_SREGS/REGS: %s", strerror(errno));
		o.exit_reason = 0xffffffff;
		return o;
	}
	for (i = 0; i < 32; i++) {
		struct kvm_run *run = vm->run;
		int r;

		do
			r = ioctl(vm->vcpu, KVM_RUN, 0);
		while (r < 0 && errno == EINTR);
		if (r < 0) {
			note("KVM_RUN: %s", strerror(errno));
			o.exit_reason = 0xffffffff;
			return o;
		}
		o.exit_reason = run->exit_reason;
		if (run->exit_reason == KVM_EXIT_HLT) {
			o.halted = 1;
			return o;
		}
		if (run->exit_reason == KVM_EXIT_IO &&
		    run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 1) {
			uint8_t v = *((uint8_t *)run + run->io.data_offset);

			if (run->io.port == PORT_VAL && o.nvals < 16)
				o.vals[o.nvals++] = v;
			else if (run->io.port == PORT_UD)
				o.ud = 1;
			else if (run->io.port == PORT_OTHER)
				o.other = 1;
			continue;
		}
		note("unexpected exit %u", run->exit_reason);
		return o;
	}
	note("more than 32 exits");
	return o;
}

static void on_usr1(int sig)
{
	(void)sig;
}

/*
 * One KVM_RUN from `ip` that a child interrupts with SIGUSR1 after 2 s:
 * 0 if it returned EINTR with no guest output (the guest made no progress),
 * 1 if the guest produced an exit, -1 on errors.
 */
static int stuck_until_signal(struct vm *vm, uint16_t ip)
{
	struct sigaction sa;
	struct kvm_regs regs;
	pid_t parent = getpid(), child;
	int r, saved, st;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1; /* no SA_RESTART: KVM_RUN returns EINTR */
	if (sigaction(SIGUSR1, &sa, NULL) < 0)
		return -1;
	memset(&regs, 0, sizeof(regs));
	regs.rip = ip;
	regs.rflags = 2;
	regs.rsp = STACK_TOP;
	if (ioctl(vm->vcpu, KVM_SET_SREGS, &vm->sregs0) < 0 ||
	    ioctl(vm->vcpu, KVM_SET_REGS, &regs) < 0)
		return -1;
	child = fork();
	if (child < 0)
		return -1;
	if (child == 0) {
		sleep(2);
		kill(parent, SIGUSR1);
		_exit(0);
	}
	r = ioctl(vm->vcpu, KVM_RUN, 0);
	saved = errno;
	waitpid(child, &st, 0);
	if (r < 0 && saved == EINTR)
		return 0;
	note("KVM_RUN returned %d (%s), exit %u", r, r < 0 ? strerror(saved) : "ok",
	     vm->run->exit_reason);
	return 1;
}

static void describe(const char *what, const struct outcome *o)
{
	char buf[128];
	int i, n = 0;

	buf[0] = 0;
	for (i = 0; i < o->nvals && n < (int)sizeof(buf) - 8; i++)
		n += snprintf(buf + n, sizeof(buf) - n, " %02x", o->vals[i]);
	note("%s: values [%s ] ud=%d other=%d halted=%d last exit %u", what, buf,
	     o->ud, o->other, o->halted, o->exit_reason);
}

static int vals_are(const struct outcome *o, const uint8_t *want, int n)
{
	return o->nvals == n && memcmp(o->vals, want, n) == 0;
}

/* ------------------------------------------------------------ the module */

static int dev_open(void)
{
	return open("/dev/" XOS_VMFUNC_DEVICE_NAME, O_RDWR | O_CLOEXEC);
}

static int attach(int dev, int vm_fd)
{
	struct xos_vmfunc_attach a;

	memset(&a, 0, sizeof(a));
	a.vm_fd = vm_fd;
	return xioctl(dev, XOS_VMFUNC_ATTACH, &a);
}

static int create_view(int dev, uint32_t flags, uint32_t *view)
{
	struct xos_vmfunc_view v;
	int e;

	memset(&v, 0, sizeof(v));
	v.flags = flags;
	e = xioctl(dev, XOS_VMFUNC_CREATE_VIEW, &v);
	*view = v.view;
	return e;
}

static int destroy_view(int dev, uint32_t view)
{
	struct xos_vmfunc_view v;

	memset(&v, 0, sizeof(v));
	v.view = view;
	return xioctl(dev, XOS_VMFUNC_DESTROY_VIEW, &v);
}

static int map(int dev, uint32_t view, uint32_t prot, uint64_t gpa, uint64_t size,
	       uint64_t src)
{
	struct xos_vmfunc_map m;

	memset(&m, 0, sizeof(m));
	m.view = view;
	m.prot = prot;
	m.gpa = gpa;
	m.size = size;
	m.source_gpa = src;
	return xioctl(dev, XOS_VMFUNC_MAP, &m);
}

static int vcpu_op(int dev, unsigned long req, uint32_t id)
{
	struct xos_vmfunc_vcpu v;

	memset(&v, 0, sizeof(v));
	v.vcpu_id = id;
	return xioctl(dev, req, &v);
}

static int status(int dev, uint32_t id, struct xos_vmfunc_vcpu_status *s)
{
	memset(s, 0, sizeof(*s));
	s->vcpu_id = id;
	return xioctl(dev, XOS_VMFUNC_VCPU_STATUS, s);
}

static int set_view(int dev, uint32_t id, uint32_t view, uint64_t reserved)
{
	struct xos_vmfunc_vcpu_view v;

	memset(&v, 0, sizeof(v));
	v.vcpu_id = id;
	v.view = view;
	v.reserved = reserved;
	return xioctl(dev, XOS_VMFUNC_SET_VCPU_VIEW, &v);
}

static long refcnt(void)
{
	char buf[32];
	long n;
	int fd = open("/sys/module/xos_vmfunc/refcnt", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return strtol(buf, NULL, 10);
}

/* Run fn in a child process; its exit status (0..255), or -1. */
static int in_child(int (*fn)(void *), void *arg)
{
	int st;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(fn(arg) & 0xff);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

/* Child: attach the parent's VM (inherited fd) through a fresh device fd. */
static int child_attach_foreign(void *arg)
{
	int vm_fd = *(int *)arg;
	int dev = dev_open();

	if (dev < 0)
		return 100;
	return attach(dev, vm_fd);
}

/* Child: use the parent's attached device fd (inherited). */
static int child_use_parent_dev(void *arg)
{
	int dev = *(int *)arg;
	struct xos_vmfunc_vcpu_status s;

	return status(dev, 0, &s);
}

int main(void)
{
	static const uint8_t want_switch[] = { 0xa0, 0xb1, 0xc1, 0xb2, 0xa0 };
	struct xos_vmfunc_info info;
	struct xos_vmfunc_vcpu_status st;
	struct outcome o;
	struct vm vm, vm2;
	uint32_t v1 = 0, v2 = 0, v3 = 0;
	int dev, e, e2, e3, pipefd[2], null_fd, r;
	long rc;

	memset(&o, 0, sizeof(o));
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);
	alarm(60);
	note("vmfunc_test: xos_vmfunc.ko, ABI %d", XOS_VMFUNC_ABI_VERSION);

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		bail("open /dev/kvm: %s", strerror(errno));
	e = vm_create(&vm);
	if (e)
		bail("create a VM with 64 KiB and one vCPU: %s", err_name(e));

	/* ---------------------------------------------------------- device */
	dev = dev_open();
	if (dev < 0)
		bail("open /dev/%s: %s", XOS_VMFUNC_DEVICE_NAME, strerror(errno));
	ok(1, "open /dev/%s", XOS_VMFUNC_DEVICE_NAME);

	memset(&info, 0xff, sizeof(info));
	e = xioctl(dev, XOS_VMFUNC_GET_INFO, &info);
	note("info: abi %u, max_views %u, caps %#llx, missing %#llx, flags %#x", info.abi_version,
	     info.max_views, (unsigned long long)info.caps,
	     (unsigned long long)info.missing, info.flags);
	ok(!e && info.abi_version == XOS_VMFUNC_ABI_VERSION &&
		   info.max_views == XOS_VMFUNC_MAX_VIEWS && info.reserved0 == 0 &&
		   info.reserved[0] == 0 && info.reserved[3] == 0,
	   "GET_INFO: ABI version %d, %d views, reserved fields zero", XOS_VMFUNC_ABI_VERSION,
	   XOS_VMFUNC_MAX_VIEWS);
	ok(!e && (info.flags & XOS_VMFUNC_INFO_USABLE) && info.missing == 0,
	   "GET_INFO: EPTP switching usable on this CPU (nothing missing)");

	e = create_view(dev, 0, &v1);
	ok(e == ENOTCONN, "CREATE_VIEW before ATTACH fails with ENOTCONN (%s)", err_name(e));
	e = set_view(dev, 0, 0, 0);
	ok(e == ENOTCONN, "SET_VCPU_VIEW before ATTACH fails with ENOTCONN (%s)", err_name(e));

	/* ----------------------------------------------- attach: refusals */
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	e = attach(dev, null_fd);
	ok(e == EINVAL, "ATTACH /dev/null (not a KVM VM) fails with EINVAL (%s)", err_name(e));
	if (pipe(pipefd) < 0)
		bail("pipe: %s", strerror(errno));
	e = attach(dev, pipefd[0]);
	ok(e == EINVAL, "ATTACH a pipe fails with EINVAL (%s)", err_name(e));
	e = attach(dev, kvm_fd);
	ok(e == EINVAL, "ATTACH the /dev/kvm system fd (not a VM) fails with EINVAL (%s)",
	   err_name(e));
	e = attach(dev, -1);
	e2 = attach(dev, 1000);
	ok(e == EBADF && e2 == EBADF, "ATTACH fd -1 and a closed fd fail with EBADF (%s, %s)",
	   err_name(e), err_name(e2));
	close(null_fd);
	close(pipefd[0]);
	close(pipefd[1]);
	{
		struct xos_vmfunc_attach a;

		memset(&a, 0, sizeof(a));
		a.vm_fd = vm.vm;
		a.reserved[1] = 1;
		e = xioctl(dev, XOS_VMFUNC_ATTACH, &a);
		memset(&a, 0, sizeof(a));
		a.vm_fd = vm.vm;
		a.flags = 1;
		e2 = xioctl(dev, XOS_VMFUNC_ATTACH, &a);
		ok(e == EINVAL && e2 == EINVAL,
		   "ATTACH with a non-zero reserved field or flag fails with EINVAL (%s, %s)",
		   err_name(e), err_name(e2));
	}
	r = in_child(child_attach_foreign, &vm.vm);
	ok(r == EPERM, "ATTACH of another process's VM (fork child, inherited VM fd) fails with EPERM (%s)",
	   r < 0 ? "child died" : err_name(r));

	/* ----------------------------------------------------------- attach */
	e = attach(dev, vm.vm);
	if (e)
		bail("ATTACH own VM: %s", err_name(e));
	ok(1, "ATTACH own VM");
	e = attach(dev, vm.vm);
	ok(e == EBUSY, "a second ATTACH on the same fd fails with EBUSY (%s)", err_name(e));
	rc = refcnt();
	ok(rc >= 2, "module refcnt %ld >= 2 while attached (open file + attachment)", rc);

	/* (1) stock behaviour before ENABLE */
	o = run_phase(&vm, PH_PRE);
	describe("before any view", &o);
	ok(vals_are(&o, (const uint8_t[]){ 0xa0 }, 1) && o.ud && !o.other && o.halted,
	   "before ENABLE: the guest reads 0xa0 at X and VMFUNC gives #UD");
	e = status(dev, 0, &st);
	note("status: flags %#x view %#x vm_function_control %#llx", st.flags, st.current_view,
	     (unsigned long long)st.vm_function_control);
	ok(!e && st.vm_function_control == 0 && !(st.flags & XOS_VMFUNC_VCPU_SWITCHING) &&
		   st.current_view == XOS_VMFUNC_VIEW_KVM,
	   "VCPU_STATUS before ENABLE: VM_FUNCTION_CONTROL 0, on KVM's root (%s)", err_name(e));

	/* ------------------------------------------------------------ views */
	e = create_view(dev, 0, &v1);
	e2 = create_view(dev, 0, &v2);
	ok(!e && !e2 && v1 == 1 && v2 == 2, "CREATE_VIEW twice gives views 1 and 2 (%s, %s; %u, %u)",
	   err_name(e), err_name(e2), v1, v2);
	e = map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, S1_GPA);
	e2 = map(dev, v2, XOS_VMFUNC_PROT_READ | XOS_VMFUNC_PROT_EXEC, X_GPA, 0x1000, S2_GPA);
	ok(!e && !e2, "MAP X -> S1 (RWX) in view 1 and X -> S2 (RX) in view 2 (%s, %s)",
	   err_name(e), err_name(e2));
	e = map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, 0x100000);
	e2 = map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x2000, MEM_SIZE - 0x1000);
	ok(e == EINVAL && e2 == EINVAL,
	   "MAP from a source outside the memslots (wholly, partly) fails with EINVAL (%s, %s)",
	   err_name(e), err_name(e2));
	{
		int bad = 0;
		struct xos_vmfunc_map m;

		bad += map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA + 1, 0x1000, S1_GPA) == EINVAL;
		bad += map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0, S1_GPA) == EINVAL;
		bad += map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, S1_GPA + 8) == EINVAL;
		bad += map(dev, v1, XOS_VMFUNC_PROT_WRITE, X_GPA, 0x1000, S1_GPA) == EINVAL;
		bad += map(dev, v1, 0, X_GPA, 0x1000, S1_GPA) == EINVAL;
		bad += map(dev, v1, 8, X_GPA, 0x1000, S1_GPA) == EINVAL;
		bad += map(dev, 0, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, S1_GPA) == EINVAL;
		bad += map(dev, 9, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, S1_GPA) == EINVAL;
		bad += map(dev, v1, XOS_VMFUNC_PROT_ALL, 0xfffffffffffff000ULL, 0x2000, S1_GPA) == EINVAL;
		bad += map(dev, v1, XOS_VMFUNC_PROT_ALL, 1ULL << 48, 0x1000, S1_GPA) == EINVAL;
		memset(&m, 0, sizeof(m));
		m.view = v1;
		m.prot = XOS_VMFUNC_PROT_ALL;
		m.gpa = X_GPA;
		m.size = 0x1000;
		m.source_gpa = S1_GPA;
		m.reserved[0] = 1;
		bad += xioctl(dev, XOS_VMFUNC_MAP, &m) == EINVAL;
		ok(bad == 11, "MAP refuses (EINVAL) unaligned, empty, write-only, no/unknown prot, view 0, "
			      "missing view, overflowing, above 2^48, reserved!=0 (%d of 11)", bad);
	}

	o = run_phase(&vm, PH_PRE);
	describe("views made, not enabled", &o);
	ok(vals_are(&o, (const uint8_t[]){ 0xa0 }, 1) && o.ud && !o.other,
	   "views exist but before ENABLE VMFUNC still gives #UD");

	e = set_view(dev, 0, v1, 0);
	ok(e == EINVAL, "SET_VCPU_VIEW before ENABLE_VCPU fails with EINVAL (%s)", err_name(e));

	/* (2) enable and switch */
	e = vcpu_op(dev, XOS_VMFUNC_ENABLE_VCPU, 0);
	ok(!e, "ENABLE_VCPU 0 (%s)", err_name(e));
	e = vcpu_op(dev, XOS_VMFUNC_ENABLE_VCPU, 7);
	ok(e == ENOENT, "ENABLE_VCPU of a missing vCPU fails with ENOENT (%s)", err_name(e));
	e = status(dev, 0, &st);
	note("status: flags %#x view %#x vm_function_control %#llx", st.flags, st.current_view,
	     (unsigned long long)st.vm_function_control);
	ok(!e && (st.vm_function_control & 1) && (st.flags & XOS_VMFUNC_VCPU_SWITCHING) &&
		   (st.flags & XOS_VMFUNC_VCPU_ENABLED),
	   "VCPU_STATUS after ENABLE: VM_FUNCTION_CONTROL bit 0 set (%s)", err_name(e));

	/* SET_VCPU_VIEW: the guest starts in a view without executing VMFUNC. */
	e = set_view(dev, 0, v1, 0);
	memset(&o, 0, sizeof(o));
	if (!e) {
		o = run_phase(&vm, PH_READ);
		describe("SET_VCPU_VIEW 1, no vmfunc", &o);
	}
	e2 = status(dev, 0, &st);
	ok(!e && vals_are(&o, (const uint8_t[]){ 0xb1 }, 1) && !o.ud && !o.other && o.halted &&
		   !e2 && st.current_view == v1,
	   "SET_VCPU_VIEW 1: without VMFUNC the guest reads b1 (view 1) at X and stays in view 1 "
	   "(%s; view %#x)",
	   err_name(e), st.current_view);
	e = set_view(dev, 0, 0, 0);
	memset(&o, 0, sizeof(o));
	if (!e) {
		o = run_phase(&vm, PH_READ);
		describe("SET_VCPU_VIEW 0", &o);
	}
	e2 = status(dev, 0, &st);
	ok(!e && vals_are(&o, (const uint8_t[]){ 0xa0 }, 1) && !o.ud && !o.other && o.halted &&
		   !e2 && st.current_view == 0,
	   "SET_VCPU_VIEW 0: the guest reads a0 (base view) at X (%s; view %#x)", err_name(e),
	   st.current_view);
	e = set_view(dev, 0, 5, 0);
	e2 = set_view(dev, 0, XOS_VMFUNC_MAX_VIEWS, 0);
	e3 = set_view(dev, 0, v1, 1);
	ok(e == EINVAL && e2 == EINVAL && e3 == EINVAL,
	   "SET_VCPU_VIEW refuses (EINVAL) an empty view slot, a view >= max_views, reserved != 0 "
	   "(%s, %s, %s)",
	   err_name(e), err_name(e2), err_name(e3));
	e = set_view(dev, 7, v1, 0);
	ok(e == ENOENT, "SET_VCPU_VIEW of a missing vCPU fails with ENOENT (%s)", err_name(e));

	o = run_phase(&vm, PH_SWITCH);
	describe("switching", &o);
	ok(vals_are(&o, want_switch, 5) && !o.ud && !o.other && o.halted,
	   "the guest reads a0 (KVM), b1 (view 1), c1 (its write in view 1), b2 (view 2), a0 (view 0) at one GPA");
	ok(vm.mem[S1_GPA] == 0xc1 && vm.mem[X_GPA] == 0xa0 && vm.mem[S2_GPA] == 0xb2,
	   "the write in view 1 landed in S1 (host sees %02x at S1, %02x at X, %02x at S2)",
	   vm.mem[S1_GPA], vm.mem[X_GPA], vm.mem[S2_GPA]);
	e = status(dev, 0, &st);
	ok(!e && st.current_view == 0, "after VMFUNC(0) the vCPU runs in the module's base view 0 (view %#x, %s)",
	   st.current_view, err_name(e));

	/* (3) empty slots */
	o = run_phase(&vm, PH_EMPTY);
	describe("vmfunc(5)", &o);
	ok(o.nvals == 0 && o.ud && !o.other, "VMFUNC to an empty list slot (5) gives #UD");
	o = run_phase(&vm, PH_BIG);
	describe("vmfunc(600)", &o);
	ok(o.nvals == 0 && o.ud && !o.other, "VMFUNC to slot 600 (beyond the list) gives #UD");

	/* (4) dirty logging */
	e = set_slot(&vm, 0, KVM_MEM_LOG_DIRTY_PAGES, 0, MEM_SIZE, vm.mem);
	if (e) {
		skip("KVM refused dirty logging", "dirty logging refused while views are active (%s)",
		     err_name(e));
	} else {
		e = map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, S1_GPA);
		e2 = vcpu_op(dev, XOS_VMFUNC_ENABLE_VCPU, 0);
		e3 = create_view(dev, 0, &v3);
		ok(e == EBUSY && e2 == EBUSY && e3 == EBUSY,
		   "with dirty logging on, MAP, ENABLE_VCPU and CREATE_VIEW fail with EBUSY (%s, %s, %s)",
		   err_name(e), err_name(e2), err_name(e3));
		e = set_slot(&vm, 0, 0, 0, MEM_SIZE, vm.mem);
		e2 = map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, S1_GPA);
		ok(!e && !e2, "dirty logging off again: MAP works (%s, %s)", err_name(e), err_name(e2));
	}

	/* A live view changes under an enabled vCPU (INVEPT makes it visible). */
	e = map(dev, v2, XOS_VMFUNC_PROT_READ, X_GPA, 0x1000, S1_GPA);
	o = run_phase(&vm, PH_SWITCH);
	describe("view 2 remapped to S1", &o);
	ok(!e && vals_are(&o, (const uint8_t[]){ 0xa0, 0xc1, 0xc1, 0xc1, 0xa0 }, 5) && !o.ud &&
		   !o.other,
	   "MAP while enabled: view 2 now shows S1 (c1) where it showed S2 before (%s)",
	   err_name(e));
	{
		struct xos_vmfunc_map m;

		memset(&m, 0, sizeof(m));
		m.view = v2;
		m.gpa = 0xc000;
		m.size = 0x2000;
		e = xioctl(dev, XOS_VMFUNC_UNMAP, &m);
		m.prot = XOS_VMFUNC_PROT_READ;
		e2 = xioctl(dev, XOS_VMFUNC_UNMAP, &m);
		m.prot = 0;
		m.source_gpa = 0x1000;
		e3 = xioctl(dev, XOS_VMFUNC_UNMAP, &m);
		ok(!e && e2 == EINVAL && e3 == EINVAL,
		   "UNMAP of an unused range works; with prot or source_gpa set: EINVAL (%s, %s, %s)",
		   err_name(e), err_name(e2), err_name(e3));
	}

	/* Someone else's process may not use the attached fd. */
	r = in_child(child_use_parent_dev, &dev);
	ok(r == EPERM, "a fork child using the attached fd gets EPERM (%s)",
	   r < 0 ? "child died" : err_name(r));

	/* disable */
	e = destroy_view(dev, v2);
	ok(e == EBUSY, "DESTROY_VIEW while a vCPU is enabled fails with EBUSY (%s)", err_name(e));
	e = vcpu_op(dev, XOS_VMFUNC_DISABLE_VCPU, 0);
	e2 = status(dev, 0, &st);
	ok(!e && !e2 && st.vm_function_control == 0 && !(st.flags & XOS_VMFUNC_VCPU_ENABLED),
	   "DISABLE_VCPU 0 clears VM_FUNCTION_CONTROL (%s, %s)", err_name(e), err_name(e2));
	o = run_phase(&vm, PH_PRE);
	describe("after DISABLE", &o);
	e = status(dev, 0, &st);
	ok(vals_are(&o, (const uint8_t[]){ 0xa0 }, 1) && o.ud && !o.other && !e &&
		   st.current_view == XOS_VMFUNC_VIEW_KVM,
	   "after DISABLE: #UD again and the vCPU is back on KVM's own root (view %#x)",
	   st.current_view);
	e = destroy_view(dev, v2);
	e2 = destroy_view(dev, v2);
	ok(!e && e2 == EINVAL, "DESTROY_VIEW 2 (%s), then again: EINVAL (%s)", err_name(e),
	   err_name(e2));

	/* (6) unload blocked while attached (and enabled) */
	e = vcpu_op(dev, XOS_VMFUNC_ENABLE_VCPU, 0);
	ok(!e, "ENABLE_VCPU 0 again (%s)", err_name(e));
	if (syscall(SYS_delete_module, "xos_vmfunc", O_NONBLOCK) == 0) {
		ok(0, "delete_module(xos_vmfunc) while attached must fail, but it succeeded");
	} else if (errno == EPERM) {
		skip("not root", "delete_module while attached fails");
	} else {
		e = errno;
		ok(e == EWOULDBLOCK || e == EBUSY,
		   "delete_module(xos_vmfunc, O_NONBLOCK) while attached fails with EBUSY/EWOULDBLOCK (%s)",
		   err_name(e));
	}

	/* (5) release on close (with a vCPU still enabled) */
	close(dev);
	rc = refcnt();
	ok(rc == 0, "close: module refcnt back to 0 (%ld)", rc);
	o = run_phase(&vm, PH_PRE);
	describe("after close", &o);
	ok(vals_are(&o, (const uint8_t[]){ 0xa0 }, 1) && o.ud && !o.other,
	   "after close the VM still runs and VMFUNC gives #UD (fields cleared)");

	dev = dev_open();
	e = dev < 0 ? errno : attach(dev, vm.vm);
	e2 = e ? e : create_view(dev, 0, &v1);
	e3 = e2 ? e2 : vcpu_op(dev, XOS_VMFUNC_ENABLE_VCPU, 0);
	ok(!e3, "re-open, ATTACH, CREATE_VIEW, ENABLE_VCPU on the same VM (%s)", err_name(e3));
	o = run_phase(&vm, PH_PRE);
	describe("re-attached", &o);
	ok(o.nvals == 2 && o.vals[0] == 0xa0 && o.vals[1] == 0xa0 && !o.ud && !o.other,
	   "a fresh (mirror) view 1 shows the same a0 at X, without #UD");

	/* Memslot removal while views map it. */
	{
		uint8_t *extra = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (extra == MAP_FAILED)
			bail("mmap: %s", strerror(errno));
		extra[0] = 0xd0;
		e = set_slot(&vm, 1, 0, SLOT1_GPA, 0x1000, extra);
		e2 = e ? e : map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, SLOT1_GPA);
		note("new memslot 1 after the views: %s; MAP from it: %s (ESTALE expected)",
		     err_name(e), err_name(e2));
		ok(!e && e2 == ESTALE, "a memslot added after the views makes MAP fail with ESTALE (%s)",
		   err_name(e2));
		e = set_slot(&vm, 1, 0, SLOT1_GPA, 0, extra);
		e2 = map(dev, v1, XOS_VMFUNC_PROT_ALL, X_GPA, 0x1000, X_GPA);
		ok(!e && !e2, "deleting that memslot (KVM ioctl returns) makes the views current again (%s, %s)",
		   err_name(e), err_name(e2));
		munmap(extra, 0x1000);
	}

	/* Destroy the VM first: the attachment keeps it alive until close. */
	vm_destroy(&vm);
	close(dev);
	rc = refcnt();
	ok(rc == 0, "VM fds closed first, then the device: refcnt 0 (%ld)", rc);

	/*
	 * A second VM: everything works again after the first was torn down;
	 * enabled before its first run; a memslot removed while a view maps it.
	 */
	e = vm_create(&vm2);
	if (!e) {
		uint8_t *extra = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (extra == MAP_FAILED)
			bail("mmap: %s", strerror(errno));
		extra[0] = 0xd0;
		e = set_slot(&vm2, 1, 0, SLOT1_GPA, 0x1000, extra);
		dev = e ? -1 : dev_open();
		e = e ? e : dev < 0 ? errno : attach(dev, vm2.vm);
		e2 = e ? e : create_view(dev, XOS_VMFUNC_VIEW_EMPTY, &v1);
		e3 = e2 ? e2 : map(dev, v1, XOS_VMFUNC_PROT_ALL, 0, MEM_SIZE, 0);
		if (!e3)
			e3 = map(dev, v1, XOS_VMFUNC_PROT_READ, X_GPA, 0x1000, S2_GPA);
		if (!e3)
			e3 = map(dev, v1, XOS_VMFUNC_PROT_READ, Y_GPA, 0x1000, SLOT1_GPA);
		if (!e3)
			e3 = vcpu_op(dev, XOS_VMFUNC_ENABLE_VCPU, 0);
		e = e3 ? e3 : set_view(dev, 0, v1, 0);
		ok(!e3 && e == EAGAIN,
		   "SET_VCPU_VIEW before the vCPU's first KVM_RUN (KVM has no root yet) fails with "
		   "EAGAIN (%s)",
		   err_name(e));
		memset(&o, 0, sizeof(o));
		if (!e3) {
			o = run_phase(&vm2, PH_PRE);
			describe("second VM, empty view + MAP", &o);
		}
		ok(!e3 && vals_are(&o, (const uint8_t[]){ 0xa0, 0xb2 }, 2) && !o.ud,
		   "a second VM, enabled before its first run: EMPTY view filled by MAP, X -> S2 read-only: reads a0 then b2 (%s)",
		   err_name(e3));
		memset(&o, 0, sizeof(o));
		if (!e3) {
			o = run_phase(&vm2, PH_Y);
			describe("Y from memslot 1", &o);
		}
		ok(!e3 && vals_are(&o, (const uint8_t[]){ 0xd0 }, 1) && !o.ud,
		   "Y mapped from a second memslot reads d0 in view 1");
		e = e3 ? e3 : set_slot(&vm2, 1, 0, SLOT1_GPA, 0, extra);
		e2 = e ? e : map(dev, v1, XOS_VMFUNC_PROT_READ, Y_GPA, 0x1000, SLOT1_GPA);
		ok(!e && e2 == EINVAL,
		   "memslot 1 deleted while view 1 maps it: KVM's ioctl returns (%s), MAP from it now EINVAL (%s)",
		   err_name(e), err_name(e2));
		if (!e) {
			r = stuck_until_signal(&vm2, PH_Y);
			ok(r == 0, "with memslot 1 gone, view 1 no longer maps Y: the guest loops on EPT "
				   "violations until a signal stops KVM_RUN (%s)",
			   r == 0 ? "EINTR, no output" : r == 1 ? "it read something" : "error");
		} else {
			ok(0, "memslot removal not reached");
		}
		e = e ? e : map(dev, v1, XOS_VMFUNC_PROT_READ, Y_GPA, 0x1000, S1_GPA);
		memset(&o, 0, sizeof(o));
		if (!e) {
			o = run_phase(&vm2, PH_Y);
			describe("Y remapped to S1", &o);
		}
		ok(!e && vals_are(&o, (const uint8_t[]){ 0xb1 }, 1) && !o.ud,
		   "after the removal Y remapped to S1 reads b1 (%s)", err_name(e));
		if (dev >= 0)
			close(dev);
		vm_destroy(&vm2);
		munmap(extra, 0x1000);
	} else {
		ok(0, "create a second VM: %s", err_name(e));
	}
	rc = refcnt();
	ok(rc == 0, "at the end the module refcnt is 0 (%ld): rmmod can follow", rc);
	finish();
	return 0;
}
