//! Arbiter on real (hardware-style) KVM: directly on a VMX/SVM host, nested
//! in the lab host otherwise (see arbiter_tests::lab).

use std::time::Duration;

use arbiter_tests::lab::{self, DiskOpts, Report, Run, Scenario, Vm, VmReport};

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
/// reports if it cannot power itself off (without ACPI tables Linux halts
/// instead of powering off: "reboot: System halted").
#[test]
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

/// Run `scenario`, returning its report, or `None` when skipped.
fn run(test: &str, scenario: &Scenario) -> Option<Report> {
    match lab::run(test, scenario) {
        Ok(Run::Done(r)) => Some(r),
        Ok(Run::Skipped(_)) => None,
        Err(e) => panic!("{e}"),
    }
}

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

fn field(vm: &VmReport, check: &str, key: &str) -> f64 {
    vm.result(check)
        .and_then(|r| r.fields.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Scenarios 1 (second half) and 4: the Linux guest finds its disk on
/// arbiter's virtio-scsi (kernel driver, sd and sg nodes, INQUIRY, READ
/// CAPACITY, TEST UNIT READY, a block written and read back) and measures
/// 4 KiB QD1 IOPS; the same guest under QEMU in the same place gives the
/// peer numbers, printed as ratios.
///
#[test]
fn lab_compare_arbiter_with_qemu_linux_on_virtio_scsi() {
    let scenario = Scenario::new("compare_linux_virtio_scsi")
        .disk("qdisk", 64)
        .disk("adisk", 64)
        .vm(Vm::qemu("qemu")
            .args(["-m", "256"])
            .linux("probe,bench")
            .scsi_disk(0, 0, "{disk:qdisk}", DiskOpts::default())
            .timeout(Duration::from_secs(240)))
        .vm(Vm::arbiter("arbiter")
            .args(["--memory", "256M"])
            .linux("probe,bench")
            .scsi_disk(0, 0, "{disk:adisk}", DiskOpts::default())
            .expect_exit(None)
            .timeout(Duration::from_secs(240)));
    let Some(report) = run(
        "lab_compare_arbiter_with_qemu_linux_on_virtio_scsi",
        &scenario,
    ) else {
        return;
    };
    report.assert_passed();
    let checks = [
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
    ];
    let (q, a) = (report.vm("qemu"), report.vm("arbiter"));
    assert_checks(&report, q, &checks);
    assert_checks(&report, a, &checks);
    let ratio = |check: &str, key: &str| field(a, check, key) / field(q, check, key).max(1e-9);
    eprintln!(
        "COMPARE arbiter/qemu ({:?}): init uptime {:.2}x, VM wall {:.2}x, 4 KiB QD1 read IOPS {:.2}x, \
         write IOPS {:.2}x",
        report.mode,
        ratio("boot", "uptime"),
        a.seconds / q.seconds.max(1e-9),
        ratio("bench_read", "iops"),
        ratio("bench_write", "iops")
    );
}

/// Scenario 3 in one VM: one disk file behind two virtio-scsi controllers
/// (two initiator ports: two I_T nexuses on one LU), and the guest runs the
/// persistent-reservation sequence that `lab_reference_pr_sequence_against_linux_lio`
/// checks against Linux's LIO, expecting the same statuses.
/// (QEMU's scsi-hd has no PR: the same guest script fails there with INVALID
/// OPCODE, as it should.)
#[test]
fn lab_arbiter_pr_sequence_through_two_initiator_ports() {
    let shared = DiskOpts {
        shared: true,
        ..DiskOpts::default()
    };
    let scenario = Scenario::new("arbiter_pr_two_ports")
        .disk("shared", 64)
        .vm(Vm::arbiter("node")
            .args(["--memory", "256M"])
            .linux("pr-two-ports")
            .scsi_disk(0, 0, "{disk:shared}", shared)
            .scsi_disk(1, 0, "{disk:shared}", shared)
            .expect_exit(None)
            .timeout(Duration::from_secs(300)));
    let Some(report) = run(
        "lab_arbiter_pr_sequence_through_two_initiator_ports",
        &scenario,
    ) else {
        return;
    };
    report.assert_passed();
    let vm = report.vm("node");
    assert_checks(&report, vm, &["two_paths_one_lu"]);
    vm.assert_pr_sequence(&report.log);
}

/// Scenario 2 with arbiter: OVMF to the UEFI shell, OVMF booting the Linux
/// guest handed over by fw_cfg, OVMF booting the guest's unified kernel image
/// from an EFI system partition on virtio-scsi. The same VMs with QEMU pass in
/// `lab_peer_qemu_ovmf_shell_fwcfg_kernel_and_virtio_scsi_esp`.
#[test]
fn lab_arbiter_ovmf_shell_fwcfg_kernel_and_virtio_scsi_esp() {
    let ro = DiskOpts {
        readonly: true,
        ..DiskOpts::default()
    };
    let scenario = Scenario::new("arbiter_ovmf")
        .disk("disk0", 64)
        .vm(Vm::arbiter("ovmf-shell")
            .args(["--memory", "256M"])
            .ovmf()
            .expect_exit(None)
            .expect_serial("Shell>")
            .timeout(Duration::from_secs(300)))
        .vm(Vm::arbiter("ovmf-kernel")
            .args(["--memory", "256M"])
            .ovmf()
            .linux("boot")
            .expect_exit(None)
            .timeout(Duration::from_secs(300)))
        .vm(Vm::arbiter("ovmf-esp")
            .args(["--memory", "256M"])
            .ovmf()
            .scsi_disk(0, 0, "{esp}", ro)
            .scsi_disk(0, 1, "{disk:disk0}", DiskOpts::default())
            .expect_exit(None)
            .expect_serial("@@GUEST done")
            .timeout(Duration::from_secs(300)));
    let Some(report) = run(
        "lab_arbiter_ovmf_shell_fwcfg_kernel_and_virtio_scsi_esp",
        &scenario,
    ) else {
        return;
    };
    report.assert_passed();
    assert_checks(&report, report.vm("ovmf-kernel"), &["modules", "boot"]);
    assert_checks(
        &report,
        report.vm("ovmf-esp"),
        &["modules", "boot", "disk_found", "sg_inq", "rw_block"],
    );
}

/// Scenario 3 as a cluster has it: two Linux VMs, two `arbiter` processes,
/// one shared disk file (`shared=on`: one persistent-reservation state for
/// both). Both guests run an agent; the lab host sends each step of the PR
/// sequence to the node it belongs to (node A key 0xa, node B key 0xb), in
/// the order of `lab::PR_STEPS`, and every status must be the one Linux's
/// LIO target gives (`lab_reference_pr_sequence_against_linux_lio`).
///
/// Each node looks its data disk up once per boot (pr-node.sh): reading the
/// disk between steps would let a block-layer READ meet the REGISTRATIONS
/// PREEMPTED unit attention first, and Linux retries such a READ silently, so
/// `sg_turs` on node A would then see GOOD.
#[test]
fn lab_two_arbiter_vms_share_a_disk_through_the_pr_sequence() {
    let shared = DiskOpts {
        shared: true,
        ..DiskOpts::default()
    };
    let node = |name: &str| {
        Vm::arbiter(name)
            .args(["--memory", "256M"])
            .linux("agent")
            .scsi_disk(0, 0, "{disk:shared}", shared)
            .timeout(Duration::from_secs(600))
    };
    // One node boots at a time: two guests booting together on the nested lab
    // host's single vCPU froze the outer QEMU in 4 of 4 tries.
    let ready = Duration::from_secs(300);
    let mut scenario = Scenario::new("arbiter_two_vms_pr")
        .disk("shared", 64)
        .agent_start(node("node-a"))
        .agent("node-a", "lab_say node a up", ready)
        .agent_start(node("node-b"))
        .agent("node-b", "lab_say node b up", ready);
    for (step, _) in lab::PR_STEPS {
        let short = step.strip_prefix("pr_").unwrap_or(step);
        let (vm, role) = if short.starts_with("a_") {
            ("node-a", "a")
        } else {
            ("node-b", "b")
        };
        scenario = scenario.agent(
            vm,
            &format!(". /lab/scripts/pr-node.sh {role} {short}"),
            Duration::from_secs(120),
        );
    }
    let scenario = scenario.agent_stop("node-a").agent_stop("node-b");
    let Some(report) = run(
        "lab_two_arbiter_vms_share_a_disk_through_the_pr_sequence",
        &scenario,
    ) else {
        return;
    };
    report.assert_passed();
    let (a, b) = (report.vm("node-a"), report.vm("node-b"));
    lab::assert_pr_steps(&[a, b], &report.log);
    assert!(
        a.results.iter().all(|r| !r.name.starts_with("pr_b_"))
            && b.results.iter().all(|r| !r.name.starts_with("pr_a_")),
        "a step ran on the wrong node (log: {})",
        report.log.display()
    );
}
