// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * pkvm: /dev/pkvm, the Linux host's door to pkvm-rs's VMs.
 *
 * A user-space VMM (pkvm-vmm, crates/vmm-bin) opens /dev/pkvm once per VM and drives it with
 * the ioctls of pkvm_uapi.h. The module owns what EL2 needs to be host memory it can trust the
 * host kernel with: the VM descriptor, the stage-2 memcache, one state page and one FP page per
 * vCPU (all shared with EL2, pinned there until the teardown) and the guest's RAM (donated to
 * a protected VM, shared with a non-protected one). User space sees only the vCPU state pages
 * (mmap), which is where EL2 publishes each exit and where the VMM writes its answer and the
 * list registers that deliver interrupts.
 *
 * Running a vCPU is a loop of VcpuRun hypercalls: a physical interrupt ends a run (EL2 routes
 * them to itself while a guest runs), Linux takes it as soon as the hypercall returns, and the
 * module runs the guest again unless a signal is pending (-EINTR: how a VMM kicks a vCPU
 * thread out of the guest) or the guest's own virtual timer fired (user space delivers it).
 * Between runs the thread may be preempted like any other. Two timer PPIs need the module:
 *  - EL2 preempts a guest at the host's next timer deadline with its own timer (CNTHP, PPI
 *    26), which Linux's GIC driver disabled at boot: the module requests and enables it on
 *    every CPU (its handler has nothing to do: EL2 stops the timer before it returns);
 *  - the guest's virtual timer raises the host's virtual-timer PPI (27) while the guest runs.
 *    Once user space has put the interrupt in a list register, the module keeps PPI 27
 *    disabled on its CPU for the run (as KVM does for a guest timer without a hardware-mapped
 *    interrupt), so the guest takes its virtual interrupt instead of exiting again at once.
 *
 * Releasing the file (close, exit, SIGKILL) destroys the VM: VmTeardown and VmReclaim in
 * bounded batches (EL2 zeroes every donated page), the structures unshared, every page freed.
 * Bad arguments get an errno and change nothing.
 *
 * Our own code for pkvm-rs (not derived from Linux's KVM or pKVM).
 */
#include <linux/arm-smccc.h>
#include <linux/cpuhotplug.h>
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/of.h>
#include <linux/of_irq.h>
#include <linux/percpu.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <asm/barrier.h>
#include <asm/cacheflush.h>
#include <asm/sysreg.h>

#include "pkvm_el2_count.h"
#include "pkvm_hcalls.h"
#include "pkvm_uapi.h"

#define EXIT_IRQ 5
#define GUEST_PROT_RWX 7
#define VM_FLAG_PROTECTED 1
#define VM_IPA_BITS 40
/* The stage-2 memcache: 64 pages, the most VmInit takes. */
#define MEMCACHE_ORDER 6
/* Most pages one donation or share hypercall covers (bounded work per call at EL2). */
#define MAX_RUN 512

/* struct VcpuState (crates/abi/src/guest.rs): the exit record's and the saved virtual timer's offsets. */
#define VCPU_EXIT_REASON 472
#define VCPU_EXIT_IPA 496
#define VCPU_EXIT_SIZE 504
#define VCPU_EXIT_WRITE 512
#define VCPU_EXIT_DATA 520
#define EXIT_MMIO 3
#define VCPU_SYS_OFF 264
#define SYS_CNTV_CTL 22
#define SYS_CNTV_CVAL 23
#define CNTV_ENABLE 1UL
#define CNTV_IMASK 2UL
#define CNTV_ISTATUS 4UL

/* struct VmDesc. */
struct pkvm_vm_desc {
	u64 ipa_bits, nr_vcpus, host_cookie, flags, mem_ipa, mem_size;
};

static bool measure;
module_param(measure, bool, 0644);
MODULE_PARM_DESC(measure,
		 "count EL2 instructions of every VcpuRun (PMCCNTR filtered to EL2; meaningful under QEMU -icount)");

/* The host's virtual-timer PPI and EL2's timer PPI, as Linux interrupt numbers. */
static int vtimer_irq, hyp_timer_irq;
static DEFINE_PER_CPU(int, hyp_timer_cookie);

struct pkvm_vcpu {
	struct page *state; /* struct VcpuState, mapped by user space */
	struct page *fp; /* struct FpState */
	bool state_shared, fp_shared;
};

struct pkvm_vm {
	struct mutex lock; /* CREATE, LOAD, START; never taken under mmap_lock */
	bool created; /* read without the lock by mmap (acquire) */
	bool started; /* read without the lock by PKVM_RUN (acquire) */
	bool broken; /* a START failed: nothing runs, the release cleans up */
	u64 mem_size, mem_ipa, nr_vcpus, flags;
	unsigned long nr_pages;
	struct page **pages; /* the guest's RAM, page by page */
	struct page *desc;
	bool desc_shared;
	struct page *memcache;
	bool have_handle;
	u64 handle;
	struct pkvm_vcpu vcpus[PKVM_MAX_VCPUS];
	/* The console page, and the ring's head as the module knows it (the page's is a copy). */
	struct page *console;
	spinlock_t console_lock;
	u64 console_head;
	atomic64_t runs, irq_exits, returns, el2_instructions, console_writes, console_reads;
};

/* One hypercall: 0 or a negative errno from EL2, -ENOSYS if EL2 does not know it. */
static long hcall(unsigned long id, unsigned long a1, unsigned long a2, unsigned long a3,
		  unsigned long a4, unsigned long a5, u64 *out)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(PKVM_HVC_BASE | id, a1, a2, a3, a4, a5, &res);
	if (res.a0 != 0)
		return -ENOSYS;
	if (out)
		*out = res.a2;
	return (long)res.a1;
}

