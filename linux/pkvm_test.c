// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * pkvm_test: a Linux host driver for pkvm-rs.
 *
 * Wraps pkvm-rs's host ABI (SMCCC vendor-hypervisor calls over HVC, see crates/abi) as
 * pkvm_share_hyp()/pkvm_unshare_hyp() over byte ranges of kernel memory and checks the
 * hypervisor's ownership transitions on real Linux memory when it is loaded: kmalloc'd
 * objects (two in one page: the EL2 refcount path), alloc_pages ranges, donation to EL2 and
 * back, a catalogue of bad requests against real addresses with their exact errors, one
 * kthread per CPU sharing overlapping ranges concurrently, and a 1,000-pair timing loop. It
 * prints "pkvm_test: N passed, M failed" and EL2's statistics.
 *
 * The debug hypercalls (EL2 reading a shared page, giving a donated page back) exist only in
 * pkvm-rs's test build of EL2; against the production EL2 (features without DEBUG_HCALLS) the
 * driver checks that they are refused with NOT_SUPPORTED and skips what needs them.
 *
 * /proc/pkvm_test reads back the summary and the statistics; writing "read-donated" to it
 * makes the writing process read a page donated to EL2: EL2 injects a synchronous external
 * abort, the process oopses and the rest of the system keeps running.
 *
 * Our own code for pkvm-rs (not derived from Linux's pKVM).
 */
#include <linux/arm-smccc.h>
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/cpumask.h>
#include <linux/gfp.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/psci.h>
#include <uapi/linux/psci.h>
#include <asm/cputype.h>
#include <asm/memory.h>
#include <asm/sysreg.h>

#include "pkvm_el2_count.h"
#include "pkvm_hcalls.h"

/* Version's x3 feature bit: debug hypercalls present (test build of EL2 only). */
#define PKVM_FEAT_DEBUG_HCALLS (1UL << 2)
enum pkvm_stat {
	ST_HYP_MAPPED = 0,
	ST_POOL_FREE = 1,
	ST_SHARED = 2,
	ST_FAULTS = 3,
	ST_L1 = 4,
	ST_L2 = 5,
	ST_L3 = 6,
	ST_TABLES = 7,
	ST_INJECTED = 8,
	ST_NR,
};
static const char *const stat_names[ST_NR] = {
	"hyp_mapped_host_pages", "pool_free_pages", "shared_pages",
	"host_stage2_faults", "host_leaves_l1_1g", "host_leaves_l2_2m",
	"host_leaves_l3_4k", "table_pages", "injected_aborts",
};
#define E_PERM (-1L)
#define E_INVAL (-22L)
#define E_RANGE (-34L)
#define ABI_VERSION 0x10000UL

/* QEMU virt: the PL011 console and EL2's image (start of the reserved first 2 MiB of RAM). */
#define VIRT_UART_PA 0x09000000UL
#define VIRT_RAM_BASE 0x40000000UL
#define EL2_IMAGE_PA (VIRT_RAM_BASE + 0x80000UL)

static int passed, failed;
static u64 pair_ns;
/* Whether EL2 offers the debug hypercalls (set from VERSION's feature bits). */
static bool have_debug;

#define CHECK(cond, fmt, ...)                                                \
	do {                                                                 \
		if (cond) {                                                  \
			passed++;                                            \
		} else {                                                     \
			failed++;                                            \
			pr_err("pkvm_test: FAIL %s:%d: " fmt "\n", __func__, \
			       __LINE__, ##__VA_ARGS__);                     \
		}                                                            \
	} while (0)
#define CHECK_EQ(a, b, what)                                               \
	do {                                                               \
		long long _a = (long long)(a), _b = (long long)(b);        \
		CHECK(_a == _b, "%s: got %lld, want %lld", what, _a, _b); \
	} while (0)

/* One hypercall; returns the handler's result (0 or a negative errno) or -ENOSYS. */
static long pkvm_call(unsigned long id, unsigned long a1, unsigned long a2,
		      unsigned long *out)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(PKVM_HVC_BASE | id, a1, a2, &res);
	if (res.a0 != 0)
		return -ENOSYS;
	if (out)
		*out = res.a2;
	return (long)res.a1;
}

static u64 pkvm_stat(enum pkvm_stat s)
{
	unsigned long v = ~0UL;

	if (pkvm_call(HC_STAT, s, 0, &v))
		return ~0ULL;
	return v;
}

/* The pages covering [obj, obj + size) of the linear map, as (pfn, nr_pages). */
static void range_pfns(const void *obj, size_t size, unsigned long *pfn,
		       unsigned long *nr)
{
	phys_addr_t start = virt_to_phys(obj);
	phys_addr_t end = start + size - 1;

	*pfn = start >> PAGE_SHIFT;
	*nr = (end >> PAGE_SHIFT) - *pfn + 1;
}

/* Shares the pages holding the object [obj, obj + size) with EL2. */
static long pkvm_share_hyp(const void *obj, size_t size)
{
	unsigned long pfn, nr;

	range_pfns(obj, size, &pfn, &nr);
	return pkvm_call(HC_SHARE_HYP, pfn, nr, NULL);
}

/* Drops one share of the pages holding [obj, obj + size). */
static long pkvm_unshare_hyp(const void *obj, size_t size)
{
	unsigned long pfn, nr;

	range_pfns(obj, size, &pfn, &nr);
	return pkvm_call(HC_UNSHARE_HYP, pfn, nr, NULL);
}

/* Debug: EL2 reads a u64 of a page the host shares with it (EPERM for any other page). */
static long hyp_read(phys_addr_t pa, u64 *val)
{
	unsigned long v = 0;
	long r = pkvm_call(HC_DBG_READ, pa, 0, &v);

	if (val)
		*val = v;
	return r;
}

/* A check that needs the debug read: skipped against the production EL2. */
#define CHECK_READ(pa, val, want, what)                                  \
	do {                                                             \
		if (have_debug)                                          \
			CHECK_EQ(hyp_read(pa, val), want, what);         \
	} while (0)

static void test_version(void)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_hvc(PKVM_HVC_BASE | HC_VERSION, &res);
	CHECK_EQ(res.a0, 0, "VERSION x0");
	CHECK_EQ(res.a2, ABI_VERSION, "ABI version");
	pr_info("pkvm_test: pkvm-rs ABI %lu.%lu, features %#lx\n", res.a2 >> 16,
		res.a2 & 0xffff, res.a3);
	have_debug = res.a3 & PKVM_FEAT_DEBUG_HCALLS;
	if (!have_debug) {
		/* Production EL2: the debug calls do not exist. */
		CHECK_EQ(hyp_read(VIRT_RAM_BASE, NULL), -ENOSYS, "debug read refused");
		CHECK_EQ(pkvm_call(HC_DBG_HYP_DONATE_HOST, 0, 1, NULL), -ENOSYS,
			 "debug give-back refused");
		pr_info("pkvm_test: production EL2 (no debug hypercalls): read-back checks skipped\n");
	}
}

