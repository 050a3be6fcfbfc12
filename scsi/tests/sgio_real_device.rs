//! The passthrough unit on real SCSI devices. Needs a host with SCSI:
//!
//! * `ARBITER_SG_DEVICE_A=/dev/sgN` (or `/dev/sdX`): a LUN whose blocks 0..64
//!   are read; block 0 is written only where RESERVATION CONFLICT is
//!   expected (nothing is written on success), and blocks 16..80 only with
//!   `ARBITER_SG_DEVICE_SCRATCH=1`;
//! * `ARBITER_SG_DEVICE_B=/dev/sgM`: the same LUN reached through a second
//!   initiator port (LIO tcm_loop with two WWPNs, two iSCSI sessions, NPIV),
//!   for the reservation test;
//! * CAP_SYS_RAWIO (root) for pr=passthrough, or `ARBITER_PR_HELPER_SOCK`
//!   pointing at a running qemu-pr-helper for pr=helper.
//!
//! resources/sgio-passthrough.md has the commands that set this up.
//! Without the variables every test prints SKIPPED and returns.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use scsi::nexus::{ItNexus, PortName, TargetPort};
use scsi::sense::Status;
use scsi::sgio::{
    PassthroughConfig, PassthroughLu, PassthroughOutcome, PrRouting, SgData, SgDevice, SgRequest,
    SgTransport, VirtioResponse,
};
use scsi::target::{DataIn, DataOut, Request, TaskAttr};

