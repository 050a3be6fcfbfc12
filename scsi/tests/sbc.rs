//! SBC-4 commands through `EmulatedTarget`, raw CDBs, exact bytes.

mod disk_common;

use disk_common::*;
use scsi::{Disk, DiskConfig, EmulatedTarget, FileBackend, FileOptions, ScsiTarget, Status};
use std::sync::Arc;

fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    vec![
        0x70, 0, key, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
    ]
}

fn fixed_info(key: u8, asc: u8, info: u32) -> Vec<u8> {
    let mut s = fixed(key, asc, 0);
    s[0] = 0xF0; // VALID
    s[3..7].copy_from_slice(&info.to_be_bytes());
    s
}

fn fixed_cdb(key: u8, asc: u8, byte: u16, bit: Option<u8>) -> Vec<u8> {
    let mut s = fixed(key, asc, 0);
    s[15] = 0xC0 | bit.map_or(0, |b| 0x08 | b);
    s[16..18].copy_from_slice(&byte.to_be_bytes());
    s
}

fn fixed_param(key: u8, asc: u8, byte: u16, bit: Option<u8>) -> Vec<u8> {
    let mut s = fixed_cdb(key, asc, byte, bit);
    s[15] &= !0x40; // C/D = 0: parameter list
    s
}

fn sector(i: usize) -> Vec<u8> {
    vec![u8::try_from(i % 251).unwrap(); 512]
}

fn sectors(first: usize, n: usize) -> Vec<u8> {
    (first..first + n).flat_map(sector).collect()
}

#[test]
fn read_6_10_12_16_exact_data() {
    let r = Rig::ready();
    // READ(6): LBA 1, TRANSFER LENGTH 2.
    assert_eq!(
        r.cmd(&[0x08, 0x00, 0x00, 0x01, 0x02, 0x00], &[], 1024)
            .good(),
        sectors(1, 2).as_slice()
    );
    // READ(10): DPO|FUA, LBA 0x100, TRANSFER LENGTH 1.
    assert_eq!(
        r.cmd(&[0x28, 0x18, 0, 0, 0x01, 0x00, 0, 0, 1, 0], &[], 512)
            .good(),
        sector(256).as_slice()
    );
    // READ(12): LBA 3, TRANSFER LENGTH 1.
    assert_eq!(
        r.cmd(&[0xA8, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], &[], 512)
            .good(),
        sector(3).as_slice()
    );
    // READ(16): the last LBA (2047), TRANSFER LENGTH 1.
    let o = r.cmd(
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 0, 1, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.good(), sector(2047).as_slice());
    // READ(10) with TRANSFER LENGTH 0: GOOD, no data.
    assert_eq!(
        r.cmd(&[0x28, 0, 0, 0, 0, 5, 0, 0, 0, 0], &[], 512).good(),
        &[] as &[u8]
    );
    // READ(6) with TRANSFER LENGTH 0 means 256 blocks.
    let o = r.cmd(&[0x08, 0, 0, 0, 0, 0], &[], 256 * 512);
    assert_eq!(o.good(), sectors(0, 256).as_slice());
    // A data-in buffer shorter than the transfer: what fits (residual left to the transport).
    let o = r.cmd(&[0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0], &[], 512);
    assert_eq!(o.good(), sector(1).as_slice());
}

