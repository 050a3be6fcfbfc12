//! Hyper-V enlightenments (`--cpus N,hyperv=on`): the CPUID leaves
//! 0x40000000-0x4000000A a Windows guest reads to find the hypervisor
//! interface, built from what KVM offers (KVM_GET_SUPPORTED_HV_CPUID) and
//! filtered to the features arbiter turns on.
//!
//! Everything behind those bits is emulated inside KVM: the guest OS ID and
//! hypercall page MSRs, the VP index, the partition reference counter and
//! reference TSC page, the TSC/APIC frequency MSRs, the SynIC (enabled per
//! vCPU with KVM_CAP_HYPERV_SYNIC2) and its synthetic timers, APIC access
//! MSRs, and the remote TLB flush and IPI hypercalls. Arbiter only publishes
//! the CPUID and answers the two exits KVM leaves to user space (SynIC
//! control writes and the message/event hypercalls, which need a VMBus
//! arbiter does not have).
//!
//! KVM's own leaves (signature "KVMKVMKVM", its feature leaf and the timing
//! leaf) move from 0x40000000 to 0x40000100, as QEMU places them: KVM finds
//! its PV features at any 0x100-aligned base, and Linux still uses
//! kvm-clock. (Linux ranks the hypervisors it finds by base leaf, so with
//! both present it picks KVM over Hyper-V; Windows reads only 0x40000000.)

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// First Hyper-V leaf: vendor "Microsoft Hv" and the highest leaf.
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface signature "Hv#1".
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version (build, major.minor).
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Partition privileges and features.
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Enlightenment recommendations.
pub const LEAF_ENLIGHTENMENTS: u32 = 0x4000_0004;
/// Implementation limits (virtual/logical processors).
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// Hardware features in use by the hypervisor.
pub const LEAF_HARDWARE: u32 = 0x4000_0006;
/// The highest Hyper-V leaf published (0x40000007-0x4000000A: zeros,
/// since no nested/enlightened-VMCS feature is offered).
pub const LEAF_MAX: u32 = 0x4000_000A;
/// Where KVM's own leaves go when Hyper-V takes 0x40000000.
pub const KVM_LEAF_BASE: u32 = 0x4000_0100;

/// "Microsoft Hv" as EBX, ECX, EDX.
pub const VENDOR_MICROSOFT_HV: [u32; 3] = [0x7263_694D, 0x666F_736F, 0x7648_2074];
/// "Hv#1": the Microsoft hypervisor interface.
pub const INTERFACE_HV1: u32 = 0x3123_7648;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const VENDOR_KVM: [u32; 3] = [0x4B4D_564B, 0x564B_4D56, 0x0000_004D];

// Leaf 0x40000003 EAX: partition privileges (MSR access).
/// HV_X64_MSR_VP_RUNTIME.
pub const HV_MSR_VP_RUNTIME_AVAILABLE: u32 = 1 << 0;
/// HV_X64_MSR_TIME_REF_COUNT (partition reference counter, 100 ns).
pub const HV_MSR_TIME_REF_COUNT_AVAILABLE: u32 = 1 << 1;
/// SynIC MSRs.
pub const HV_MSR_SYNIC_AVAILABLE: u32 = 1 << 2;
/// Synthetic timer MSRs.
pub const HV_MSR_SYNTIMER_AVAILABLE: u32 = 1 << 3;
/// APIC access MSRs (EOI, ICR, TPR) and the VP assist page.
pub const HV_MSR_APIC_ACCESS_AVAILABLE: u32 = 1 << 4;
/// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL.
pub const HV_MSR_HYPERCALL_AVAILABLE: u32 = 1 << 5;
/// HV_X64_MSR_VP_INDEX.
pub const HV_MSR_VP_INDEX_AVAILABLE: u32 = 1 << 6;
/// HV_X64_MSR_REFERENCE_TSC (reference TSC page).
pub const HV_MSR_REFERENCE_TSC_AVAILABLE: u32 = 1 << 9;
/// HV_X64_MSR_TSC_FREQUENCY / HV_X64_MSR_APIC_FREQUENCY access.
pub const HV_ACCESS_FREQUENCY_MSRS: u32 = 1 << 11;

