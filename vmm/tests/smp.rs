//! Several vCPUs: AP start-up by INIT-SIPI-SIPI through the in-kernel
//! LAPIC, CPUID topology and x2APIC.

use arbiter_tests::guests;
use arbiter_tests::kvm;
use arbiter_tests::vm::VmRun;

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

#[test]
fn two_vcpus_both_run() {
    if let Err(why) = kvm::available() {
        return kvm::skip("two_vcpus_both_run", &why);
    }
    let g = guests::path("smp");
    let out = VmRun::new(ARBITER)
        .args([
            "run",
            "--memory",
            "64M",
            "--cpus",
            "2",
            "--kernel",
            g.to_str().unwrap(),
        ])
        .run()
        .unwrap();
    assert!(!out.timed_out, "{out:?}");
    assert!(
        out.stdout
            .contains("bsp: apic id 0, logical cpus 2, x2apic 1"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("bsp: leaf 0xb core level: 2 cpus, shift 1"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("ap: running, cpuid apic id 1, x2apic id 1, counted 1000"),
        "{out:?}"
    );
    assert_eq!(out.status, Some(33), "{out:?}");
}