/* VcpuRun, its EL2 instructions counted (PMCCNTR at EL2 only) when `measure` is set. */
static long vcpu_run_hcall(struct pkvm_vm *vm, unsigned long idx, u64 *reason)
{
	struct el2_count c;
	long r;

	if (!measure)
		return hcall(HC_VCPU_RUN, vm->handle, idx, 0, 0, 0, reason);
	el2_count_begin(&c);
	r = hcall(HC_VCPU_RUN, vm->handle, idx, 0, 0, 0, reason);
	atomic64_add(el2_count_end(&c), &vm->el2_instructions);
	return r;
}

static u64 vcpu_sys(struct pkvm_vm *vm, unsigned long idx, int reg)
{
	const u64 *sys = page_address(vm->vcpus[idx].state) + VCPU_SYS_OFF;

	return READ_ONCE(sys[reg]);
}

/* Whether vCPU idx's virtual timer holds its interrupt line high (enabled, unmasked, due). */
static bool guest_timer_fired(struct pkvm_vm *vm, unsigned long idx)
{
	u64 ctl = vcpu_sys(vm, idx, SYS_CNTV_CTL);

	if ((ctl & (CNTV_ENABLE | CNTV_IMASK)) != CNTV_ENABLE)
		return false;
	return (ctl & CNTV_ISTATUS) ||
	       read_sysreg(cntvct_el0) >= vcpu_sys(vm, idx, SYS_CNTV_CVAL);
}

static u64 *vcpu_word(struct pkvm_vm *vm, unsigned long idx, unsigned int off)
{
	return (u64 *)(page_address(vm->vcpus[idx].state) + off);
}

/*
 * Whether user space saw vCPU idx's timer due: the counter value it last sampled the timer at
 * (written to the vCPU page before PKVM_RUN) is at or past the deadline. Then the interrupt is
 * in a list register, or the guest cannot take it yet (masked in its GIC), and the module
 * holds the host's PPI 27 for the run; otherwise it returns to user space first.
 */
