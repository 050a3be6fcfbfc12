//! The VM's settings, from the command line and/or a TOML file, checked
//! and turned into a [`VmConfig`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::RunArgs;

/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Most vCPUs we start.
pub const MAX_CPUS: u8 = 64;

/// Configuration errors: one line each, naming the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A size value did not parse.
    #[error("--memory {0:?}: expected a size such as 512M or 4G")]
    BadSize(String),
    /// Memory too small or too large.
    #[error("--memory {0}: must be between 2M and 1T")]
    MemoryRange(String),
    /// Bad vCPU count/options.
    #[error(
        "--cpus {0:?}: expected N (1-{MAX_CPUS}) with optional ,hyperv=on|off and ,kvm=on|off"
    )]
    BadCpus(String),
    /// Bad --serial.
    #[error("--serial {0:?}: expected stdio, file=PATH or none")]
    BadSerial(String),
    /// Bad --on-reset.
    #[error("--on-reset {0:?}: expected reboot or exit")]
    BadOnReset(String),
    /// Bad --display.
    #[error("--display {0:?}: expected png=PATH[,interval=MS] with MS from 10 to 600000")]
    BadDisplay(String),
    /// Bad --firmware.
    #[error("--firmware {0:?}: expected FILE or code=FILE,vars=FILE")]
    BadFirmware(String),
    /// A file named by a flag does not exist.
    #[error("{flag} {path}: {source}")]
    File {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: String,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// Neither --kernel nor --firmware.
    #[error("nothing to boot: give --kernel FILE (or --firmware FILE)")]
    NothingToBoot,
    /// The config file could not be read or parsed.
    #[error("--config {path}: {msg}")]
    ConfigFile {
        /// The path.
        path: String,
        /// Why (first line of the parser message).
        msg: String,
    },
    /// A feature accepted by the parser has not landed.
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
}

/// Where COM1's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// Arbiter's stdout (input from stdin).
    Stdio,
    /// Appended to a file (truncated at start).
    File(PathBuf),
    /// Discarded.
    None,
}

/// What a guest reset does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReset {
    /// Restart the VM from scratch.
    Reboot,
    /// End arbiter with status 0x80.
    Exit,
}

/// UEFI firmware images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareConfig {
    /// Code image (or the single combined image).
    pub code: PathBuf,
    /// Variable store, if separate.
    pub vars: Option<PathBuf>,
}

/// Where the guest's screen goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayConfig {
    /// PNG file rewritten with each new picture.
    pub png: PathBuf,
    /// How often the framebuffer is looked at.
    pub interval: std::time::Duration,
}

/// Default `--display` interval.
pub const DEFAULT_DISPLAY_INTERVAL_MS: u64 = 1000;

/// A VM's settings, checked.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Name (logs).
    pub name: String,
    /// Guest RAM in bytes (multiple of 4 KiB).
    pub memory: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Hyper-V enlightenments requested.
    pub hyperv: bool,
    /// KVM's CPUID leaves (signature "KVMKVMKVM", PV features) shown to
    /// the guest (`kvm=off` hides them, as QEMU's `-cpu ...,kvm=off`).
    pub kvm_leaves: bool,
    /// Kernel for direct boot.
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// UEFI firmware.
    pub firmware: Option<FirmwareConfig>,
    /// Screen snapshots.
    pub display: Option<DisplayConfig>,
    /// COM1.
    pub serial: SerialMode,
    /// Reset behaviour.
    pub on_reset: OnReset,
    /// `--scsi` specs (parsed by the virtio-scsi code).
    pub scsi: Vec<String>,
    /// `--scsi-disk` specs.
    pub scsi_disks: Vec<String>,
    /// `--net` specs.
    pub net: Vec<String>,
    /// Add the pci-testdev function.
    pub pci_testdev: bool,
}

/// Parse `512M`, `4G`, `65536K`, `1T` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let bad = || ConfigError::BadSize(s.to_owned());
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let sh = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], sh)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    memory: Option<String>,
    cpus: Option<IntOrString>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    firmware: Option<String>,
    display: Option<String>,
    serial: Option<String>,
    #[serde(alias = "on_reset")]
    on_reset: Option<String>,
    #[serde(default)]
    scsi: Vec<String>,
    #[serde(default, alias = "scsi_disk")]
    scsi_disk: Vec<String>,
    #[serde(default)]
    net: Vec<String>,
    #[serde(default, alias = "pci_testdev")]
    pci_testdev: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u64),
    Str(String),
}

/// A multi-line parser message as one line: where, then what.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match (lines.first(), lines.last()) {
        (Some(a), Some(b)) if a != b => format!("{a}: {b}"),
        (Some(a), _) => (*a).to_owned(),
        _ => String::new(),
    }
}

fn rel(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p
    }
}