static void test_kmalloc(void)
{
	u64 *obj = kmalloc(128, GFP_KERNEL);
	u64 base = pkvm_stat(ST_SHARED), v = 0;
	phys_addr_t pa;

	if (!obj) {
		CHECK(0, "kmalloc");
		return;
	}
	pa = virt_to_phys(obj);
	obj[0] = 0x706b766d2d727321ULL;
	CHECK_EQ(pkvm_share_hyp(obj, 128), 0, "share kmalloc object");
	CHECK_EQ(pkvm_stat(ST_SHARED), base + 1, "shared pages after share");
	CHECK_READ(pa, &v, 0, "EL2 reads the shared object");
	if (have_debug)
		CHECK_EQ(v, obj[0], "EL2 sees the object's contents");
	CHECK_EQ(pkvm_unshare_hyp(obj, 128), 0, "unshare kmalloc object");
	CHECK_EQ(pkvm_stat(ST_SHARED), base, "shared pages after unshare");
	CHECK_READ(pa, NULL, E_PERM, "EL2 no longer reads it");
	CHECK_EQ(pkvm_unshare_hyp(obj, 128), E_PERM, "second unshare");
	kfree(obj);
}

/* Two objects in one page, shared and unshared independently: EL2's share count. */
static void test_two_in_one_page(void)
{
	void *objs[64];
	void *a = NULL, *b = NULL;
	u64 base = pkvm_stat(ST_SHARED);
	int i, j, n;

	for (n = 0; n < ARRAY_SIZE(objs); n++) {
		objs[n] = kmalloc(256, GFP_KERNEL);
		if (!objs[n])
			break;
	}
	for (i = 0; i < n && !a; i++)
		for (j = i + 1; j < n; j++)
			if (virt_to_page(objs[i]) == virt_to_page(objs[j])) {
				a = objs[i];
				b = objs[j];
				break;
			}
	CHECK(a && b, "no two kmalloc(256) objects in one page");
	if (a && b) {
		CHECK_EQ(pkvm_share_hyp(a, 256), 0, "share object A");
		CHECK_EQ(pkvm_share_hyp(b, 256), 0, "share object B (same page)");
		CHECK_EQ(pkvm_stat(ST_SHARED), base + 1, "one page shared twice");
		CHECK_EQ(pkvm_unshare_hyp(a, 256), 0, "unshare A");
		CHECK_EQ(pkvm_stat(ST_SHARED), base + 1, "still shared for B");
		CHECK_READ(virt_to_phys(b) & ~7ULL, NULL, 0,
			   "EL2 still maps B's page");
		CHECK_EQ(pkvm_unshare_hyp(b, 256), 0, "unshare B");
		CHECK_EQ(pkvm_stat(ST_SHARED), base, "page no longer shared");
		CHECK_READ(virt_to_phys(b) & ~7ULL, NULL, E_PERM,
			   "EL2 unmapped B's page");
	}
	for (i = 0; i < n; i++)
		kfree(objs[i]);
}

