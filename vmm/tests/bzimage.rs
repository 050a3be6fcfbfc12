//! Linux bzImage direct boot (64-bit boot protocol, e820, command line,
//! initrd). Needs a host whose /dev/kvm runs real guests (VMX/SVM) and a
//! kernel: `$ARBITER_BZIMAGE` (+ optional `$ARBITER_INITRD`), or the lab's
//! cached Debian kernel in target/lab/guest-*/ (built by the lab tests).

use std::path::PathBuf;
use std::time::Duration;

use arbiter_tests::kvm;
use arbiter_tests::vm::VmRun;

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

fn kernel_and_initrd() -> Option<(PathBuf, Option<PathBuf>)> {
    if let Some(k) = std::env::var_os("ARBITER_BZIMAGE") {
        return Some((k.into(), std::env::var_os("ARBITER_INITRD").map(Into::into)));
    }
    let lab = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/lab");
    std::fs::read_dir(lab)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("guest-"))
        })
        .find(|p| p.join("vmlinuz").is_file())
        .map(|p| {
            (
                p.join("vmlinuz"),
                Some(p.join("initrd.gz")).filter(|i| i.is_file()),
            )
        })
}

#[test]
fn bzimage_boots_with_e820_cmdline_and_initrd() {
    const NAME: &str = "bzimage_boots_with_e820_cmdline_and_initrd";
    if let Err(why) = kvm::available() {
        return kvm::skip(NAME, &why);
    }
    if !kvm::hardware_virtualization() {
        return kvm::skip(
            NAME,
            "no VMX/SVM on this host: its /dev/kvm only runs small freestanding guests, not Linux",
        );
    }
    let Some((kernel, initrd)) = kernel_and_initrd() else {
        return kvm::skip(
            NAME,
            "no kernel: set ARBITER_BZIMAGE (or build the lab guest)",
        );
    };
    let mut run = VmRun::new(ARBITER)
        .args([
            "run",
            "--memory",
            "256M",
            "--kernel",
            kernel.to_str().unwrap(),
        ])
        .args(["--cmdline", "console=ttyS0 panic=-1 arbiter.bzimage=1"])
        .timeout(Duration::from_secs(60));
    if let Some(i) = &initrd {
        run = run.args(["--initrd", i.to_str().unwrap()]);
    }
    let out = run.run().unwrap();
    let s = &out.stdout;
    assert!(s.contains("Linux version"), "{out:?}");
    assert!(
        s.contains("Command line: console=ttyS0 panic=-1 arbiter.bzimage=1"),
        "{out:?}"
    );
    assert!(
        s.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "{out:?}"
    );
    if initrd.is_some() {
        assert!(s.contains("Freeing initrd memory"), "{out:?}");
    }
}