#[test]
fn read_errors() {
    let r = Rig::ready();
    // READ(10) LBA 2047, 2 blocks: crosses the end: LBA OUT OF RANGE.
    let o = r.cmd(&[0x28, 0, 0, 0, 0x07, 0xFF, 0, 0, 2, 0], &[], 1024);
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    // READ(16) at LBA 2^64-1: the sum overflows; still LBA OUT OF RANGE.
    let o = r.cmd(
        &[
            0x88, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0,
        ],
        &[],
        512,
    );
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    // READ(16) of 65537 blocks (> MAXIMUM TRANSFER LENGTH): INVALID FIELD IN CDB byte 10.
    let o = r.cmd(
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0x01, 0, 0],
        &[],
        512,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 10, None));
    // RDPROTECT 001b: INVALID FIELD IN CDB byte 1 bit 5.
    let o = r.cmd(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(5)));
    // Backend read failure at LBA 0x10: MEDIUM ERROR, UNRECOVERED READ ERROR, INFORMATION = LBA.
    r.mem.fail_reads(true);
    let o = r.cmd(&[0x28, 0, 0, 0, 0, 0x10, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.status, Status::CheckCondition);
    assert_eq!(o.sense, fixed_info(3, 0x11, 0x10));
    assert!(o.data.is_empty());
}

#[test]
fn write_6_10_12_16_land_on_the_medium() {
    let r = Rig::ready();
    let a = vec![0xA1u8; 512];
    let b = vec![0xB2u8; 1024];
    // WRITE(6): LBA 4, 1 block.
    let o = r.cmd(&[0x0A, 0, 0, 4, 1, 0], &a, 0);
    o.good();
    assert_eq!(o.data_out_len, 512);
    // WRITE(10) with FUA: LBA 10, 2 blocks.
    assert_eq!(
        r.cmd(&[0x2A, 0x08, 0, 0, 0, 10, 0, 0, 2, 0], &b, 0)
            .data_out_len,
        1024
    );
    // WRITE(12): LBA 20, 1 block.
    r.cmd(&[0xAA, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0], &a, 0)
        .good();
    // WRITE(16): LBA 2047, 1 block.
    r.cmd(
        &[0x8A, 0, 0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 0, 1, 0, 0],
        &a,
        0,
    )
    .good();
    let m = r.mem.contents();
    assert_eq!(&m[4 * 512..5 * 512], a.as_slice());
    assert_eq!(&m[5 * 512..6 * 512], sector(5).as_slice());
    assert_eq!(&m[10 * 512..12 * 512], b.as_slice());
    assert_eq!(&m[20 * 512..21 * 512], a.as_slice());
    assert_eq!(&m[2047 * 512..], a.as_slice());
    // Read back through the target.
    assert_eq!(
        r.cmd(&[0x28, 0, 0, 0, 0, 10, 0, 0, 2, 0], &[], 1024).good(),
        b.as_slice()
    );
}

#[test]
fn write_errors() {
    let r = Rig::ready();
    // Past the end.
    let o = r.cmd(&[0x2A, 0, 0, 0, 0x08, 0x00, 0, 0, 1, 0], &[0; 512], 0);
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    assert_eq!(o.data_out_len, 0);
    // Backend write failure: MEDIUM ERROR, WRITE ERROR, INFORMATION = LBA 7.
    r.mem.fail_writes(true);
    let o = r.cmd(&[0x2A, 0, 0, 0, 0, 7, 0, 0, 1, 0], &[0; 512], 0);
    assert_eq!(o.sense, fixed_info(3, 0x0C, 7));
    // Read-only disk: DATA PROTECT, WRITE PROTECTED; no data-out consumed.
    let mut cfg = config();
    cfg.read_only = true;
    let ro = Rig::with(cfg, 1 << 20, None);
    ro.clear_ua(&ro.n);
    let o = ro.cmd(&[0x2A, 0, 0, 0, 0, 7, 0, 0, 1, 0], &[0; 512], 0);
    assert_eq!(o.sense, fixed(7, 0x27, 0));
    assert_eq!(o.data_out_len, 0);
    for cdb in [
        &[0x0A, 0, 0, 1, 1, 0][..],                           // WRITE(6)
        &[0x41, 0, 0, 0, 0, 1, 0, 0, 1, 0],                   // WRITE SAME(10)
        &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0], // COMPARE AND WRITE
        &[0x04, 0, 0, 0, 0, 0],                               // FORMAT UNIT
    ] {
        let o = ro.cmd(cdb, &[0; 1024], 0);
        assert_eq!(o.sense, fixed(7, 0x27, 0), "{cdb:02x?}");
    }
}

