//! `arbiter-lab`: boot one guest with arbiter (or QEMU) on real KVM, directly
//! on a host with VMX/SVM or nested in the lab host otherwise, and print its
//! console.
//!
//! ```text
//! cargo build -p vmm && cargo run -p arbiter-tests --bin arbiter-lab -- \
//!     --memory 64M --kernel '{guest:hello}'
//! arbiter-lab [--qemu] [--linux SCRIPT] [--expect-exit N] [--until TEXT] [--timeout S] \
//!     -- ARGS...
//! ```
//! ARGS are `arbiter run` options (or QEMU options with `--qemu`); they may
//! name the lab's files: `{guest:NAME}` (a freestanding test guest),
//! `{kernel}` `{initrd}` `{esp}` (the Linux test guest), `{ovmf}`,
//! `{disk:NAME}` (with `--disk NAME=MIB`). `--linux SCRIPT` boots the Linux
//! test guest running tests/lab/guest/scripts/SCRIPT.sh.

use std::time::Duration;

use arbiter_tests::lab::{self, Run, Scenario, Vm};

fn usage() -> ! {
    eprintln!(
        "usage: arbiter-lab [--qemu] [--linux SCRIPT] [--disk NAME=MIB] [--expect-exit N] \
         [--until TEXT] [--timeout SECONDS] -- ARGS..."
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut qemu = false;
    let mut linux = None;
    let mut disks = Vec::new();
    let mut expect_exit = None;
    let mut until = None;
    let mut timeout = 300;
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--qemu" => qemu = true,
            "--linux" => linux = Some(args.next().unwrap_or_else(|| usage())),
            "--disk" => {
                let d = args.next().unwrap_or_else(|| usage());
                let (n, m) = d.split_once('=').unwrap_or_else(|| usage());
                disks.push((n.to_owned(), m.parse::<u32>().unwrap_or_else(|_| usage())));
            }
            "--expect-exit" => {
                expect_exit = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--until" => until = Some(args.next().unwrap_or_else(|| usage())),
            "--timeout" => {
                timeout = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--" => {
                rest.extend(args.by_ref());
            }
            "-h" | "--help" => usage(),
            _ => rest.push(a),
        }
    }
    let mut vm = if qemu {
        Vm::qemu("vm")
    } else {
        Vm::arbiter("vm")
    };
    if let Some(script) = &linux {
        vm = vm.linux(script);
    }
    vm = vm
        .args(rest)
        .expect_exit(expect_exit)
        .timeout(Duration::from_secs(timeout));
    if let Some(u) = &until {
        vm = vm.expect_serial(u);
    }
    let mut scenario = Scenario::new("arbiter-lab");
    for (n, m) in &disks {
        scenario = scenario.disk(n, *m);
    }
    scenario = scenario.vm(vm);
    match lab::run("arbiter-lab", &scenario) {
        Ok(Run::Skipped(why)) => {
            eprintln!("arbiter-lab: cannot run here: {why}");
            std::process::exit(77);
        }
        Ok(Run::Done(report)) => {
            let vm = report.vm("vm");
            for l in &vm.output {
                println!("{l}");
            }
            eprintln!(
                "arbiter-lab: {:?} mode, exit status {:?}, {:.1} s{}; log: {}",
                report.mode,
                vm.exit,
                vm.seconds,
                if vm.passed {
                    String::new()
                } else {
                    format!(", FAILED: {}", vm.reason)
                },
                report.log.display()
            );
            std::process::exit(if vm.passed { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("arbiter-lab: {e}");
            std::process::exit(1);
        }
    }
}
