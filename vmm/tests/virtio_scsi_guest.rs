//! The virtio_scsi test guest (a polling virtio-scsi driver in integer-only
//! C) against `arbiter run --scsi/--scsi-disk` on /dev/kvm: PCI enumeration,
//! VERSION_1 negotiation, control/event/request queues, INQUIRY, VPD, READ
//! CAPACITY, READ/WRITE, REPORT LUNS, missing LUN/target, TMFs and an AN
//! query, with the written blocks checked in the image afterwards.

use std::path::Path;

use arbiter_tests::guests;
use arbiter_tests::kvm;
use arbiter_tests::vm::VmRun;

const ARBITER: &str = env!("CARGO_BIN_EXE_arbiter");

/// Disk A: block n byte i = (n * 7 + i) & 0xff, 1 MiB.
fn disk_a(path: &Path) {
    let data: Vec<u8> = (0..2048usize)
        .flat_map(|n| (0..512usize).map(move |i| u8::try_from((n * 7 + i) & 0xff).unwrap()))
        .collect();
    std::fs::write(path, data).unwrap();
}

fn scsi_args(a: &Path, b: &Path) -> Vec<String> {
    vec![
        "--scsi".into(),
        "controller=0,queues=1".into(),
        "--scsi-disk".into(),
        format!(
            "path={},controller=0,target=0,lun=0,serial=ARBSER01",
            a.display()
        ),
        "--scsi-disk".into(),
        format!("path={},controller=0,target=0,lun=3", b.display()),
    ]
}

