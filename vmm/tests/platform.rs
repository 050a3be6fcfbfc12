//! Platform devices seen from freestanding guests: PCI enumeration, CMOS,
//! reset and power-off paths, triple faults.

use arbiter_tests::guests;
use arbiter_tests::kvm;
use arbiter_tests::vm::{Outcome, VmRun};

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

fn boot(guest: &str, extra: &[&str]) -> Option<Outcome> {
    if let Err(why) = kvm::available() {
        kvm::skip(guest, &why);
        return None;
    }
    let g = guests::path(guest);
    let out = VmRun::new(ARBITER)
        .args(["run", "--kernel", g.to_str().unwrap()])
        .args(extra.iter().copied())
        .run()
        .unwrap();
    assert!(!out.timed_out, "{guest} timed out: {out:?}");
    Some(out)
}

#[test]
fn pci_enumeration_sees_440fx_piix3_piix4pm() {
    let Some(out) = boot("pci_enum", &["--memory", "64M"]) else {
        return;
    };
    assert_eq!(out.status, Some(33), "{out:?}");
    assert!(
        out.stdout.contains("pci 00:00.0 8086:1237 class 060000"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("pci 00:01.0 8086:7000 class 060100"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("pci 00:01.3 8086:7113 class 068000"),
        "{out:?}"
    );
    assert!(out.stdout.contains("pm base b000 "), "{out:?}");
    assert!(out.stdout.contains("PCI functions: 3"), "{out:?}");
}

#[test]
fn cmos_reports_memory_size_and_clock() {
    let Some(out) = boot("cmos", &["--memory", "96M"]) else {
        return;
    };
    assert_eq!(out.status, Some(33), "{out:?}");
    // (96 - 16) MiB in 64 KiB units; 95 MiB in KiB is capped at 0xFFFF.
    assert!(
        out.stdout
            .contains("cmos below4g_64k=1280 above4g_64k=0 ext_kib=65535"),
        "{out:?}"
    );
    assert!(out.stdout.contains("cmos total MiB 96"), "{out:?}");
    let Some(out) = boot("cmos", &["--memory", "5G"]) else {
        return;
    };
    assert_eq!(out.status, Some(33), "{out:?}");
    // 3 GiB below (the PCI hole), 2 GiB above 4 GiB.
    assert!(
        out.stdout.contains("below4g_64k=48896 above4g_64k=32768"),
        "{out:?}"
    );
    assert!(out.stdout.contains("cmos total MiB 5120"), "{out:?}");
}

#[test]
fn acpi_poweroff_exits_zero() {
    let Some(out) = boot("power", &["--memory", "32M", "--cmdline", "poweroff"]) else {
        return;
    };
    assert_eq!(out.status, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("powering off via PM1 control at b004"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("still running"), "{out:?}");
}

#[test]
fn each_reset_path_reboots_with_cmos_kept() {
    for how in ["reset=kbd", "reset=92", "reset=cf9"] {
        let Some(out) = boot("power", &["--memory", "32M", "--cmdline", how]) else {
            return;
        };
        assert_eq!(out.status, Some(33), "{how}: {out:?}");
        assert_eq!(
            out.stdout.matches("power: boot with marker").count(),
            2,
            "{how}: {out:?}"
        );
        assert!(
            out.stdout.contains("rebooted after reset"),
            "{how}: {out:?}"
        );
        assert!(!out.stdout.contains("still running"), "{how}: {out:?}");
    }
}

#[test]
fn reset_with_on_reset_exit_ends_with_0x80() {
    let Some(out) = boot(
        "power",
        &[
            "--memory",
            "32M",
            "--cmdline",
            "reset=kbd",
            "--on-reset",
            "exit",
        ],
    ) else {
        return;
    };
    assert_eq!(out.status, Some(0x80), "{out:?}");
    assert_eq!(
        out.stdout.matches("power: boot with marker").count(),
        1,
        "{out:?}"
    );
}

#[test]
fn triple_fault_is_reported_with_registers() {
    let Some(out) = boot("power", &["--memory", "32M", "--cmdline", "triple"]) else {
        return;
    };
    // Hardware KVM reports a triple fault as KVM_EXIT_SHUTDOWN (status 2);
    // a PVM-style /dev/kvm reports it as an internal error (status 4).
    assert!(matches!(out.status, Some(2) | Some(4)), "{out:?}");
    assert!(out.stderr.contains("vCPU 0:"), "{out:?}");
    assert!(out.stderr.contains("rip=0x"), "{out:?}");
    assert!(out.stderr.contains("idt=0x0/0x0"), "{out:?}");
}

#[test]
fn mp_table_lists_cpus_ioapic_and_irq_routes() {
    let Some(out) = boot(
        "mptable",
        &["--memory", "64M", "--cpus", "2", "--pci-testdev"],
    ) else {
        return;
    };
    assert_eq!(out.status, Some(33), "{out:?}");
    for line in [
        "mp: table at 0x9fc10",
        "mp: cpu apic 0 bsp",
        "mp: cpu apic 1",
        "mp: ioapic id 2 at fec00000",
        "mp: isa irq 0 -> pin 2",
        "mp: pci slot 2 pin A -> pin 11 flags d",
        "mp: 2 cpus",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
}

#[test]
fn acpi_tables_describe_the_platform_and_power_off_works() {
    let Some(out) = boot("acpi", &["--memory", "64M", "--cpus", "2"]) else {
        return;
    };
    for line in [
        "tables: FACP APIC",
        "acpi: sci 9 pm1a_evt b000 pm1a_cnt b004 pm_tmr b008 (PMBA b000)",
        "acpi: reset register cf9 value 6",
        "acpi: ioapic id 2 at fec00000 gsi base 0",
        "acpi: override irq 0 -> gsi 2 flags 0",
        "acpi: 2 local apics",
        "acpi: powering off through PM1a_CNT",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert!(!out.stdout.contains("still running"), "{out:?}");
    assert_eq!(out.status, Some(0), "{out:?}");
}