#[test]
fn short_data_out_is_a_transport_error() {
    let r = Rig::ready();
    let n = nexus(1);
    let mut src: &[u8] = &[0; 100];
    let mut sink = Vec::new();
    let req = scsi::Request {
        nexus: &n,
        lun: 0,
        tag: 99,
        attr: Default::default(),
        cdb: &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
    };
    let e = r
        .target
        .execute(
            &req,
            scsi::DataOut {
                reader: &mut src,
                len: 100,
            },
            scsi::DataIn {
                writer: &mut sink,
                len: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(e, scsi::TransportError::DataOut(_)));
    // The tag is free again afterwards.
    r.cmd(&[0x00, 0, 0, 0, 0, 0], &[], 0).good();
}

#[test]
fn write_and_verify() {
    let r = Rig::ready();
    let d = vec![0x5Au8; 1024];
    // WRITE AND VERIFY(10), BYTCHK 0, LBA 30, 2 blocks.
    r.cmd(&[0x2E, 0x00, 0, 0, 0, 30, 0, 0, 2, 0], &d, 0).good();
    // BYTCHK 1.
    r.cmd(&[0x2E, 0x02, 0, 0, 0, 40, 0, 0, 2, 0], &d, 0).good();
    // WRITE AND VERIFY(16).
    r.cmd(
        &[0x8E, 0x02, 0, 0, 0, 0, 0, 0, 0, 50, 0, 0, 0, 2, 0, 0],
        &d,
        0,
    )
    .good();
    let m = r.mem.contents();
    for lba in [30, 40, 50] {
        assert_eq!(&m[lba * 512..(lba + 2) * 512], d.as_slice());
    }
    // BYTCHK 10b is not defined: INVALID FIELD IN CDB byte 1 bit 2.
    let o = r.cmd(&[0x2E, 0x04, 0, 0, 0, 30, 0, 0, 2, 0], &d, 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(2)));
}

#[test]
fn verify_bytchk_0_1_3() {
    let r = Rig::ready();
    // VERIFY(10), BYTCHK 0: medium verification of LBA 1..3.
    r.cmd(&[0x2F, 0x00, 0, 0, 0, 1, 0, 0, 2, 0], &[], 0).good();
    // BYTCHK 1 with matching data.
    r.cmd(&[0x2F, 0x02, 0, 0, 0, 1, 0, 0, 2, 0], &sectors(1, 2), 0)
        .good();
    // BYTCHK 1, byte 700 differs: MISCOMPARE, INFORMATION = 700.
    let mut bad = sectors(1, 2);
    bad[700] ^= 0xFF;
    let o = r.cmd(&[0x2F, 0x02, 0, 0, 0, 1, 0, 0, 2, 0], &bad, 0);
    assert_eq!(o.sense, fixed_info(0x0E, 0x1D, 700));
    // BYTCHK 11b: one block compared with each of 1 block at LBA 7.
    r.cmd(&[0x2F, 0x06, 0, 0, 0, 7, 0, 0, 1, 0], &sector(7), 0)
        .good();
    let o = r.cmd(&[0x2F, 0x06, 0, 0, 0, 7, 0, 0, 2, 0], &sector(7), 0);
    assert_eq!(o.sense, fixed_info(0x0E, 0x1D, 0));
    // BYTCHK 10b: INVALID FIELD IN CDB.
    let o = r.cmd(&[0x2F, 0x04, 0, 0, 0, 7, 0, 0, 1, 0], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(2)));
    // VERIFY(16) past the end.
    let o = r.cmd(
        &[0x8F, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00, 0, 0, 0, 1, 0, 0],
        &[],
        0,
    );
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    // Medium verification failing: UNRECOVERED READ ERROR.
    r.mem.fail_reads(true);
    let o = r.cmd(&[0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0], &[], 0);
    assert_eq!(o.sense, fixed_info(3, 0x11, 9));
}