static bool guest_timer_seen(struct pkvm_vm *vm, unsigned long idx)
{
	return READ_ONCE(*vcpu_word(vm, idx, PKVM_VCPU_TIMER_SAMPLED)) >=
	       vcpu_sys(vm, idx, SYS_CNTV_CVAL);
}

/*
 * An MMIO exit the console page lets the module answer: a 1-byte write to its write_ipa goes
 * into the ring (unless it is full), a 1-byte read of its read_ipa gets read_value. Everything
 * read from the page is user space's and only decides what this VM's guest sees.
 */
static bool console_exit(struct pkvm_vm *vm, unsigned long idx)
{
	struct pkvm_console *c = page_address(vm->console);
	u64 ipa = READ_ONCE(*vcpu_word(vm, idx, VCPU_EXIT_IPA));
	bool done = false;

	if (READ_ONCE(*vcpu_word(vm, idx, VCPU_EXIT_SIZE)) != 1)
		return false;
	if (!READ_ONCE(*vcpu_word(vm, idx, VCPU_EXIT_WRITE))) {
		/* read_ipa before read_value: user space writes them the other way round. */
		if (!ipa || ipa != smp_load_acquire(&c->read_ipa))
			return false;
		WRITE_ONCE(*vcpu_word(vm, idx, VCPU_EXIT_DATA), READ_ONCE(c->read_value) & 0xff);
		atomic64_inc(&vm->console_reads);
		return true;
	}
	if (!ipa || ipa != READ_ONCE(c->write_ipa))
		return false;
	spin_lock(&vm->console_lock);
	/* A tail user space wrote that is not behind the head reads as a full ring. */
	if (vm->console_head - READ_ONCE(c->tail) < PKVM_CONSOLE_RING) {
		c->ring[vm->console_head % PKVM_CONSOLE_RING] =
			READ_ONCE(*vcpu_word(vm, idx, VCPU_EXIT_DATA));
		vm->console_head++;
		smp_store_release(&c->head, vm->console_head);
		done = true;
	}
	spin_unlock(&vm->console_lock);
	if (done)
		atomic64_inc(&vm->console_writes);
	return done;
}

/*
 * Runs vCPU idx until an exit user space handles. Physical interrupts end a run and are taken
 * by Linux when the hypercall returns; the guest runs again unless a signal is pending or its
 * timer fired.
 */
static long pkvm_run(struct pkvm_vm *vm, unsigned long idx)
{
	if (!smp_load_acquire(&vm->started))
		return -ENOEXEC;
	if (idx >= vm->nr_vcpus)
		return -EINVAL;
	for (;;) {
		bool due = guest_timer_fired(vm, idx);
		u64 reason = 0;
		long r;

		if (signal_pending(current))
			return -EINTR;
		/*
		 * A due timer user space has not sampled yet (it fired during a run or an exit
		 * handled here): user space puts it in a list register first.
		 */
		if (due && !guest_timer_seen(vm, idx)) {
			atomic64_inc(&vm->returns);
			return EXIT_IRQ;
		}
		if (due) {
			/* The guest takes its timer's interrupt from its list registers. */
			preempt_disable();
			disable_percpu_irq(vtimer_irq);
			r = vcpu_run_hcall(vm, idx, &reason);
			enable_percpu_irq(vtimer_irq, IRQ_TYPE_NONE);
			preempt_enable();
		} else {
			r = vcpu_run_hcall(vm, idx, &reason);
		}
		if (r)
			return r;
		atomic64_inc(&vm->runs);
		if (reason == EXIT_MMIO && console_exit(vm, idx)) {
			cond_resched();
			continue;
		}
		if (reason != EXIT_IRQ) {
			atomic64_inc(&vm->returns);
			return (long)reason;
		}
		atomic64_inc(&vm->irq_exits);
		cond_resched();
	}
}

