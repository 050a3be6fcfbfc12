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
    // ACPI tables from arbiter's direct boot, read by Linux without errors.
    for check in ["modules", "acpi", "boot"] {
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
    assert_checks(
        &report,
        report.vm("ovmf-kernel"),
        &["modules", "acpi", "boot"],
    );
    assert_checks(
        &report,
        report.vm("ovmf-esp"),
        &[
            "modules",
            "acpi",
            "boot",
            "disk_found",
            "sg_inq",
            "rw_block",
        ],
    );
    // The right memory size: --memory 256M, of which Linux's MemTotal is what
    // the e820 map OVMF built from fw_cfg gives it, less the kernel itself.
    for name in ["ovmf-kernel", "ovmf-esp"] {
        let kb = field(report.vm(name), "boot", "mem_kb");
        assert!(
            (160.0 * 1024.0..=256.0 * 1024.0).contains(&kb),
            "{name}: MemTotal {kb} kB for --memory 256M (log: {})",
            report.log.display()
        );
    }
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

/// The cluster shape on real storage: one SCSI logical unit of Linux's own
/// target (LIO: a fileio backstore behind two tcm_loop ports, made by the
/// lab host before the VMs start), two arbiter VMs, each passing one port's
/// `/dev/sgN` through (`sg=...,pr=passthrough`): two initiator ports, two
/// I_T nexuses, and every SCSI status comes from the device, not from
/// arbiter's PR emulation. The steps of `lab::PR_STEPS` go to the node they
/// belong to and every status must be the one LIO gives its own initiators
/// (`lab_reference_pr_sequence_against_linux_lio`): node B's WRITE under A's
/// reservation gets RESERVATION CONFLICT (sg3-utils exit 24) in B's guest,
/// LIO's REGISTRATIONS PREEMPTED unit attention (2A/05) reaches A's
/// `sg_turs` (6), and data written by one node through its port is read back
/// by the other through its own. Both disks answer INQUIRY with LIO's vendor.
///
/// Direct mode (a VMX/SVM host) makes the same LU on the host itself: that
/// needs root and the target modules, else the test is skipped with the
/// reason. Nodes boot one after the other (see the shared-file test).
#[test]
fn lab_two_arbiter_vms_on_two_lio_ports_of_one_real_lun() {
    const T: &str = "lab_two_arbiter_vms_on_two_lio_ports_of_one_real_lun";
    let node = |name: &str, port: &str| {
        Vm::arbiter(name)
            .args(["--memory", "256M"])
            .linux("agent")
            .scsi_passthrough(0, 0, &format!("{{lio:{port}}}"), "pr=passthrough")
            .timeout(Duration::from_secs(600))
    };
    let ready = Duration::from_secs(300);
    let step = Duration::from_secs(120);
    let mut scenario = Scenario::new("arbiter_two_vms_lio_pr")
        .lio("shared", 64, &["a", "b"])
        .agent_start(node("node-a", "a"))
        .agent("node-a", "lab_say node a up", ready)
        .agent("node-a", ". /lab/scripts/lio-data.sh inq", step)
        .agent_start(node("node-b", "b"))
        .agent("node-b", "lab_say node b up", ready)
        .agent("node-b", ". /lab/scripts/lio-data.sh inq", step);
    for (pr_step, _) in lab::PR_STEPS {
        let short = pr_step.strip_prefix("pr_").unwrap_or(pr_step);
        let (vm, role) = if short.starts_with("a_") {
            ("node-a", "a")
        } else {
            ("node-b", "b")
        };
        scenario = scenario.agent(
            vm,
            &format!(". /lab/scripts/pr-node.sh {role} {short}"),
            step,
        );
    }
    let scenario = scenario
        .agent("node-a", ". /lab/scripts/lio-data.sh write from-a", step)
        .agent("node-b", ". /lab/scripts/lio-data.sh check from-a", step)
        .agent_stop("node-a")
        .agent_stop("node-b");
    let Some(report) = run(T, &scenario) else {
        return;
    };
    report.assert_passed();
    let (a, b) = (report.vm("node-a"), report.vm("node-b"));
    assert_checks(&report, a, &["lio_disk", "lio_data_write"]);
    assert_checks(&report, b, &["lio_disk", "lio_data_read"]);
    lab::assert_pr_steps(&[a, b], &report.log);
    assert!(
        a.results.iter().all(|r| !r.name.starts_with("pr_b_"))
            && b.results.iter().all(|r| !r.name.starts_with("pr_a_")),
        "a step ran on the wrong node (log: {})",
        report.log.display()
    );
    // The conflict and the unit attention came from the device: B's guest saw
    // status 24 on its WRITE, A's guest saw the unit attention on its TUR.
    let conflict = b.result("pr_b_write_unregistered_conflict");
    assert_eq!(
        conflict
            .and_then(|r| r.fields.get("rc"))
            .map(String::as_str),
        Some("24"),
        "node B: {conflict:?} (log: {})",
        report.log.display()
    );
    let ua = a.result("pr_a_unit_attention_registrations_preempted");
    assert_eq!(
        ua.and_then(|r| r.fields.get("rc")).map(String::as_str),
        Some("6"),
        "node A: {ua:?} (log: {})",
        report.log.display()
    );
}

/// Hyper-V enlightenments on hardware-style KVM (issue 7): the `hyperv`
/// test guest with `--cpus 2,hyperv=on` checks the "Microsoft Hv" leaves,
/// VP index, frequency MSRs, reference counter and TSC page, hypercall
/// page, IPI and TLB flush hypercalls, SynIC and a direct-mode synthetic
/// timer. Linux guests with `hyperv=on`: `lab_arbiter_linux_as_a_hyperv_guest_with_kvm_off`.
#[test]
fn lab_arbiter_hyperv_enlightenments() {
    let scenario = Scenario::new("arbiter_hyperv").vm(Vm::arbiter("hvguest")
        .args([
            "--memory",
            "64M",
            "--cpus",
            "2,hyperv=on",
            "--kernel",
            "{guest:hyperv}",
        ])
        .expect_exit(Some(33))
        .expect_serial("GUEST PASS")
        .timeout(Duration::from_secs(120)));
    let Some(report) = run("lab_arbiter_hyperv_enlightenments", &scenario) else {
        return;
    };
    let log = report.log.display();
    for l in report
        .vm("hvguest")
        .output
        .iter()
        .filter(|l| l.starts_with("hv:"))
    {
        eprintln!("hvguest| {l}");
    }
    report.assert_passed();
    let g = report.vm("hvguest");
    assert_eq!(g.exit, Some(33), "log: {log}");
    for want in [
        "hv: vendor \"Microsoft Hv\" max leaf 4000000a",
        "hv: features eax a7f ebx 0 edx 80100",
        "hv: recommendations eax c2c spin retries ffffffff",
        "hv: vp index 0",
        "hv: tlb flush hypercall status 0",
        "hv: post message hypercall status 6",
        "hv: ipi delivered to vp 0",
        "hv: synic enabled, message page set",
    ] {
        assert!(
            g.output.iter().any(|l| l.contains(want)),
            "hvguest: no {want:?} (log: {log})"
        );
    }
}

/// The Debian guest of `vm` booted with `--cpus 2,hyperv=...`: its checks
/// passed, 2 CPUs, the hypervisor Linux detected is `detected`, no panic;
/// prints its hypervisor and clocksource lines. Returns the `hyperv`
/// result's fields.
fn linux_hyperv_checks(
    report: &Report,
    name: &str,
    detected: &str,
) -> std::collections::BTreeMap<String, String> {
    let log = report.log.display();
    let vm = report.vm(name);
    assert_checks(report, vm, &["modules", "boot", "hyperv"]);
    for l in vm
        .output
        .iter()
        .filter(|l| l.contains("Hyper-V") || l.contains("Hypervisor") || l.contains("clocksource"))
    {
        eprintln!("{name}| {l}");
    }
    assert_eq!(field(vm, "boot", "cpus"), 2.0, "{name} (log: {log})");
    assert!(
        !vm.output
            .iter()
            .any(|l| l.contains("Kernel panic") || l.contains("BUG:")),
        "{name} (log: {log})"
    );
    let hv = vm
        .result("hyperv")
        .map(|r| r.fields.clone())
        .unwrap_or_default();
    assert_eq!(
        hv.get("detected").map(String::as_str),
        Some(detected),
        "{name} (log: {log})"
    );
    hv
}

/// The Debian guest with `--cpus 2,hyperv=on` (Linux ranks hypervisors by
/// CPUID base, so with KVM's leaves at 0x40000100 it picks KVM) and with
/// `--cpus 2,hyperv=on,kvm=off`: Linux finds only Hyper-V and uses it: TSC
/// page clock source, TLB flush and IPI hypercalls, enlightened APIC; 2 CPUs,
/// no panic. Passes nested, but not reliably enough for CI: in some boots (4
/// of about 14 seen) the nested lab host stops (its own heartbeat too) while the outer
/// QEMU spins at 100 % CPU, i.e. the level-1 kernel no longer runs — not the
/// known idle hang the runner retries. Where that comes from (QEMU's TCG SVM
/// emulation with a Hyper-V guest at level 2, or level-1 KVM) is not settled;
/// on a host with VMX/SVM the test runs directly.
#[test]
#[ignore = "the nested lab host stalls (outer QEMU busy) in some boots of Linux with hyperv=on; run with --ignored"]
fn lab_arbiter_linux_as_a_hyperv_guest_with_kvm_off() {
    let scenario = Scenario::new("arbiter_hyperv_kvm_off")
        .vm(Vm::arbiter("linux")
            .args(["--memory", "256M", "--cpus", "2,hyperv=on"])
            .linux("boot,hyperv")
            .expect_exit(None)
            .timeout(Duration::from_secs(300)))
        .vm(Vm::arbiter("linuxhv")
            .args(["--memory", "256M", "--cpus", "2,hyperv=on,kvm=off"])
            .linux("boot,hyperv")
            .expect_exit(None)
            .timeout(Duration::from_secs(300)));
    let Some(report) = run(
        "lab_arbiter_linux_as_a_hyperv_guest_with_kvm_off",
        &scenario,
    ) else {
        return;
    };
    let log = report.log.display();
    report.assert_passed();
    linux_hyperv_checks(&report, "linux", "KVM");
    let hv = linux_hyperv_checks(&report, "linuxhv", "Microsoft_Hyper-V");
    let vm = report.vm("linuxhv");
    assert!(
        hv.get("clocksource")
            .is_some_and(|c| c.starts_with("hyperv_clocksource")),
        "{hv:?} (log: {log})"
    );
    for want in [
        "Hyper-V: Using hypercall for remote TLB flush",
        "Hyper-V: Using IPI hypercalls",
        "Hyper-V: Using enlightened APIC",
    ] {
        assert!(
            vm.output.iter().any(|l| l.contains(want)),
            "linuxhv: no {want:?} (log: {log})"
        );
    }
}

/// The GUID of the test's UEFI variable `ArbiterLab`.
const LAB_VAR_GUID: &str = "5a0e2c3b-7d1f-4e6a-9b8c-1d2e3f405162";

/// "hello" as UTF-16LE, the way the UEFI shell's `setvar NAME -guid G`
/// prints a variable's bytes (upper case hex, compared without case).
const HELLO_UTF16_HEX: &str = "68 00 65 00 6C 00 6C 00 6F 00";

/// A 1 MiB FAT image whose root holds `startup.nsh` = `script` (CRLF lines),
/// built with mkfs.vfat and mcopy; `None` (after printing why) without them.
fn nsh_esp(test: &str, script: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("esp.img");
    let nsh = dir.path().join("startup.nsh");
    std::fs::write(&nsh, script.replace('\n', "\r\n")).expect("write startup.nsh");
    let run = |cmd: &mut std::process::Command| cmd.output().map(|o| o.status.success());
    let made = run(std::process::Command::new("mkfs.vfat")
        .args(["-C", "-n", "NSH"])
        .arg(&img)
        .arg("1024"))
    .unwrap_or(false)
        && run(std::process::Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&nsh)
            .arg("::/startup.nsh"))
        .unwrap_or(false);
    if !made {
        println!(
            "SKIPPED {test}: mkfs.vfat and mcopy are needed (apt-get install dosfstools mtools)"
        );
        return None;
    }
    Some(std::fs::read(&img).expect("read esp.img"))
}

