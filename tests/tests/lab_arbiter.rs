//! Arbiter on real (hardware-style) KVM: directly on a VMX/SVM host, nested
//! in the lab host otherwise (see arbiter_tests::lab).

use std::time::Duration;

use arbiter_tests::lab::{self, Run, Scenario, Vm};

/// The whole chain: lab host (or this host), `/dev/kvm` with SVM/VMX,
/// `arbiter run --kernel hello.elf` boots the freestanding PVH test guest,
/// which prints "GUEST PASS" and exits through the debug-exit port with
/// GUEST_EXIT_PASS (arbiter's exit status 33).
#[test]
fn lab_arbiter_boots_pvh_test_guest() {
    let scenario = Scenario::new("arbiter_pvh_hello").vm(Vm::arbiter("hello")
        .args(["--memory", "64M", "--kernel", "{guest:hello}"])
        .expect_exit(Some(33))
        .expect_serial("GUEST PASS")
        .timeout(Duration::from_secs(120)));
    let report = match lab::run("lab_arbiter_boots_pvh_test_guest", &scenario) {
        Ok(Run::Done(r)) => r,
        Ok(Run::Skipped(_)) => return,
        Err(e) => panic!("{e}"),
    };
    report.assert_passed();
    let vm = report.vm("hello");
    assert_eq!(vm.exit, Some(33));
    assert!(
        vm.output
            .iter()
            .any(|l| l == "Hello from the Arbiter test guest!"),
        "no greeting (log: {})",
        report.log.display()
    );
}

/// Scenario 1 (first half): arbiter boots the Debian kernel (bzImage) of the
/// lab's Linux test guest by direct kernel boot, with its initramfs, to init,
/// which runs userspace and reports. The guest is stopped 5 s after it
/// reports if it cannot power itself off.
///
/// Ignored until arbiter gives Linux its platform tables: today the kernel
/// finds no ACPI RSDP and no MP table, sets the APIC up in virtual-wire mode,
/// its clock stops at ~8.8 s and it hangs probing i8042 (see
/// target/lab/logs/arbiter_linux_bzimage.log after `--ignored`).
#[test]
#[ignore = "arbiter's Linux boot stops before init (no ACPI/MP tables yet); run with --ignored"]
fn lab_arbiter_boots_linux_bzimage_to_init() {
    let scenario = Scenario::new("arbiter_linux_bzimage").vm(Vm::arbiter("linux")
        .args(["--memory", "256M"])
        .linux("boot")
        .expect_exit(None)
        .timeout(Duration::from_secs(240)));
    let report = match lab::run("lab_arbiter_boots_linux_bzimage_to_init", &scenario) {
        Ok(Run::Done(r)) => r,
        Ok(Run::Skipped(_)) => return,
        Err(e) => panic!("{e}"),
    };
    report.assert_passed();
    let vm = report.vm("linux");
    let log = report.log.display();
    for check in ["modules", "boot"] {
        let r = vm
            .result(check)
            .unwrap_or_else(|| panic!("guest did not report {check} (log: {log})"));
        assert_eq!(r.status, "pass", "{check}: {r:?} (log: {log})");
    }
    assert!(
        vm.output.iter().any(|l| l.contains("Linux version")),
        "no kernel banner (log: {log})"
    );
}