static void free_ram(struct pkvm_vm *vm)
{
	unsigned long i;

	if (!vm->pages)
		return;
	for (i = 0; i < vm->nr_pages; i++)
		if (vm->pages[i])
			__free_page(vm->pages[i]);
	kvfree(vm->pages);
	vm->pages = NULL;
}

/* The guest's RAM, zeroed: 2 MiB blocks where Linux has them (fewer, longer runs), else pages. */
static int alloc_ram(struct pkvm_vm *vm)
{
	unsigned long i, j;

	vm->pages = kvcalloc(vm->nr_pages, sizeof(*vm->pages), GFP_KERNEL);
	if (!vm->pages)
		return -ENOMEM;
	for (i = 0; i < vm->nr_pages; i += 512) {
		struct page *p = alloc_pages(GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN |
						     __GFP_NORETRY,
					     9);

		if (p) {
			split_page(p, 9);
			for (j = 0; j < 512; j++)
				vm->pages[i + j] = p + j;
			continue;
		}
		for (j = 0; j < 512; j++) {
			p = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);
			if (!p)
				return -ENOMEM;
			vm->pages[i + j] = p;
		}
	}
	return 0;
}

static long pkvm_create(struct pkvm_vm *vm, const struct pkvm_create *cp)
{
	struct pkvm_create c = *cp;
	unsigned long i;
	int r;

	if (vm->created)
		return -EEXIST;
	if (!c.mem_size || c.mem_size % SZ_2M || c.mem_size > PKVM_MAX_MEM)
		return -EINVAL;
	if (c.mem_ipa % SZ_2M || c.mem_ipa + c.mem_size > (1ULL << VM_IPA_BITS) ||
	    c.mem_ipa + c.mem_size < c.mem_ipa)
		return -EINVAL;
	if (!c.nr_vcpus || c.nr_vcpus > PKVM_MAX_VCPUS || c.flags & ~PKVM_CREATE_PROTECTED)
		return -EINVAL;
	vm->mem_size = c.mem_size;
	vm->mem_ipa = c.mem_ipa;
	vm->nr_vcpus = c.nr_vcpus;
	vm->flags = c.flags;
	vm->nr_pages = c.mem_size >> PAGE_SHIFT;
	r = alloc_ram(vm);
	for (i = 0; !r && i < vm->nr_vcpus; i++) {
		vm->vcpus[i].state = alloc_page(GFP_KERNEL | __GFP_ZERO);
		vm->vcpus[i].fp = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!vm->vcpus[i].state || !vm->vcpus[i].fp)
			r = -ENOMEM;
	}
	if (!r) {
		vm->desc = alloc_page(GFP_KERNEL | __GFP_ZERO);
		vm->memcache = alloc_pages(GFP_KERNEL | __GFP_ZERO, MEMCACHE_ORDER);
		vm->console = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!vm->desc || !vm->memcache || !vm->console)
			r = -ENOMEM;
	}
	if (r) {
		/* Nothing is shared yet: give everything back. */
		free_ram(vm);
		for (i = 0; i < PKVM_MAX_VCPUS; i++) {
			if (vm->vcpus[i].state)
				__free_page(vm->vcpus[i].state);
			if (vm->vcpus[i].fp)
				__free_page(vm->vcpus[i].fp);
			vm->vcpus[i].state = vm->vcpus[i].fp = NULL;
		}
		if (vm->desc)
			__free_page(vm->desc);
		if (vm->memcache)
			__free_pages(vm->memcache, MEMCACHE_ORDER);
		if (vm->console)
			__free_page(vm->console);
		vm->desc = vm->memcache = vm->console = NULL;
		return r;
	}
	smp_store_release(&vm->created, true);
	return 0;
}

/*
 * Cleans [p, p + len) to the point of coherency, by the CPU's smallest data-cache line
 * (CTR_EL0.DminLine): a guest starts with its MMU off and may map its memory non-cacheable.
 */