// Leaf 0x40000003 EDX: features.
/// The frequency MSRs exist.
pub const HV_FEATURE_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
/// Synthetic timers can interrupt directly with a vector (no SynIC message).
pub const HV_STIMER_DIRECT_MODE_AVAILABLE: u32 = 1 << 19;

// Leaf 0x40000004 EAX: recommendations.
/// Use HvFlushVirtualAddressSpace/List for remote TLB flushes.
pub const HV_REMOTE_TLB_FLUSH_RECOMMENDED: u32 = 1 << 2;
/// Use the APIC access MSRs.
pub const HV_APIC_ACCESS_RECOMMENDED: u32 = 1 << 3;
/// Disable watchdog timeouts (the guest may be descheduled).
pub const HV_RELAXED_TIMING_RECOMMENDED: u32 = 1 << 5;
/// Use HvSendSyntheticClusterIpi for IPIs.
pub const HV_CLUSTER_IPI_RECOMMENDED: u32 = 1 << 10;
/// The hypercalls above take the extended (sparse) processor masks.
pub const HV_EX_PROCESSOR_MASKS_RECOMMENDED: u32 = 1 << 11;

/// Spinlock retry count meaning "never notify the hypervisor".
pub const SPINLOCK_NEVER_NOTIFY: u32 = 0xFFFF_FFFF;

/// One enlightenment: its name and the bits it needs in a leaf register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Name, as in messages and `--help` notes.
    pub name: &'static str,
    /// CPUID leaf.
    pub leaf: u32,
    /// Register: 'a', 'b', 'c' or 'd'.
    pub reg: char,
    /// Bits.
    pub bits: u32,
}

const fn feature(name: &'static str, leaf: u32, reg: char, bits: u32) -> Feature {
    Feature {
        name,
        leaf,
        reg,
        bits,
    }
}

/// Every feature bit arbiter publishes with `hyperv=on`. Each must be in
/// KVM's supported list, or start-up fails naming it.
pub const ENABLED: &[Feature] = &[
    feature(
        "hypercall page",
        LEAF_FEATURES,
        'a',
        HV_MSR_HYPERCALL_AVAILABLE,
    ),
    feature("VP index", LEAF_FEATURES, 'a', HV_MSR_VP_INDEX_AVAILABLE),
    feature(
        "VP runtime",
        LEAF_FEATURES,
        'a',
        HV_MSR_VP_RUNTIME_AVAILABLE,
    ),
    feature(
        "reference counter",
        LEAF_FEATURES,
        'a',
        HV_MSR_TIME_REF_COUNT_AVAILABLE,
    ),
    feature(
        "reference TSC page",
        LEAF_FEATURES,
        'a',
        HV_MSR_REFERENCE_TSC_AVAILABLE,
    ),
    feature("SynIC", LEAF_FEATURES, 'a', HV_MSR_SYNIC_AVAILABLE),
    feature(
        "synthetic timers",
        LEAF_FEATURES,
        'a',
        HV_MSR_SYNTIMER_AVAILABLE,
    ),
    feature(
        "synthetic timers (direct mode)",
        LEAF_FEATURES,
        'd',
        HV_STIMER_DIRECT_MODE_AVAILABLE,
    ),
    feature(
        "APIC access MSRs",
        LEAF_FEATURES,
        'a',
        HV_MSR_APIC_ACCESS_AVAILABLE,
    ),
    feature(
        "frequency MSRs (access)",
        LEAF_FEATURES,
        'a',
        HV_ACCESS_FREQUENCY_MSRS,
    ),
    feature(
        "frequency MSRs",
        LEAF_FEATURES,
        'd',
        HV_FEATURE_FREQUENCY_MSRS_AVAILABLE,
    ),
    feature(
        "relaxed timing",
        LEAF_ENLIGHTENMENTS,
        'a',
        HV_RELAXED_TIMING_RECOMMENDED,
    ),
    feature(
        "APIC access (recommended)",
        LEAF_ENLIGHTENMENTS,
        'a',
        HV_APIC_ACCESS_RECOMMENDED,
    ),
    feature(
        "remote TLB flush hypercalls",
        LEAF_ENLIGHTENMENTS,
        'a',
        HV_REMOTE_TLB_FLUSH_RECOMMENDED,
    ),
    feature(
        "IPI hypercalls",
        LEAF_ENLIGHTENMENTS,
        'a',
        HV_CLUSTER_IPI_RECOMMENDED,
    ),
    feature(
        "extended processor masks",
        LEAF_ENLIGHTENMENTS,
        'a',
        HV_EX_PROCESSOR_MASKS_RECOMMENDED,
    ),
];