#[test]
fn read_capacity_10_and_16() {
    let r = Rig::ready();
    // READ CAPACITY(10): last LBA 2047, block length 512.
    let o = r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(o.good(), &[0x00, 0x00, 0x07, 0xFF, 0x00, 0x00, 0x02, 0x00]);
    // READ CAPACITY(16), allocation length 32: LBPME | LBPRZ (UNMAP works).
    let o = r.cmd(
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    let mut exp = vec![
        0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 0x02, 0x00, 0x00, 0x00, 0xC0, 0x00,
    ];
    exp.resize(32, 0);
    assert_eq!(o.good(), exp.as_slice());
    // Allocation length 12.
    let o = r.cmd(
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0],
        &[],
        32,
    );
    assert_eq!(o.good(), &exp[..12]);
    // PMI (obsolete) set: INVALID FIELD IN CDB byte 8 bit 0.
    let o = r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 8);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 8, Some(0)));
}

#[test]
fn read_capacity_past_2_tib_and_512e() {
    let mut cfg = config();
    cfg.physical_block_exponent = 3; // 512e: 8 logical per 4 KiB physical
    cfg.unmap = false;
    let d = Arc::new(Disk::new(cfg, Arc::new(HugeBackend(3 << 40)), None).unwrap());
    let t = EmulatedTarget::new().with_lun(0, d).unwrap();
    let n = nexus(1);
    run(&t, &n, 0, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    // READ CAPACITY(10): RETURNED LOGICAL BLOCK ADDRESS 0xFFFFFFFF.
    let o = run(&t, &n, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(o.good(), &[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x02, 0x00]);
    // READ CAPACITY(16): 3 TiB / 512 - 1 = 0x17FFFFFFF; exponent 3; no LBPME.
    let o = run(
        &t,
        &n,
        0,
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
        32,
    );
    let mut exp = vec![
        0, 0, 0, 0x01, 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
    ];
    exp.resize(32, 0);
    assert_eq!(o.good(), exp.as_slice());
    // READ(16) beyond 2^32 blocks works.
    let o = run(
        &t,
        &n,
        0,
        &[
            0x88, 0, 0, 0, 0, 0x01, 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0,
        ],
        &[],
        512,
    );
    assert_eq!(o.good(), &[0u8; 512][..]);
    // VPD B0 OPTIMAL TRANSFER LENGTH GRANULARITY 8.
    let o = run(&t, &n, 0, &[0x12, 0x01, 0xB0, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(&o.good()[6..8], &[0x00, 0x08]);
}

#[test]
fn block_size_4096() {
    let mut cfg = config();
    cfg.block_size = 4096;
    let r = Rig::with(cfg, 1 << 20, None);
    r.clear_ua(&r.n);
    // READ CAPACITY(10): 256 blocks of 4096.
    let o = r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(o.good(), &[0, 0, 0, 0xFF, 0, 0, 0x10, 0x00]);
    // WRITE(10) LBA 1, one 4 KiB block, then READ(10).
    let d: Vec<u8> = (0..4096).map(|i| u8::try_from(i % 256).unwrap()).collect();
    r.cmd(&[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &d, 0).good();
    assert_eq!(
        r.cmd(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[], 4096).good(),
        d.as_slice()
    );
    assert_eq!(&r.mem.contents()[4096..8192], d.as_slice());
    // VPD B0: MAXIMUM TRANSFER LENGTH 8192 blocks, OPTIMAL UNMAP GRANULARITY 1.
    let o = r.cmd(&[0x12, 0x01, 0xB0, 0x00, 0xFF, 0x00], &[], 255);
    assert_eq!(&o.good()[8..12], &[0, 0, 0x20, 0]);
    assert_eq!(&o.data[28..32], &[0, 0, 0, 1]);
    // Bad block size is a configuration error.
    let mut cfg = config();
    cfg.block_size = 1024;
    assert!(Disk::new(cfg, Arc::new(scsi::MemBackend::new(4096)), None).is_err());
}

#[test]
fn synchronize_cache() {
    let r = Rig::ready();
    // SYNCHRONIZE CACHE(10), whole medium.
    r.cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).good();
    // SYNCHRONIZE CACHE(16), IMMED, LBA 8, 8 blocks.
    r.cmd(
        &[0x91, 0x02, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0],
        &[],
        0,
    )
    .good();
    // Range past the end: LBA OUT OF RANGE.
    let o = r.cmd(&[0x35, 0, 0, 0, 0x08, 0x00, 0, 0, 1, 0], &[], 0);
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    // Flush failure: MEDIUM ERROR, WRITE ERROR.
    r.mem.fail_flush(true);
    let o = r.cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.sense, fixed(3, 0x0C, 0));
}

/// UNMAP parameter list with one descriptor.
fn unmap_list(lba: u64, n: u32) -> Vec<u8> {
    let mut p = vec![0x00, 22, 0x00, 16, 0, 0, 0, 0]; // UNMAP DATA LENGTH, BLOCK DESCRIPTOR DATA LENGTH
    p.extend_from_slice(&lba.to_be_bytes());
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

#[test]
fn unmap_deallocates_and_reads_zero() {
    let r = Rig::ready();
    // UNMAP, PARAMETER LIST LENGTH 24: LBA 8, 16 blocks.
    let o = r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(8, 16), 0);
    o.good();
    assert_eq!(o.data_out_len, 24);
    let m = r.mem.contents();
    assert!(m[8 * 512..24 * 512].iter().all(|&b| b == 0));
    assert_eq!(&m[7 * 512..8 * 512], sector(7).as_slice());
    assert_eq!(&m[24 * 512..25 * 512], sector(24).as_slice());
    // GET LBA STATUS from LBA 0, allocation length 0x40 (3 descriptors).
    let o = r.cmd(
        &[0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0],
        &[],
        64,
    );
    assert_eq!(
        o.good(),
        &[
            0, 0, 0, 52, 0, 0, 0, 0, // PARAMETER DATA LENGTH 52
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0x00, 0, 0, 0, // LBA 0, 8 blocks, mapped
            0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 16, 0x01, 0, 0,
            0, // LBA 8, 16 blocks, deallocated
            0, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0x07, 0xE8, 0x00, 0, 0,
            0, // LBA 24, 2024 blocks, mapped
        ]
    );
    // GET LBA STATUS at the capacity: LBA OUT OF RANGE.
    let o = r.cmd(
        &[
            0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0x08, 0x00, 0, 0, 0, 0x40, 0, 0,
        ],
        &[],
        64,
    );
    assert_eq!(o.sense, fixed(5, 0x21, 0));
}

#[test]
fn unmap_errors() {
    let r = Rig::ready();
    // PARAMETER LIST LENGTH 0: nothing to do.
    r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).good();
    // PARAMETER LIST LENGTH 4 (< 8): PARAMETER LIST LENGTH ERROR.
    r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &[0; 4], 0)
        .check(5, 0x1A, 0);
    // Descriptor past the end: LBA OUT OF RANGE, nothing unmapped.
    let o = r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(2040, 9), 0);
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    assert_eq!(
        &r.mem.contents()[2040 * 512..2041 * 512],
        sector(2040).as_slice()
    );
    // ANCHOR: INVALID FIELD IN CDB byte 1 bit 0.
    let o = r.cmd(&[0x42, 0x01, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(0, 1), 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(0)));
    // Too many descriptors (257): INVALID FIELD IN PARAMETER LIST byte 2.
    let mut p = vec![0u8; 8 + 257 * 16];
    p[2..4].copy_from_slice(&u16::try_from(257 * 16).unwrap().to_be_bytes());
    let len = u16::try_from(p.len()).unwrap().to_be_bytes();
    let o = r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, len[0], len[1], 0], &p, 0);
    assert_eq!(o.sense, fixed_param(5, 0x26, 2, None));
    // Backend discard failure: WRITE ERROR with the LBA.
    r.mem.fail_writes(true);
    let o = r.cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(5, 1), 0);
    assert_eq!(o.sense, fixed_info(3, 0x0C, 5));
}