static void clean_poc(void *p, size_t len)
{
	unsigned long line = 4UL << ((read_sysreg(ctr_el0) >> 16) & 0xf);
	unsigned long a = (unsigned long)p & ~(line - 1), end = (unsigned long)p + len;

	for (; a < end; a += line)
		asm volatile("dc cvac, %0" : : "r"(a) : "memory");
	dsb(sy);
}

static long pkvm_load(struct pkvm_vm *vm, const struct pkvm_load *lp)
{
	struct pkvm_load l = *lp;
	u64 off, done = 0;

	if (!vm->created)
		return -ENOEXEC;
	if (vm->started || vm->broken)
		return -EBUSY;
	if (l.ipa < vm->mem_ipa || l.len > vm->mem_size ||
	    l.ipa - vm->mem_ipa > vm->mem_size - l.len)
		return -EINVAL;
	off = l.ipa - vm->mem_ipa;
	while (done < l.len) {
		u64 at = off + done;
		size_t in_page = min_t(u64, PAGE_SIZE - (at & ~PAGE_MASK), l.len - done);
		void *dst = page_address(vm->pages[at >> PAGE_SHIFT]) + (at & ~PAGE_MASK);

		/* Cleaned at START: by EL2 (donation) or by give_ram (share). */
		if (copy_from_user(dst, u64_to_user_ptr(l.addr + done), in_page))
			return -EFAULT;
		done += in_page;
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	return 0;
}

/* Donates (protected) or shares the guest's RAM, in runs of contiguous pages. */
static long give_ram(struct pkvm_vm *vm)
{
	bool protected = vm->flags & PKVM_CREATE_PROTECTED;
	unsigned long i = 0;

	while (i < vm->nr_pages) {
		unsigned long pfn = page_to_pfn(vm->pages[i]), n = 1;
		u64 gfn = (vm->mem_ipa >> PAGE_SHIFT) + i;
		long r;

		while (i + n < vm->nr_pages && n < MAX_RUN &&
		       page_to_pfn(vm->pages[i + n]) == pfn + n)
			n++;
		if (protected) {
			/* EL2 cleans donated pages to the point of coherency itself. */
			r = hcall(HC_DONATE_GUEST, vm->handle, pfn, gfn, n, 0, NULL);
		} else {
			/*
			 * The zeroes (and the images) must be in memory, not only in the cache:
			 * the guest reads with its MMU off, or through a non-cacheable mapping,
			 * and must not see what the RAM held before.
			 */
			unsigned long k;

			for (k = 0; k < n; k++)
				clean_poc(page_address(vm->pages[i + k]), PAGE_SIZE);
			r = hcall(HC_SHARE_GUEST, vm->handle, pfn, gfn, n, GUEST_PROT_RWX, NULL);
		}
		if (r)
			return r;
		i += n;
		cond_resched();
	}
	return 0;
}

static long share_page(struct page *p, bool *shared)
{
	long r = hcall(HC_SHARE_HYP, page_to_pfn(p), 1, 0, 0, 0, NULL);

	*shared = !r;
	return r;
}

static long pkvm_start(struct pkvm_vm *vm)
{
	struct pkvm_vm_desc *d;
	unsigned long i;
	long r;

	if (!vm->created)
		return -ENOEXEC;
	if (vm->started || vm->broken)
		return -EBUSY;
	d = page_address(vm->desc);
	*d = (struct pkvm_vm_desc){
		.ipa_bits = VM_IPA_BITS,
		.nr_vcpus = vm->nr_vcpus,
		.host_cookie = (u64)task_tgid_nr(current),
		.flags = vm->flags & PKVM_CREATE_PROTECTED ? VM_FLAG_PROTECTED : 0,
		.mem_ipa = vm->mem_ipa,
		.mem_size = vm->mem_size,
	};
	/* From here on a failure leaves a VM only the release can take apart. */
	vm->broken = true;
	r = share_page(vm->desc, &vm->desc_shared);
	if (r)
		return r;
	r = hcall(HC_VM_INIT, page_to_phys(vm->desc), page_to_pfn(vm->memcache),
		  1UL << MEMCACHE_ORDER, 0, 0, &vm->handle);
	if (r)
		return r;
	vm->have_handle = true;
	for (i = 0; i < vm->nr_vcpus; i++) {
		struct pkvm_vcpu *v = &vm->vcpus[i];

		r = share_page(v->state, &v->state_shared);
		if (!r)
			r = share_page(v->fp, &v->fp_shared);
		if (!r)
			r = hcall(HC_VCPU_INIT, vm->handle, page_to_phys(v->state),
				  page_to_phys(v->fp), i, 0, NULL);
		if (r)
			return r;
	}
	r = give_ram(vm);
	if (r)
		return r;
	/* No stale instructions of what the RAM held before the images. */
	asm volatile("ic ialluis" : : : "memory");
	dsb(ish);
	isb();
	vm->broken = false;
	smp_store_release(&vm->started, true);
	return 0;
}

/*
 * Takes the VM apart at EL2 and gives everything back to Linux. A page EL2 did not give back
 * (a teardown that failed: never expected) is leaked on purpose, never freed.
 */
static void pkvm_destroy(struct pkvm_vm *vm)
{
	bool guest_pages_back = true;
	unsigned long i;

	if (vm->have_handle) {
		u64 left = 0;
		long r = hcall(HC_VM_TEARDOWN, vm->handle, 0, 0, 0, 0, &left);

		while (!r && left) {
			cond_resched();
			r = hcall(HC_VM_RECLAIM, vm->handle, 0, 0, 0, 0, &left);
		}
		if (r) {
			pr_err("pkvm: VM %llu: teardown failed (%ld): its pages stay allocated\n",
			       vm->handle, r);
			guest_pages_back = false;
		}
		vm->have_handle = false;
	}
	if (!guest_pages_back)
		return;
	for (i = 0; i < vm->nr_vcpus; i++) {
		struct pkvm_vcpu *v = &vm->vcpus[i];

		if (v->state_shared && hcall(HC_UNSHARE_HYP, page_to_pfn(v->state), 1, 0, 0, 0, NULL))
			v->state = NULL; /* still EL2's: never freed */
		if (v->fp_shared && hcall(HC_UNSHARE_HYP, page_to_pfn(v->fp), 1, 0, 0, 0, NULL))
			v->fp = NULL;
		if (v->state)
			__free_page(v->state);
		if (v->fp)
			__free_page(v->fp);
	}
	if (vm->desc_shared && hcall(HC_UNSHARE_HYP, page_to_pfn(vm->desc), 1, 0, 0, 0, NULL))
		vm->desc = NULL;
	if (vm->desc)
		__free_page(vm->desc);
	if (vm->memcache)
		__free_pages(vm->memcache, MEMCACHE_ORDER);
	free_ram(vm);
}

/* The console page never reaches EL2: it goes back however the teardown went. */
static void free_console(struct pkvm_vm *vm)
{
	if (vm->console)
		__free_page(vm->console);
	vm->console = NULL;
}

static int pkvm_open(struct inode *inode, struct file *file)
{
	struct pkvm_vm *vm = kzalloc(sizeof(*vm), GFP_KERNEL);

	if (!vm)
		return -ENOMEM;
	mutex_init(&vm->lock);
	spin_lock_init(&vm->console_lock);
	file->private_data = vm;
	return 0;
}

static int pkvm_release(struct inode *inode, struct file *file)
{
	struct pkvm_vm *vm = file->private_data;

	if (vm->created) {
		pkvm_destroy(vm);
		free_console(vm);
	}
	kfree(vm);
	return 0;
}

static long pkvm_stat(void __user *arg)
{
	struct pkvm_stat s;
	long r;

	if (copy_from_user(&s, arg, sizeof(s)))
		return -EFAULT;
	r = hcall(HC_STAT, s.selector, 0, 0, 0, 0, &s.value);
	if (r)
		return r;
	return copy_to_user(arg, &s, sizeof(s)) ? -EFAULT : 0;
}

static long pkvm_counts(struct pkvm_vm *vm, void __user *arg)
{
	struct pkvm_counts c = {
		.runs = atomic64_read(&vm->runs),
		.irq_exits = atomic64_read(&vm->irq_exits),
		.returns = atomic64_read(&vm->returns),
		.el2_instructions = atomic64_read(&vm->el2_instructions),
		.console_writes = atomic64_read(&vm->console_writes),
		.console_reads = atomic64_read(&vm->console_reads),
	};

	return copy_to_user(arg, &c, sizeof(c)) ? -EFAULT : 0;
}

static long pkvm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct pkvm_vm *vm = file->private_data;
	void __user *uarg = (void __user *)arg;
	struct pkvm_create c;
	struct pkvm_load l;
	long r;

	switch (cmd) {
	case PKVM_RUN:
		return pkvm_run(vm, arg);
	case PKVM_STAT:
		return pkvm_stat(uarg);
	case PKVM_COUNTS:
		return pkvm_counts(vm, uarg);
	case PKVM_CREATE:
		if (copy_from_user(&c, uarg, sizeof(c)))
			return -EFAULT;
		break;
	case PKVM_LOAD:
		if (copy_from_user(&l, uarg, sizeof(l)))
			return -EFAULT;
		break;
	case PKVM_START:
		break;
	default:
		return -ENOTTY;
	}
	/*
	 * LOAD faults user pages in under the lock (mmap_lock taken for reading): nothing that
	 * runs under mmap_lock (mmap) may take this lock.
	 */
	if (mutex_lock_killable(&vm->lock))
		return -EINTR;
	if (cmd == PKVM_CREATE)
		r = pkvm_create(vm, &c);
	else if (cmd == PKVM_LOAD)
		r = pkvm_load(vm, &l);
	else
		r = pkvm_start(vm);
	mutex_unlock(&vm->lock);
	return r;
}