/// The output a VM printed between two marker lines of the startup script,
/// without terminal escape sequences, in upper case, as one string.
fn between(vm: &VmReport, from: &str, to: &str) -> String {
    let text: String = vm
        .output
        .iter()
        .filter(|l| !l.starts_with("stderr: "))
        .map(|l| strip_ansi(l).to_ascii_uppercase() + "\n")
        .collect();
    let (from, to) = (from.to_ascii_uppercase(), to.to_ascii_uppercase());
    let start = text
        .find(&from)
        .unwrap_or_else(|| panic!("{}: no {from:?} in the output:\n{text}", vm.name));
    let rest = &text[start + from.len()..];
    let end = rest.find(&to).unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7E)
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Issue 7: a UEFI variable written from the shell survives a restart with
/// the vars file. Debian's OVMF_CODE_4M.fd + a private copy of
/// OVMF_VARS_4M.fd as CFI flash, booted twice; the shell runs a
/// startup.nsh from a small FAT disk on virtio-scsi that prints the variable
/// `ArbiterLab`, sets it non-volatile (`setvar ... -nv -bs =L"hello"`),
/// prints it again and powers off (`reset -s`). The first boot finds no
/// variable, the second finds "hello"; on the host the vars file differs
/// from the template and holds the variable's name. The single OVMF.fd
/// (ROM) says at start that variables are not kept, and indeed a second
/// ROM boot does not find the variable the first one set.
#[test]
fn lab_arbiter_uefi_variable_survives_restart_with_vars_file() {
    const TEST: &str = "lab_arbiter_uefi_variable_survives_restart_with_vars_file";
    let script = format!(
        "@echo -off\n\
         echo ARBITER-LAB before\n\
         setvar ArbiterLab -guid {LAB_VAR_GUID}\n\
         setvar ArbiterLab -guid {LAB_VAR_GUID} -nv -bs =L\"hello\"\n\
         echo ARBITER-LAB after\n\
         setvar ArbiterLab -guid {LAB_VAR_GUID}\n\
         echo ARBITER-LAB end\n\
         reset -s\n"
    );
    let Some(esp) = nsh_esp(TEST, &script) else {
        return;
    };
    let ro = DiskOpts {
        readonly: true,
        ..DiskOpts::default()
    };
    let vm = |name: &str, firmware: &str| {
        Vm::arbiter(name)
            .args(["--memory", "256M", "--firmware", firmware])
            .scsi_disk(0, 0, "{tmp}/nsh.img", ro)
            .expect_exit(Some(0))
            .expect_serial("ARBITER-LAB end")
            .timeout(Duration::from_secs(240))
    };
    let pflash = "code={ovmf_code},vars={tmp}/vars.fd";
    let scenario = Scenario::new("arbiter_uefi_vars")
        .file("nsh.img", &esp)
        .host(
            "vars-copy",
            "cp \"$LAB_OVMF_VARS\" \"$LAB_TMP/vars.fd\" && echo copied $(wc -c <\"$LAB_TMP/vars.fd\")",
        )
        .vm(vm("pflash-1", pflash))
        .host(
            "vars-changed",
            "if cmp -s \"$LAB_OVMF_VARS\" \"$LAB_TMP/vars.fd\"; then echo identical; exit 1; fi\n\
             echo differing_bytes=$(cmp -l \"$LAB_OVMF_VARS\" \"$LAB_TMP/vars.fd\" | wc -l)\n\
             n=$(tr -d '\\000' <\"$LAB_TMP/vars.fd\" | grep -c ArbiterLab)\n\
             echo name_found=$n\n\
             [ \"$n\" -ge 1 ]",
        )
        .vm(vm("pflash-2", pflash))
        .vm(vm("rom-1", "{ovmf}"))
        .vm(vm("rom-2", "{ovmf}"));
    let Some(report) = run(TEST, &scenario) else {
        return;
    };
    report.assert_passed();
    let log = report.log.display();
    let before = |name: &str| between(report.vm(name), "ARBITER-LAB before", "ARBITER-LAB after");
    let after = |name: &str| between(report.vm(name), "ARBITER-LAB after", "ARBITER-LAB end");
    for name in ["pflash-1", "pflash-2", "rom-1", "rom-2"] {
        assert!(
            after(name).contains(HELLO_UTF16_HEX),
            "{name}: setvar did not set ArbiterLab (log: {log})"
        );
    }
    assert!(
        !before("pflash-1").contains(HELLO_UTF16_HEX),
        "pflash-1: the fresh vars copy already had ArbiterLab (log: {log})"
    );
    assert!(
        before("pflash-2").contains(HELLO_UTF16_HEX),
        "pflash-2: ArbiterLab did not survive the restart (log: {log})"
    );
    let changed = &report.vm("vars-changed").output;
    assert!(
        changed.iter().any(|l| l.starts_with("name_found=")
            && l.trim_start_matches("name_found=")
                .parse::<u32>()
                .unwrap_or(0)
                >= 1),
        "the vars file on the host does not hold ArbiterLab: {changed:?} (log: {log})"
    );
    for name in ["rom-1", "rom-2"] {
        assert!(
            !before(name).contains(HELLO_UTF16_HEX),
            "{name}: a ROM boot found ArbiterLab set by an earlier boot (log: {log})"
        );
        assert!(
            report
                .vm(name)
                .output
                .iter()
                // (the last serial line has no newline: stderr may follow on it)
                .any(|l| l.contains("stderr: arbiter: ")
                    && l.contains("UEFI variables the guest sets are lost")),
            "{name}: arbiter did not say that ROM firmware keeps no variables (log: {log})"
        );
    }
    for name in ["pflash-1", "pflash-2"] {
        assert!(
            !report
                .vm(name)
                .output
                .iter()
                .any(|l| l.contains("mapped as ROM")),
            "{name}: flash firmware reported as ROM (log: {log})"
        );
    }
}