static void test_alloc_pages(void)
{
	struct page *p = alloc_pages(GFP_KERNEL, 4);
	u64 base = pkvm_stat(ST_SHARED), mapped = pkvm_stat(ST_HYP_MAPPED);
	u8 *va;

	if (!p) {
		CHECK(0, "alloc_pages");
		return;
	}
	va = page_address(p);
	CHECK_EQ(pkvm_share_hyp(va, 16 * PAGE_SIZE), 0, "share 16 pages");
	CHECK_EQ(pkvm_stat(ST_SHARED), base + 16, "16 pages shared");
	CHECK_EQ(pkvm_stat(ST_HYP_MAPPED), mapped + 16, "16 pages mapped at EL2");
	CHECK_READ(page_to_phys(p) + 15 * PAGE_SIZE, NULL, 0,
		   "EL2 reads the last page");
	CHECK_EQ(pkvm_unshare_hyp(va, 16 * PAGE_SIZE), 0, "unshare 16 pages");
	CHECK_EQ(pkvm_stat(ST_SHARED), base, "none shared");
	/* A range over a page that is already shared: only that page is refcounted twice. */
	CHECK_EQ(pkvm_share_hyp(va + 3 * PAGE_SIZE, 8), 0, "share page 3");
	CHECK_EQ(pkvm_share_hyp(va, 16 * PAGE_SIZE), 0, "share 16 over page 3");
	CHECK_EQ(pkvm_unshare_hyp(va, 16 * PAGE_SIZE), 0, "unshare 16");
	CHECK_EQ(pkvm_stat(ST_SHARED), base + 1, "page 3 still shared");
	CHECK_EQ(pkvm_unshare_hyp(va + 3 * PAGE_SIZE, 8), 0, "unshare page 3");
	CHECK_EQ(pkvm_stat(ST_SHARED), base, "all unshared");
	__free_pages(p, 4);
}

