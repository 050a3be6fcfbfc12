//! N processes (the `pr-stress` helper binary) arbitrate one shared disk
//! with RESERVE / PREEMPT races while this test watches the state file; one
//! random worker is killed with SIGKILL in the middle of the run.
//!
//! Checked: every state file ever observed decodes (never torn) and has its
//! holder registered; every worker sees at most one holder in each snapshot
//! (the worker checks READ FULL STATUS); the changes that made a worker the
//! holder carry distinct versions (arbitration is serialized across
//! processes); no registration is lost (each worker's bystander key is
//! exactly its last logged value at the end, also for the killed worker,
//! whose last change may or may not have landed); survivors keep working
//! after the kill and finish cleanly.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scsi::pr::shared::read_state_file;
use scsi::pr::SharedPr;
use scsi::{ItNexus, PortName, TargetPort};

fn bystander(w: u8) -> ItNexus {
    ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0x0C, w]),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x60, 0, 0, 0, 0, 0, 0, w]),
        },
    }
}

#[derive(Debug, Default)]
struct Log {
    wins: Vec<u64>,
    by: Vec<(u64, u128)>,
    done: bool,
}

fn read_log(p: &Path) -> Log {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let mut log = Log::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["win", v] => log.wins.push(v.parse().unwrap()),
            ["by", k, t] => log.by.push((k.parse().unwrap(), t.parse().unwrap())),
            ["done"] => log.done = true,
            // A line cut by the kill: ignore.
            _ => {}
        }
    }
    log
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn arbitrate(n: u8, iterations: u32) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("disk.img.pr");
    // This process stays a user of the disk so the final state outlives the
    // workers (the last user would drop non-APTPL state).
    let watcher = SharedPr::open_unshared(&base).unwrap();
    let logs: Vec<PathBuf> = (1..=n)
        .map(|w| dir.path().join(format!("w{w}.log")))
        .collect();
    let mut children: Vec<Option<Child>> = (1..=n)
        .map(|w| {
            Some(
                Command::new(env!("CARGO_BIN_EXE_pr-stress"))
                    .arg(&base)
                    .arg(w.to_string())
                    .arg(iterations.to_string())
                    .arg(&logs[usize::from(w - 1)])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let seed = u64::from(std::process::id()) ^ u64::from(now_ms().to_le_bytes()[0]);
    let victim = usize::try_from(seed % u64::from(n)).unwrap();
    let mut killed_at: Option<u128> = None;
    let mut statuses = vec![None; usize::from(n)];
    let mut snapshots = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    while statuses.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "workers did not finish");
        // Every state file observed is whole and consistent.
        let (_, _, s) = read_state_file(&base)
            .expect("state file must never be torn")
            .expect("state file exists");
        snapshots += 1;
        if let Some(r) = &s.reservation {
            assert!(
                s.registrations.iter().any(|g| g.id == r.holder),
                "holder {r:?} not registered in {s:?}"
            );
        }
        assert!(s.registrations.len() <= 2 * usize::from(n));
        if killed_at.is_none() && read_log(&logs[victim]).by.len() >= 4 {
            if let Some(c) = children[victim].as_mut() {
                c.kill().unwrap(); // SIGKILL
                killed_at = Some(now_ms());
            }
        }
        for (i, c) in children.iter_mut().enumerate() {
            if let Some(child) = c {
                if let Some(st) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    statuses[i] = Some((st, err));
                    *c = None;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let killed_at = killed_at.expect("the victim was killed before it finished");
    assert!(snapshots > 10, "watched the state while it changed");

    let final_state = watcher.snapshot();
    let mut all_wins = Vec::new();
    let mut survivors_after_kill = 0;
    for w in 1..=n {
        let i = usize::from(w - 1);
        let (st, err) = statuses[i].as_ref().unwrap();
        let log = read_log(&logs[i]);
        all_wins.extend(log.wins.iter().copied());
        let reg_key = final_state
            .registrations
            .iter()
            .find(|r| r.id.covers(&bystander(w)))
            .map(|r| r.key)
            .unwrap_or_else(|| panic!("worker {w}'s bystander registration was lost"));
        let last = log.by.last().map(|b| b.0).unwrap();
        if i == victim {
            assert!(!st.success() && !log.done, "victim {w} was killed mid-run");
            assert!(
                reg_key == last || reg_key == last + 1,
                "victim {w}: key {reg_key:#x}, last logged {last:#x}"
            );
        } else {
            assert!(st.success(), "worker {w} failed: {st:?} {err}");
            assert!(log.done);
            assert_eq!(reg_key, last, "worker {w}'s last key change was lost");
            if log.by.iter().any(|b| b.1 >= killed_at) {
                survivors_after_kill += 1;
            }
        }
    }
    assert!(
        survivors_after_kill > 0,
        "the others kept using the disk after the kill"
    );
    // Arbitration wins were serialized: no two share a state version.
    let distinct: HashSet<u64> = all_wins.iter().copied().collect();
    assert_eq!(distinct.len(), all_wins.len(), "wins at the same version");
    assert!(!all_wins.is_empty());
    eprintln!(
        "{n} workers x {iterations} iterations: {} wins, {snapshots} snapshots, final version {}",
        all_wins.len(),
        watcher.version()
    );
}

#[test]
fn two_processes_arbitrate_with_a_kill() {
    arbitrate(2, 600);
}

#[test]
fn five_processes_arbitrate_with_a_kill() {
    arbitrate(5, 300);
}

#[test]
fn eight_processes_arbitrate_with_a_kill() {
    arbitrate(8, 250);
}