#[test]
fn write_same_10_16() {
    let r = Rig::ready();
    // WRITE SAME(10): LBA 100, 3 blocks of 0xAB.
    let o = r.cmd(&[0x41, 0, 0, 0, 0, 100, 0, 0, 3, 0], &[0xAB; 512], 0);
    o.good();
    assert_eq!(o.data_out_len, 512);
    let m = r.mem.contents();
    assert!(m[100 * 512..103 * 512].iter().all(|&b| b == 0xAB));
    assert_eq!(&m[103 * 512..104 * 512], sector(103).as_slice());
    // WRITE SAME(16) with UNMAP and a zero block: deallocated (reads zero).
    r.cmd(
        &[0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 16, 0, 0],
        &[0; 512],
        0,
    )
    .good();
    assert!(r.mem.contents()[200 * 512..216 * 512]
        .iter()
        .all(|&b| b == 0));
    // WRITE SAME(16) with NDOB: no data-out, zeros.
    let o = r.cmd(
        &[0x93, 0x01, 0, 0, 0, 0, 0, 0, 0, 50, 0, 0, 0, 2, 0, 0],
        &[],
        0,
    );
    o.good();
    assert_eq!(o.data_out_len, 0);
    assert!(r.mem.contents()[50 * 512..52 * 512].iter().all(|&b| b == 0));
    // UNMAP with a non-zero block: written, not unmapped.
    r.cmd(
        &[0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 1, 0, 0],
        &[7; 512],
        0,
    )
    .good();
    assert!(r.mem.contents()[60 * 512..61 * 512].iter().all(|&b| b == 7));
    // NUMBER OF LOGICAL BLOCKS 0 (WSNZ): INVALID FIELD IN CDB byte 7.
    let o = r.cmd(&[0x41, 0, 0, 0, 0, 100, 0, 0, 0, 0], &[0; 512], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 7, None));
    // Past the end.
    let o = r.cmd(&[0x41, 0, 0, 0, 0x07, 0xFF, 0, 0, 2, 0], &[0; 512], 0);
    assert_eq!(o.sense, fixed(5, 0x21, 0));
    // ANCHOR: INVALID FIELD IN CDB byte 1 bit 4.
    let o = r.cmd(&[0x41, 0x10, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(4)));
}

