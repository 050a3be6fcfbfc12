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
