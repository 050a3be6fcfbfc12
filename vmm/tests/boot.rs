//! Boot the freestanding test guests with the `arbiter` binary.

use arbiter_tests::guests;
use arbiter_tests::kvm;
use arbiter_tests::vm::{Outcome, VmRun};

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

fn vm() -> VmRun {
    VmRun::new(ARBITER)
}

#[test]
fn hello_prints_on_serial_and_exits_33() {
    if let Err(why) = kvm::available() {
        return kvm::skip("hello_prints_on_serial_and_exits_33", &why);
    }
    let hello = guests::path("hello");
    let out = vm()
        .args([
            "run",
            "--memory",
            "64M",
            "--cmdline",
            "console=ttyS0 arbiter-test",
        ])
        .args(["--kernel", hello.to_str().unwrap()])
        .run()
        .unwrap();
    assert!(!out.timed_out, "{out:?}");
    assert!(
        out.stdout.contains("Hello from the Arbiter test guest!"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("cmdline: console=ttyS0 arbiter-test"),
        "{out:?}"
    );
    assert!(out.stdout.contains("GUEST PASS"), "{out:?}");
    // 64 MiB minus the 1 KiB EBDA and the 384 KiB legacy hole.
    assert!(out.stdout.contains("RAM: 65151 KiB"), "{out:?}");
    assert_eq!(out.status, Some(Outcome::guest_code(0x10)));
    assert_eq!(out.status, Some(33));
}

#[test]
fn large_memory_goes_above_4g() {
    if let Err(why) = kvm::available() {
        return kvm::skip("large_memory_goes_above_4g", &why);
    }
    let hello = guests::path("hello");
    let out = vm()
        .args(["run", "--memory", "4G", "--kernel", hello.to_str().unwrap()])
        .run()
        .unwrap();
    assert_eq!(out.status, Some(33), "{out:?}");
    assert!(
        out.stdout
            .contains("e820 0000000000100000-00000000bfffffff ram"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("e820 0000000100000000-000000013fffffff ram"),
        "{out:?}"
    );
}

#[test]
fn serial_to_file_and_none() {
    if let Err(why) = kvm::available() {
        return kvm::skip("serial_to_file_and_none", &why);
    }
    let hello = guests::path("hello");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("com1.log");
    let out = vm()
        .args([
            "run",
            "--memory",
            "32M",
            "--kernel",
            hello.to_str().unwrap(),
        ])
        .args(["--serial", &format!("file={}", log.display())])
        .run()
        .unwrap();
    assert_eq!(out.status, Some(33), "{out:?}");
    assert_eq!(out.stdout, "");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("GUEST PASS"), "{text}");
    let out = vm()
        .args([
            "run",
            "--memory",
            "32M",
            "--serial",
            "none",
            "--kernel",
            hello.to_str().unwrap(),
        ])
        .run()
        .unwrap();
    assert_eq!(out.status, Some(33), "{out:?}");
    assert_eq!(out.stdout, "");
}

#[test]
fn bad_flags_give_one_line_errors() {
    let hello = guests::path("hello");
    let h = hello.to_str().unwrap();
    for (args, want) in [
        (
            vec!["run", "--kernel", "/nonexistent/kernel.elf"],
            "--kernel /nonexistent/kernel.elf",
        ),
        (vec!["run", "--kernel", h, "--memory", "lots"], "--memory"),
        (vec!["run", "--kernel", h, "--cpus", "0"], "--cpus"),
        (vec!["run", "--kernel", h, "--serial", "tcp:1"], "--serial"),
        (
            vec!["run", "--kernel", h, "--on-reset", "maybe"],
            "--on-reset",
        ),
        (
            vec!["run", "--kernel", h, "--initrd", "/nonexistent/initrd"],
            "--initrd",
        ),
        (
            vec!["run", "--kernel", h, "--config", "/nonexistent/node.toml"],
            "--config",
        ),
        (vec!["run"], "nothing to boot"),
        (
            vec!["run", "--kernel", h, "--net", "user"],
            "not implemented yet",
        ),
    ] {
        let out = vm().args(args.clone()).run().unwrap();
        assert_eq!(out.status, Some(1), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("arbiter: "), "{args:?}: {out:?}");
        assert!(out.stderr.contains(want), "{args:?}: {out:?}");
    }
}

#[test]
fn unknown_flags_give_one_line_errors() {
    for args in [
        vec!["run", "--memroy", "1G"],
        vec!["frobnicate"],
        vec!["run", "--cpus"],
    ] {
        let out = vm().args(args.clone()).run().unwrap();
        assert_eq!(out.status, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("arbiter: "), "{args:?}: {out:?}");
    }
    let out = vm().args(["run", "--help"]).run().unwrap();
    assert_eq!(out.status, Some(0));
    assert!(out.stdout.contains("--kernel"), "{out:?}");
}

#[test]
fn pvh_passes_initrd_as_module_and_cmdline() {
    if let Err(why) = kvm::available() {
        return kvm::skip("pvh_passes_initrd_as_module_and_cmdline", &why);
    }
    let g = guests::path("modules");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    // 10000 bytes: a text head, then a pattern.
    let mut data = b"ARBITER-INITRD-0".to_vec();
    data.extend((0..9984u32).map(|i| u8::try_from(i % 251).unwrap()));
    std::fs::write(&initrd, &data).unwrap();
    let hash = data
        .iter()
        .fold(0u32, |s, b| s.wrapping_mul(31).wrapping_add(u32::from(*b)));
    let out = vm()
        .args(["run", "--memory", "48M", "--kernel", g.to_str().unwrap()])
        .args([
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "root=/dev/sda quiet",
        ])
        .run()
        .unwrap();
    assert_eq!(out.status, Some(33), "{out:?}");
    assert!(
        out.stdout.contains("cmdline: [root=/dev/sda quiet]"),
        "{out:?}"
    );
    assert!(out.stdout.contains("modules: 1"), "{out:?}");
    assert!(
        out.stdout
            .contains("module 0: 10000 bytes, page aligned, starts [ARBITER-INITRD-0]"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!("module 0: hash {hash:x}")),
        "{out:?}"
    );
    let out = vm()
        .args(["run", "--memory", "48M", "--kernel", g.to_str().unwrap()])
        .run()
        .unwrap();
    assert!(
        out.stdout.contains("modules: 0") && out.stdout.contains("cmdline: []"),
        "{out:?}"
    );
}