#[test]
fn compare_and_write_is_atomic_compare_then_write() {
    let r = Rig::ready();
    // COMPARE AND WRITE, LBA 5, 1 block: verify data = current, write data = 0xEE.
    let mut d = sector(5);
    d.extend_from_slice(&[0xEE; 512]);
    let o = r.cmd(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0], &d, 0);
    o.good();
    assert_eq!(o.data_out_len, 1024);
    assert!(r.mem.contents()[5 * 512..6 * 512]
        .iter()
        .all(|&b| b == 0xEE));
    // Same again: the medium now differs at byte 0: MISCOMPARE, INFORMATION 0.
    let o = r.cmd(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0], &d, 0);
    assert_eq!(o.sense, fixed_info(0x0E, 0x1D, 0));
    // NUMBER OF LOGICAL BLOCKS 65 > 64: INVALID FIELD IN CDB byte 13.
    let o = r.cmd(
        &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 65, 0, 0],
        &[],
        0,
    );
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 13, None));
    // Concurrent COMPARE AND WRITEs on one block: exactly one wins per value.
    let disk = r.disk.clone();
    let _ = disk;
    let winners = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..8u8 {
            let (r, winners) = (&r, &winners);
            s.spawn(move || {
                let n = nexus(10 + i);
                r.clear_ua(&n);
                let mut d = vec![0xEE; 512];
                d.extend_from_slice(&[i; 512]);
                let o = run(
                    &r.target,
                    &n,
                    0,
                    &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0],
                    &d,
                    0,
                );
                if o.status == Status::Good {
                    winners.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    assert_eq!(o.triple(), Some((0x0E, 0x1D, 0)));
                }
            });
        }
    });
    assert_eq!(winners.into_inner(), 1);
}

