//! Hyper-V enlightenments on KVM: the capabilities `hyperv=on` needs,
//! KVM_GET_SUPPORTED_HV_CPUID, per-vCPU SynIC and CPUID enforcement, the VP
//! index, and the Hyper-V exits KVM leaves to user space.

use kvm_bindings::{
    kvm_cpuid2, kvm_enable_cap, kvm_msr_entry, CpuId, Msrs, KVMIO, KVM_CAP_HYPERV,
    KVM_CAP_HYPERV_CPUID, KVM_CAP_HYPERV_ENFORCE_CPUID, KVM_CAP_HYPERV_SEND_IPI,
    KVM_CAP_HYPERV_SYNIC, KVM_CAP_HYPERV_SYNIC2, KVM_CAP_HYPERV_TIME, KVM_CAP_HYPERV_TLBFLUSH,
    KVM_CAP_HYPERV_VP_INDEX, KVM_EXIT_HYPERV_HCALL, KVM_EXIT_HYPERV_SYNIC,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;

use crate::arch::x86_64::hyperv::{self, HypervError};

vmm_sys_util::ioctl_iowr_nr!(KVM_GET_SUPPORTED_HV_CPUID, KVMIO, 0xc1, kvm_cpuid2);

/// HV_X64_MSR_VP_INDEX.
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
/// Hypercall status for a hypercall the partition has no privilege for.
pub const HV_STATUS_ACCESS_DENIED: u64 = 6;

/// The KVM capabilities `hyperv=on` needs, in the order they are checked.
const REQUIRED: &[(u32, &str)] = &[
    (KVM_CAP_HYPERV, "KVM_CAP_HYPERV (Hyper-V emulation)"),
    (
        KVM_CAP_HYPERV_CPUID,
        "KVM_CAP_HYPERV_CPUID (KVM_GET_SUPPORTED_HV_CPUID)",
    ),
    (
        KVM_CAP_HYPERV_TIME,
        "KVM_CAP_HYPERV_TIME (reference counter and TSC page)",
    ),
    (KVM_CAP_HYPERV_VP_INDEX, "KVM_CAP_HYPERV_VP_INDEX"),
    (
        KVM_CAP_HYPERV_TLBFLUSH,
        "KVM_CAP_HYPERV_TLBFLUSH (TLB flush hypercalls)",
    ),
    (
        KVM_CAP_HYPERV_SEND_IPI,
        "KVM_CAP_HYPERV_SEND_IPI (IPI hypercalls)",
    ),
];

fn has(kvm: &Kvm, cap: u32) -> bool {
    kvm.check_extension_raw(u64::from(cap)) > 0
}

/// Check that this host's KVM can give guests Hyper-V enlightenments; the
/// error names the first missing capability.
pub fn check_caps(kvm: &Kvm) -> Result<(), HypervError> {
    for &(cap, name) in REQUIRED {
        if !has(kvm, cap) {
            return Err(HypervError::MissingCap(name));
        }
    }
    if !has(kvm, KVM_CAP_HYPERV_SYNIC2) && !has(kvm, KVM_CAP_HYPERV_SYNIC) {
        return Err(HypervError::MissingCap("KVM_CAP_HYPERV_SYNIC2 (SynIC)"));
    }
    Ok(())
}

/// KVM_GET_SUPPORTED_HV_CPUID on `vcpu`: the Hyper-V leaves KVM can emulate.
pub fn supported_hv_cpuid(vcpu: &VcpuFd) -> Result<CpuId, HypervError> {
    let mut c = CpuId::new(64).map_err(|_| HypervError::TooManyEntries)?;
    // SAFETY: the ioctl writes at most `nent` (64) entries after the
    // kvm_cpuid2 header, which is what the wrapper allocated; it reads
    // nothing else, and the fd is a live vCPU.
    let r = unsafe {
        ioctl_with_mut_ptr(
            vcpu,
            KVM_GET_SUPPORTED_HV_CPUID(),
            c.as_mut_fam_struct_ptr(),
        )
    };
    if r < 0 {
        return Err(HypervError::Ioctl {
            what: "KVM_GET_SUPPORTED_HV_CPUID",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(c)
}

/// Give vCPU `id` the Hyper-V leaves: add them to `cpuid` (before
/// KVM_SET_CPUID2), from what `vcpu` supports.
pub fn add_leaves(vcpu: &VcpuFd, cpuid: &mut CpuId) -> Result<(), HypervError> {
    let supported = supported_hv_cpuid(vcpu)?;
    let leaves = hyperv::leaves(supported.as_slice())?;
    hyperv::install(cpuid, &leaves)
}

/// After KVM_SET_CPUID2: enable the SynIC, make KVM enforce the published
/// CPUID (when it can), and set the VP index to `id`.
pub fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, id: u8) -> Result<(), HypervError> {
    let ioctl = |what| move |source| HypervError::Ioctl { what, source };
    let synic = if has(kvm, KVM_CAP_HYPERV_SYNIC2) {
        KVM_CAP_HYPERV_SYNIC2
    } else {
        KVM_CAP_HYPERV_SYNIC
    };
    vcpu.enable_cap(&kvm_enable_cap {
        cap: synic,
        ..Default::default()
    })
    .map_err(ioctl("KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2)"))?;
    if has(kvm, KVM_CAP_HYPERV_ENFORCE_CPUID) {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_HYPERV_ENFORCE_CPUID,
            ..Default::default()
        };
        cap.args[0] = 1;
        vcpu.enable_cap(&cap)
            .map_err(ioctl("KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENFORCE_CPUID)"))?;
    }
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: HV_X64_MSR_VP_INDEX,
        data: u64::from(id),
        ..Default::default()
    }])
    .map_err(|_| HypervError::TooManyEntries)?;
    let n = vcpu
        .set_msrs(&msrs)
        .map_err(ioctl("KVM_SET_MSRS(HV_X64_MSR_VP_INDEX)"))?;
    if n != 1 {
        return Err(HypervError::Ioctl {
            what: "KVM_SET_MSRS(HV_X64_MSR_VP_INDEX)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    Ok(())
}

/// What a KVM_EXIT_HYPERV was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvExit {
    /// The guest wrote a SynIC control/page MSR (KVM has applied it).
    Synic {
        /// The MSR.
        msr: u32,
    },
    /// A hypercall KVM does not handle; answered "access denied".
    Hypercall {
        /// The hypercall input value (code in bits 15:0).
        input: u64,
    },
    /// Another type (synthetic debugger): nothing to do.
    Other(u32),
}

/// Handle the KVM_EXIT_HYPERV `vcpu` just returned: SynIC MSR writes need
/// nothing (arbiter has no VMBus to look at the pages), hypercalls that
/// reach user space (message and event ports) get HV_STATUS_ACCESS_DENIED,
/// the answer KVM gives itself when it enforces the published privileges.
pub fn handle_exit(vcpu: &mut VcpuFd) -> HvExit {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_HYPERV, so KVM filled the
    // `hyperv` member of the exit union; `type_` says which inner member.
    let hv = unsafe { &mut run.__bindgen_anon_1.hyperv };
    match hv.type_ {
        KVM_EXIT_HYPERV_SYNIC => {
            // SAFETY: type_ is KVM_EXIT_HYPERV_SYNIC: `synic` is the member.
            let msr = unsafe { hv.u.synic.msr };
            HvExit::Synic { msr }
        }
        KVM_EXIT_HYPERV_HCALL => {
            // SAFETY: type_ is KVM_EXIT_HYPERV_HCALL: `hcall` is the member.
            let hcall = unsafe { &mut hv.u.hcall };
            hcall.result = HV_STATUS_ACCESS_DENIED;
            HvExit::Hypercall { input: hcall.input }
        }
        other => HvExit::Other(other),
    }
}