/* The state pages' mappings: no fault handler (the page is inserted at mmap), no merging. */
static const struct vm_operations_struct pkvm_vm_ops = {};

/*
 * mmap(offset = index * PAGE_SIZE, one page, MAP_SHARED): vCPU index's state page, or the
 * console page (PKVM_CONSOLE_PAGE). Called with mmap_lock held: takes no lock of the VM (the
 * pages and the vCPU count are fixed once `created` is set).
 */
static int pkvm_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct pkvm_vm *vm = file->private_data;
	unsigned long idx = vma->vm_pgoff;

	if (vma->vm_end - vma->vm_start != PAGE_SIZE || !(vma->vm_flags & VM_SHARED) ||
	    vma->vm_flags & VM_EXEC)
		return -EINVAL;
	if (!smp_load_acquire(&vm->created))
		return -ENOEXEC;
	if (idx >= vm->nr_vcpus && idx != PKVM_CONSOLE_PAGE)
		return -EINVAL;
	vma->vm_ops = &pkvm_vm_ops;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_mod(vma, VM_DONTEXPAND | VM_DONTDUMP, VM_MAYEXEC);
#else
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_flags &= ~VM_MAYEXEC;
#endif
	return vm_insert_page(vma, vma->vm_start,
			      idx == PKVM_CONSOLE_PAGE ? vm->console : vm->vcpus[idx].state);
}

