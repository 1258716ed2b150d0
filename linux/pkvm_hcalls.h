/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * pkvm-rs's host hypercall ids (crates/abi/src/lib.rs, HostHcall), shared by linux/pkvm.c and
 * linux/pkvm_test.c; crates/vmm/src/dev.rs checks every one against the Rust ABI. A call is
 * an SMCCC vendor-hypervisor HVC with function id PKVM_HVC_BASE | id.
 */
#ifndef PKVM_HCALLS_H
#define PKVM_HCALLS_H

#define PKVM_HVC_BASE 0xC6000000UL

enum pkvm_hcall {
	HC_VERSION = 0x00,
	HC_SHARE_HYP = 0x02,
	HC_UNSHARE_HYP = 0x03,
	HC_DONATE_HYP = 0x04,
	HC_DBG_HYP_DONATE_HOST = 0x20,
	HC_DBG_READ = 0x23,
	HC_STAT = 0x24,
	HC_VM_INIT = 0x30,
	HC_VCPU_INIT = 0x31,
	HC_SHARE_GUEST = 0x32,
	HC_VCPU_RUN = 0x34,
	HC_VM_TEARDOWN = 0x35,
	HC_DONATE_GUEST = 0x36,
	HC_VM_RECLAIM = 0x37,
};

#endif