static void test_donate(void)
{
	struct page *p = alloc_page(GFP_KERNEL);
	u64 mapped = pkvm_stat(ST_HYP_MAPPED), v = 0;
	unsigned long pfn;
	u64 *va;

	if (!p) {
		CHECK(0, "alloc_page");
		return;
	}
	va = page_address(p);
	pfn = page_to_pfn(p);
	va[0] = 0x646f6e617465ULL;
	CHECK_EQ(pkvm_call(HC_DONATE_HYP, pfn, 1, NULL), 0, "donate to EL2");
	CHECK_EQ(pkvm_stat(ST_HYP_MAPPED), mapped + 1, "EL2 maps the page");
	/* Donated, not shared: the debug read refuses it. */
	CHECK_READ(page_to_phys(p), &v, E_PERM, "EL2 does not read a donated page for the host");
	CHECK_EQ(pkvm_share_hyp(va, 8), E_PERM, "share a donated page");
	CHECK_EQ(pkvm_call(HC_DONATE_HYP, pfn, 1, NULL), E_PERM, "donate twice");
	if (!have_debug) {
		/* The production EL2 never gives a donated page back: it stays EL2's. */
		pr_info("pkvm_test: donated page %#lx stays with EL2 (production EL2)\n", pfn);
		return;
	}
	CHECK_EQ(pkvm_call(HC_DBG_HYP_DONATE_HOST, pfn, 1, NULL), 0,
		 "EL2 gives it back");
	CHECK_EQ(pkvm_stat(ST_HYP_MAPPED), mapped, "EL2 unmapped it");
	/* The host reads (and writes) its page again: no abort. */
	v = READ_ONCE(va[0]);
	CHECK_EQ(v, 0x646f6e617465ULL, "the host's data survived the round trip");
	WRITE_ONCE(va[1], v + 1);
	CHECK_EQ(READ_ONCE(va[1]), v + 1, "host uses the page again");
	__free_page(p);
}

static unsigned long ram_end_pfn(void)
{
	int nid;
	unsigned long end = 0;

	for_each_online_node(nid)
		end = max(end, pgdat_end_pfn(NODE_DATA(nid)));
	return end;
}

/* Bad requests against real addresses: each has its exact error and changes nothing. */
static void test_negative(void)
{
	u64 s0 = pkvm_stat(ST_SHARED), m0 = pkvm_stat(ST_HYP_MAPPED);
	u64 p0 = pkvm_stat(ST_POOL_FREE);
	unsigned long end = ram_end_pfn();
	unsigned long text_pfn = __kimg_to_phys((unsigned long)&_printk) >> PAGE_SHIFT;
	struct {
		const char *what;
		unsigned long id, pfn, nr;
		long want;
	} cases[] = {
		{ "share the PL011 MMIO page", HC_SHARE_HYP, VIRT_UART_PA >> PAGE_SHIFT, 1, E_INVAL },
		{ "donate the PL011 MMIO page", HC_DONATE_HYP, VIRT_UART_PA >> PAGE_SHIFT, 1, E_INVAL },
		{ "share a hole with no RAM", HC_SHARE_HYP, end + (1UL << (30 - PAGE_SHIFT)), 1, E_INVAL },
		{ "share EL2's image", HC_SHARE_HYP, EL2_IMAGE_PA >> PAGE_SHIFT, 1, E_PERM },
		{ "share a page of the hyp carve-out", HC_SHARE_HYP, end - 1, 1, E_PERM },
		{ "donate a page of the hyp carve-out", HC_DONATE_HYP, end - 1, 1, E_PERM },
		{ "take a carve-out page back", HC_DBG_HYP_DONATE_HOST, end - 1, 1,
		  have_debug ? E_PERM : -ENOSYS },
		{ "share a pfn beyond the IPA space", HC_SHARE_HYP, 1UL << (52 - PAGE_SHIFT), 1, E_RANGE },
		{ "share with pfn + nr_pages overflowing", HC_SHARE_HYP, ~0UL - 1, 4, E_INVAL },
		{ "share a range straddling the end of RAM", HC_SHARE_HYP, end - 1, 2, E_INVAL },
		{ "share zero pages", HC_SHARE_HYP, text_pfn, 0, E_INVAL },
		{ "unshare a kernel-text page never shared", HC_UNSHARE_HYP, text_pfn, 1, E_PERM },
	};
	int i;

	for (i = 0; i < ARRAY_SIZE(cases); i++)
		CHECK_EQ(pkvm_call(cases[i].id, cases[i].pfn, cases[i].nr, NULL),
			 cases[i].want, cases[i].what);
	CHECK_EQ(pkvm_stat(ST_SHARED), s0, "no page shared by the bad requests");
	CHECK_EQ(pkvm_stat(ST_HYP_MAPPED), m0, "nothing mapped at EL2");
	CHECK_EQ(pkvm_stat(ST_POOL_FREE), p0, "EL2's pool untouched");

	/* A kernel-text page may be shared (it is the host's), then unshared. */
	CHECK_EQ(pkvm_call(HC_SHARE_HYP, text_pfn, 1, NULL), 0, "share a kernel-text page");
	CHECK_EQ(pkvm_call(HC_UNSHARE_HYP, text_pfn, 1, NULL), 0, "unshare it");
	CHECK_EQ(pkvm_stat(ST_SHARED), s0, "no page shared at the end");
	pr_info("pkvm_test: RAM ends at pfn %#lx, kernel text pfn %#lx\n", end, text_pfn);
}

