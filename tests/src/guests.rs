//! The freestanding test guests built from `tests/guests/*.c`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Directory that holds `<name>.elf` for every guest (built by build.rs).
pub fn dir() -> &'static Path {
    Path::new(env!("ARBITER_GUEST_DIR"))
}

/// Path of the built guest `name` (e.g. `"hello"`); panics if it is missing,
/// which would mean the build script did not build it.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(format!("{name}.elf"));
    assert!(p.is_file(), "test guest {} was not built", p.display());
    p
}

/// Names of all built guests.
pub fn all() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".elf").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// One instruction that a freestanding guest must not contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenInsn {
    /// The disassembly line as objdump printed it.
    pub line: String,
}

/// Mnemonics that touch x87/MMX/SSE/AVX state without naming a vector or x87
/// register operand.
const STATE_MNEMONICS: &[&str] = &[
    "ldmxcsr",
    "stmxcsr",
    "vldmxcsr",
    "vstmxcsr",
    "emms",
    "femms",
    "xsave",
    "xsave64",
    "xsaveopt",
    "xsaveopt64",
    "xsavec",
    "xsavec64",
    "xsaves",
    "xrstor",
    "xrstor64",
    "xrstors",
    "fxsave",
    "fxsave64",
    "fxrstor",
    "fxrstor64",
    "vzeroupper",
    "vzeroall",
];

/// Scan `objdump -d` output for x87, MMX, SSE or AVX instructions.
///
/// An instruction is rejected when its mnemonic starts with `f` (every x87
/// instruction does, and no integer instruction does), is one of the
/// state-management mnemonics, or names an `%st`, `%mm`, `%xmm`, `%ymm`,
/// `%zmm` or `%k` mask register.
pub fn forbidden_instructions(objdump: &str) -> Vec<ForbiddenInsn> {
    let mut bad = Vec::new();
    for line in objdump.lines() {
        // Instruction lines look like "  100000:\tfa                   \tcli".
        let mut fields = line.split('\t');
        let (Some(addr), Some(_bytes), Some(text)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !addr.trim_end().ends_with(':') {
            continue;
        }
        let text = text.trim();
        let mut words = text.split_whitespace();
        let mut mnemonic = words.next().unwrap_or("");
        // Skip prefixes so "rep stos" and "lock add" are judged by the operation.
        while matches!(
            mnemonic,
            "rep"
                | "repz"
                | "repnz"
                | "repe"
                | "repne"
                | "lock"
                | "data16"
                | "addr32"
                | "notrack"
                | "bnd"
                | "cs"
                | "ds"
                | "es"
                | "ss"
                | "fs"
                | "gs"
        ) {
            mnemonic = words.next().unwrap_or("");
        }
        let operands = text
            .split_once(char::is_whitespace)
            .map(|(_, o)| o)
            .unwrap_or("");
        let reg_hit = [
            "%st", "%mm", "%xmm", "%ymm", "%zmm", "%k0", "%k1", "%k2", "%k3", "%k4", "%k5", "%k6",
            "%k7",
        ]
        .iter()
        .any(|r| operands.contains(r));
        if mnemonic.starts_with('f') || STATE_MNEMONICS.contains(&mnemonic) || reg_hit {
            bad.push(ForbiddenInsn {
                line: line.to_owned(),
            });
        }
    }
    bad
}

/// Disassemble `elf` with objdump and return the forbidden instructions in it.
pub fn check_integer_only(elf: &Path) -> std::io::Result<Vec<ForbiddenInsn>> {
    let out = Command::new("objdump")
        .arg("-d")
        .arg("-w")
        .arg(elf)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "objdump -d {} failed: {}",
            elf.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(forbidden_instructions(&String::from_utf8_lossy(
        &out.stdout,
    )))
}
