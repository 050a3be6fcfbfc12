//! UEFI firmware plumbing: fw_cfg as a guest sees it, and the --firmware
//! checks. OVMF itself only runs where real guests do: the lab scenario
//! `lab_arbiter_ovmf_shell_fwcfg_kernel_and_virtio_scsi_esp`
//! (tests/tests/lab_arbiter.rs) runs it directly on a VMX/SVM host and
//! nested elsewhere.

use arbiter_tests::{guests, kvm, vm::Outcome, vm::VmRun};

fn arbiter() -> VmRun {
    VmRun::new(env!("CARGO_BIN_EXE_arbiter"))
}

#[test]
fn fw_cfg_guest_reads_signature_directory_and_e820_by_io_and_dma() {
    if let Err(why) = kvm::available() {
        return kvm::skip(
            "fw_cfg_guest_reads_signature_directory_and_e820_by_io_and_dma",
            &why,
        );
    }
    let out = arbiter()
        .args(["run", "--memory", "96M", "--kernel"])
        .args([guests::path("fw_cfg").to_string_lossy().into_owned()])
        .run()
        .unwrap();
    assert_eq!(
        out.status,
        Some(Outcome::guest_code(0x10)),
        "serial:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("GUEST PASS"), "{}", out.stdout);
    // The directory lists what OVMF reads.
    for f in [
        "etc/e820",
        "etc/acpi/tables",
        "etc/acpi/rsdp",
        "etc/table-loader",
        "etc/smbios/smbios-tables",
        "etc/ramfb",
    ] {
        assert!(
            out.stdout.contains(f),
            "fw_cfg directory lacks {f}:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("fw_cfg low RAM top 6000000, high 0 KiB"),
        "{}",
        out.stdout
    );
}

#[test]
fn firmware_errors_are_one_line_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.fd");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let out = arbiter()
        .args(["run", "--firmware", odd.to_str().unwrap()])
        .run()
        .unwrap();
    assert_eq!(out.status, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("not a non-zero multiple of 4 KiB"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    let code = dir.path().join("code.fd");
    std::fs::write(&code, vec![0u8; 8192]).unwrap();
    if std::path::Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd").exists() {
        let spec = format!(
            "code={},vars=/usr/share/OVMF/OVMF_VARS_4M.fd",
            code.display()
        );
        let out = arbiter().args(["run", "--firmware", &spec]).run().unwrap();
        assert_eq!(out.status, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains("template; copy it"), "{}", out.stderr);
    }
    let out = arbiter()
        .args(["run", "--firmware", "code=/nonexistent/CODE.fd"])
        .run()
        .unwrap();
    assert_eq!(out.status, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/CODE.fd"),
        "{}",
        out.stderr
    );
}
