//! SPC-4 commands through `EmulatedTarget`, raw CDBs, exact bytes.

mod disk_common;

use disk_common::*;
use scsi::{Disk, DiskConfig, EmulatedTarget, ItNexus, PortName, ScsiTarget, Status, TargetPort};
use std::sync::Arc;

/// Fixed sense data for (key, asc, ascq) without INFORMATION or SKS.
fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    vec![
        0x70, 0, key, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
    ]
}

/// Fixed sense with a CDB field pointer.
fn fixed_cdb(key: u8, asc: u8, byte: u16, bit: Option<u8>) -> Vec<u8> {
    let mut s = fixed(key, asc, 0);
    s[15] = 0xC0 | bit.map_or(0, |b| 0x08 | b);
    s[16..18].copy_from_slice(&byte.to_be_bytes());
    s
}

const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];

#[test]
fn first_command_from_new_nexus_reports_power_on_reset_once() {
    let r = Rig::new();
    let o = r.cmd(&TUR, &[], 0);
    assert_eq!(o.status, Status::CheckCondition);
    assert_eq!(o.sense, fixed(0x06, 0x29, 0x00));
    r.cmd(&TUR, &[], 0).good();
    // A second initiator gets its own.
    let o = run(&r.target, &nexus(2), 0, &TUR, &[], 0);
    assert_eq!(o.sense, fixed(0x06, 0x29, 0x00));
}

#[test]
fn inquiry_and_report_luns_do_not_consume_unit_attention() {
    let r = Rig::new();
    // INQUIRY, allocation length 36.
    r.cmd(&[0x12, 0x00, 0x00, 0x00, 36, 0x00], &[], 255).good();
    // REPORT LUNS, allocation length 16.
    r.cmd(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[], 255)
        .good();
    r.cmd(&TUR, &[], 0).check(0x06, 0x29, 0x00);
    r.cmd(&TUR, &[], 0).good();
}

#[test]
fn request_sense_returns_and_clears_unit_attention() {
    let r = Rig::new();
    // REQUEST SENSE, DESC 0, allocation length 252.
    let o = r.cmd(&[0x03, 0x00, 0, 0, 252, 0], &[], 252);
    assert_eq!(o.good(), fixed(0x06, 0x29, 0x00).as_slice());
    // Nothing pending: NO SENSE.
    let o = r.cmd(&[0x03, 0x00, 0, 0, 252, 0], &[], 252);
    assert_eq!(o.good(), fixed(0, 0, 0).as_slice());
    // DESC = 1: descriptor format.
    let o = r.cmd(&[0x03, 0x01, 0, 0, 252, 0], &[], 252);
    assert_eq!(o.good(), &[0x72, 0, 0, 0, 0, 0, 0, 0]);
    // Allocation length 8 truncates the fixed format.
    let o = r.cmd(&[0x03, 0x00, 0, 0, 8, 0], &[], 252);
    assert_eq!(o.good(), &[0x70, 0, 0, 0, 0, 0, 0, 0x0A]);
    r.cmd(&TUR, &[], 0).good();
}

fn std_inquiry() -> Vec<u8> {
    let mut v = vec![
        0x00, // PQ 0, peripheral device type 0 (disk)
        0x00, // RMB 0
        0x06, // VERSION: SPC-4
        0x12, // HISUP, RESPONSE DATA FORMAT 2
        91,   // ADDITIONAL LENGTH (96 - 5)
        0x00, 0x00, // SCCS.. / ENCSERV..
        0x02, // CMDQUE
    ];
    v.extend_from_slice(b"ARBITER ");
    v.extend_from_slice(b"VIRTUAL DISK    ");
    v.extend_from_slice(b"0001");
    v.extend_from_slice(&[0; 22]); // bytes 36..58
    v.extend_from_slice(&[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0]); // SAM-5, SPC-4, SBC-3
    v.extend_from_slice(&[0; 32]); // bytes 64..96
    v
}

#[test]
fn standard_inquiry_exact_and_truncated() {
    let r = Rig::ready();
    // INQUIRY, EVPD 0, page 0, allocation length 0x00FF.
    let o = r.cmd(&[0x12, 0x00, 0x00, 0x00, 0xFF, 0x00], &[], 512);
    assert_eq!(o.good(), std_inquiry().as_slice());
    // Allocation length 36.
    let o = r.cmd(&[0x12, 0x00, 0x00, 0x00, 36, 0x00], &[], 512);
    assert_eq!(o.good(), &std_inquiry()[..36]);
    // Allocation length 5; data-in buffer of 3 bytes wins.
    let o = r.cmd(&[0x12, 0x00, 0x00, 0x00, 5, 0x00], &[], 3);
    assert_eq!(o.good(), &std_inquiry()[..3]);
    // Allocation length 0: nothing.
    let o = r.cmd(&[0x12, 0x00, 0x00, 0x00, 0, 0x00], &[], 512);
    assert_eq!(o.good(), &[] as &[u8]);
}

