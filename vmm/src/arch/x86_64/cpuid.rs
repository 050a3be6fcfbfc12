//! Per-vCPU CPUID from KVM_GET_SUPPORTED_CPUID: APIC IDs, topology
//! (leaves 0x1, 0x4, 0xB, 0x1F), x2APIC, the hypervisor bit and the TSC
//! frequency leaf.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;
const LEAF_HV_TIMING: u32 = 0x4000_0010;
const ECX_X2APIC: u32 = 1 << 21;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Bits needed to number `n` things.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Patch `cpuid` (as KVM supports it) for vCPU `id` of `count` (one
/// socket, `count` cores, one thread each). `tsc_khz`, when known, is
/// published in leaf 0x40000010.
pub fn patch(cpuid: &mut CpuId, id: u8, count: u8, tsc_khz: Option<u32>) {
    let core_bits = bits_for(u32::from(count));
    let apic_id = u32::from(id);
    // Publish the TSC frequency in the hypervisor timing leaf 0x40000010
    // (kHz in EAX, LAPIC bus kHz in EBX) after KVM's signature leaf.
    if let Some(khz) = tsc_khz {
        let has_hv = cpuid.as_mut_slice().iter_mut().any(|e| {
            if e.function == 0x4000_0000 {
                e.eax = e.eax.max(LEAF_HV_TIMING);
                true
            } else {
                false
            }
        });
        let has_timing = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_HV_TIMING);
        if has_hv && !has_timing {
            let _ = cpuid.push(kvm_cpuid_entry2 {
                function: LEAF_HV_TIMING,
                eax: khz,
                ..Default::default()
            });
        }
    }
    // Make sure the topology leaf has its SMT, core and terminating sub-leaves.
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    if max_basic >= LEAF_TOPOLOGY {
        for index in 0..3 {
            let present = cpuid
                .as_slice()
                .iter()
                .any(|e| e.function == LEAF_TOPOLOGY && e.index == index);
            if !present {
                let _ = cpuid.push(kvm_cpuid_entry2 {
                    function: LEAF_TOPOLOGY,
                    index,
                    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                });
            }
        }
    }
    for e in cpuid.as_mut_slice().iter_mut() {
        patch_entry(e, apic_id, u32::from(count), core_bits, tsc_khz);
    }
}

/// Advertise the LAPIC TSC-deadline timer mode (leaf 1 ECX bit 24). KVM
/// emulates it when it has KVM_CAP_TSC_DEADLINE_TIMER but does not list it
/// in KVM_GET_SUPPORTED_CPUID, so the VMM sets it (as QEMU does). Without
/// it, Linux booted as a Hyper-V guest (`hyperv=on,kvm=off`, one-shot
/// LAPIC timer) froze the nested lab host in 3 of 8 boots; with it, 6 of 6
/// passed.
pub fn set_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice().iter_mut() {
        if e.function == LEAF_FEATURES {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// Drop KVM's leaves (0x40000000-0x400000FF: signature, PV features and
/// the timing leaf) for `kvm=off`. The hypervisor-present bit stays.
pub fn remove_kvm_leaves(cpuid: &mut CpuId) {
    let kept: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| !(0x4000_0000..0x4000_0100).contains(&e.function))
        .copied()
        .collect();
    if let Ok(c) = CpuId::from_entries(&kept) {
        *cpuid = c;
    }
}

fn patch_entry(
    e: &mut kvm_cpuid_entry2,
    apic_id: u32,
    count: u32,
    core_bits: u32,
    tsc_khz: Option<u32>,
) {
    match e.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_FFFF) | (apic_id << 24) | ((count.min(255)) << 16);
            e.ecx |= ECX_HYPERVISOR | ECX_X2APIC;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE => {
            // EAX[31:26]: cores per package - 1; [25:14]: threads sharing the cache - 1.
            let cache_level = (e.eax >> 5) & 7;
            let sharing = if cache_level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3FFF) | ((count - 1) << 26) | (sharing << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // Sub-leaf 0: SMT level (1 thread per core); 1: core level.
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1 << 8) | e.index;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = count;
                    e.ecx = (2 << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.edx = apic_id;
        }
        LEAF_HV_TIMING => {
            if let Some(khz) = tsc_khz {
                e.eax = khz;
                e.ebx = 1_000_000; // LAPIC timer: 1 GHz bus clock in KVM
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x21,
            ebx: 0x0001_0800,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut cpuid =
            CpuId::from_entries(&[entry(1, 0), entry(0xB, 0), entry(0xB, 1), entry(4, 0)]).unwrap();
        patch(&mut cpuid, 3, 4, None);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xFF, 4);
        assert_ne!(s[0].ecx & ECX_X2APIC, 0);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((s[1].ebx, s[1].edx, s[1].ecx >> 8), (1, 3, 1));
        assert_eq!((s[2].eax, s[2].ebx, s[2].edx, s[2].ecx >> 8), (2, 4, 3, 2));
        assert_eq!(s[3].eax >> 26, 3);
        // With max basic leaf >= 0xB, missing sub-leaves are added.
        let mut leaf0 = entry(0, 0);
        leaf0.eax = 0xd;
        let mut cpuid = CpuId::from_entries(&[leaf0, entry(0xB, 0)]).unwrap();
        patch(&mut cpuid, 1, 2, None);
        let core = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xB && e.index == 1)
            .unwrap();
        assert_eq!((core.eax, core.ebx, core.edx), (1, 2, 1));
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn tsc_deadline_bit() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(4, 0)]).unwrap();
        patch(&mut cpuid, 0, 1, None);
        assert_eq!(cpuid.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        set_tsc_deadline(&mut cpuid);
        assert_eq!(cpuid.as_slice()[0].ecx & ECX_TSC_DEADLINE, ECX_TSC_DEADLINE);
        assert_eq!(cpuid.as_slice()[1].ecx, 0);
    }

    #[test]
    fn kvm_leaves_can_be_hidden() {
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0),
            entry(0x4000_0000, 0),
            entry(0x4000_0001, 0),
            entry(0x4000_0010, 0),
            entry(0x8000_0000, 0),
        ])
        .unwrap();
        remove_kvm_leaves(&mut cpuid);
        let left: Vec<u32> = cpuid.as_slice().iter().map(|e| e.function).collect();
        assert_eq!(left, vec![1, 0x8000_0000]);
    }
}