/// Overlay the TOML file (if any) under the flags: flags win.
fn merge(args: &RunArgs) -> Result<RunArgs, ConfigError> {
    let Some(path) = &args.config else {
        return Ok(args.clone());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ConfigFile {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let f: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::ConfigFile {
        path: path.display().to_string(),
        msg: one_line(&e.to_string()),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = args.clone();
    out.name = out.name.or(f.name);
    out.memory = out.memory.or(f.memory);
    out.cpus = out.cpus.or(f.cpus.map(|c| match c {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::Str(s) => s,
    }));
    out.kernel = out.kernel.or(f.kernel.map(|p| rel(base, p)));
    out.initrd = out.initrd.or(f.initrd.map(|p| rel(base, p)));
    out.cmdline = out.cmdline.or(f.cmdline);
    out.firmware = out.firmware.or(f.firmware);
    out.display = out.display.or(f.display);
    out.serial = out.serial.or(f.serial);
    out.on_reset = out.on_reset.or(f.on_reset);
    if out.scsi.is_empty() {
        out.scsi = f.scsi;
    }
    if out.scsi_disk.is_empty() {
        out.scsi_disk = f.scsi_disk;
    }
    if out.net.is_empty() {
        out.net = f.net;
    }
    out.pci_testdev |= f.pci_testdev;
    Ok(out)
}

fn check_file(flag: &'static str, p: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(p)
        .and_then(|f| f.metadata())
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|source| ConfigError::File {
            flag,
            path: p.display().to_string(),
            source,
        })
}

fn parse_cpus(s: &str) -> Result<(u8, bool, bool), ConfigError> {
    let bad = || ConfigError::BadCpus(s.to_owned());
    let mut parts = s.split(',');
    let n: u8 = parts
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .map_err(|_| bad())?;
    if n == 0 || n > MAX_CPUS {
        return Err(bad());
    }
    let mut hyperv = false;
    let mut kvm_leaves = true;
    for p in parts {
        match p.trim() {
            "hyperv=on" => hyperv = true,
            "hyperv=off" => hyperv = false,
            "kvm=on" => kvm_leaves = true,
            "kvm=off" => kvm_leaves = false,
            _ => return Err(bad()),
        }
    }
    Ok((n, hyperv, kvm_leaves))
}

fn parse_firmware(s: &str) -> Result<FirmwareConfig, ConfigError> {
    if !s.contains('=') {
        return Ok(FirmwareConfig {
            code: PathBuf::from(s),
            vars: None,
        });
    }
    let mut code = None;
    let mut vars = None;
    for kv in s.split(',') {
        match kv.split_once('=') {
            Some(("code", v)) if !v.is_empty() => code = Some(PathBuf::from(v)),
            Some(("vars", v)) if !v.is_empty() => vars = Some(PathBuf::from(v)),
            _ => return Err(ConfigError::BadFirmware(s.to_owned())),
        }
    }
    Ok(FirmwareConfig {
        code: code.ok_or_else(|| ConfigError::BadFirmware(s.to_owned()))?,
        vars,
    })
}

fn parse_display(s: &str) -> Result<DisplayConfig, ConfigError> {
    let bad = || ConfigError::BadDisplay(s.to_owned());
    let mut png = None;
    let mut ms = DEFAULT_DISPLAY_INTERVAL_MS;
    for kv in s.split(',') {
        match kv.split_once('=') {
            Some(("png", v)) if !v.is_empty() => png = Some(PathBuf::from(v)),
            Some(("interval", v)) => {
                ms = v
                    .parse()
                    .ok()
                    .filter(|m| (10..=600_000).contains(m))
                    .ok_or_else(bad)?;
            }
            _ => return Err(bad()),
        }
    }
    Ok(DisplayConfig {
        png: png.ok_or_else(bad)?,
        interval: std::time::Duration::from_millis(ms),
    })
}

impl TryFrom<&RunArgs> for VmConfig {
    type Error = ConfigError;

    fn try_from(args: &RunArgs) -> Result<Self, ConfigError> {
        let a = merge(args)?;
        let memory = match &a.memory {
            Some(s) => {
                let m = parse_size(s)?;
                if !((2 << 20)..=(1 << 40)).contains(&m) {
                    return Err(ConfigError::MemoryRange(s.clone()));
                }
                m & !0xFFF
            }
            None => DEFAULT_MEMORY,
        };
        let (cpus, hyperv, kvm_leaves) = match &a.cpus {
            Some(s) => parse_cpus(s)?,
            None => (1, false, true),
        };
        let serial = match a.serial.as_deref() {
            None | Some("stdio") => SerialMode::Stdio,
            Some("none") => SerialMode::None,
            Some(s) => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => SerialMode::File(PathBuf::from(p)),
                _ => return Err(ConfigError::BadSerial(s.to_owned())),
            },
        };
        let on_reset = match a.on_reset.as_deref() {
            None | Some("reboot") => OnReset::Reboot,
            Some("exit") => OnReset::Exit,
            Some(s) => return Err(ConfigError::BadOnReset(s.to_owned())),
        };
        let firmware = a.firmware.as_deref().map(parse_firmware).transpose()?;
        let display = a.display.as_deref().map(parse_display).transpose()?;
        if let Some(k) = &a.kernel {
            check_file("--kernel", k)?;
        }
        if let Some(i) = &a.initrd {
            check_file("--initrd", i)?;
        }
        if let Some(fw) = &firmware {
            check_file("--firmware", &fw.code)?;
            if let Some(v) = &fw.vars {
                check_file("--firmware vars", v)?;
            }
        }
        if a.kernel.is_none() && firmware.is_none() {
            return Err(ConfigError::NothingToBoot);
        }
        Ok(VmConfig {
            name: a.name.clone().unwrap_or_else(|| "arbiter".to_owned()),
            memory,
            cpus,
            hyperv,
            kvm_leaves,
            kernel: a.kernel.clone(),
            initrd: a.initrd.clone(),
            cmdline: a.cmdline.clone().unwrap_or_default(),
            firmware,
            display,
            serial,
            on_reset,
            scsi: a.scsi.clone(),
            scsi_disks: a.scsi_disk.clone(),
            net: a.net.clone(),
            pci_testdev: a.pci_testdev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::io::Write;

    fn args(v: &[&str]) -> RunArgs {
        let mut all = vec!["arbiter", "run"];
        all.extend_from_slice(v);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Run(a) => *a,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn display_option() {
        let k = tempfile::NamedTempFile::new().unwrap();
        let kp = k.path().to_str().unwrap();
        let d = |v: &str| VmConfig::try_from(&args(&["--kernel", kp, "--display", v]));
        let c = d("png=/tmp/screen.png").unwrap();
        assert_eq!(
            c.display,
            Some(DisplayConfig {
                png: PathBuf::from("/tmp/screen.png"),
                interval: std::time::Duration::from_millis(1000),
            })
        );
        let c = d("png=s.png,interval=250").unwrap().display.unwrap();
        assert_eq!(c.interval, std::time::Duration::from_millis(250));
        for bad in [
            "png=",
            "vnc=:1",
            "png=a.png,interval=5",
            "interval=100",
            "png=a,interval=x",
        ] {
            let e = d(bad).unwrap_err().to_string();
            assert!(e.starts_with("--display"), "{bad}: {e}");
        }
        let none = VmConfig::try_from(&args(&["--kernel", kp])).unwrap();
        assert_eq!(none.display, None);
    }

    #[test]
    fn flags_and_errors() {
        let k = tempfile::NamedTempFile::new().unwrap();
        let kp = k.path().to_str().unwrap();
        let c = VmConfig::try_from(&args(&[
            "--kernel", kp, "--memory", "64M", "--cpus", "2", "--serial", "none",
        ]))
        .unwrap();
        assert_eq!(
            (c.memory, c.cpus, c.serial.clone()),
            (64 << 20, 2, SerialMode::None)
        );
        let e = |v: &[&str]| VmConfig::try_from(&args(v)).unwrap_err().to_string();
        assert!(e(&["--kernel", "/nonexistent/k"]).starts_with("--kernel /nonexistent/k:"));
        assert!(e(&["--kernel", kp, "--memory", "1K"]).contains("between"));
        assert!(e(&["--kernel", kp, "--cpus", "0"]).starts_with("--cpus"));
        assert!(e(&["--kernel", kp, "--cpus", "2,hyperv=maybe"]).starts_with("--cpus"));
        assert!(e(&["--kernel", kp, "--cpus", "2,kvm=no"]).starts_with("--cpus"));
        let c =
            VmConfig::try_from(&args(&["--kernel", kp, "--cpus", "2,hyperv=on,kvm=off"])).unwrap();
        assert_eq!((c.cpus, c.hyperv, c.kvm_leaves), (2, true, false));
        assert!(e(&["--kernel", kp, "--serial", "tcp"]).starts_with("--serial"));
        assert!(e(&["--kernel", kp, "--on-reset", "panic"]).starts_with("--on-reset"));
        assert!(e(&[]).starts_with("nothing to boot"));
        for msg in [e(&["--kernel", "/nonexistent/k"]), e(&[])] {
            assert_eq!(msg.lines().count(), 1);
        }
    }

    #[test]
    fn toml_file_with_flag_override() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.elf"), b"x").unwrap();
        let cfg = dir.path().join("node.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(f, "name = \"node1\"\nmemory = \"128M\"\ncpus = 2\nkernel = \"k.elf\"\non-reset = \"exit\"").unwrap();
        let c = VmConfig::try_from(&args(&[
            "--config",
            cfg.to_str().unwrap(),
            "--memory",
            "96M",
        ]))
        .unwrap();
        assert_eq!(c.name, "node1");
        assert_eq!(c.memory, 96 << 20);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.on_reset, OnReset::Exit);
        assert_eq!(c.kernel.unwrap(), dir.path().join("k.elf"));
        std::fs::write(&cfg, "memroy = \"1G\"\n").unwrap();
        let e = VmConfig::try_from(&args(&["--config", cfg.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--config") && e.contains("memroy"), "{e}");
    }
}
