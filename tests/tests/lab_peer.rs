//! Peer baseline: the lab's Linux test guest booted by QEMU (`-enable-kvm`,
//! virtio-scsi-pci + scsi-hd) on the lab's KVM. It proves the guest image
//! itself works (kernel boots, modules load, virtio_scsi finds the disk,
//! sg3-utils talks SCSI to it) so that a failure of the same guest under
//! arbiter is arbiter's. Runs directly on a VMX/SVM host, nested otherwise.

use std::time::Duration;

use arbiter_tests::lab::{self, DiskOpts, Report, Run, Scenario, Vm, VmReport};

#[test]
fn lab_peer_qemu_boots_linux_guest_with_virtio_scsi_disk() {
    let scenario = Scenario::new("peer_qemu_linux_probe")
        .disk("disk0", 64)
        .vm(Vm::qemu("qemu-linux")
            .args(["-m", "256"])
            .linux("probe,bench")
            .scsi_disk(0, 0, "{disk:disk0}", DiskOpts::default())
            .timeout(Duration::from_secs(240)));
    let report = match lab::run(
        "lab_peer_qemu_boots_linux_guest_with_virtio_scsi_disk",
        &scenario,
    ) {
        Ok(Run::Done(r)) => r,
        Ok(Run::Skipped(_)) => return,
        Err(e) => panic!("{e}"),
    };
    report.assert_passed();
    let vm = report.vm("qemu-linux");
    for check in [
        "modules",
        "boot",
        "virtio_scsi_bound",
        "disk_found",
        "sg_node",
        "sg_inq",
        "sg_readcap",
        "sg_turs",
        "rw_block",
        "bench_read",
        "bench_write",
    ] {
        let r = vm.result(check).unwrap_or_else(|| {
            panic!(
                "guest did not report {check} (log: {})",
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
    let inq = vm.result("sg_inq").unwrap();
    assert_eq!(inq.fields.get("vendor").map(String::as_str), Some("QEMU"));
    assert_eq!(inq.fields.get("pdt").map(String::as_str), Some("disk"));
    // 64 MiB disk = 131072 sectors of 512 bytes, as the guest kernel sees it.
    let disk = vm.result("disk_found").unwrap();
    assert_eq!(
        disk.fields.get("sectors").map(String::as_str),
        Some("131072")
    );
    // The peer numbers arbiter will be compared with (boot to init, 4 KiB QD1 IOPS).
    let field = |check: &str, key: &str| {
        vm.result(check)
            .and_then(|r| r.fields.get(key))
            .cloned()
            .unwrap_or_default()
    };
    for b in ["bench_read", "bench_write"] {
        let iops: u64 = field(b, "iops").parse().unwrap_or(0);
        assert!(
            iops > 0,
            "{b}: no IOPS figure (log: {})",
            report.log.display()
        );
    }
    eprintln!(
        "PEER qemu ({:?}): init at {} s guest uptime, VM wall {:.1} s, 4 KiB QD1 read {} IOPS, \
         write {} IOPS",
        report.mode,
        field("boot", "uptime"),
        vm.seconds,
        field("bench_read", "iops"),
        field("bench_write", "iops")
    );
}

/// Guest checks every probe-running VM must pass.
fn assert_checks(report: &Report, vm: &VmReport, checks: &[&str]) {
    for check in checks {
        let r = vm.result(check).unwrap_or_else(|| {
            panic!(
                "{}: guest did not report {check} (log: {})",
                vm.name,
                report.log.display()
            )
        });
        assert_eq!(
            r.status,
            "pass",
            "{}: {check}: {r:?} (log: {})",
            vm.name,
            report.log.display()
        );
    }
}

/// The firmware paths of scenario 2 with QEMU as the monitor, in one lab-host
/// boot: OVMF alone reaches the UEFI shell; OVMF boots the Linux guest handed
/// over by fw_cfg (`-kernel`/`-initrd`); OVMF boots `\EFI\BOOT\BOOTX64.EFI`
/// (the kernel with its initrd and command line built in) from an EFI system
/// partition on virtio-scsi and the guest finds its data disk. Nested, OVMF
/// needs the outer QEMU's CR8 shim (tests/lab/bql-shim.c).
#[test]
fn lab_peer_qemu_ovmf_shell_fwcfg_kernel_and_virtio_scsi_esp() {
    let ro = DiskOpts {
        readonly: true,
        boot: true,
        ..DiskOpts::default()
    };
    let scenario = Scenario::new("peer_qemu_ovmf")
        .disk("disk0", 64)
        .vm(Vm::qemu("qemu-ovmf-shell")
            .args(["-m", "256"])
            .ovmf()
            .expect_exit(None)
            .expect_serial("Shell>")
            .timeout(Duration::from_secs(300)))
        .vm(Vm::qemu("qemu-ovmf-kernel")
            .args(["-m", "256"])
            .ovmf()
            .linux("boot")
            .timeout(Duration::from_secs(300)))
        .vm(Vm::qemu("qemu-ovmf-esp")
            .args(["-m", "256"])
            .ovmf()
            .scsi_disk(0, 0, "{esp}", ro)
            .scsi_disk(0, 1, "{disk:disk0}", DiskOpts::default())
            .expect_serial("@@GUEST done")
            .timeout(Duration::from_secs(300)));
    let report = match lab::run(
        "lab_peer_qemu_ovmf_shell_fwcfg_kernel_and_virtio_scsi_esp",
        &scenario,
    ) {
        Ok(Run::Done(r)) => r,
        Ok(Run::Skipped(_)) => return,
        Err(e) => panic!("{e}"),
    };
    report.assert_passed();
    let log = report.log.display();
    let kernel = report.vm("qemu-ovmf-kernel");
    assert_checks(&report, kernel, &["modules", "boot"]);
    let esp = report.vm("qemu-ovmf-esp");
    assert_checks(
        &report,
        esp,
        &["modules", "boot", "disk_found", "sg_inq", "rw_block"],
    );
    // The probe skips the ESP (label LABESP) and uses the 64 MiB data disk.
    let disk = esp.result("disk_found").unwrap();
    assert_eq!(
        disk.fields.get("sectors").map(String::as_str),
        Some("131072")
    );
    for vm in [kernel, esp] {
        assert!(
            vm.output.iter().any(|l| l.contains("efi: EFI v")),
            "{}: the kernel did not start through UEFI (log: {log})",
            vm.name
        );
    }
}

/// The persistent-reservation sequence of scenario 3 (tests/lab/guest/scripts/
/// pr.sh: register, reserve WE-RO, conflicting write from an unregistered
/// node, read reservation, preempt, unit attention, clear) checked against
/// Linux's own SCSI target (LIO: one LU behind two tcm_loop ports) inside the
/// guest. This pins the statuses the sequence expects to a reference target;
/// arbiter's virtio-scsi disks must give the same ones.
#[test]
fn lab_reference_pr_sequence_against_linux_lio() {
    let scenario = Scenario::new("reference_lio_pr").vm(Vm::qemu("lio")
        .args(["-m", "256"])
        .linux("pr-lio")
        .timeout(Duration::from_secs(240)));
    let report = match lab::run("lab_reference_pr_sequence_against_linux_lio", &scenario) {
        Ok(Run::Done(r)) => r,
        Ok(Run::Skipped(_)) => return,
        Err(e) => panic!("{e}"),
    };
    report.assert_passed();
    let vm = report.vm("lio");
    let log = report.log.display();
    let r = vm
        .result("lio_two_ports")
        .unwrap_or_else(|| panic!("guest did not set up LIO (log: {log})"));
    assert_eq!(r.status, "pass", "{r:?} (log: {log})");
    vm.assert_pr_sequence(&report.log);
}