/* PSCI through EL2: bad CPU_ON requests get their PSCI error and nothing breaks. */
static long psci_call(unsigned long fid, unsigned long a1, unsigned long a2,
		      unsigned long a3)
{
	struct arm_smccc_res res;

	arm_smccc_1_1_invoke(fid, a1, a2, a3, &res);
	return (long)res.a0;
}

static void test_psci(void)
{
	unsigned long me = read_cpuid_mpidr() & MPIDR_HWID_BITMASK;
	unsigned long entry = virt_to_phys(page_address(ZERO_PAGE(0)));
	unsigned long end = ram_end_pfn() << PAGE_SHIFT;
	unsigned int online = num_online_cpus();

	CHECK(arm_smccc_1_1_get_conduit() == SMCCC_CONDUIT_SMC ||
	      arm_smccc_1_1_get_conduit() == SMCCC_CONDUIT_HVC, "SMCCC conduit");
	CHECK_EQ(psci_call(PSCI_0_2_FN64_CPU_ON, 0xff00ff, entry, 0),
		 PSCI_RET_INVALID_PARAMS, "CPU_ON to an MPIDR that does not exist");
	CHECK_EQ(psci_call(PSCI_0_2_FN64_CPU_ON, me, entry, 0), PSCI_RET_ALREADY_ON,
		 "CPU_ON to a CPU that is on (a second time)");
	CHECK_EQ(psci_call(PSCI_0_2_FN64_CPU_ON, me, EL2_IMAGE_PA, 0),
		 PSCI_RET_INVALID_ADDRESS, "CPU_ON with the entry in EL2's image");
	CHECK_EQ(psci_call(PSCI_0_2_FN64_CPU_ON, me, end - PAGE_SIZE, 0),
		 PSCI_RET_INVALID_ADDRESS, "CPU_ON with the entry in EL2's carve-out");
	CHECK_EQ(psci_call(PSCI_0_2_FN64_CPU_ON, me, VIRT_UART_PA, 0),
		 PSCI_RET_INVALID_ADDRESS, "CPU_ON with the entry in MMIO");
	CHECK_EQ(psci_call(PSCI_0_2_FN64_AFFINITY_INFO, me, 0, 0), 0,
		 "AFFINITY_INFO of this CPU: on");
	CHECK_EQ(psci_call(PSCI_1_0_FN_PSCI_FEATURES, PSCI_0_2_FN64_CPU_ON, 0, 0), 0,
		 "PSCI_FEATURES(CPU_ON)");
	CHECK_EQ(psci_call(ARM_SMCCC_VERSION_FUNC_ID, 0, 0, 0), ARM_SMCCC_VERSION_1_1,
		 "SMCCC_VERSION");
	CHECK_EQ(num_online_cpus(), online, "every CPU still online");
}

/* One kthread per CPU sharing and unsharing overlapping ranges. */
#define CONC_PAGES 8
#define CONC_ITERS 300
struct conc {
	u8 *buf;
	int id;
	atomic_t *errors;
	struct completion done;
};

static int conc_thread(void *data)
{
	struct conc *c = data;
	int i;

	for (i = 0; i < CONC_ITERS; i++) {
		/* The same page for every thread. */
		u8 *same = c->buf;
		/* Two adjacent pages, overlapping the neighbours' ranges. */
		u8 *adj = c->buf + ((c->id + i) % (CONC_PAGES - 1)) * PAGE_SIZE;
		/* A small object in a page every thread shares: the refcount path. */
		u8 *obj = c->buf + PAGE_SIZE + (c->id % 32) * 64;

		if (pkvm_share_hyp(same, 16) || pkvm_share_hyp(adj, 2 * PAGE_SIZE) ||
		    pkvm_share_hyp(obj, 64))
			atomic_inc(c->errors);
		if (pkvm_unshare_hyp(obj, 64) || pkvm_unshare_hyp(adj, 2 * PAGE_SIZE) ||
		    pkvm_unshare_hyp(same, 16))
			atomic_inc(c->errors);
		if (!(i & 31))
			cond_resched();
	}
	complete(&c->done);
	return 0;
}