/// Issue 7: time from start to the UEFI shell prompt, arbiter next to QEMU
/// (`-machine pc`), same OVMF, same (lab) host, same run: the single OVMF.fd
/// (QEMU `-bios`, arbiter ROM) and the CFI flash pair (QEMU
/// `-drive if=pflash` x2, arbiter `code=,vars=`), each VM with a fresh copy
/// of the variable template. Prints the arbiter/QEMU ratios (goal <= 1.0).
#[test]
fn lab_compare_arbiter_with_qemu_ovmf_time_to_shell() {
    let shell = |vm: Vm| {
        vm.expect_exit(None)
            .expect_serial("Shell>")
            .time_to_serial()
            .timeout(Duration::from_secs(300))
    };
    let scenario = Scenario::new("compare_ovmf_time_to_shell")
        .host(
            "vars-copies",
            "cp \"$LAB_OVMF_VARS\" \"$LAB_TMP/qvars.fd\" && cp \"$LAB_OVMF_VARS\" \"$LAB_TMP/avars.fd\"",
        )
        .vm(shell(Vm::arbiter("arbiter-rom").args(["--memory", "256M"]).ovmf()))
        .vm(shell(Vm::qemu("qemu-rom").args(["-machine", "pc", "-m", "256"]).ovmf()))
        .vm(shell(Vm::arbiter("arbiter-pflash").args([
            "--memory",
            "256M",
            "--firmware",
            "code={ovmf_code},vars={tmp}/avars.fd",
        ])))
        .vm(shell(Vm::qemu("qemu-pflash").args([
            "-machine",
            "pc",
            "-m",
            "256",
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code}",
            "-drive",
            "if=pflash,format=raw,unit=1,file={tmp}/qvars.fd",
        ])));
    let Some(report) = run(
        "lab_compare_arbiter_with_qemu_ovmf_time_to_shell",
        &scenario,
    ) else {
        return;
    };
    report.assert_passed();
    let t = |name: &str| {
        report
            .vm(name)
            .serial_seconds
            .unwrap_or_else(|| panic!("{name}: no time to Shell> (log: {})", report.log.display()))
    };
    let (ar, qr, ap, qp) = (
        t("arbiter-rom"),
        t("qemu-rom"),
        t("arbiter-pflash"),
        t("qemu-pflash"),
    );
    eprintln!(
        "COMPARE arbiter/qemu ({:?}): OVMF start to Shell> ROM {ar:.2}s/{qr:.2}s = {:.2}x, \
         pflash {ap:.2}s/{qp:.2}s = {:.2}x (goal <= 1.0)",
        report.mode,
        ar / qr.max(1e-9),
        ap / qp.max(1e-9)
    );
}