#[test]
fn inquiry_errors() {
    let r = Rig::ready();
    // EVPD 0 with a page code: INVALID FIELD IN CDB, byte 2.
    let o = r.cmd(&[0x12, 0x00, 0x80, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.status, Status::CheckCondition);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 2, None));
    // Unsupported VPD page 0xC0.
    let o = r.cmd(&[0x12, 0x01, 0xC0, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 2, None));
    // CMDDT (byte 1 bit 1, obsolete): INVALID FIELD IN CDB, byte 1 bit 1.
    let o = r.cmd(&[0x12, 0x02, 0x00, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(1)));
}

fn vpd(r: &Rig, page: u8) -> Vec<u8> {
    // INQUIRY, EVPD 1, page, allocation length 0x0400.
    r.cmd(&[0x12, 0x01, page, 0x04, 0x00, 0x00], &[], 1024)
        .good()
        .to_vec()
}

#[test]
fn vpd_supported_pages_and_serial() {
    let r = Rig::ready();
    assert_eq!(
        vpd(&r, 0x00),
        vec![0x00, 0x00, 0x00, 0x07, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2]
    );
    assert_eq!(
        vpd(&r, 0x80),
        vec![0x00, 0x80, 0x00, 0x06, b'S', b'E', b'R', b'1', b'2', b'3']
    );
}

fn vpd83_expected(naa: [u8; 16], port: [u8; 8], rel: u16) -> Vec<u8> {
    let mut v = vec![0x00, 0x83, 0x00, 0x3A];
    // NAA designator: code set binary, LU association, type 3, length 16.
    v.extend_from_slice(&[0x01, 0x03, 0x00, 0x10]);
    v.extend_from_slice(&naa);
    // T10 vendor ID: ASCII, LU, type 1, length 14: vendor + serial.
    v.extend_from_slice(&[0x02, 0x01, 0x00, 0x0E]);
    v.extend_from_slice(b"ARBITER SER123");
    // Relative target port: SAS, binary; PIV, target port, type 4.
    v.extend_from_slice(&[0x61, 0x94, 0x00, 0x04, 0x00, 0x00]);
    v.extend_from_slice(&rel.to_be_bytes());
    // Target port name: SAS, binary; PIV, target port, NAA.
    v.extend_from_slice(&[0x61, 0x93, 0x00, 0x08]);
    v.extend_from_slice(&port);
    v
}

#[test]
fn vpd_device_identification_exact() {
    let r = Rig::ready();
    assert_eq!(
        vpd(&r, 0x83),
        vpd83_expected(identity().naa(), TARGET_PORT, 1)
    );
}

#[test]
fn vpd_83_same_disk_identity_everywhere_and_distinct_per_disk() {
    // Two "VMs" (two targets, different target ports) opening the same disk
    // identity report the same LU designator; another disk differs.
    let r1 = Rig::ready();
    let r2 = Rig::ready();
    let other_port = [0x50, 0x01, 0x40, 0x5A, 0, 0, 0, 0x22];
    let n2 = ItNexus {
        initiator: PortName::Naa([0x50, 0, 0, 0, 0, 0, 0, 9]),
        target: TargetPort {
            relative_id: 2,
            name: PortName::Naa(other_port),
        },
    };
    r2.clear_ua(&n2);
    let a = vpd(&r1, 0x83);
    let b = run(
        &r2.target,
        &n2,
        0,
        &[0x12, 0x01, 0x83, 0x04, 0x00, 0x00],
        &[],
        1024,
    );
    assert_eq!(
        b.good(),
        vpd83_expected(identity().naa(), other_port, 2).as_slice()
    );
    assert_eq!(a[4..24], b.data[4..24]);
    let mut cfg = config();
    cfg.identity = scsi::DiskIdentity::from_text("another disk");
    let r3 = Rig::with(cfg, 1 << 20, None);
    r3.clear_ua(&r3.n);
    assert_ne!(vpd(&r3, 0x83)[8..24], a[8..24]);
}

#[test]
fn vpd_83_iscsi_target_port_name() {
    let r = Rig::ready();
    let n = ItNexus {
        initiator: "iqn.2026-11.lab:node1".parse().unwrap(),
        target: TargetPort {
            relative_id: 3,
            name: "iqn.2026-11.lab:tgt".parse().unwrap(),
        },
    };
    r.clear_ua(&n);
    let o = run(
        &r.target,
        &n,
        0,
        &[0x12, 0x01, 0x83, 0x04, 0x00, 0x00],
        &[],
        1024,
    );
    let d = o.good();
    // After NAA (20) and T10 (18): relative port with iSCSI protocol id 5.
    assert_eq!(&d[42..50], &[0x51, 0x94, 0x00, 0x04, 0, 0, 0, 3]);
    // SCSI name string: UTF-8, PIV, target port, type 8, padded to 20.
    assert_eq!(&d[50..54], &[0x53, 0x98, 0x00, 20]);
    assert_eq!(&d[54..73], b"iqn.2026-11.lab:tgt");
    assert_eq!(d[73], 0);
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 70);
    assert_eq!(d.len(), 74);
}

