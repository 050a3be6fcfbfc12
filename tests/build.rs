//! Builds the freestanding test guests (tests/guests/*.c) with gcc into
//! `$OUT_DIR/guests`, through the same script a person runs by hand.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guests");
    let guests = manifest.join("guests");
    println!("cargo:rerun-if-changed={}", guests.display());
    for entry in std::fs::read_dir(&guests).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    for entry in std::fs::read_dir(guests.join("common"))
        .into_iter()
        .flatten()
        .flatten()
    {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    let status = Command::new("bash")
        .arg(guests.join("build.sh"))
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run tests/guests/build.sh (is bash installed?): {e}"));
    assert!(
        status.success(),
        "tests/guests/build.sh failed ({status}): the test guests need gcc and binutils \
         (apt-get install gcc binutils)"
    );
    println!("cargo:rustc-env=ARBITER_GUEST_DIR={}", out.display());
}
