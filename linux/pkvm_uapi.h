/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * /dev/pkvm's user-space ABI (linux/pkvm.c). The Rust side is crates/vmm/src/dev.rs
 * (pkvm_vmm_core::dev): the same numbers, checked there by unit tests.
 *
 * One open file of /dev/pkvm is one VM:
 *
 *   PKVM_CREATE  the VM's shape (RAM size and IPA, vCPUs, protected or not): the module
 *                allocates its RAM and one page per vCPU for its state (struct VcpuState of
 *                crates/abi/src/guest.rs), which user space maps with mmap(offset = index *
 *                page size, MAP_SHARED) and writes the initial registers into;
 *   PKVM_LOAD    copies bytes from user space into the guest's RAM (before PKVM_START only);
 *   PKVM_START   creates the VM at EL2 (VmInit, VcpuInit of every vCPU from its page) and gives
 *                it its RAM: donated when protected (the host cannot read it any more), shared
 *                otherwise;
 *   PKVM_RUN     runs vCPU `arg` until an exit user space must handle; returns the exit reason
 *                (crates/abi guest::exit) with the details in the vCPU's page, or -EINTR when a
 *                signal is pending (a vCPU thread is kicked out of the guest with a signal);
 *   PKVM_STAT    reads one of EL2's statistics (crates/abi Stat), e.g. the leak counters.
 *
 * The console page (mmap offset PKVM_CONSOLE_PAGE * page size, struct pkvm_console): user space
 * may name one byte register whose writes the module buffers in the page's ring instead of
 * returning an MMIO exit (a UART's transmit register while nothing else depends on the write),
 * and one whose byte reads it answers with a fixed value (the UART's line status while it
 * cannot change): KVM's coalesced MMIO, for the console that makes almost every exit of a
 * booting Linux guest. User space drains the ring whenever PKVM_RUN returns and rewrites the
 * two registers whenever its UART model changes; the module trusts none of the page.
 *
 * Interrupts are injected through the vCPU page's list registers (VcpuState.vgic), which
 * EL2 validates and loads for every run. Closing the file (or the VMM dying) destroys the VM
 * and gives every page back to Linux, zeroed by EL2 when it was donated.
 */
#ifndef PKVM_UAPI_H
#define PKVM_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define PKVM_IOCTL_TYPE 0xB7

/* PKVM_CREATE's flags. */
#define PKVM_CREATE_PROTECTED (1ULL << 0)

struct pkvm_create {
	__u64 mem_size; /* bytes, a multiple of 2 MiB, at most PKVM_MAX_MEM */
	__u64 mem_ipa; /* the RAM's first IPA, 2 MiB aligned */
	__u64 nr_vcpus; /* 1..=4 */
	__u64 flags; /* PKVM_CREATE_* */
};

struct pkvm_load {
	__u64 ipa; /* inside the RAM */
	__u64 addr; /* user-space source */
	__u64 len; /* bytes; [ipa, ipa + len) inside the RAM */
};

struct pkvm_stat {
	__u64 selector; /* in: crates/abi Stat */
	__u64 value; /* out */
};

/* What the module counted for this VM (PKVM_COUNTS). */
struct pkvm_counts {
	__u64 runs; /* VcpuRun hypercalls */
	__u64 irq_exits; /* of those, physical-interrupt exits handled in the module */
	__u64 returns; /* PKVM_RUN calls that returned an exit to user space */
	__u64 el2_instructions; /* EL2 instructions of the VcpuRun calls (module parameter measure=1) */
	__u64 console_writes; /* MMIO writes buffered in the console ring */
	__u64 console_reads; /* MMIO reads answered from the console page */
};

/* The console page's ring: bytes. */
#define PKVM_CONSOLE_RING 2048
/* The mmap page index of the console page (after the vCPUs' indices). */
#define PKVM_CONSOLE_PAGE 4

struct pkvm_console {
	__u64 write_ipa; /* user: buffer 1-byte writes here (0: none) */
	__u64 read_ipa; /* user: answer 1-byte reads here (0: none) ... */
	__u64 read_value; /* ... with this byte */
	__u64 head; /* module: bytes put in the ring so far */
	__u64 tail; /* user: bytes taken from the ring so far */
	__u64 reserved[3];
	__u8 ring[PKVM_CONSOLE_RING]; /* byte n at ring[n % PKVM_CONSOLE_RING] */
};

#define PKVM_CREATE _IOW(PKVM_IOCTL_TYPE, 1, struct pkvm_create)
#define PKVM_LOAD _IOW(PKVM_IOCTL_TYPE, 2, struct pkvm_load)
#define PKVM_START _IO(PKVM_IOCTL_TYPE, 3)
#define PKVM_RUN _IO(PKVM_IOCTL_TYPE, 4)
#define PKVM_STAT _IOWR(PKVM_IOCTL_TYPE, 5, struct pkvm_stat)
#define PKVM_COUNTS _IOR(PKVM_IOCTL_TYPE, 6, struct pkvm_counts)

/*
 * The VMM's word in each vCPU page (past struct VcpuState, which EL2 reads and writes): the
 * counter value at which it last sampled the guest's virtual timer, before PKVM_RUN. A timer
 * that is due but was not due then goes back to user space (an IRQ exit) to be delivered.
 */
#define PKVM_VCPU_TIMER_SAMPLED 3072

/* The largest RAM: what EL2's stage-2 memcache (64 pages at most) maps with 4 KiB pages. */
#define PKVM_MAX_MEM (112ULL << 20)
#define PKVM_MAX_VCPUS 4

#endif
