//! Protocol test against the real `qemu-pr-helper` (Debian package
//! qemu-system-common): handshake, request/reply framing, SCM_RIGHTS fd
//! passing, and the answers it gives for a file descriptor that is not a
//! SCSI device. Skipped (with a SKIPPED line) when the binary is absent or
//! cannot run here.

use std::io::{Cursor, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scsi::nexus::{ItNexus, PortName, TargetPort};
use scsi::sense::Status;
use scsi::sgio::{
    FakeReply, FakeSg, PassthroughConfig, PassthroughLu, PassthroughOutcome, PrHelperClient,
    PrHelperError, PrRouting, VirtioResponse,
};
use scsi::target::{DataIn, DataOut, Request, TaskAttr};

/// B/00/06 I/O PROCESS TERMINATED, fixed format: what the helper builds when
/// SG_IO fails with an errno (ENOTTY on a regular file).
const IO_ERROR_SENSE: [u8; 18] = [
    0x70, 0, 0x0B, 0, 0, 0, 0, 10, // current, ABORTED COMMAND, additional length 10
    0, 0, 0, 0, 0x00, 0x06, 0, 0, 0, 0, // ASC 00 ASCQ 06
];
/// 5/20/00 INVALID COMMAND OPERATION CODE: the helper's answer to PR OUT on
/// a descriptor opened read-only.
const INVALID_OPCODE_SENSE: [u8; 18] = [
    0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0,
];

struct Helper {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn helper_binary() -> PathBuf {
    std::env::var_os("QEMU_PR_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-pr-helper"))
}

/// Whether the helper answers the handshake: it listens before dropping
/// privileges but only serves clients after, so a bare connect is not enough
/// (an unprivileged run exits in between).
fn ready(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut feat = [0u8; 4];
    s.read_exact(&mut feat).is_ok()
}

/// Start qemu-pr-helper in the foreground on a socket in a temp dir, or say
/// why not.
fn start(test: &str) -> Option<Helper> {
    let bin = helper_binary();
    if !bin.exists() {
        println!(
            "SKIPPED {test}: {} not found (install qemu-system-common)",
            bin.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pr-helper.sock");
    let mut child = Command::new(&bin)
        .arg("-k")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if sock.exists() && ready(&sock) {
            // The probe connection is dropped; the helper serves others.
            return Some(Helper {
                child,
                sock,
                _dir: dir,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            println!(
                "SKIPPED {test}: qemu-pr-helper exited with {status}: {}",
                err.trim()
            );
            return None;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            println!("SKIPPED {test}: qemu-pr-helper did not create its socket in 10 s");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A regular file standing in for the device, opened read-write.
fn not_a_disk() -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    f
}

fn reopen_read_only(f: &std::fs::File) -> std::fs::File {
    use std::os::fd::AsRawFd;
    std::fs::File::open(Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd()))).unwrap()
}

#[test]
fn pr_in_on_a_non_scsi_fd_gets_check_condition_with_io_error_sense() {
    let Some(h) = start("pr_in_on_a_non_scsi_fd_gets_check_condition_with_io_error_sense") else {
        return;
    };
    let client = PrHelperClient::connect(&h.sock).unwrap();
    let f = not_a_disk();
    // PERSISTENT RESERVE IN, READ KEYS, allocation length 0x2000.
    let r = client
        .execute(f.as_fd(), &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x20, 0x00, 0], &[])
        .unwrap();
    assert_eq!(r.status, 0x02);
    assert_eq!(r.sense, IO_ERROR_SENSE.to_vec());
    assert!(r.data.is_empty());
    // The same connection serves a second command (one at a time), and an
    // allocation length above the helper's 8 KiB limit is lowered by the
    // client instead of making the helper drop the connection.
    let r = client
        .execute(f.as_fd(), &[0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], &[])
        .unwrap();
    assert_eq!((r.status, r.sense.clone()), (0x02, IO_ERROR_SENSE.to_vec()));
}

#[test]
fn pr_out_framing_and_read_only_descriptors() {
    let Some(h) = start("pr_out_framing_and_read_only_descriptors") else {
        return;
    };
    let client = PrHelperClient::connect(&h.sock).unwrap();
    let f = not_a_disk();
    // PR OUT REGISTER AND IGNORE EXISTING KEY: 24-byte parameter list with
    // SERVICE ACTION RESERVATION KEY 0x1122334455667788.
    let mut params = [0u8; 24];
    params[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    let cdb = [0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 24, 0];
    let r = client.execute(f.as_fd(), &cdb, &params).unwrap();
    // The helper read exactly our 24 bytes (else the next reply would be
    // out of step), tried SG_IO and failed with ENOTTY.
    assert_eq!((r.status, r.sense.clone()), (0x02, IO_ERROR_SENSE.to_vec()));
    // On a read-only descriptor the helper refuses PR OUT itself.
    let ro = reopen_read_only(&f);
    let r = client.execute(ro.as_fd(), &cdb, &params).unwrap();
    assert_eq!(
        (r.status, r.sense.clone()),
        (0x02, INVALID_OPCODE_SENSE.to_vec())
    );
    assert!(r.data.is_empty());
    // Still in step: another PR IN on the same connection.
    let r = client
        .execute(f.as_fd(), &[0x5E, 0x00, 0, 0, 0, 0, 0, 0, 8, 0], &[])
        .unwrap();
    assert_eq!(r.status, 0x02);
}

#[test]
fn raw_framing_and_protocol_violations() {
    let Some(h) = start("raw_framing_and_protocol_violations") else {
        return;
    };
    // Handshake: 4 bytes of features (none defined), we answer 4 zero bytes.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut feat = [0xFFu8; 4];
    s.read_exact(&mut feat).unwrap();
    assert_eq!(feat, [0, 0, 0, 0]);
    s.write_all(&[0, 0, 0, 0]).unwrap();
    // A CDB without a descriptor is a protocol violation: the helper closes.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5E;
    cdb[8] = 8;
    s.write_all(&cdb).unwrap();
    let mut buf = [0u8; 104];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "helper closed the socket");

    // Our client refuses anything but PR IN/OUT before sending it.
    let client = PrHelperClient::connect(&h.sock).unwrap();
    let f = not_a_disk();
    assert!(matches!(
        client.execute(f.as_fd(), &[0x12, 0, 0, 0, 36, 0], &[]),
        Err(PrHelperError::NotPr(0x12))
    ));
    assert!(matches!(
        client.execute(
            f.as_fd(),
            &[0x5F, 0x06, 0, 0, 0, 0, 0x40, 0x00, 0x00, 0],
            &[0; 16384]
        ),
        Err(PrHelperError::TooLong(16384))
    ));
    // …and the connection is still usable.
    let r = client
        .execute(f.as_fd(), &[0x5E, 0x00, 0, 0, 0, 0, 0, 0, 8, 0], &[])
        .unwrap();
    assert_eq!(r.status, 0x02);
}

#[test]
fn passthrough_unit_with_pr_helper_routes_only_pr_commands_to_the_helper() {
    let Some(h) = start("passthrough_unit_with_pr_helper_routes_only_pr_commands_to_the_helper")
    else {
        return;
    };
    let fake = Arc::new(
        FakeSg::new(|c| match c.cdb[0] {
            0x00 => Ok(FakeReply::default()),
            _ => Ok(FakeReply::status(
                0x02,
                vec![
                    0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
                ],
            )),
        })
        .with_file(not_a_disk()),
    );
    let lu = PassthroughLu::with_transport(
        fake.clone(),
        "fake-sg",
        PassthroughConfig {
            pr: PrRouting::Helper(h.sock.clone()),
            has_rawio: Some(false), // the point of the helper
            block_size: Some(512),
            ..Default::default()
        },
    )
    .unwrap();
    fake.clear_calls();
    let n = ItNexus {
        initiator: "naa.5001405000000aaa".parse().unwrap(),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x50, 1, 0x40, 0x50, 0, 0, 0, 1]),
        },
    };
    let run = |cdb: &[u8], out: &[u8], in_len: usize| {
        let mut reader = Cursor::new(out.to_vec());
        let mut sink: Vec<u8> = Vec::new();
        let req = Request {
            nexus: &n,
            lun: 0,
            tag: 1,
            attr: TaskAttr::Simple,
            cdb,
        };
        let o = lu
            .execute_outcome(
                &req,
                DataOut {
                    reader: &mut reader,
                    len: out.len(),
                },
                DataIn {
                    writer: &mut sink,
                    len: in_len,
                },
            )
            .unwrap();
        (o, sink)
    };
    // PR IN READ RESERVATION through the helper: its CHECK CONDITION and
    // sense come back as a completed SCSI command (virtio OK).
    let (o, d) = run(&[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 0x18, 0], &[], 0x18);
    assert_eq!(o.virtio_response(), VirtioResponse::Ok);
    let PassthroughOutcome::Completed(r) = o else {
        panic!()
    };
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(r.sense, IO_ERROR_SENSE.to_vec());
    assert!(d.is_empty());
    // PR OUT REGISTER through the helper.
    let mut params = [0u8; 24];
    params[15] = 0x42;
    let (o, _) = run(&[0x5F, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &params, 0);
    let PassthroughOutcome::Completed(r) = o else {
        panic!()
    };
    assert_eq!((r.status, r.data_out_len), (Status::CheckCondition, 24));
    assert_eq!(r.sense, IO_ERROR_SENSE.to_vec());
    // Neither went to SG_IO; TEST UNIT READY does.
    assert!(fake.calls().is_empty());
    let (o, _) = run(&[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.into_response().status, Status::Good);
    assert_eq!(fake.calls().len(), 1);
    // A PR OUT list beyond the helper's 8 KiB: PARAMETER LIST LENGTH ERROR.
    let (o, _) = run(
        &[0x5F, 0x00, 0, 0, 0, 0, 0x40, 0x00, 0x00, 0],
        &[0; 16384],
        0,
    );
    assert_eq!(
        o.into_response().sense,
        vec![0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x1A, 0, 0, 0xC0, 0, 5]
    );
}

#[test]
fn the_client_reconnects_after_the_helper_drops_it() {
    let Some(mut h) = start("the_client_reconnects_after_the_helper_drops_it") else {
        return;
    };
    let client = PrHelperClient::connect(&h.sock).unwrap();
    let f = not_a_disk();
    let cdb = [0x5E, 0x00, 0, 0, 0, 0, 0, 0, 8, 0];
    assert_eq!(client.execute(f.as_fd(), &cdb, &[]).unwrap().status, 0x02);
    // Restart the helper on the same socket path.
    let _ = h.child.kill();
    let _ = h.child.wait();
    let _ = std::fs::remove_file(&h.sock);
    let bin = helper_binary();
    h.child = Command::new(&bin)
        .arg("-k")
        .arg(&h.sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(h.sock.exists() && ready(&h.sock)) {
        assert!(Instant::now() < deadline, "helper restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The old connection is dead; the client notices when sending (or the
    // reply fails once) and the next command works on a fresh connection.
    let first = client.execute(f.as_fd(), &cdb, &[]);
    let r = match first {
        Ok(r) => r,
        Err(_) => client.execute(f.as_fd(), &cdb, &[]).unwrap(),
    };
    assert_eq!((r.status, r.sense), (0x02, IO_ERROR_SENSE.to_vec()));
}
