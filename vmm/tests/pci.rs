//! PCI BARs, MSI-X and the ioeventfd/irqfd data path, driven by the msix
//! guest against `--pci-testdev`.

use arbiter_tests::guests;
use arbiter_tests::kvm;
use arbiter_tests::vm::VmRun;

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

#[test]
fn bar_sizing_relocation_msix_and_doorbell() {
    if let Err(why) = kvm::available() {
        return kvm::skip("bar_sizing_relocation_msix_and_doorbell", &why);
    }
    let g = guests::path("msix");
    let out = VmRun::new(ARBITER)
        .args([
            "run",
            "--memory",
            "64M",
            "--pci-testdev",
            "--kernel",
            g.to_str().unwrap(),
        ])
        .run()
        .unwrap();
    assert!(!out.timed_out, "{out:?}");
    for line in [
        "testdev at 00:02.0",
        "bar sizes 1000 1000 20",
        "bars moved to d0000000 and io d000",
        "msix: vector 0x41 delivered, count 1",
        "msix: masked raise pending, delivered on unmask, count 2",
        "msix: function mask honoured, count 3",
        "doorbell: vector 0x42 via ioeventfd+irqfd, count 1",
        "GUEST PASS",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert_eq!(out.status, Some(33), "{out:?}");
}

#[test]
fn without_testdev_the_guest_fails_cleanly() {
    if let Err(why) = kvm::available() {
        return kvm::skip("without_testdev_the_guest_fails_cleanly", &why);
    }
    let g = guests::path("msix");
    let out = VmRun::new(ARBITER)
        .args(["run", "--memory", "64M", "--kernel", g.to_str().unwrap()])
        .run()
        .unwrap();
    assert!(out.stdout.contains("CHECK FAILED"), "{out:?}");
    assert_eq!(out.status, Some(0x23), "GUEST_EXIT_FAIL: {out:?}");
}

#[test]
fn intx_through_piix3_pirq_and_ioapic() {
    if let Err(why) = kvm::available() {
        return kvm::skip("intx_through_piix3_pirq_and_ioapic", &why);
    }
    let g = guests::path("intx");
    let out = VmRun::new(ARBITER)
        .args([
            "run",
            "--memory",
            "64M",
            "--pci-testdev",
            "--kernel",
            g.to_str().unwrap(),
        ])
        .run()
        .unwrap();
    assert!(!out.timed_out, "{out:?}");
    for line in [
        "intx: slot 2 pin 1 -> PIRQC -> IRQ 11 (line register 11)",
        "intx: IRQ 11 delivered, level-triggered, no storm (vector 0x51)",
        "intx: re-routed PIRQC to IRQ 5, delivered (vector 0x52)",
        "intx: command bit 10 disables INTx",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert_eq!(out.status, Some(33), "{out:?}");
}