/// Errors building the Hyper-V CPUID or setting up a vCPU for it.
#[derive(Debug, thiserror::Error)]
pub enum HypervError {
    /// KVM lacks a capability `hyperv=on` needs.
    #[error("hyperv=on: this host's KVM lacks {0}")]
    MissingCap(&'static str),
    /// KVM's supported list lacks a leaf.
    #[error("hyperv=on: KVM_GET_SUPPORTED_HV_CPUID has no leaf {0:#x}")]
    MissingLeaf(u32),
    /// KVM's supported list lacks features arbiter enables.
    #[error("hyperv=on: this host's KVM does not offer: {0}")]
    MissingFeatures(String),
    /// The CPUID table is full.
    #[error("hyperv=on: too many CPUID entries")]
    TooManyEntries,
    /// A KVM ioctl failed.
    #[error("hyperv=on: {what}: {source}")]
    Ioctl {
        /// Which step.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
}

fn reg(e: &kvm_cpuid_entry2, r: char) -> u32 {
    match r {
        'a' => e.eax,
        'b' => e.ebx,
        'c' => e.ecx,
        _ => e.edx,
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: char) -> &mut u32 {
    match r {
        'a' => &mut e.eax,
        'b' => &mut e.ebx,
        'c' => &mut e.ecx,
        _ => &mut e.edx,
    }
}

fn leaf(function: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        ..Default::default()
    }
}

/// The Hyper-V leaves 0x40000000..=0x4000000A for a guest, from KVM's
/// supported list `supported` (KVM_GET_SUPPORTED_HV_CPUID): the vendor is
/// "Microsoft Hv", the features are [`ENABLED`] (each must be supported),
/// the version and limits are KVM's, everything else is zero.
pub fn leaves(supported: &[kvm_cpuid_entry2]) -> Result<Vec<kvm_cpuid_entry2>, HypervError> {
    let find = |f: u32| {
        supported
            .iter()
            .find(|e| e.function == f)
            .ok_or(HypervError::MissingLeaf(f))
    };
    let missing: Vec<&str> = ENABLED
        .iter()
        .filter(|f| {
            find(f.leaf)
                .map(|e| reg(e, f.reg) & f.bits != f.bits)
                .unwrap_or(true)
        })
        .map(|f| f.name)
        .collect();
    if !missing.is_empty() {
        return Err(HypervError::MissingFeatures(missing.join(", ")));
    }
    let mut out: Vec<kvm_cpuid_entry2> = (LEAF_VENDOR..=LEAF_MAX).map(leaf).collect();
    for e in out.iter_mut() {
        match e.function {
            LEAF_VENDOR => {
                e.eax = LEAF_MAX;
                [e.ebx, e.ecx, e.edx] = VENDOR_MICROSOFT_HV;
            }
            LEAF_INTERFACE => e.eax = INTERFACE_HV1,
            LEAF_VERSION => {
                let v = find(LEAF_VERSION)?;
                (e.eax, e.ebx, e.ecx, e.edx) = (v.eax, v.ebx, v.ecx, v.edx);
            }
            LEAF_LIMITS => {
                let v = find(LEAF_LIMITS)?;
                (e.eax, e.ebx) = (v.eax, v.ebx);
            }
            LEAF_ENLIGHTENMENTS => e.ebx = SPINLOCK_NEVER_NOTIFY,
            _ => {}
        }
        let function = e.function;
        for f in ENABLED.iter().filter(|f| f.leaf == function) {
            *reg_mut(e, f.reg) |= f.bits;
        }
    }
    Ok(out)
}

/// Install `hv` (from [`leaves`]) into `cpuid`: KVM's leaves in
/// 0x40000000..=0x400000FF move up by 0x100 (the signature leaf's EAX, the
/// highest KVM leaf, moves with them), then the Hyper-V leaves take their
/// place. The hypervisor-present bit (leaf 1 ECX bit 31) is left as is.
pub fn install(cpuid: &mut CpuId, hv: &[kvm_cpuid_entry2]) -> Result<(), HypervError> {
    let old: Vec<kvm_cpuid_entry2> = cpuid.as_slice().to_vec();
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::with_capacity(old.len() + hv.len());
    for mut e in old {
        if (LEAF_VENDOR..KVM_LEAF_BASE).contains(&e.function) {
            let was_signature = e.function == LEAF_VENDOR && [e.ebx, e.ecx, e.edx] == VENDOR_KVM;
            e.function += KVM_LEAF_BASE - LEAF_VENDOR;
            if was_signature && (LEAF_VENDOR..KVM_LEAF_BASE).contains(&e.eax) {
                e.eax += KVM_LEAF_BASE - LEAF_VENDOR;
            }
        }
        entries.push(e);
    }
    entries.extend_from_slice(hv);
    *cpuid = CpuId::from_entries(&entries).map_err(|_| HypervError::TooManyEntries)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// What KVM_GET_SUPPORTED_HV_CPUID returns on a VMX host with eVMCS
    /// (Linux 6.x, kvm_get_hv_cpuid): "Linux KVM Hv", every feature KVM
    /// emulates, nested leaves and the synthetic debugger leaves.
    fn kvm_supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            // "Linux KVM Hv", highest leaf 0x40000082.
            e(
                0x4000_0000,
                0x4000_0082,
                0x756E_694C,
                0x564B_2078,
                0x7648_204D,
            ),
            e(0x4000_0001, 0x3123_7648, 0, 0, 0),
            e(0x4000_0002, 0x0000_3839, 0x000A_0000, 0, 0),
            // EAX: bits 0-7, 9, 11, 12, 13; EBX: post messages, signal
            // events, extended hypercalls; EDX: XMM input/output, frequency,
            // crash MSRs, debug MSRs, direct stimers.
            e(0x4000_0003, 0x0000_3AFF, 0x0010_0030, 0, 0x0008_8D10),
            // EAX: remote TLB flush, APIC access, relaxed timing, cluster
            // IPI, ex processor masks, eVMCS; EBX: 0xFFF spin retries.
            e(0x4000_0004, 0x0000_4C2C, 0x0000_0FFF, 0, 0),
            e(0x4000_0005, 4096, 64, 0, 0),
            e(0x4000_0006, 0x0000_0042, 0, 0, 0),
            e(0x4000_0007, 0, 0, 0, 0),
            e(0x4000_0008, 0, 0, 0, 0),
            e(0x4000_0009, 0, 0, 0, 0),
            e(0x4000_000A, 0x0002_0101, 0, 0, 0),
            e(0x4000_0080, 0, 0, 0, 0),
            e(0x4000_0081, 0, 0, 0, 0),
            e(0x4000_0082, 0x0000_0002, 0, 0, 0),
        ]
    }