#[test]
fn vpd_extended_inquiry_block_limits_characteristics_provisioning() {
    let r = Rig::ready();
    let mut e = vec![0x00, 0x86, 0x00, 0x3C, 0x00, 0x07, 0x01, 0x01];
    e.resize(64, 0);
    assert_eq!(vpd(&r, 0x86), e);

    let mut b0 = vec![
        0x00, 0xB0, 0x00, 0x3C, // header
        0x01, // WSNZ
        64,   // MAXIMUM COMPARE AND WRITE LENGTH
        0x00, 0x01, // OPTIMAL TRANSFER LENGTH GRANULARITY
        0x00, 0x01, 0x00, 0x00, // MAXIMUM TRANSFER LENGTH 65536 blocks (32 MiB)
        0, 0, 0, 0, // OPTIMAL TRANSFER LENGTH
        0, 0, 0, 0, // MAXIMUM PREFETCH LENGTH
        0x00, 0x40, 0x00, 0x00, // MAXIMUM UNMAP LBA COUNT
        0x00, 0x00, 0x01, 0x00, // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
        0x00, 0x00, 0x00, 0x08, // OPTIMAL UNMAP GRANULARITY (4 KiB)
        0x80, 0x00, 0x00, 0x00, // UGAVALID, alignment 0
        0, 0, 0, 0, 0, 0x40, 0x00, 0x00, // MAXIMUM WRITE SAME LENGTH
    ];
    b0.resize(64, 0);
    assert_eq!(vpd(&r, 0xB0), b0);

    let mut b1 = vec![0x00, 0xB1, 0x00, 0x3C, 0x00, 0x01]; // non-rotating
    b1.resize(64, 0);
    assert_eq!(vpd(&r, 0xB1), b1);

    // LBPU, LBPWS, LBPWS10, LBPRZ=1; thin provisioned.
    assert_eq!(
        vpd(&r, 0xB2),
        vec![0x00, 0xB2, 0x00, 0x04, 0x00, 0xE4, 0x02, 0x00]
    );
}

#[test]
fn vpd_without_unmap_and_rotating() {
    let mut cfg = config();
    cfg.unmap = false;
    cfg.rotation_rate = 7200;
    let r = Rig::with(cfg, 1 << 20, None);
    r.clear_ua(&r.n);
    assert_eq!(vpd(&r, 0xB2), vec![0x00, 0xB2, 0x00, 0x04, 0, 0, 0, 0]);
    assert_eq!(&vpd(&r, 0xB1)[4..6], &[0x1C, 0x20]);
    let b0 = vpd(&r, 0xB0);
    assert_eq!(&b0[20..36], &[0; 16]);
    // UNMAP is then not a supported command.
    let o = r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x20, 0, None));
}

