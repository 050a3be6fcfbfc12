//! Startup benchmark (a bench binary, `cargo bench -p vmm --bench startup`):
//!
//! * time from spawning `arbiter run --memory 64M --kernel hello.elf` to
//!   the first byte of the guest's serial output on arbiter's stdout
//!   (goal < 10 ms);
//! * arbiter's resident memory beyond guest RAM, measured from
//!   /proc/PID/smaps while a guest spins (goal < 15 MiB).
//!
//! Prints one line per measure with min/median/max; needs /dev/kvm and
//! prints SKIPPED otherwise.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 20;
const GUEST_MEM: &str = "64M";
const GUEST_MEM_BYTES: u64 = 64 << 20;

/// (spawn -> first serial byte, main() -> first guest entry).
fn first_byte(bin: &Path, guest: &Path) -> (Duration, Duration) {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--memory", GUEST_MEM, "--kernel"])
        .arg(guest)
        .env("ARBITER_TRACE_STARTUP", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arbiter");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 1];
    let n = out.read(&mut b).expect("read");
    let t = start.elapsed();
    assert_eq!(n, 1, "no serial output");
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(33));
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    let us: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("arbiter: first guest entry "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("startup trace line");
    (t, Duration::from_micros(us))
}

/// Resident KiB outside mappings of exactly guest-RAM size.
fn rss_beyond_guest(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut other, mut guest) = (0u64, 0u64);
    let mut is_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                is_guest = b - a == GUEST_MEM_BYTES;
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if is_guest {
                guest += kb;
            } else {
                other += kb;
            }
        }
    }
    (other, guest)
}

fn rss(bin: &Path, guest: &Path) -> (u64, u64) {
    let mut child = Command::new(bin)
        .args([
            "run",
            "--memory",
            GUEST_MEM,
            "--cmdline",
            "spin",
            "--kernel",
        ])
        .arg(guest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn arbiter");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("spinning") {
        let n = out.read(&mut buf).expect("read");
        assert!(n > 0, "guest did not start");
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(200));
    let r = rss_beyond_guest(child.id());
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn main() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED startup: /dev/kvm cannot be opened read-write");
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_arbiter"));
    let hello = arbiter_tests::guests::path("hello");
    let power = arbiter_tests::guests::path("power");
    let _ = first_byte(bin, &hello); // warm the page cache
    let (mut t, mut e): (Vec<Duration>, Vec<Duration>) =
        (0..RUNS).map(|_| first_byte(bin, &hello)).unzip();
    t.sort();
    e.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "startup: main() -> first guest instruction (first KVM_RUN): min {:.2} ms, median {:.2} ms, max {:.2} ms ({RUNS} runs, goal < 10 ms)",
        ms(e[0]),
        ms(e[RUNS / 2]),
        ms(e[RUNS - 1])
    );
    println!(
        "startup: spawn -> first serial byte of hello: min {:.2} ms, median {:.2} ms, max {:.2} ms (includes the guest's own set-up code)",
        ms(t[0]),
        ms(t[RUNS / 2]),
        ms(t[RUNS - 1])
    );
    let (other, guest) = rss(bin, &power);
    println!(
        "memory: RSS beyond guest RAM {:.2} MiB (guest RAM resident {:.2} MiB of {GUEST_MEM}; goal < 15 MiB)",
        other as f64 / 1024.0,
        guest as f64 / 1024.0
    );
}
