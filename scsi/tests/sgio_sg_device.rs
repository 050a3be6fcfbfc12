//! The real `SgDevice` (open, BLKSECTGET, the SG_IO ioctl) on a block node
//! that is not SCSI: a loop device over a temp file. BLKSECTGET must give
//! the queue's limit in bytes and SG_IO must fail (EINVAL from loop), which the
//! unit answers with a host failure, never GOOD. Needs root and losetup;
//! prints SKIPPED otherwise.

use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use scsi::nexus::{ItNexus, PortName, TargetPort};
use scsi::sense::Status;
use scsi::sgio::outcome::HostDetail;
use scsi::sgio::{
    HostFailure, PassthroughConfig, PassthroughLu, PassthroughOutcome, SgDevice, SgTransport,
    VirtioResponse,
};
use scsi::target::{DataIn, DataOut, Request, TaskAttr};

struct Loop {
    dev: PathBuf,
    _img: tempfile::NamedTempFile,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn loop_device(test: &str) -> Option<Loop> {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let out = match Command::new("losetup")
        .args(["-f", "--show"])
        .arg(img.path())
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "SKIPPED {test}: losetup failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("SKIPPED {test}: no losetup: {e}");
            return None;
        }
    };
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(Loop { dev, _img: img })
}

#[test]
fn sg_device_on_a_loop_block_node() {
    let Some(lp) = loop_device("sg_device_on_a_loop_block_node") else {
        return;
    };
    let dev = SgDevice::open(&lp.dev).unwrap();
    // BLKSECTGET: the queue's max_sectors (in 512-byte sectors, capped at
    // 65535) as bytes.
    let name = lp.dev.file_name().unwrap().to_string_lossy().into_owned();
    match std::fs::read_to_string(format!("/sys/block/{name}/queue/max_sectors_kb")) {
        Ok(kb) => {
            let kb: u32 = kb.trim().parse().unwrap();
            assert_eq!(dev.max_transfer_bytes(), Some((kb * 2).min(65535) * 512));
        }
        // No sysfs in this container: at least a sane limit.
        Err(_) => assert!(dev.max_transfer_bytes().is_some_and(|b| b >= 512)),
    }
    assert!(dev.fd().is_some());

    let lu = PassthroughLu::with_transport(
        Arc::new(dev),
        &lp.dev.display().to_string(),
        PassthroughConfig {
            has_rawio: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    // The probes failed (no SCSI), so nothing was learnt but the limit.
    assert_eq!(lu.block_size(), None);
    let n = ItNexus {
        initiator: "naa.5001405000000aaa".parse().unwrap(),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x50, 1, 0x40, 0x50, 0, 0, 0, 1]),
        },
    };
    let mut reader = Cursor::new(Vec::new());
    let mut sink: Vec<u8> = Vec::new();
    let req = Request {
        nexus: &n,
        lun: 0,
        tag: 1,
        attr: TaskAttr::Simple,
        cdb: &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], // READ(10) LBA 0, 1 block
    };
    let o = lu
        .execute_outcome(
            &req,
            DataOut {
                reader: &mut reader,
                len: 0,
            },
            DataIn {
                writer: &mut sink,
                len: 512,
            },
        )
        .unwrap();
    // The loop driver rejects the unknown ioctl with EINVAL (a plain file
    // gives ENOTTY); either way a failure with nothing transferred.
    let PassthroughOutcome::HostFailed {
        failure: HostFailure::Failure,
        detail: HostDetail::Errno(errno),
        data_in_len: 0,
        data_out_len: 0,
    } = o
    else {
        panic!("{o:?}");
    };
    assert!(
        errno == libc::EINVAL || errno == libc::ENOTTY,
        "errno {errno}"
    );
    assert_eq!(o.virtio_response(), VirtioResponse::Failure);
    assert_ne!(o.into_response().status, Status::Good);
    assert!(sink.is_empty());
}