#[test]
fn report_luns_select_reports() {
    let mem = Arc::new(scsi::MemBackend::new(1 << 20));
    let mk = |id: &str| -> Arc<Disk> {
        Arc::new(
            Disk::new(
                DiskConfig::new(scsi::DiskIdentity::from_text(id)),
                mem.clone(),
                None,
            )
            .unwrap(),
        )
    };
    let t = EmulatedTarget::new()
        .with_lun(0, mk("a"))
        .unwrap()
        .with_lun(1, mk("b"))
        .unwrap()
        .with_lun(300, mk("c"))
        .unwrap();
    let n = nexus(1);
    // REPORT LUNS, SELECT REPORT 0, allocation length 0x100, sent to LUN 7 (absent).
    let o = run(
        &t,
        &n,
        7,
        &[0xA0, 0, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0, 0],
        &[],
        256,
    );
    assert_eq!(
        o.good(),
        &[
            0, 0, 0, 24, 0, 0, 0, 0, // LUN LIST LENGTH 24
            0x00, 0x00, 0, 0, 0, 0, 0, 0, // LUN 0, peripheral addressing
            0x00, 0x01, 0, 0, 0, 0, 0, 0, // LUN 1
            0x41, 0x2C, 0, 0, 0, 0, 0, 0, // LUN 300, flat space addressing
        ]
    );
    // SELECT REPORT 2 (all, including well-known): the same.
    let o2 = run(
        &t,
        &n,
        0,
        &[0xA0, 0, 0x02, 0, 0, 0, 0, 0, 0x01, 0x00, 0, 0],
        &[],
        256,
    );
    assert_eq!(o2.data, o.data);
    // SELECT REPORT 1 (well-known only): empty list.
    let o = run(
        &t,
        &n,
        0,
        &[0xA0, 0, 0x01, 0, 0, 0, 0, 0, 0x01, 0x00, 0, 0],
        &[],
        256,
    );
    assert_eq!(o.good(), &[0, 0, 0, 0, 0, 0, 0, 0]);
    // Allocation length 16 truncates (list length still says 24).
    let o = run(
        &t,
        &n,
        0,
        &[0xA0, 0, 0x00, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        &[],
        256,
    );
    assert_eq!(o.good(), &[0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // SELECT REPORT 3: INVALID FIELD IN CDB, byte 2.
    let o = run(
        &t,
        &n,
        0,
        &[0xA0, 0, 0x03, 0, 0, 0, 0, 0, 0x01, 0x00, 0, 0],
        &[],
        256,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 2, None));
    // Allocation length 8 (< 16): INVALID FIELD IN CDB, byte 6.
    let o = run(
        &t,
        &n,
        0,
        &[0xA0, 0, 0x00, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        &[],
        256,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 6, None));
}

#[test]
fn absent_lun_answers() {
    let r = Rig::ready();
    // INQUIRY to LUN 5: PQ 3, type 0x1F.
    let o = run(&r.target, &r.n, 5, &[0x12, 0, 0, 0, 0xFF, 0], &[], 255);
    let d = o.good();
    assert_eq!(d.len(), 96);
    assert_eq!(&d[..5], &[0x7F, 0x00, 0x06, 0x12, 91]);
    // VPD 0 with PQ 3.
    let o = run(&r.target, &r.n, 5, &[0x12, 1, 0, 0, 0xFF, 0], &[], 255);
    assert_eq!(o.good(), &[0x7F, 0x00, 0x00, 0x01, 0x00]);
    // TEST UNIT READY: LOGICAL UNIT NOT SUPPORTED.
    let o = run(&r.target, &r.n, 5, &TUR, &[], 0);
    assert_eq!(o.sense, fixed(5, 0x25, 0));
    // An unknown opcode too.
    let o = run(&r.target, &r.n, 5, &[0xC0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.sense, fixed(5, 0x25, 0));
    // REQUEST SENSE: GOOD with the sense as data.
    let o = run(&r.target, &r.n, 5, &[0x03, 0, 0, 0, 18, 0], &[], 255);
    assert_eq!(o.good(), fixed(5, 0x25, 0).as_slice());
    assert!(!r.target.has_lun(5));
    assert!(r.target.has_lun(0));
}

#[test]
fn invalid_opcode_and_naca() {
    let r = Rig::ready();
    // Opcode 0xC0 (vendor specific): INVALID COMMAND OPERATION CODE.
    let o = r.cmd(&[0xC0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x20, 0, None));
    // TEST UNIT READY with NACA in CONTROL: INVALID FIELD IN CDB byte 5 bit 2.
    let o = r.cmd(&[0x00, 0, 0, 0, 0, 0x04], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 5, Some(2)));
    // Known opcode, unknown service action: SERVICE ACTION IN(16) / 0x1F.
    let o = r.cmd(
        &[0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(4)));
}

#[test]
fn short_cdb_is_a_transport_error() {
    let r = Rig::ready();
    let mut sink = Vec::new();
    let mut src: &[u8] = &[];
    let n = nexus(1);
    let req = scsi::Request {
        nexus: &n,
        lun: 0,
        tag: 1,
        attr: Default::default(),
        cdb: &[0x28, 0, 0],
    };
    let e = r
        .target
        .execute(
            &req,
            scsi::DataOut {
                reader: &mut src,
                len: 0,
            },
            scsi::DataIn {
                writer: &mut sink,
                len: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(
        e,
        scsi::TransportError::CdbTooShort {
            opcode: 0x28,
            got: 3,
            need: 10
        }
    ));
}

fn mode_sense6_all() -> Vec<u8> {
    let mut v = vec![
        55, 0x00, 0x10, 0x08, // MODE DATA LENGTH, medium, DPOFUA, BLOCK DESCRIPTOR LENGTH 8
        0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x02, 0x00, // 2048 blocks of 512
    ];
    let mut caching = vec![0x08, 0x12, 0x04]; // WCE
    caching.resize(20, 0);
    v.extend_from_slice(&caching);
    // Control: QAM 1, BUSY TIMEOUT PERIOD unlimited.
    v.extend_from_slice(&[0x0A, 0x0A, 0x00, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0]);
    // Informational exceptions: DEXCPT.
    v.extend_from_slice(&[0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v
}

#[test]
fn mode_sense6_all_pages_current() {
    let r = Rig::ready();
    // MODE SENSE(6), DBD 0, PC 0, page 0x3F, subpage 0, allocation 255.
    let o = r.cmd(&[0x1A, 0x00, 0x3F, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.good(), mode_sense6_all().as_slice());
    // Allocation length 4: just the header.
    let o = r.cmd(&[0x1A, 0x00, 0x3F, 0x00, 4, 0x00], &[], 255);
    assert_eq!(o.good(), &[55, 0x00, 0x10, 0x08]);
    // Subpage 0xFF (all subpages) is the same.
    let o = r.cmd(&[0x1A, 0x00, 0x3F, 0xFF, 0xFF, 0x00], &[], 255);
    assert_eq!(o.good(), mode_sense6_all().as_slice());
}

#[test]
fn mode_sense_page_control_and_dbd() {
    let r = Rig::ready();
    // DBD 1, PC 1 (changeable), caching page.
    let o = r.cmd(&[0x1A, 0x08, 0x48, 0x00, 0xFF, 0x00], &[], 255);
    let mut exp = vec![23, 0, 0x10, 0, 0x08, 0x12, 0x04];
    exp.resize(24, 0);
    assert_eq!(o.good(), exp.as_slice());
    // PC 1, control page: only D_SENSE changeable.
    let o = r.cmd(&[0x1A, 0x08, 0x4A, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(
        o.good(),
        &[15, 0, 0x10, 0, 0x0A, 0x0A, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // PC 2 (default) informational exceptions.
    let o = r.cmd(&[0x1A, 0x08, 0x9C, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(
        o.good(),
        &[15, 0, 0x10, 0, 0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // PC 3 (saved): SAVING PARAMETERS NOT SUPPORTED.
    let o = r.cmd(&[0x1A, 0x08, 0xC8, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.sense, fixed(5, 0x39, 0));
    // Page 0x19: INVALID FIELD IN CDB byte 2 bit 5.
    let o = r.cmd(&[0x1A, 0x08, 0x19, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 2, Some(5)));
    // Caching page with subpage 1: INVALID FIELD IN CDB byte 3.
    let o = r.cmd(&[0x1A, 0x08, 0x08, 0x01, 0xFF, 0x00], &[], 255);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 3, None));
}

#[test]
fn mode_sense10_long_lba_block_descriptor() {
    let r = Rig::ready();
    // MODE SENSE(10), LLBAA 1, caching page, allocation 0x00FF.
    let o = r.cmd(
        &[0x5A, 0x10, 0x08, 0x00, 0, 0, 0, 0x00, 0xFF, 0x00],
        &[],
        255,
    );
    let mut exp = vec![
        0x00, 42, 0x00, 0x10, 0x01, 0x00, 0x00, 0x10, // header, LONGLBA, BD length 16
        0, 0, 0, 0, 0, 0, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x00, 0x02, 0x00, // 2048 x 512
        0x08, 0x12, 0x04,
    ];
    exp.resize(44, 0);
    assert_eq!(o.good(), exp.as_slice());
    // Without LLBAA: short descriptor.
    let o = r.cmd(
        &[0x5A, 0x00, 0x08, 0x00, 0, 0, 0, 0x00, 0xFF, 0x00],
        &[],
        255,
    );
    assert_eq!(
        &o.good()[..16],
        &[0, 34, 0, 0x10, 0, 0, 0, 8, 0, 0, 0x08, 0, 0, 0, 0x02, 0]
    );
}

#[test]
fn mode_sense_read_only_sets_wp_and_huge_disk_caps_blocks() {
    let mut cfg = config();
    cfg.read_only = true;
    let big = Arc::new(HugeBackend(3 << 40));
    let d = Arc::new(Disk::new(cfg, big, None).unwrap());
    let t = EmulatedTarget::new().with_lun(0, d).unwrap();
    let n = nexus(1);
    run(&t, &n, 0, &TUR, &[], 0);
    let o = run(&t, &n, 0, &[0x1A, 0x00, 0x08, 0x00, 12, 0x00], &[], 255);
    // WP | DPOFUA; NUMBER OF LOGICAL BLOCKS saturates at 0xFFFFFFFF.
    assert_eq!(
        o.good(),
        &[31, 0, 0x90, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x02, 0]
    );
}

/// MODE SELECT(6) parameter list: header without block descriptor + caching page.
fn caching_select(wce: bool) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0, 0x08, 0x12, if wce { 0x04 } else { 0 }];
    p.resize(24, 0);
    p
}

#[test]
fn mode_select_changes_wce_and_tells_other_nexuses() {
    let r = Rig::ready();
    let other = nexus(2);
    r.clear_ua(&other);
    // MODE SELECT(6), PF 1, parameter list length 24.
    r.cmd(&[0x15, 0x10, 0, 0, 24, 0], &caching_select(false), 0)
        .good();
    let o = r.cmd(&[0x1A, 0x08, 0x08, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(o.good()[6], 0x00, "WCE cleared");
    // The other nexus: MODE PARAMETERS CHANGED; not the one that changed it.
    run(&r.target, &other, 0, &TUR, &[], 0).check(6, 0x2A, 0x01);
    r.cmd(&TUR, &[], 0).good();
    // Setting the same value again raises nothing.
    r.cmd(&[0x15, 0x10, 0, 0, 24, 0], &caching_select(false), 0)
        .good();
    run(&r.target, &other, 0, &TUR, &[], 0).good();
    // MODE SELECT(10) with an 8-byte header and a short block descriptor.
    let mut p = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00];
    p.extend_from_slice(&caching_select(true)[4..]);
    r.cmd(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, 36, 0], &p, 0).good();
    assert_eq!(
        r.cmd(&[0x1A, 0x08, 0x08, 0x00, 0xFF, 0x00], &[], 255).data[6],
        0x04
    );
}

#[test]
fn mode_select_rejections() {
    let r = Rig::ready();
    // PF 0: INVALID FIELD IN CDB byte 1 bit 4.
    let o = r.cmd(&[0x15, 0x00, 0, 0, 24, 0], &caching_select(true), 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(4)));
    // SP 1: INVALID FIELD IN CDB byte 1 bit 0.
    let o = r.cmd(&[0x15, 0x11, 0, 0, 24, 0], &caching_select(true), 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(0)));
    // RCD (byte 2 bit 0 of the caching page) is not changeable:
    // INVALID FIELD IN PARAMETER LIST at parameter byte 6, bit 0.
    let mut p = caching_select(true);
    p[6] |= 0x01;
    let o = r.cmd(&[0x15, 0x10, 0, 0, 24, 0], &p, 0);
    let mut exp = fixed(5, 0x26, 0);
    exp[15..18].copy_from_slice(&[0x88, 0, 6]);
    assert_eq!(o.sense, exp);
    // Wrong page length: INVALID FIELD IN PARAMETER LIST at byte 5.
    let mut p = caching_select(true);
    p[5] = 0x10;
    let o = r.cmd(&[0x15, 0x10, 0, 0, 24, 0], &p, 0);
    let mut exp = fixed(5, 0x26, 0);
    exp[15..18].copy_from_slice(&[0x80, 0, 5]);
    assert_eq!(o.sense, exp);
    // Unknown page 0x19.
    let mut p = caching_select(true);
    p[4] = 0x19;
    r.cmd(&[0x15, 0x10, 0, 0, 24, 0], &p, 0).check(5, 0x26, 0);
    // Page cut short by the parameter list length: PARAMETER LIST LENGTH ERROR.
    r.cmd(&[0x15, 0x10, 0, 0, 10, 0], &caching_select(true)[..10], 0)
        .check(5, 0x1A, 0);
    // Header shorter than 4 bytes.
    r.cmd(&[0x15, 0x10, 0, 0, 2, 0], &[0, 0], 0)
        .check(5, 0x1A, 0);
    // Block descriptor with the wrong block length.
    let mut p = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
    p.extend_from_slice(&caching_select(true)[4..]);
    r.cmd(&[0x15, 0x10, 0, 0, 32, 0], &p, 0).check(5, 0x26, 0);
    // Nothing was changed by the failures.
    assert_eq!(
        r.cmd(&[0x1A, 0x08, 0x08, 0x00, 0xFF, 0x00], &[], 255).data[6],
        0x04
    );
    // Parameter list length 0: nothing to do.
    r.cmd(&[0x15, 0x10, 0, 0, 0, 0], &[], 0).good();
}

#[test]
fn d_sense_selects_descriptor_format() {
    let r = Rig::ready();
    // MODE SELECT(6): control page with D_SENSE = 1 (rest as current).
    let p = [
        0, 0, 0, 0, 0x0A, 0x0A, 0x04, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0,
    ];
    r.cmd(&[0x15, 0x10, 0, 0, 16, 0], &p, 0).good();
    // READ(10) at LBA 0x10000 (past the end): descriptor-format sense.
    let o = r.cmd(&[0x28, 0, 0, 0x01, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.status, Status::CheckCondition);
    assert_eq!(o.sense, vec![0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);
    // Invalid field: with the sense-key-specific descriptor.
    let o = r.cmd(&[0x12, 0x00, 0x80, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(
        o.sense,
        vec![0x72, 0x05, 0x24, 0x00, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xC0, 0x00, 0x02, 0]
    );
}

#[test]
fn report_supported_opcodes_one_command() {
    let r = Rig::ready();
    // RSOC, REPORTING OPTIONS 1, opcode 0x28 (READ(10)), allocation 0x200.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(
        o.good(),
        &[
            0x00, 0x03, 0x00, 0x0A, // SUPPORT 3, CDB SIZE 10
            0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x00, // usage data
        ]
    );
    // RCTD: CTDP and a timeouts descriptor.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.good()[1], 0x83);
    assert_eq!(&o.data[14..], &[0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30]);
    // REPORTING OPTIONS 2: READ CAPACITY(16) by service action.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x02, 0x9E, 0x00, 0x10, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(
        o.good(),
        &[
            0x00, 0x03, 0x00, 0x10, 0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0,
            0
        ]
    );
    // Option 1 on an opcode with service actions: INVALID FIELD IN CDB byte 3.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 3, None));
    // Option 2 on an opcode without: same.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x02, 0x28, 0, 0, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 3, None));
    // Unsupported opcode 0xC0: SUPPORT 1, no usage data.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x01, 0xC0, 0, 0, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.good(), &[0x00, 0x01, 0x00, 0x00]);
    // PERSISTENT RESERVE IN without a reservation state: not supported.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x03, 0x5E, 0x00, 0x00, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.good(), &[0x00, 0x01, 0x00, 0x00]);
    // REPORTING OPTIONS 7: INVALID FIELD IN CDB byte 2 bit 2.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x07, 0x28, 0, 0, 0, 0, 0x02, 0x00, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 2, Some(2)));
}

#[test]
fn report_supported_opcodes_all_commands_from_the_table() {
    let r = Rig::ready();
    // RSOC, REPORTING OPTIONS 0, allocation 0x1000.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x00, 0, 0, 0, 0, 0, 0x10, 0x00, 0, 0],
        &[],
        4096,
    );
    let d = o.good();
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len, d.len() - 4);
    assert_eq!(len % 8, 0);
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    // Every supported table row once; no PR rows without a reservation state.
    let expected = scsi::cdb::OPCODES
        .iter()
        .filter(|o| o.needs != scsi::cdb::Needs::Reservations)
        .count();
    assert_eq!(descs.len(), expected);
    assert!(
        descs.contains(&&[0x28, 0, 0, 0, 0, 0x00, 0, 10][..]),
        "READ(10)"
    );
    assert!(
        descs.contains(&&[0x9E, 0, 0, 0x10, 0, 0x01, 0, 16][..]),
        "READ CAPACITY(16)"
    );
    assert!(
        descs.contains(&&[0x42, 0, 0, 0, 0, 0x00, 0, 10][..]),
        "UNMAP"
    );
    assert!(
        descs.contains(&&[0xA0, 0, 0, 0, 0, 0x00, 0, 12][..]),
        "REPORT LUNS"
    );
    assert!(!descs.iter().any(|d| d[0] == 0x5E || d[0] == 0x5F));
    // Each descriptor's usage data agrees with the one-command form.
    for d in &descs {
        let sa = d[3];
        let opt = if d[5] & 1 == 1 { 2 } else { 1 };
        let one = r.cmd(
            &[0xA3, 0x0C, opt, d[0], 0, sa, 0, 0, 0x01, 0x00, 0, 0],
            &[],
            256,
        );
        let one = one.good();
        assert_eq!(one[1], 3);
        assert_eq!(&one[2..4], &d[6..8]);
        assert_eq!(one[4], d[0]);
    }
    // With RCTD every descriptor grows to 20 bytes with CTDP set.
    let o = r.cmd(
        &[0xA3, 0x0C, 0x80, 0, 0, 0, 0, 0, 0x10, 0x00, 0, 0],
        &[],
        4096,
    );
    let d = o.good();
    assert_eq!(d.len() - 4, expected * 20);
    assert_eq!(d[4 + 5] & 0x02, 0x02);
}

#[test]
fn report_supported_task_management_functions() {
    let r = Rig::ready();
    // REPORT SUPPORTED TMFs, allocation 4.
    let o = r.cmd(&[0xA3, 0x0D, 0x00, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[], 64);
    // ATS ATSS CTSS LURS QTS; QAES QTSS ITNRS.
    assert_eq!(o.good(), &[0xDC, 0x07, 0x00, 0x00]);
    // REPTD: 16 bytes, ADDITIONAL DATA LENGTH 0x0C.
    let o = r.cmd(&[0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[], 64);
    assert_eq!(
        o.good(),
        &[0xDC, 0x07, 0, 0x0C, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn read_write_buffer_echo() {
    let r = Rig::ready();
    // READ BUFFER echo before any WRITE BUFFER: COMMAND SEQUENCE ERROR.
    r.cmd(&[0x3C, 0x0A, 0, 0, 0, 0, 0, 0, 0x10, 0], &[], 64)
        .check(5, 0x2C, 0);
    // WRITE BUFFER, mode 0x0A, parameter list length 4.
    let o = r.cmd(
        &[0x3B, 0x0A, 0, 0, 0, 0, 0, 0, 4, 0],
        &[0xDE, 0xAD, 0xBE, 0xEF],
        0,
    );
    o.good();
    assert_eq!(o.data_out_len, 4);
    // READ BUFFER, mode 0x0A, allocation length 16: the same 4 bytes.
    let o = r.cmd(&[0x3C, 0x0A, 0, 0, 0, 0, 0, 0, 0x10, 0], &[], 64);
    assert_eq!(o.good(), &[0xDE, 0xAD, 0xBE, 0xEF]);
    // Another nexus has its own echo buffer.
    let n2 = nexus(2);
    r.clear_ua(&n2);
    run(
        &r.target,
        &n2,
        0,
        &[0x3C, 0x0A, 0, 0, 0, 0, 0, 0, 0x10, 0],
        &[],
        64,
    )
    .check(5, 0x2C, 0);
    // Echo buffer descriptor (mode 0x0B): capacity 4096.
    let o = r.cmd(&[0x3C, 0x0B, 0, 0, 0, 0, 0, 0, 4, 0], &[], 64);
    assert_eq!(o.good(), &[0, 0, 0x10, 0x00]);
    // WRITE BUFFER larger than the echo buffer: INVALID FIELD IN CDB byte 6.
    let o = r.cmd(&[0x3B, 0x0A, 0, 0, 0, 0, 0, 0x10, 0x01, 0], &[0; 4097], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 6, None));
    // Data mode 0x02 is not supported: byte 1 bit 4.
    let o = r.cmd(&[0x3B, 0x02, 0, 0, 0, 0, 0, 0, 4, 0], &[0; 4], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(4)));
}

#[test]
fn log_sense_supported_pages() {
    let r = Rig::ready();
    // LOG SENSE, PC 01b (current cumulative), page 0, allocation 0x40.
    let o = r.cmd(&[0x4D, 0, 0x40, 0x00, 0, 0, 0, 0, 0x40, 0], &[], 64);
    assert_eq!(o.good(), &[0x00, 0x00, 0x00, 0x01, 0x00]);
    // Subpage 0xFF: supported pages and subpages.
    let o = r.cmd(&[0x4D, 0, 0x40, 0xFF, 0, 0, 0, 0, 0x40, 0], &[], 64);
    assert_eq!(o.good(), &[0x40, 0xFF, 0x00, 0x04, 0x00, 0x00, 0x00, 0xFF]);
    // Page 0x2F: INVALID FIELD IN CDB byte 2 bit 5.
    let o = r.cmd(&[0x4D, 0, 0x6F, 0x00, 0, 0, 0, 0, 0x40, 0], &[], 64);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 2, Some(5)));
    // SP bit (byte 1 bit 0): no saving.
    let o = r.cmd(&[0x4D, 0x01, 0x40, 0x00, 0, 0, 0, 0, 0x40, 0], &[], 64);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(0)));
}

#[test]
fn send_diagnostic_self_test() {
    let r = Rig::ready();
    // SEND DIAGNOSTIC, SELFTEST 1.
    r.cmd(&[0x1D, 0x04, 0, 0, 0, 0], &[], 0).good();
    // Background short self-test (code 001b).
    r.cmd(&[0x1D, 0x20, 0, 0, 0, 0], &[], 0).good();
    // SELFTEST 1 with a code: INVALID FIELD IN CDB byte 1 bit 7.
    let o = r.cmd(&[0x1D, 0x24, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(7)));
    // A parameter list (diagnostic pages) is not supported.
    let o = r.cmd(&[0x1D, 0x10, 0, 0, 4, 0], &[0; 4], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 3, None));
    // The self-test reads the medium: failing reads fail it (4/3E/03).
    r.mem.fail_reads(true);
    r.cmd(&[0x1D, 0x04, 0, 0, 0, 0], &[], 0)
        .check(4, 0x3E, 0x03);
}

#[test]
fn test_unit_ready_and_prevent_allow() {
    let r = Rig::ready();
    r.cmd(&TUR, &[], 0).good();
    // PREVENT ALLOW MEDIUM REMOVAL, PREVENT 1 then 0.
    r.cmd(&[0x1E, 0, 0, 0, 0x01, 0], &[], 0).good();
    r.cmd(&[0x1E, 0, 0, 0, 0x00, 0], &[], 0).good();
    // A reserved bit (byte 4 bit 2): INVALID FIELD IN CDB byte 4 bit 2.
    let o = r.cmd(&[0x1E, 0, 0, 0, 0x04, 0], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 4, Some(2)));
}
