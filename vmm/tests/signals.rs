//! SIGTERM and SIGINT stop a running VM cleanly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arbiter_tests::guests;
use arbiter_tests::kvm;

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

fn stop_with(sig: i32) -> (Option<i32>, String, String) {
    let g = guests::path("power");
    let mut child = Command::new(ARBITER)
        .args([
            "run",
            "--memory",
            "32M",
            "--cpus",
            "2",
            "--cmdline",
            "spin",
            "--kernel",
        ])
        .arg(&g)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("spinning") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guest never started"
        );
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "arbiter closed stdout early");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("arbiter did not stop after signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&seen).into_owned(),
        err,
    )
}

#[test]
fn sigterm_and_sigint_stop_the_vm() {
    if let Err(why) = kvm::available() {
        return kvm::skip("sigterm_and_sigint_stop_the_vm", &why);
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (code, out, err) = stop_with(sig);
        assert_eq!(code, Some(128 + sig), "signal {sig}: {out} / {err}");
        assert_eq!(err.trim(), format!("arbiter: signal {sig}: VM stopped"));
    }
}