static void test_concurrency(void)
{
	static struct conc cs[NR_CPUS];
	atomic_t errors = ATOMIC_INIT(0);
	struct page *p = alloc_pages(GFP_KERNEL | __GFP_ZERO, 3);
	u64 s0 = pkvm_stat(ST_SHARED), p0 = pkvm_stat(ST_POOL_FREE);
	int cpu, n = 0, i;

	if (!p) {
		CHECK(0, "alloc_pages");
		return;
	}
	for_each_online_cpu(cpu) {
		struct task_struct *t;

		cs[n].buf = page_address(p);
		cs[n].id = n;
		cs[n].errors = &errors;
		init_completion(&cs[n].done);
		t = kthread_create(conc_thread, &cs[n], "pkvm_test/%d", cpu);
		if (IS_ERR(t)) {
			CHECK(0, "kthread_create");
			break;
		}
		kthread_bind(t, cpu);
		wake_up_process(t);
		n++;
	}
	for (i = 0; i < n; i++)
		wait_for_completion(&cs[i].done);
	CHECK(n == num_online_cpus(), "one thread per CPU (%d of %u)", n,
	      num_online_cpus());
	CHECK_EQ(atomic_read(&errors), 0, "concurrent share/unshare errors");
	CHECK_EQ(pkvm_stat(ST_SHARED), s0, "zero pages left shared");
	CHECK_EQ(pkvm_stat(ST_POOL_FREE), p0, "EL2's pool back at its start");
	pr_info("pkvm_test: concurrency: %d threads x %d iterations x 6 calls\n", n,
		CONC_ITERS);
	__free_pages(p, 3);
}

static void test_timing(void)
{
	void *page = (void *)__get_free_page(GFP_KERNEL);
	int i, errs = 0;
	u64 t0, t1;

	if (!page) {
		CHECK(0, "page");
		return;
	}
	t0 = ktime_get_ns();
	for (i = 0; i < 1000; i++) {
		errs += pkvm_share_hyp(page, PAGE_SIZE) != 0;
		errs += pkvm_unshare_hyp(page, PAGE_SIZE) != 0;
	}
	t1 = ktime_get_ns();
	pair_ns = (t1 - t0) / 1000;
	CHECK_EQ(errs, 0, "1,000 share/unshare pairs");
	pr_info("pkvm_test: 1000 share/unshare pairs of one page: %llu ns per pair\n",
		pair_ns);
	free_page((unsigned long)page);
}

static void print_stats(struct seq_file *m)
{
	int s;

	for (s = 0; s < ST_NR; s++) {
		if (m)
			seq_printf(m, "%s %llu\n", stat_names[s], pkvm_stat(s));
		else
			pr_info("pkvm_test: stat %s = %llu\n", stat_names[s], pkvm_stat(s));
	}
}

static int pkvm_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%d passed, %d failed\n", passed, failed);
	seq_printf(m, "share_unshare_pair_ns %llu\n", pair_ns);
	print_stats(m);
	return 0;
}

static int pkvm_proc_open(struct inode *inode, struct file *file)
{
	return single_open(file, pkvm_proc_show, NULL);
}

/* Reads a page donated to EL2 from the calling process: EL2 injects an external abort. */
static void read_donated(void)
{
	struct page *p = alloc_page(GFP_KERNEL);
	u64 v;

	if (!p)
		return;
	if (pkvm_call(HC_DONATE_HYP, page_to_pfn(p), 1, NULL)) {
		pr_err("pkvm_test: cannot donate a page\n");
		return;
	}
	pr_info("pkvm_test: reading pa %#llx, donated to EL2: expect an external abort\n",
		(unsigned long long)page_to_phys(p));
	v = READ_ONCE(*(u64 *)page_address(p));
	pr_err("pkvm_test: read %#llx from a page EL2 owns: no abort!\n", v);
}