    #[test]
    fn leaves_from_kvm_supported_list() {
        let hv = leaves(&kvm_supported()).unwrap();
        let got: Vec<(u32, u32, u32, u32, u32)> = hv
            .iter()
            .map(|x| (x.function, x.eax, x.ebx, x.ecx, x.edx))
            .collect();
        assert_eq!(
            got,
            vec![
                // Highest leaf 0x4000000A, "Micr" "osof" "t Hv".
                (
                    0x4000_0000,
                    0x4000_000A,
                    0x7263_694D,
                    0x666F_736F,
                    0x7648_2074
                ),
                // "Hv#1".
                (0x4000_0001, 0x3123_7648, 0, 0, 0),
                // KVM's version: build 0x3839, 10.0.
                (0x4000_0002, 0x0000_3839, 0x000A_0000, 0, 0),
                // EAX 0xA7F: VP runtime(0), ref count(1), SynIC(2),
                // stimers(3), APIC access(4), hypercall(5), VP index(6),
                // ref TSC page(9), frequency MSR access(11). No partition
                // privileges in EBX (no message ports). EDX 0x80100:
                // frequency MSRs(8), direct stimers(19).
                (0x4000_0003, 0x0000_0A7F, 0, 0, 0x0008_0100),
                // EAX 0xC2C: remote TLB flush(2), APIC access(3), relaxed
                // timing(5), cluster IPI(10), ex processor masks(11); never
                // notify on long spin waits.
                (0x4000_0004, 0x0000_0C2C, 0xFFFF_FFFF, 0, 0),
                // KVM's limits.
                (0x4000_0005, 4096, 64, 0, 0),
                (0x4000_0006, 0, 0, 0, 0),
                (0x4000_0007, 0, 0, 0, 0),
                (0x4000_0008, 0, 0, 0, 0),
                (0x4000_0009, 0, 0, 0, 0),
                (0x4000_000A, 0, 0, 0, 0),
            ]
        );
        assert!(hv.iter().all(|x| x.index == 0 && x.flags == 0));
    }

