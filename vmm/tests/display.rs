//! `--display png=PATH`: a freestanding guest configures QEMU's ramfb
//! through a fw_cfg DMA write and paints a known picture; arbiter writes it
//! to a PNG, which is decoded here and checked pixel by pixel.

use arbiter_tests::{guests, kvm, vm::Outcome, vm::VmRun};

/// Decode a PNG with the `png` crate: (width, height, RGB bytes).
fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(file).read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight)
    );
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Run freestanding guest `guest` with `--display png=<tmp>/screen.png`
/// (20 ms interval): its run and the PNG's path (in the returned dir).
fn run_with_display(guest: &str) -> (Outcome, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("screen.png");
    let out = VmRun::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["run", "--memory", "64M", "--kernel"])
        .args([guests::path(guest).to_string_lossy().into_owned()])
        .args([
            "--display",
            &format!("png={},interval=20", png_path.display()),
        ])
        .run()
        .unwrap();
    (out, dir, png_path)
}

#[test]
fn ramfb_guest_picture_reaches_the_png_file() {
    const TEST: &str = "ramfb_guest_picture_reaches_the_png_file";
    if let Err(why) = kvm::available() {
        return kvm::skip(TEST, &why);
    }
    let (out, _dir, png_path) = run_with_display("ramfb");
    assert_eq!(
        out.status,
        Some(Outcome::guest_code(0x10)),
        "serial:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("configured"), "{}", out.stdout);
    let (w, h, rgb) = decode(&png_path);
    assert_eq!((w, h), (64, 48));
    let px = |x: usize, y: usize| {
        let i = (y * 64 + x) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    };
    // The guest's quadrants (XRGB 0xFF0000 red, 0x00FF00 green, 0x0000FF blue,
    // 0xFFFFFF white) and one odd pixel; the padding after each row and the
    // X bytes never show.
    for (x, y, want) in [
        (0, 0, [0xFF, 0, 0]),
        (31, 23, [0xFF, 0, 0]),
        (32, 0, [0, 0xFF, 0]),
        (63, 23, [0, 0xFF, 0]),
        (0, 24, [0, 0, 0xFF]),
        (31, 47, [0, 0, 0xFF]),
        (32, 24, [0xFF, 0xFF, 0xFF]),
        (63, 47, [0xFF, 0xFF, 0xFF]),
        (5, 7, [0x12, 0x34, 0x56]),
    ] {
        assert_eq!(px(x, y), want, "pixel ({x}, {y})");
    }
    let odd: usize = (0..48)
        .flat_map(|y| (0..64).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let quadrant = match (x < 32, y < 24) {
                (true, true) => [0xFF, 0, 0],
                (false, true) => [0, 0xFF, 0],
                (true, false) => [0, 0, 0xFF],
                (false, false) => [0xFF, 0xFF, 0xFF],
            };
            px(x, y) != quadrant
        })
        .count();
    assert_eq!(odd, 1, "only pixel (5, 7) differs from its quadrant");
}

#[test]
fn display_without_a_configured_framebuffer_writes_nothing() {
    const TEST: &str = "display_without_a_configured_framebuffer_writes_nothing";
    if let Err(why) = kvm::available() {
        return kvm::skip(TEST, &why);
    }
    let (out, _dir, png_path) = run_with_display("hello");
    assert_eq!(
        out.status,
        Some(Outcome::guest_code(0x10)),
        "{}",
        out.stderr
    );
    assert!(!png_path.exists(), "a PNG without a framebuffer");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}