/* Writes to the last page of RAM, inside EL2's carve-out: EL2 injects an external abort. */
static void write_carveout(void)
{
	phys_addr_t pa = (ram_end_pfn() - 1) << PAGE_SHIFT;

	pr_info("pkvm_test: writing pa %#llx, in EL2's carve-out: expect an external abort\n",
		(unsigned long long)pa);
	WRITE_ONCE(*(u64 *)phys_to_virt(pa), 0xbad);
	pr_err("pkvm_test: wrote EL2's carve-out: no abort!\n");
}

/* After the aborts: the ABI still works (counted in the summary). */
static void recheck(void)
{
	int f = failed;

	test_version();
	test_kmalloc();
	test_two_in_one_page();
	pr_info("pkvm_test: recheck %s; now %d passed, %d failed\n",
		failed == f ? "ok" : "FAILED", passed, failed);
}

/*
 * EL2 instructions of one call, under QEMU -icount (PMCCNTR_EL0 counts instructions there):
 * the cycle counter is set to count at EL2 only for the call, then restored.
 */
static u64 el2_count(unsigned long id, unsigned long pfn, unsigned long nr)
{
	struct el2_count c;
	u64 n;
	long r;

	el2_count_begin(&c);
	r = pkvm_call(id, pfn, nr, NULL);
	n = el2_count_end(&c);
	if (r)
		pr_err("pkvm_test: measured call %#lx failed: %ld\n", id, r);
	return n;
}

static void measure(void)
{
	struct page *p = alloc_pages(GFP_KERNEL, 4);
	unsigned long pfn;
	int i;

	if (!p)
		return;
	pfn = page_to_pfn(p);
	for (i = 0; i < 3; i++) {
		u64 s1 = el2_count(HC_SHARE_HYP, pfn, 1);
		u64 u1 = el2_count(HC_UNSHARE_HYP, pfn, 1);
		u64 s16 = el2_count(HC_SHARE_HYP, pfn, 16);
		u64 u16 = el2_count(HC_UNSHARE_HYP, pfn, 16);
		u64 r1, ru1, ru2;

		el2_count(HC_SHARE_HYP, pfn, 1);
		r1 = el2_count(HC_SHARE_HYP, pfn, 1); /* second share: refcount only */
		ru1 = el2_count(HC_UNSHARE_HYP, pfn, 1); /* back to one share */
		ru2 = el2_count(HC_UNSHARE_HYP, pfn, 1); /* last share: unmaps */
		pr_info("PKVM-BENCH linux share_1 %llu unshare_1 %llu share_16 %llu unshare_16 %llu share_refcount %llu unshare_refcount %llu unshare_last %llu\n",
			s1, u1, s16, u16, r1, ru1, ru2);
	}
	__free_pages(p, 4);
}

static ssize_t pkvm_proc_write(struct file *file, const char __user *ubuf,
			       size_t len, loff_t *off)
{
	char buf[32] = {};

	if (copy_from_user(buf, ubuf, min(len, sizeof(buf) - 1)))
		return -EFAULT;
	if (sysfs_streq(buf, "read-donated"))
		read_donated();
	else if (sysfs_streq(buf, "write-carveout"))
		write_carveout();
	else if (sysfs_streq(buf, "recheck"))
		recheck();
	else if (sysfs_streq(buf, "measure"))
		measure();
	else
		return -EINVAL;
	return len;
}

static const struct proc_ops pkvm_proc_ops = {
	.proc_open = pkvm_proc_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = pkvm_proc_write,
};

static int __init pkvm_test_init(void)
{
	test_version();
	test_kmalloc();
	test_two_in_one_page();
	test_alloc_pages();
	test_donate();
	test_negative();
	test_psci();
	test_concurrency();
	test_timing();
	print_stats(NULL);
	pr_info("pkvm_test: %d passed, %d failed\n", passed, failed);
	proc_create("pkvm_test", 0600, NULL, &pkvm_proc_ops);
	return 0;
}

static void __exit pkvm_test_exit(void)
{
	remove_proc_entry("pkvm_test", NULL);
}

module_init(pkvm_test_init);
module_exit(pkvm_test_exit);
MODULE_DESCRIPTION("pkvm-rs host driver: share/unshare checks over real kernel memory");
MODULE_LICENSE("Dual MIT/GPL");