static const struct file_operations pkvm_fops = {
	.owner = THIS_MODULE,
	.open = pkvm_open,
	.release = pkvm_release,
	.unlocked_ioctl = pkvm_ioctl,
	.mmap = pkvm_mmap,
	.llseek = noop_llseek,
};

static struct miscdevice pkvm_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "pkvm",
	.fops = &pkvm_fops,
	.mode = 0600,
};

static irqreturn_t hyp_timer_handler(int irq, void *dev)
{
	/* EL2 stops its timer before a run returns: nothing is left to do here. */
	return IRQ_HANDLED;
}

/* CPU hotplug callbacks: Linux's GIC driver disables every PPI of a CPU coming online. */
static int hyp_timer_starting(unsigned int cpu)
{
	enable_percpu_irq(hyp_timer_irq, IRQ_TYPE_NONE);
	return 0;
}

static int hyp_timer_dying(unsigned int cpu)
{
	disable_percpu_irq(hyp_timer_irq);
	return 0;
}

static int hyp_timer_state;

/* The architected timer's PPIs from the device tree: index 2 virtual, index 3 EL2's. */
static int find_timer_irqs(void)
{
	struct device_node *np = of_find_compatible_node(NULL, NULL, "arm,armv8-timer");

	if (!np)
		return -ENODEV;
	vtimer_irq = irq_of_parse_and_map(np, 2);
	hyp_timer_irq = irq_of_parse_and_map(np, 3);
	of_node_put(np);
	return vtimer_irq > 0 && hyp_timer_irq > 0 ? 0 : -ENODEV;
}