    #[test]
    fn missing_features_are_named() {
        let mut s = kvm_supported();
        // An older KVM: no direct-mode stimers, no IPI hypercalls.
        s[3].edx &= !HV_STIMER_DIRECT_MODE_AVAILABLE;
        s[4].eax &= !HV_CLUSTER_IPI_RECOMMENDED;
        let err = leaves(&s).unwrap_err().to_string();
        assert_eq!(
            err,
            "hyperv=on: this host's KVM does not offer: \
             synthetic timers (direct mode), IPI hypercalls"
        );
        // No feature leaf at all: everything in it is missing.
        let s: Vec<_> = kvm_supported()
            .into_iter()
            .filter(|x| x.function != LEAF_FEATURES)
            .collect();
        assert!(leaves(&s)
            .unwrap_err()
            .to_string()
            .contains("hypercall page, VP index"));
        // No version leaf.
        let s: Vec<_> = kvm_supported()
            .into_iter()
            .filter(|x| x.function != LEAF_VERSION)
            .collect();
        assert!(matches!(
            leaves(&s),
            Err(HypervError::MissingLeaf(0x4000_0002))
        ));
    }

    #[test]
    fn kvm_leaves_move_to_0x40000100() {
        let mut cpuid = CpuId::from_entries(&[
            e(0x1, 0x000A_0671, 0, 0x8000_0000, 0),
            // KVM signature, highest KVM leaf 0x40000001 (KVM_GET_SUPPORTED_CPUID).
            e(0x4000_0000, 0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D),
            e(0x4000_0001, 0x0100_7AFB, 0, 0, 0),
            // The timing leaf cpuid::patch adds (and the raised maximum).
            e(0x4000_0010, 2_000_000, 1_000_000, 0, 0),
            e(0x8000_0000, 0x8000_0008, 0, 0, 0),
        ])
        .unwrap();
        cpuid.as_mut_slice()[1].eax = 0x4000_0010;
        let hv = leaves(&kvm_supported()).unwrap();
        install(&mut cpuid, &hv).unwrap();
        let s = cpuid.as_slice();
        let get = |f: u32| s.iter().find(|x| x.function == f).copied().unwrap();
        assert_eq!(s.len(), 5 + 11);
        assert_eq!(get(0x1).ecx, 0x8000_0000);
        let kvm = get(0x4000_0100);
        assert_eq!(
            (kvm.eax, kvm.ebx, kvm.ecx, kvm.edx),
            (0x4000_0110, 0x4B4D_564B, 0x564B_4D56, 0x4D)
        );
        assert_eq!(get(0x4000_0101).eax, 0x0100_7AFB);
        assert_eq!(
            (get(0x4000_0110).eax, get(0x4000_0110).ebx),
            (2_000_000, 1_000_000)
        );
        assert!(!s.iter().any(|x| x.function == 0x4000_0010));
        let v = get(0x4000_0000);
        assert_eq!(
            (v.eax, [v.ebx, v.ecx, v.edx]),
            (0x4000_000A, VENDOR_MICROSOFT_HV)
        );
        assert_eq!(get(0x4000_0001).eax, INTERFACE_HV1);
        assert_eq!(get(0x8000_0000).eax, 0x8000_0008);
        // The signature spelled out, so the constants cannot drift.
        let text: Vec<u8> = VENDOR_MICROSOFT_HV
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(&text, b"Microsoft Hv");
        let text: Vec<u8> = VENDOR_KVM.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&text, b"KVMKVMKVM\0\0\0");
        assert_eq!(&INTERFACE_HV1.to_le_bytes(), b"Hv#1");
    }
}