fn device(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn routing() -> PrRouting {
    match std::env::var_os("ARBITER_PR_HELPER_SOCK") {
        Some(p) => PrRouting::Helper(PathBuf::from(p)),
        None => PrRouting::Passthrough,
    }
}

fn open(path: &Path, max: Option<u32>) -> PassthroughLu {
    PassthroughLu::open(
        path,
        PassthroughConfig {
            pr: routing(),
            max_transfer_bytes: max,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nexus() -> ItNexus {
    ItNexus {
        initiator: "naa.5001405000000aaa".parse().unwrap(),
        target: TargetPort {
            relative_id: 1,
            name: PortName::Naa([0x50, 1, 0x40, 0x50, 0, 0, 0, 1]),
        },
    }
}

fn run(lu: &PassthroughLu, cdb: &[u8], out: &[u8], in_len: usize) -> (PassthroughOutcome, Vec<u8>) {
    let n = nexus();
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
}

fn status(o: &PassthroughOutcome) -> Status {
    match o {
        PassthroughOutcome::Completed(r) => {
            if r.status != Status::Good {
                println!("status {:?}, sense {:02x?}", r.status, r.sense);
            }
            r.status
        }
        other => panic!("host failure: {other:?}"),
    }
}

/// TEST UNIT READY until GOOD: a new I_T nexus first reports its power-on
/// unit attention, as a real initiator sees after login.
fn settle(lu: &PassthroughLu) {
    for _ in 0..4 {
        if let (PassthroughOutcome::Completed(r), _) = run(lu, &[0, 0, 0, 0, 0, 0], &[], 0) {
            if r.status == Status::Good {
                return;
            }
        }
    }
}

#[test]
fn real_device_inquiry_and_split_reads_match_unsplit() {
    let Some(a) = device("ARBITER_SG_DEVICE_A") else {
        println!("SKIPPED real_device_inquiry_and_split_reads_match_unsplit: ARBITER_SG_DEVICE_A not set");
        return;
    };
    let whole = open(&a, None);
    let bs = whole.block_size().expect("READ CAPACITY gave a block size");
    let (o, d) = run(&whole, &[0x12, 0, 0, 0, 36, 0], &[], 36); // INQUIRY
    assert_eq!(status(&o), Status::Good);
    assert_eq!(d.len(), 36);
    // READ(10) LBA 0, 64 blocks, unsplit versus split at 4 KiB.
    let blocks = 64usize;
    let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0];
    let (o, one) = run(&whole, &cdb, &[], blocks * bs as usize);
    assert_eq!(status(&o), Status::Good);
    let split = open(&a, Some(4096));
    assert_eq!(
        split.max_transfer_bytes(),
        Some(4096.min(whole.max_transfer_bytes().unwrap_or(4096)))
    );
    let (o, many) = run(&split, &cdb, &[], blocks * bs as usize);
    assert_eq!(status(&o), Status::Good);
    assert_eq!(one, many);
    // READ(10) at the first LBA past the end: the device's own CHECK
    // CONDITION, ILLEGAL REQUEST, LBA OUT OF RANGE.
    let (o, _) = run(
        &whole,
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    assert_eq!(status(&o), Status::Good);
    let (_, cap) = run(
        &whole,
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    let end = u64::from_be_bytes(cap[0..8].try_into().unwrap()) + 1;
    let end = u32::try_from(end).expect("a small scratch LUN");
    let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    cdb[2..6].copy_from_slice(&end.to_be_bytes());
    let (o, _) = run(&whole, &cdb, &[], bs as usize);
    let PassthroughOutcome::Completed(r) = o else {
        panic!("{o:?}")
    };
    println!("READ past the end: {:?} {:02x?}", r.status, r.sense);
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(
        (r.sense[2] & 0x0F, r.sense[12], r.sense[13]),
        (0x05, 0x21, 0x00)
    );
}

#[test]
fn real_device_split_writes_read_back() {
    let Some(a) = device("ARBITER_SG_DEVICE_A") else {
        println!("SKIPPED real_device_split_writes_read_back: ARBITER_SG_DEVICE_A not set");
        return;
    };
    if std::env::var_os("ARBITER_SG_DEVICE_SCRATCH").is_none() {
        println!(
            "SKIPPED real_device_split_writes_read_back: set ARBITER_SG_DEVICE_SCRATCH=1 to allow \
             writing blocks 16..80 of {}",
            a.display()
        );
        return;
    }
    let split = open(&a, Some(4096));
    let whole = open(&a, None);
    let bs = split.block_size().expect("block size") as usize;
    let data: Vec<u8> = (0..64 * bs)
        .map(|i| u8::try_from((i / bs + i) % 256).unwrap())
        .collect();
    // WRITE(16) LBA 16, 64 blocks through the 4 KiB-limited unit (no FUA:
    // LIO fileio refuses it unless it advertises a write cache).
    let cdb = [0x8A, 0x00, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 64, 0, 0];
    let (o, _) = run(&split, &cdb, &data, 0);
    assert_eq!(status(&o), Status::Good);
    let PassthroughOutcome::Completed(r) = o else {
        unreachable!()
    };
    assert_eq!(r.data_out_len, 64 * bs);
    // READ(16) LBA 16, 64 blocks in one piece.
    let (o, back) = run(
        &whole,
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 64, 0, 0],
        &[],
        64 * bs,
    );
    assert_eq!(status(&o), Status::Good);
    assert_eq!(back, data);
}

#[test]
fn real_device_reservation_conflict_reaches_the_other_initiator() {
    let (Some(a), Some(b)) = (device("ARBITER_SG_DEVICE_A"), device("ARBITER_SG_DEVICE_B")) else {
        println!(
            "SKIPPED real_device_reservation_conflict_reaches_the_other_initiator: \
             ARBITER_SG_DEVICE_A and ARBITER_SG_DEVICE_B (two initiator ports to one LUN) not set"
        );
        return;
    };
    let la = open(&a, None);
    let lb = open(&b, None);
    settle(&la);
    settle(&lb);
    let bs = la.block_size().unwrap_or(512) as usize;
    let key = |k: u64| {
        let mut p = [0u8; 24];
        p[8..16].copy_from_slice(&k.to_be_bytes()); // SERVICE ACTION RESERVATION KEY
        p
    };
    // REGISTER AND IGNORE EXISTING KEY: A with 0xA1, B with 0xB1.
    let reg = [0x5F, 0x06, 0x00, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(status(&run(&la, &reg, &key(0xA1), 0).0), Status::Good);
    assert_eq!(status(&run(&lb, &reg, &key(0xB1), 0).0), Status::Good);
    // A: RESERVE, scope LU, type 1 (WRITE EXCLUSIVE), key 0xA1.
    let mut res = [0u8; 24];
    res[0..8].copy_from_slice(&0xA1u64.to_be_bytes());
    let (o, _) = run(&la, &[0x5F, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], &res, 0);
    assert_eq!(status(&o), Status::Good);
    // B: WRITE(10) LBA 0, 1 block -> RESERVATION CONFLICT, as a SCSI status
    // with virtio response OK (not a host failure, not GOOD).
    let (o, _) = run(&lb, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &vec![0u8; bs], 0);
    assert_eq!(o.virtio_response(), VirtioResponse::Ok);
    let conflict = status(&o);
    // B: READ KEYS sees both keys.
    let (o, d) = run(&lb, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0], &[], 256);
    assert_eq!(status(&o), Status::Good);
    // The raw completion of that conflict, straight from SG_IO (what the
    // kernel puts in host_status next to status 0x18 varies by version).
    let raw = SgDevice::open(&b).unwrap();
    let mut sense = [0u8; 96];
    let block = vec![0u8; bs];
    let c = raw.submit(SgRequest {
        cdb: &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        data: SgData::ToDevice(&block),
        sense: &mut sense,
        timeout_ms: 30_000,
    });
    println!("raw SG_IO completion of the conflicting WRITE(10): {c:?}");
    // A: PREEMPT B's registration (SA 04h, type 1, SA key 0xB1): LIO raises
    // REGISTRATIONS PREEMPTED for B, which B's next command must report
    // unchanged.
    let mut pre = [0u8; 24];
    pre[0..8].copy_from_slice(&0xA1u64.to_be_bytes());
    pre[8..16].copy_from_slice(&0xB1u64.to_be_bytes());
    let (o, _) = run(&la, &[0x5F, 0x04, 0x01, 0, 0, 0, 0, 0, 24, 0], &pre, 0);
    let preempted = status(&o);
    let (o, _) = run(&lb, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    let ua = match &o {
        PassthroughOutcome::Completed(r) => (r.status, r.sense.clone()),
        other => panic!("{other:?}"),
    };
    println!("B after PREEMPT: {:?} {:02x?}", ua.0, ua.1);
    // Clean up before asserting: A clears everything.
    let mut clr = [0u8; 24];
    clr[0..8].copy_from_slice(&0xA1u64.to_be_bytes());
    let (o, _) = run(&la, &[0x5F, 0x03, 0, 0, 0, 0, 0, 0, 24, 0], &clr, 0);
    assert_eq!(status(&o), Status::Good);
    assert_eq!(conflict, Status::ReservationConflict);
    let c = c.unwrap();
    assert_eq!(c.status, 0x18);
    assert_eq!(preempted, Status::Good);
    assert_eq!(ua.0, Status::CheckCondition);
    assert_eq!(
        (ua.1[0] & 0x7F, ua.1[2] & 0x0F, ua.1[12], ua.1[13]),
        (0x70, 0x06, 0x2A, 0x05),
        "UNIT ATTENTION, REGISTRATIONS PREEMPTED, as the device sent it"
    );
    let n = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    assert_eq!(n, 16, "two 8-byte keys");
    let keys: Vec<u64> = d[8..24]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert!(keys.contains(&0xA1) && keys.contains(&0xB1), "{keys:x?}");
}

/// The lab host's init: LIO fileio LUN behind two tcm_loop targets (two
/// initiator ports), scsi_debug, then this very test binary run against
/// them with pr=passthrough and with pr=helper through qemu-pr-helper.
const LAB_INIT: &str = r##"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mkdir -p /run; mount -t tmpfs run /run
while read -r m; do insmod /lib/modules/$m || echo "insmod $m failed"; done </lib/modules/load.order
mount | grep -q configfs || mount -t configfs configfs /sys/kernel/config
C=/sys/kernel/config/target
# LIO writes (or clears) its APTPL file on every PR change.
mkdir -p /var/target/pr /etc/target
dd if=/dev/zero of=/tmp/shared0.img bs=1M count=64 2>/dev/null
mkdir -p $C/core/fileio_0/shared0
echo "fd_dev_name=/tmp/shared0.img,fd_dev_size=67108864" > $C/core/fileio_0/shared0/control
echo 1 > $C/core/fileio_0/shared0/enable
for p in a b; do
  T=$C/loopback/naa.50014050000000${p}1/tpgt_1
  mkdir -p $T
  # The I_T nexus first: linking the LUN scans it on this SCSI host.
  echo naa.50014050000000${p}f > $T/nexus
  mkdir -p $T/lun/lun_0
  ln -s $C/core/fileio_0/shared0 $T/lun/lun_0/shared0
done
sleep 2
for h in /sys/class/scsi_generic/*; do echo "$h: $(cat $h/device/vendor)$(cat $h/device/model)"; done
set -- $(for h in /sys/class/scsi_generic/*; do grep -q LIO-ORG $h/device/vendor && echo /dev/${h##*/}; done)
export ARBITER_SGIO_IN_LAB=1 ARBITER_SG_DEVICE_SCRATCH=1 ARBITER_SG_DEVICE_A=$1 ARBITER_SG_DEVICE_B=$2
echo "=== LIO pr=passthrough $*"
/sgio_real_device --test-threads=1 --nocapture real_device_ 2>&1
echo "=== LIO pr=helper"
qemu-pr-helper -k /run/pr.sock >/tmp/prh.log 2>&1 &
sleep 1
ARBITER_PR_HELPER_SOCK=/run/pr.sock /sgio_real_device --test-threads=1 --nocapture real_device_ 2>&1
SD=$(for h in /sys/class/scsi_generic/*; do grep -q scsi_debug $h/device/model && echo /dev/${h##*/}; done)
echo "=== scsi_debug $SD"
ARBITER_SG_DEVICE_A=$SD ARBITER_SG_DEVICE_B= /sgio_real_device --test-threads=1 --nocapture real_device_ 2>&1
echo "=== SGIOLAB DONE"
poweroff -f
"##;

/// Builds the lab initramfs with tests/lab/lib.sh (Debian kernel from apt,
/// its sg/scsi_debug/LIO modules, static busybox, qemu-pr-helper).
const LAB_BUILD: &str = r##"set -euo pipefail
TESTBIN=$1 OUT=$2 INIT=$3 LIB=$4
. "$LIB"
lab_kernel
root="$OUT/root"
lab_install_busybox "$root"
lab_install_modules "$root" sg sd_mod scsi_debug target_core_mod target_core_file tcm_loop
lab_install_binary "$root" "$TESTBIN" /sgio_real_device
lab_install_binary "$root" /usr/bin/qemu-pr-helper /usr/bin/qemu-pr-helper
cp "$INIT" "$root/init"; chmod 755 "$root/init"
lab_cpio "$root" "$OUT/initrd.gz"
cp "$KIMAGE" "$OUT/vmlinuz"
"##;

/// Boot a Debian-kernel VM (QEMU, TCG) with LIO tcm_loop and scsi_debug
/// and run this file's real-device tests inside it. Opt-in
/// (`ARBITER_SGIO_LAB=1`): it downloads the kernel package and takes about
/// half a minute of CPU. It tests the passthrough unit alone; the cluster
/// shape (two arbiter VMs on two LIO ports of one LUN, `pr=passthrough`,
/// RESERVATION CONFLICT and the 2A/05 unit attention in the guests) runs in
/// CI, not opt-in: `lab_two_arbiter_vms_on_two_lio_ports_of_one_real_lun`
/// in tests/tests/lab_arbiter.rs.
#[test]
fn lab_vm_lio_two_initiator_ports() {
    const T: &str = "lab_vm_lio_two_initiator_ports";
    if std::env::var_os("ARBITER_SGIO_IN_LAB").is_some() {
        return;
    }
    if std::env::var_os("ARBITER_SGIO_LAB").is_none() {
        println!(
            "SKIPPED {T}: set ARBITER_SGIO_LAB=1 to boot the LIO/scsi_debug lab VM (two arbiter \
             VMs on two LIO ports run in CI: arbiter-tests \
             lab_two_arbiter_vms_on_two_lio_ports_of_one_real_lun)"
        );
        return;
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lab/lib.sh");
    for (what, ok) in [
        ("tests/lab/lib.sh", lib.exists()),
        (
            "qemu-system-x86_64",
            std::process::Command::new("qemu-system-x86_64")
                .arg("--version")
                .output()
                .is_ok(),
        ),
        (
            "/usr/bin/qemu-pr-helper",
            Path::new("/usr/bin/qemu-pr-helper").exists(),
        ),
    ] {
        if !ok {
            println!("SKIPPED {T}: no {what}");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init");
    std::fs::write(&init, LAB_INIT).unwrap();
    let exe = std::env::current_exe().unwrap();
    let build = std::process::Command::new("bash")
        .arg("-c")
        .arg(LAB_BUILD)
        .arg("lab-build")
        .arg(&exe)
        .arg(dir.path())
        .arg(&init)
        .arg(&lib)
        .output()
        .unwrap();
    if !build.status.success() {
        println!(
            "SKIPPED {T}: building the lab image failed: {}",
            String::from_utf8_lossy(&build.stderr).trim()
        );
        return;
    }
    let log_path = dir.path().join("serial.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .arg("-kernel")
        .arg(dir.path().join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.path().join("initrd.gz"))
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .stdout(log)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while qemu.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()).into_owned();
    println!("{out}");
    assert!(
        out.contains("=== SGIOLAB DONE"),
        "the lab VM did not finish"
    );
    // Three runs (LIO pr=passthrough, LIO pr=helper, scsi_debug), three
    // tests each, all passing; the reservation test ran on LIO twice and saw
    // the conflict, and skipped only on scsi_debug (a single port).
    assert_eq!(
        out.matches("test result: ok. 3 passed; 0 failed").count(),
        3,
        "three runs"
    );
    assert_eq!(out.matches("status ReservationConflict").count(), 2);
    assert_eq!(
        out.matches("SKIPPED real_device").count(),
        1,
        "only the two-port test on scsi_debug skips"
    );
    assert!(out.contains("SKIPPED real_device_reservation_conflict_reaches_the_other_initiator"));
}