static int __init pkvm_init(void)
{
	struct arm_smccc_res res;
	int r;

	BUILD_BUG_ON(sizeof(struct pkvm_vm_desc) != 48);
	BUILD_BUG_ON(sizeof(struct pkvm_console) > PAGE_SIZE);
	BUILD_BUG_ON(PKVM_CONSOLE_PAGE < PKVM_MAX_VCPUS);
	/* EL2's page frames, the RAM's 2 MiB blocks and the mmap offsets are 4 KiB pages. */
	BUILD_BUG_ON(PAGE_SIZE != SZ_4K);
	arm_smccc_1_1_hvc(PKVM_HVC_BASE, &res);
	if (res.a0 != 0 || res.a2 >> 16 != 1 || !(res.a3 & (1UL << 4))) {
		pr_err("pkvm: no pkvm-rs EL2 with protected VMs (VERSION %#lx %#lx %#lx)\n",
		       res.a0, res.a2, res.a3);
		return -ENODEV;
	}
	r = find_timer_irqs();
	if (r) {
		pr_err("pkvm: no architected timer interrupts in the device tree\n");
		return r;
	}
	r = request_percpu_irq(hyp_timer_irq, hyp_timer_handler, "pkvm-el2-timer",
			       &hyp_timer_cookie);
	if (r) {
		pr_err("pkvm: EL2 timer interrupt %d: %d\n", hyp_timer_irq, r);
		return r;
	}
	r = cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "pkvm/el2-timer:online", hyp_timer_starting,
			      hyp_timer_dying);
	if (r < 0) {
		free_percpu_irq(hyp_timer_irq, &hyp_timer_cookie);
		return r;
	}
	hyp_timer_state = r;
	r = misc_register(&pkvm_dev);
	if (r) {
		cpuhp_remove_state(hyp_timer_state);
		free_percpu_irq(hyp_timer_irq, &hyp_timer_cookie);
		return r;
	}
	pr_info("pkvm: /dev/pkvm ready (pkvm-rs ABI %lu.%lu; timer PPIs: virtual irq %d, EL2 irq %d%s)\n",
		res.a2 >> 16, res.a2 & 0xffff, vtimer_irq, hyp_timer_irq,
		measure ? "; measuring EL2 instructions" : "");
	return 0;
}

static void __exit pkvm_exit(void)
{
	misc_deregister(&pkvm_dev);
	cpuhp_remove_state(hyp_timer_state);
	free_percpu_irq(hyp_timer_irq, &hyp_timer_cookie);
}

module_init(pkvm_init);
module_exit(pkvm_exit);
MODULE_DESCRIPTION("pkvm-rs: /dev/pkvm, VMs for user-space VMMs");
MODULE_LICENSE("Dual MIT/GPL");
