//! The runner's direct mode, proven where this host cannot: inside the lab
//! host, whose `/dev/kvm` is hardware-style KVM (kvm_amd with nested paging),
//! exactly as on a user's machine with VMX/SVM.

use std::time::Duration;

use arbiter_tests::{
    kvm,
    lab::{self, Mode, Run, Scenario, Vm},
};

/// The README's main-job command (`arbiter-lab --linux probe ...`: stock OVMF
/// → the Debian guest kernel → its virtio_scsi driver on an arbiter disk, with
/// sg3_utils) run *inside* the lab host: there the runner finds SVM in
/// /proc/cpuinfo and picks its direct mode by itself (no ARBITER_LAB_MODE), as
/// it does on a host with hardware virtualization. On such a host this test
/// skips: every lab test there already runs in direct mode.
#[test]
fn lab_runner_picks_direct_mode_on_hardware_kvm_and_boots_the_main_job() {
    const T: &str = "lab_runner_picks_direct_mode_on_hardware_kvm_and_boots_the_main_job";
    match lab::mode() {
        Ok(Mode::Nested) => {}
        Ok(Mode::Direct) => {
            return kvm::skip(
                T,
                "this host has VMX/SVM: every lab test here runs in direct mode already",
            )
        }
        Err(why) => return kvm::skip(T, &why),
    }
    // `{{` keeps a placeholder for the inner runner (its own disk and OVMF).
    let scenario = Scenario::new("direct_in_labhost").vm(Vm::lab_runner("runner")
        .args([
            "--linux",
            "probe",
            "--disk",
            "disk0=64",
            "--",
            "--memory",
            "512M",
            "--firmware",
            "{{ovmf}",
            "--scsi-disk",
            "path={{disk:disk0},controller=0,target=0,lun=0",
        ])
        .expect_exit(Some(0))
        .timeout(Duration::from_secs(420)));
    let report = match lab::run(T, &scenario) {
        Ok(Run::Done(r)) => r,
        Ok(Run::Skipped(_)) => return,
        Err(e) => panic!("{e}"),
    };
    report.assert_passed();
    let vm = report.vm("runner");
    assert!(
        vm.output
            .iter()
            .any(|l| l.contains("arbiter-lab: Direct mode, exit status")),
        "the inner runner did not run in direct mode (log: {})",
        report.log.display()
    );
    for check in ["boot", "disk_found", "sg_inq", "rw_block"] {
        let r = vm.result(check).unwrap_or_else(|| {
            panic!(
                "inner guest did not report {check} (log: {})",
                report.log.display()
            )
        });
        assert_eq!(
            r.status,
            "pass",
            "{check}: {r:?} (log: {})",
            report.log.display()
        );
    }
}
