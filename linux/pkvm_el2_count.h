/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Counting EL2's instructions around one hypercall, shared by linux/pkvm_test.c and
 * linux/pkvm.c: under QEMU -icount, PMCCNTR_EL0 counts instructions, and PMCCFILTR_EL0 with
 * P=1 U=1 NSH=1 makes it count at EL2 only. The PMU's state is saved before and restored
 * after, with interrupts off in between.
 */
#ifndef PKVM_EL2_COUNT_H
#define PKVM_EL2_COUNT_H

#include <linux/irqflags.h>
#include <asm/barrier.h>
#include <asm/sysreg.h>

struct el2_count {
	u64 pmcr, filt, en, start;
	unsigned long flags;
};

/* Starts counting EL2's instructions (interrupts off until el2_count_end). */
static inline void el2_count_begin(struct el2_count *c)
{
	local_irq_save(c->flags);
	c->pmcr = read_sysreg(pmcr_el0);
	c->filt = read_sysreg(pmccfiltr_el0);
	c->en = read_sysreg(pmcntenset_el0);
	/* P=1 U=1 (not EL1/EL0), NSH=1 (EL2). */
	write_sysreg((1UL << 31) | (1UL << 30) | (1UL << 27), pmccfiltr_el0);
	write_sysreg(c->pmcr | 1 /* E */ | (1 << 6) /* LC */, pmcr_el0);
	write_sysreg(1UL << 31, pmcntenset_el0);
	isb();
	c->start = read_sysreg(pmccntr_el0);
}

/* Stops counting, restores the PMU and interrupts; EL2's instructions since the begin. */
static inline u64 el2_count_end(struct el2_count *c)
{
	u64 end = read_sysreg(pmccntr_el0);

	write_sysreg(c->filt, pmccfiltr_el0);
	if (!(c->en & (1UL << 31)))
		write_sysreg(1UL << 31, pmcntenclr_el0);
	write_sysreg(c->pmcr, pmcr_el0);
	isb();
	local_irq_restore(c->flags);
	return end - c->start;
}

#endif