#[test]
fn start_stop_unit() {
    let r = Rig::ready();
    // START STOP UNIT, START 1.
    r.cmd(&[0x1B, 0, 0, 0, 0x01, 0], &[], 0).good();
    // START 0 (flushes), then IMMED + NO_FLUSH.
    r.cmd(&[0x1B, 0, 0, 0, 0x00, 0], &[], 0).good();
    r.cmd(&[0x1B, 0x01, 0, 0, 0x04, 0], &[], 0).good();
    // POWER CONDITION 5 (reserved): INVALID FIELD IN CDB byte 4 bit 7.
    let o = r.cmd(&[0x1B, 0, 0, 0, 0x50, 0], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 4, Some(7)));
    // Stopping with a failing flush: WRITE ERROR.
    r.mem.fail_flush(true);
    r.cmd(&[0x1B, 0, 0, 0, 0x00, 0], &[], 0).check(3, 0x0C, 0);
}

#[test]
fn format_unit_checks_and_keeps_data() {
    let r = Rig::ready();
    // FORMAT UNIT without parameter list.
    r.cmd(&[0x04, 0, 0, 0, 0, 0], &[], 0).good();
    // FMTDATA with a short header, no defect list.
    let o = r.cmd(&[0x04, 0x10, 0, 0, 0, 0], &[0, 0, 0, 0], 0);
    o.good();
    assert_eq!(o.data_out_len, 4);
    // LONGLIST header.
    r.cmd(&[0x04, 0x30, 0, 0, 0, 0], &[0; 8], 0).good();
    // IP (initialization pattern): INVALID FIELD IN PARAMETER LIST byte 1 bit 3.
    let o = r.cmd(&[0x04, 0x10, 0, 0, 0, 0], &[0, 0x88, 0, 0], 0);
    assert_eq!(o.sense, fixed_param(5, 0x26, 1, Some(3)));
    // DCRT without FOV: byte 1 bit 6.
    let o = r.cmd(&[0x04, 0x10, 0, 0, 0, 0], &[0, 0x20, 0, 0], 0);
    assert_eq!(o.sense, fixed_param(5, 0x26, 1, Some(6)));
    // A defect list: byte 2.
    let o = r.cmd(&[0x04, 0x10, 0, 0, 0, 0], &[0, 0, 0, 8], 0);
    assert_eq!(o.sense, fixed_param(5, 0x26, 2, None));
    // PROTECTION FIELD USAGE: byte 0 bit 2.
    let o = r.cmd(&[0x04, 0x10, 0, 0, 0, 0], &[1, 0, 0, 0], 0);
    assert_eq!(o.sense, fixed_param(5, 0x26, 0, Some(2)));
    // FMTPINFO: INVALID FIELD IN CDB byte 1 bit 7.
    let o = r.cmd(&[0x04, 0x80, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.sense, fixed_cdb(5, 0x24, 1, Some(7)));
    assert_eq!(r.mem.contents(), pattern(1 << 20, 512));
}

#[test]
fn resize_raises_capacity_data_has_changed() {
    let r = Rig::ready();
    let other = nexus(2);
    r.clear_ua(&other);
    r.mem.resize(2 << 20);
    // TEST UNIT READY notices: 6/2A/09 to every nexus.
    r.cmd(&[0x00, 0, 0, 0, 0, 0], &[], 0).check(6, 0x2A, 0x09);
    run(&r.target, &other, 0, &[0x00, 0, 0, 0, 0, 0], &[], 0).check(6, 0x2A, 0x09);
    let o = r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(o.good(), &[0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    // Growth is also noticed by an I/O past the old end.
    r.mem.resize(3 << 20);
    let o = r.cmd(&[0x28, 0, 0, 0, 0x10, 0x00, 0, 0, 1, 0], &[], 512);
    assert_eq!(o.good(), &[0u8; 512][..]);
    run(&r.target, &other, 0, &[0x00, 0, 0, 0, 0, 0], &[], 0).check(6, 0x2A, 0x09);
    assert!(!r.disk.check_resize());
}

#[test]
fn file_backend_through_the_target() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), pattern(1 << 20, 512)).unwrap();
    let b = Arc::new(FileBackend::open(f.path(), FileOptions::default()).unwrap());
    let disk = Arc::new(Disk::new(config(), b.clone(), None).unwrap());
    let t = EmulatedTarget::new().with_lun(0, disk).unwrap();
    let n = nexus(1);
    run(&t, &n, 0, &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(
        run(&t, &n, 0, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[], 512).good(),
        sector(9).as_slice()
    );
    run(
        &t,
        &n,
        0,
        &[0x2A, 0x08, 0, 0, 0, 9, 0, 0, 1, 0],
        &[0x99; 512],
        0,
    )
    .good();
    assert_eq!(
        &std::fs::read(f.path()).unwrap()[9 * 512..10 * 512],
        &[0x99; 512][..]
    );
    if !scsi::BlockBackend::supports_discard(&*b) {
        println!("SKIPPED file_backend_through_the_target (unmap part): no hole punching");
        return;
    }
    // UNMAP 64 KiB at LBA 128: a hole in the file.
    run(
        &t,
        &n,
        0,
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        &unmap_list(128, 128),
        0,
    )
    .good();
    let data = std::fs::read(f.path()).unwrap();
    assert!(data[128 * 512..256 * 512].iter().all(|&x| x == 0));
    assert_eq!(data.len(), 1 << 20);
    let o = run(
        &t,
        &n,
        0,
        &[0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 24, 0, 0],
        &[],
        24,
    );
    let d = o.good();
    assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0, 128]);
    if d[20] == 0 {
        println!("SKIPPED file_backend_through_the_target (lba status part): no SEEK_HOLE");
        return;
    }
    assert_eq!(&d[16..21], &[0, 0, 0, 128, 0x01]);
}

