//! `--cpus N,hyperv=on`: the Hyper-V enlightenments, seen by the `hyperv`
//! test guest, or, on a KVM without Hyper-V emulation (PVM), a one-line
//! start-up error naming the missing KVM capability.

use arbiter_tests::guests;
use arbiter_tests::kvm;
use arbiter_tests::vm::{Outcome, VmRun};

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

fn run_hyperv_guest(cpus: &str) -> Outcome {
    let g = guests::path("hyperv");
    VmRun::new(ARBITER)
        .args([
            "run",
            "--memory",
            "64M",
            "--cpus",
            cpus,
            "--kernel",
            g.to_str().unwrap(),
        ])
        .run()
        .unwrap()
}

/// The host's answer to `hyperv=on`: `Err(line)` when arbiter refused to
/// start, after checking the refusal is one line naming a KVM capability
/// and that the guest never ran.
fn refusal(out: &Outcome) -> Result<(), String> {
    if out.status == Some(1) && out.stderr.contains("hyperv=on") {
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one line: {out:?}");
        assert!(
            lines[0].starts_with("arbiter: hyperv=on: this host's KVM lacks KVM_CAP_HYPERV"),
            "{out:?}"
        );
        assert!(out.stdout.is_empty(), "the guest ran: {out:?}");
        return Err(lines[0].to_owned());
    }
    Ok(())
}

#[test]
fn hyperv_on_starts_or_names_the_missing_capability() {
    if let Err(why) = kvm::available() {
        return kvm::skip("hyperv_on_starts_or_names_the_missing_capability", &why);
    }
    let out = run_hyperv_guest("1,hyperv=on");
    assert!(!out.timed_out, "{out:?}");
    match refusal(&out) {
        Err(line) => eprintln!("this host refuses hyperv=on at start-up: {line}"),
        Ok(()) => {
            assert!(out.stdout.contains("GUEST PASS"), "{out:?}");
            assert_eq!(out.status, Some(33), "{out:?}");
            eprintln!("this host runs hyperv=on guests");
        }
    }
    // Without hyperv=on the same guest finds KVM at 0x40000000 and fails
    // its "Microsoft Hv" check.
    let out = run_hyperv_guest("1");
    assert!(
        out.stdout
            .contains("hv: vendor \"KVMKVMKVM\" max leaf 4000"),
        "{out:?}"
    );
    assert!(out.stdout.contains("CHECK FAILED"), "{out:?}");
    assert_ne!(out.status, Some(33), "{out:?}");
}

#[test]
fn hyperv_guest_sees_the_enlightenments() {
    const NAME: &str = "hyperv_guest_sees_the_enlightenments";
    if let Err(why) = kvm::available() {
        return kvm::skip(NAME, &why);
    }
    let out = run_hyperv_guest("2,hyperv=on");
    if let Err(line) = refusal(&out) {
        return kvm::skip(NAME, &line);
    }
    assert!(!out.timed_out, "{out:?}");
    for want in [
        "hv: vendor \"Microsoft Hv\" max leaf 4000000a",
        "hv: features eax a7f ebx 0 edx 80100",
        "hv: recommendations eax c2c spin retries ffffffff",
        "hv: kvm leaves at 0x40000100",
        "hv: vp index 0",
        "hv: unknown hypercall status 2",
        "hv: tlb flush hypercall status 0",
        "hv: post message hypercall status 6",
        "hv: send ipi hypercall status 0",
        "hv: ipi delivered to vp 0",
        "hv: synic enabled, message page set",
        "hv: synthetic timer fired",
        "GUEST PASS",
    ] {
        assert!(out.stdout.contains(want), "missing {want:?}: {out:?}");
    }
    assert_eq!(out.status, Some(33), "{out:?}");
}

#[test]
fn kvm_off_hides_the_kvm_leaves() {
    if let Err(why) = kvm::available() {
        return kvm::skip("kvm_off_hides_the_kvm_leaves", &why);
    }
    // No hyperv=on: 0x40000000 is then past the last leaf, so the guest's
    // vendor check fails, but not on KVM's signature.
    let out = run_hyperv_guest("1,kvm=off");
    assert!(out.stdout.contains("hv: vendor \""), "{out:?}");
    assert!(!out.stdout.contains("KVMKVMKVM"), "{out:?}");
    assert!(out.stdout.contains("CHECK FAILED"), "{out:?}");
}