/// Issue 7, "a way to see the screen": OVMF with `--display png=...`
/// reaches the UEFI shell; its graphics driver (QemuRamfbDxe) set up the
/// ramfb framebuffer through fw_cfg and drew the firmware's console there.
/// The last picture (written when the VM is stopped) comes back from the lab
/// host gzip'd and base64'd on the console; here it is decoded and must
/// show a real screen: not one colour, mostly dark background, some text.
#[test]
fn lab_arbiter_ovmf_screen_to_png() {
    const TEST: &str = "lab_arbiter_ovmf_screen_to_png";
    let scenario = Scenario::new("arbiter_ovmf_screen")
        .vm(Vm::arbiter("ovmf-screen")
            .args([
                "--memory",
                "256M",
                "--display",
                "png={tmp}/screen.png,interval=500",
            ])
            .ovmf()
            .expect_exit(None)
            .expect_serial("Shell>")
            .timeout(Duration::from_secs(300)))
        .host(
            "screen-png",
            "ls -l \"$LAB_TMP/screen.png\" >&2\n\
             echo @@PNG-BEGIN\n\
             gzip -c \"$LAB_TMP/screen.png\" | base64\n\
             echo @@PNG-END",
        );
    let Some(report) = run(TEST, &scenario) else {
        return;
    };
    report.assert_passed();
    let log = report.log.display();
    let out = &report.vm("screen-png").output;
    let b64: String = out
        .iter()
        .skip_while(|l| l.as_str() != "@@PNG-BEGIN")
        .skip(1)
        .take_while(|l| l.as_str() != "@@PNG-END")
        .map(|l| l.trim().to_owned() + "\n")
        .collect();
    assert!(!b64.is_empty(), "no PNG came back: {out:?} (log: {log})");
    let dir = tempfile::tempdir().expect("tempdir");
    let b64_path = dir.path().join("screen.png.gz.b64");
    let png_path = dir.path().join("screen.png");
    std::fs::write(&b64_path, b64).expect("write");
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg("base64 -d \"$1\" | gunzip -c >\"$2\"")
        .arg("sh")
        .arg(&b64_path)
        .arg(&png_path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "base64/gunzip of the PNG failed (log: {log})");
    let file = std::fs::File::open(&png_path).expect("png");
    let mut reader = png::Decoder::new(file).read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    buf.truncate(info.buffer_size());
    let (w, h) = (info.width, info.height);
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert!(w >= 640 && h >= 480, "{w}x{h} (log: {log})");
    let pixels: Vec<[u8; 3]> = buf.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let mut counts = std::collections::BTreeMap::new();
    for p in &pixels {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let (background, most) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (*c, *n))
        .unwrap_or_default();
    let lit = pixels.len() - most;
    eprintln!(
        "SCREEN {w}x{h}: {} colours, background {background:02x?} on {:.1}% of the pixels, \
         {lit} other pixels",
        counts.len(),
        100.0 * most as f64 / pixels.len() as f64
    );
    assert!(counts.len() >= 2, "the screen is one colour (log: {log})");
    // Text on a console: a visible share of pixels differs from the background.
    assert!(
        lit >= 1000 && lit < pixels.len() / 2,
        "{lit} non-background pixels of {} (log: {log})",
        pixels.len()
    );
}