#[test]
fn concurrent_io_from_many_queues() {
    let r = Rig::ready();
    std::thread::scope(|s| {
        for q in 0..8u8 {
            let r = &r;
            s.spawn(move || {
                let n = nexus(20 + q);
                r.clear_ua(&n);
                for round in 0..50u8 {
                    let lba = u8::try_from(usize::from(q) * 16).unwrap();
                    let fill = q.wrapping_mul(31).wrapping_add(round);
                    let d = vec![fill; 4096];
                    run(
                        &r.target,
                        &n,
                        0,
                        &[0x2A, 0, 0, 0, 0, lba, 0, 0, 8, 0],
                        &d,
                        0,
                    )
                    .good();
                    let o = run(
                        &r.target,
                        &n,
                        0,
                        &[0x28, 0, 0, 0, 0, lba, 0, 0, 8, 0],
                        &[],
                        4096,
                    );
                    assert_eq!(o.good(), d.as_slice());
                }
            });
        }
    });
}

#[test]
fn disk_config_is_validated() {
    let mut cfg = DiskConfig::new(identity());
    cfg.vendor = "TOO LONG VENDOR".into();
    assert!(Disk::new(cfg, Arc::new(scsi::MemBackend::new(4096)), None).is_err());
    let mut cfg = DiskConfig::new(identity());
    cfg.physical_block_exponent = 16;
    assert!(Disk::new(cfg, Arc::new(scsi::MemBackend::new(4096)), None).is_err());
}