#[test]
fn guest_driver_runs_scsi_commands_on_two_luns() {
    if let Err(why) = kvm::available() {
        return kvm::skip("guest_driver_runs_scsi_commands_on_two_luns", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    disk_a(&a);
    std::fs::write(&b, vec![0x5Bu8; 512 << 10]).unwrap();
    let g = guests::path("virtio_scsi");
    let mut args: Vec<String> = vec!["run".into(), "--memory".into(), "64M".into()];
    args.extend(scsi_args(&a, &b));
    args.extend(["--kernel".into(), g.to_str().unwrap().into()]);
    let out = VmRun::new(ARBITER).args(&args).run().unwrap();
    assert!(!out.timed_out, "{out:?}");
    for line in [
        "virtio-scsi at 00:02.0",
        "device features 00000001 30000006",
        "config: num_queues 1 seg_max 254 max_sectors 65535 cmd_per_lun 128 sense 96 cdb 32 \
         max_target 255 max_lun 16383",
        "queues ready, DRIVER_OK",
        "tur: unit attention 6/29/00, then GOOD",
        "inquiry: ARBITER ",
        "vpd: serial ARBSER01, naa 6",
        "capacity: lun 0 2048 x 512, lun 3 1024 x 512",
        "read: lun 0 lba 9-10 and lun 3 match the host's data",
        "write: lba 5-6 written and read back",
        "isr: queue bit set, cleared on read; INTA# irq ",
        "report luns: 0 and 3",
        "missing lun: pq 3 and 5/25/00; missing target: BAD_TARGET",
        "tmf: lu reset complete, query task complete, bad target, incorrect lun",
        "an query: event_actual 0, OK",
        "reset done",
        "GUEST PASS",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert_eq!(out.status, Some(33), "{out:?}");

    // The guest's WRITE reached the image, and nothing else changed.
    let img = std::fs::read(&a).unwrap();
    for i in 0..1024usize {
        let want = 0xA5u8 ^ u8::try_from((i * 13) & 0xff).unwrap();
        assert_eq!(img[5 * 512 + i], want, "image byte {} of LBA 5-6", i);
    }
    for n in [0usize, 4, 7, 9, 2047] {
        for i in [0usize, 1, 511] {
            assert_eq!(
                img[n * 512 + i],
                u8::try_from((n * 7 + i) & 0xff).unwrap(),
                "LBA {n} byte {i}"
            );
        }
    }
    assert!(std::fs::read(&b).unwrap().iter().all(|&x| x == 0x5B));
}

#[test]
fn without_a_controller_the_guest_fails_cleanly() {
    if let Err(why) = kvm::available() {
        return kvm::skip("without_a_controller_the_guest_fails_cleanly", &why);
    }
    let g = guests::path("virtio_scsi");
    let out = VmRun::new(ARBITER)
        .args(["run", "--memory", "64M", "--kernel", g.to_str().unwrap()])
        .run()
        .unwrap();
    assert!(out.stdout.contains("CHECK FAILED"), "{out:?}");
    assert_eq!(out.status, Some(0x23), "GUEST_EXIT_FAIL: {out:?}");
}

#[test]
fn bad_scsi_specs_are_refused_before_boot() {
    if let Err(why) = kvm::available() {
        return kvm::skip("bad_scsi_specs_are_refused_before_boot", &why);
    }
    let g = guests::path("virtio_scsi");
    for (spec, why) in [
        (
            "path=/nonexistent/x.img,controller=0,target=0,lun=0",
            "/nonexistent/x.img: No such file or directory",
        ),
        (
            "path=/dev/null,controller=0,target=0,lun=0,colour=red",
            "unknown key \"colour\"",
        ),
        (
            "path=/dev/null,controller=0,target=0,lun=16384",
            "lun=\"16384\": must be 0..=16383",
        ),
    ] {
        let out = VmRun::new(ARBITER)
            .args([
                "run",
                "--memory",
                "64M",
                "--scsi-disk",
                spec,
                "--kernel",
                g.to_str().unwrap(),
            ])
            .run()
            .unwrap();
        assert_eq!(out.status, Some(1), "{out:?}");
        assert!(out.stderr.contains(why), "{spec}: {out:?}");
        assert!(
            !out.stdout.contains("virtio-scsi at"),
            "never booted: {out:?}"
        );
    }
}

/// Three controllers (three initiator ports) on one shared disk replay the
/// cluster-validation PR arbitration across three I_T nexuses.
#[test]
fn three_controllers_arbitrate_one_shared_disk() {
    if let Err(why) = kvm::available() {
        return kvm::skip("three_controllers_arbitrate_one_shared_disk", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("shared.img");
    std::fs::write(&d, vec![0u8; 1 << 20]).unwrap();
    let g = guests::path("virtio_scsi_pr");
    let mut args: Vec<String> = vec!["run".into(), "--memory".into(), "64M".into()];
    for c in 0..3 {
        args.push("--scsi".into());
        args.push(format!("controller={c}"));
        args.push("--scsi-disk".into());
        args.push(format!(
            "path={},controller={c},target=0,lun=0,shared=on",
            d.display()
        ));
    }
    args.extend(["--kernel".into(), g.to_str().unwrap().into()]);
    let out = VmRun::new(ARBITER).args(&args).run().unwrap();
    assert!(!out.timed_out, "{out:?}");
    for line in [
        "node A: controller 00:02.0 ready",
        "node B: controller 00:03.0 ready",
        "node C: controller 00:04.0 ready",
        "A registered and reserved WE-RO",
        "B (unregistered) write: RESERVATION CONFLICT",
        "B read reservation: holder key aaaa00000000000a type 5",
        "B and C registered; read keys lists A, B and C",
        "B preempted A",
        "A: unit attention 6/2a/05, then write RESERVATION CONFLICT",
        "C sees B as holder, writes as a registrant; A reads C's data",
        "B cleared: C 6/2a/03, A writes again, no keys, no reservation",
        "GUEST PASS",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert_eq!(out.status, Some(33), "{out:?}");
    let img = std::fs::read(&d).unwrap();
    assert!(
        img[..512].iter().all(|&b| b == 0),
        "B's conflicting write never landed"
    );
    assert!(img[512..1024].iter().all(|&b| b == 0xC1), "C's write");
    assert!(
        img[1024..1536].iter().all(|&b| b == 0xA2),
        "A's write after CLEAR"
    );
    assert!(dir.path().join("shared.img.pr").exists(), "PR state file");
}

/// One `arbiter run` of the virtio_scsi_node guest, stepped through its
/// serial console.
struct Node {
    name: &'static str,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Node {
    fn start(name: &'static str, disk: &Path) -> Node {
        use std::io::BufRead;
        let g = guests::path("virtio_scsi_node");
        let mut child = std::process::Command::new(ARBITER)
            .args(["run", "--memory", "64M", "--name", name, "--scsi-disk"])
            .arg(format!(
                "path={},controller=0,target=0,lun=0,shared=on",
                disk.display()
            ))
            .arg("--kernel")
            .arg(&g)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut n = Node {
            name,
            child,
            stdin,
            lines: rx,
            log: Vec::new(),
        };
        n.expect_line("node ready");
        n
    }

    fn next_line(&mut self) -> String {
        let l = self
            .lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("node {}: no output ({e}): {:?}", self.name, self.log));
        self.log.push(l.clone());
        l
    }

    fn expect_line(&mut self, want: &str) {
        loop {
            let l = self.next_line();
            if l.contains(want) {
                return;
            }
            assert!(
                !l.contains("CHECK FAILED"),
                "node {}: {:?}",
                self.name,
                self.log
            );
        }
    }

    /// Send one command; return its result line.
    fn step(&mut self, cmd: &str) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let l = self.next_line();
            if let Some(r) = l.strip_prefix("= ") {
                return r.to_owned();
            }
            assert!(
                !l.contains("CHECK FAILED"),
                "node {}: {:?}",
                self.name,
                self.log
            );
        }
    }

    fn quit(mut self) -> Option<i32> {
        assert_eq!(self.step("quit"), "quit");
        self.expect_line("GUEST PASS");
        let status = self.child.wait().unwrap();
        status.code()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two `arbiter run` processes on one shared disk: a reservation taken in
/// one VM is seen, preempted and cleared from the other, through the shared
/// PR state file; the guests are stepped through their serial consoles.
#[test]
fn two_vms_arbitrate_one_shared_disk() {
    if let Err(why) = kvm::available() {
        return kvm::skip("two_vms_arbitrate_one_shared_disk", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cluster.img");
    std::fs::write(&d, vec![0u8; 1 << 20]).unwrap();
    let mut a = Node::start("node-a", &d);
    let mut b = Node::start("node-b", &d);
    const OK: &str = "status=00 sense=0/00/00";
    for n in [&mut a, &mut b] {
        assert_eq!(n.step("tur"), "tur status=02 sense=6/29/00", "power-on UA");
        assert_eq!(n.step("tur"), format!("tur {OK}"));
    }
    assert_eq!(a.step("reg aa"), format!("reg {OK}"));
    assert_eq!(a.step("res aa 5"), format!("res {OK}"));
    // B, unregistered, conflicts with A's WE-RO reservation.
    assert_eq!(b.step("w 0 b0"), "w status=18 sense=0/00/00");
    assert_eq!(b.step("rr"), format!("rr {OK} holder=aa type=5"));
    assert_eq!(b.step("reg bb"), format!("reg {OK}"));
    let keys = b.step("rk");
    assert!(keys.starts_with(&format!("rk {OK} keys=2")), "{keys}");
    assert!(keys.contains(" aa") && keys.contains(" bb"), "{keys}");
    assert_eq!(
        b.step("w 1 b1"),
        format!("w {OK}"),
        "registrant under WE-RO"
    );
    assert_eq!(b.step("pre bb aa 5"), format!("pre {OK}"));
    // A's controller reports the pending REGISTRATIONS PREEMPTED unit
    // attention as a PARAM_CHANGE event (asc 0x2a | ascq 0x05 << 8).
    assert_eq!(a.step("ev"), "ev event=3 lun=01000000 reason=052a");
    // A learns it was preempted, and can no longer write.
    assert_eq!(a.step("tur"), "tur status=02 sense=6/2a/05");
    assert_eq!(a.step("w 2 a0"), "w status=18 sense=0/00/00");
    assert_eq!(a.step("rr"), format!("rr {OK} holder=bb type=5"));
    assert_eq!(a.step("r 1"), format!("r {OK} data=b1..b1"));
    assert_eq!(b.step("clr bb"), format!("clr {OK}"));
    assert_eq!(a.step("w 2 a2"), format!("w {OK}"));
    assert_eq!(a.step("rk"), format!("rk {OK} keys=0"));
    assert_eq!(a.step("rr"), format!("rr {OK} holder=none"));
    assert_eq!(a.quit(), Some(33));
    assert_eq!(b.quit(), Some(33));
    let img = std::fs::read(&d).unwrap();
    assert!(
        img[..512].iter().all(|&x| x == 0),
        "conflicting write never landed"
    );
    assert!(img[512..1024].iter().all(|&x| x == 0xB1));
    assert!(img[1024..1536].iter().all(|&x| x == 0xA2));
}

/// The node TOML carries the same `scsi` / `scsi-disk` specs as the flags.
#[test]
fn scsi_specs_from_the_node_toml() {
    if let Err(why) = kvm::available() {
        return kvm::skip("scsi_specs_from_the_node_toml", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    disk_a(&a);
    std::fs::write(&b, vec![0x5Bu8; 512 << 10]).unwrap();
    let toml = dir.path().join("node.toml");
    std::fs::write(
        &toml,
        format!(
            "memory = \"64M\"\nkernel = \"{}\"\nscsi = [\"controller=0,queues=1\"]\n\
             scsi-disk = [\n  \"path={},controller=0,target=0,lun=0,serial=ARBSER01\",\n  \
             \"path={},controller=0,target=0,lun=3\",\n]\n",
            guests::path("virtio_scsi").display(),
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let out = VmRun::new(ARBITER)
        .args(["run", "--config", toml.to_str().unwrap()])
        .run()
        .unwrap();
    assert!(out.stdout.contains("report luns: 0 and 3"), "{out:?}");
    assert!(out.stdout.contains("GUEST PASS"), "{out:?}");
    assert_eq!(out.status, Some(33), "{out:?}");
}

/// Two request queues with MSI-X: one vector per queue, both queues busy
/// at once, a masked vector left pending and delivered on unmask.
#[test]
fn two_request_queues_with_msix_vectors() {
    if let Err(why) = kvm::available() {
        return kvm::skip("two_request_queues_with_msix_vectors", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    disk_a(&a);
    let g = guests::path("virtio_scsi_mq");
    let out = VmRun::new(ARBITER)
        .args([
            "run".to_string(),
            "--memory".into(),
            "64M".into(),
            "--scsi".into(),
            "controller=0,queues=2".into(),
            "--scsi-disk".into(),
            format!("path={},controller=0,target=0,lun=0", a.display()),
            "--kernel".into(),
            g.to_str().unwrap().into(),
        ])
        .run()
        .unwrap();
    assert!(!out.timed_out, "{out:?}");
    for line in [
        "msix: 5 vectors, 2 request queues",
        "queue 0 -> vector 0x53, queue 1 -> vector 0x54",
        "both queues served: lba 10 on queue 0, lba 11 on queue 1",
        "masked vector 0x54 pending, delivered on unmask",
        "GUEST PASS",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}: {out:?}");
    }
    assert_eq!(out.status, Some(33), "{out:?}");
}

/// `sg=` disks are SG_IO passthrough LUNs: a path that is not a SCSI device
/// node, or a missing one, is refused at start-up with a one-line error.
#[test]
fn passthrough_disks_must_be_scsi_devices() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let hello = arbiter_tests::guests::path("hello");
    for (dev, expect) in [
        (
            file.display().to_string(),
            "is not a SCSI generic or block device node",
        ),
        ("/nonexistent/sg9".to_owned(), "/nonexistent/sg9"),
    ] {
        let spec = format!("sg={dev},controller=0,target=0,lun=0,pr=passthrough");
        let out = VmRun::new(env!("CARGO_BIN_EXE_arbiter"))
            .args([
                "run",
                "--memory",
                "64M",
                "--kernel",
                hello.to_str().unwrap(),
                "--scsi-disk",
                &spec,
            ])
            .run()
            .unwrap();
        assert_eq!(out.status, Some(1), "{}", out.stderr);
        assert!(out.stderr.contains(expect), "{}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
}
