//! `--scsi` and `--scsi-disk` (and `scsi = [...]`, `scsi-disk = [...]` in
//! the node TOML): parse the specs, build one `scsi::EmulatedTarget` per
//! (controller, target id) with an emulated disk per LUN, and put each
//! controller on PCI bus 0 as a virtio-scsi function.
//!
//! ```text
//! --scsi controller=N[,queues=Q][,initiator=NAME]
//! --scsi-disk path=FILE,controller=N,target=T,lun=L[,readonly=on][,shared=on]
//!             [,serial=S][,wwn=ID][,block-size=512|4096][,rotational=off]
//! ```
//!
//! A disk naming a controller with no `--scsi` gets a default controller.
//! Defaults: `queues` = vCPUs; `initiator` = an NAA name derived from the VM
//! name and controller number (so two VMs with different names are two
//! initiators); the disk identity (VPD 0x83) comes from `wwn` if given
//! (`naa.6…` 32 hex digits, a UUID, or any text that names the disk the
//! same way on every node), else from the shared PR state's disk UUID for
//! `shared=on` disks (identical in every VM opening the image), else from
//! the image's canonical path. The target port name is derived from the
//! identity of the target's lowest LUN, so every VM sees the same port.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::interrupt::{DataMatch, InterruptError, IoEventAddress, IoEventRegistrar};
use devices::virtio::pci::{NotifyRegistrar, VirtioPciTransport, BAR0_SIZE};
use devices::virtio::scsi::{Controller, ScsiControllerConfig, TargetSlot, VirtioScsi};
use devices::virtio::VirtioDevice;
use scsi::pr::shared::SharedPr;
use scsi::pr::Reservations;
use scsi::sgio::{PassthroughConfig, PassthroughLu, PrRouting};
use scsi::{
    Disk, DiskConfig, DiskIdentity, EmulatedTarget, FileBackend, FileOptions, LogicalUnit, Lun,
    PortName, TargetPort,
};
use vmm_sys_util::eventfd::EventFd;

use crate::device_manager::{DeviceError, DeviceManager};

/// Why a `--scsi` / `--scsi-disk` spec is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ScsiConfigError {
    /// Not `key=value[,key=value...]`.
    #[error("{spec:?}: expected key=value pairs separated by commas")]
    Syntax {
        /// The spec.
        spec: String,
    },
    /// A key this option does not have.
    #[error("{spec:?}: unknown key {key:?}")]
    UnknownKey {
        /// The spec.
        spec: String,
        /// The key.
        key: String,
    },
    /// A required key is missing.
    #[error("{spec:?}: {key}= is required")]
    Missing {
        /// The spec.
        spec: String,
        /// The key.
        key: &'static str,
    },
    /// A value that does not parse.
    #[error("{key}={value:?}: {why}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// Two `--scsi` with the same controller number.
    #[error("controller {0} is declared twice")]
    DuplicateController(u32),
    /// Two disks at the same address.
    #[error("controller {controller} target {target} LUN {lun} is used twice")]
    DuplicateLun {
        /// Controller.
        controller: u32,
        /// Target id.
        target: u8,
        /// LUN.
        lun: Lun,
    },
    /// The image could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// Image.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The shared PR state could not be opened.
    #[error("{path}: SCSI passthrough: {source}")]
    Passthrough {
        /// The device.
        path: PathBuf,
        /// Why.
        #[source]
        source: scsi::sgio::SgioError,
    },
    /// The shared PR state could not be opened.
    #[error("{path}: persistent reservation state: {source}")]
    Pr {
        /// Image.
        path: PathBuf,
        /// Cause.
        source: scsi::pr::shared::SharedPrError,
    },
    /// The disk configuration is invalid.
    #[error("{path}: {source}")]
    Disk {
        /// Image.
        path: PathBuf,
        /// Cause.
        source: scsi::disk::DiskError,
    },
    /// The controller could not be built.
    #[error("controller {controller}: {why}")]
    Controller {
        /// Controller.
        controller: u32,
        /// Cause.
        why: String,
    },
}

impl From<ScsiConfigError> for DeviceError {
    fn from(e: ScsiConfigError) -> Self {
        DeviceError::Device(format!("virtio-scsi: {e}"))
    }
}

/// One `--scsi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSpec {
    /// Controller number.
    pub controller: u32,
    /// Request queues (None: one per vCPU).
    pub queues: Option<u16>,
    /// Initiator port name (None: derived).
    pub initiator: Option<PortName>,
}

/// One `--scsi-disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image file or block device.
    pub path: PathBuf,
    /// Controller number.
    pub controller: u32,
    /// Target id (0..=255).
    pub target: u8,
    /// LUN (0..=16383).
    pub lun: Lun,
    /// Write-protected.
    pub readonly: bool,
    /// Shared with other VMs (cluster disk; persistent reservations kept in
    /// a state file beside the image).
    pub shared: bool,
    /// Unit serial number (VPD 0x80).
    pub serial: Option<String>,
    /// World-wide identity text.
    pub wwn: Option<String>,
    /// Logical block size.
    pub block_size: u32,
    /// Report a rotating medium (`rotational=off` reports non-rotating).
    pub rotational: bool,
    /// `sg=DEVICE`: an SG_IO passthrough LUN over a host SCSI device
    /// (`path` is then the device), with its passthrough options
    /// (`pr=`, `allow=`, `deny=`, `hide-mode-pages=`, `vendor=`, `naa=`, ...
    /// see `scsi::sgio::PassthroughConfig::set`) and `pr-state=FILE` for
    /// `pr=emulated`.
    pub passthrough: Option<Vec<(String, String)>>,
}

fn pairs(spec: &str) -> Result<Vec<(&str, &str)>, ScsiConfigError> {
    spec.split(',')
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ScsiConfigError::Syntax {
                    spec: spec.to_owned(),
                })
        })
        .collect()
}

fn num<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, ScsiConfigError> {
    v.parse().map_err(|_| ScsiConfigError::BadValue {
        key,
        value: v.to_owned(),
        why: "not a number in range".into(),
    })
}

fn onoff(key: &'static str, v: &str) -> Result<bool, ScsiConfigError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(ScsiConfigError::BadValue {
            key,
            value: v.to_owned(),
            why: "expected on or off".into(),
        }),
    }
}

/// Parse one `--scsi` spec.
pub fn parse_controller(spec: &str) -> Result<ControllerSpec, ScsiConfigError> {
    let mut controller = None;
    let mut queues = None;
    let mut initiator = None;
    for (k, v) in pairs(spec)? {
        match k {
            "controller" => controller = Some(num("controller", v)?),
            "queues" => {
                let q: u16 = num("queues", v)?;
                if q == 0 || q > 256 {
                    return Err(ScsiConfigError::BadValue {
                        key: "queues",
                        value: v.into(),
                        why: "must be 1..=256".into(),
                    });
                }
                queues = Some(q);
            }
            "initiator" => {
                initiator = Some(v.parse().map_err(|e: scsi::nexus::PortNameError| {
                    ScsiConfigError::BadValue {
                        key: "initiator",
                        value: v.into(),
                        why: e.to_string(),
                    }
                })?)
            }
            _ => {
                return Err(ScsiConfigError::UnknownKey {
                    spec: spec.into(),
                    key: k.into(),
                })
            }
        }
    }
    Ok(ControllerSpec {
        controller: controller.ok_or(ScsiConfigError::Missing {
            spec: spec.into(),
            key: "controller",
        })?,
        queues,
        initiator,
    })
}

/// Parse one `--scsi-disk` spec.
pub fn parse_disk(spec: &str) -> Result<DiskSpec, ScsiConfigError> {
    let missing = |key| ScsiConfigError::Missing {
        spec: spec.into(),
        key,
    };
    let (mut path, mut controller, mut target, mut lun) = (None, None, None, None);
    let mut d = DiskSpec {
        path: PathBuf::new(),
        controller: 0,
        target: 0,
        lun: 0,
        readonly: false,
        shared: false,
        serial: None,
        wwn: None,
        block_size: 512,
        rotational: false,
        passthrough: None,
    };
    let mut sg_opts: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs(spec)? {
        match k {
            "path" => path = Some(PathBuf::from(v)),
            "sg" => {
                path = Some(PathBuf::from(v));
                d.passthrough = Some(Vec::new());
            }
            "pr" | "pr-state" | "allow" | "deny" | "hide-mode-pages" | "vendor" | "product"
            | "revision" | "naa" | "timeout-ms" | "max-transfer" => {
                sg_opts.push((k.to_owned(), v.to_owned()))
            }
            "controller" => controller = Some(num("controller", v)?),
            "target" => target = Some(num("target", v)?),
            "lun" => {
                let l: Lun = num("lun", v)?;
                if l > scsi::emulated::MAX_LUN {
                    return Err(ScsiConfigError::BadValue {
                        key: "lun",
                        value: v.into(),
                        why: "must be 0..=16383".into(),
                    });
                }
                lun = Some(l);
            }
            "readonly" => d.readonly = onoff("readonly", v)?,
            "shared" => d.shared = onoff("shared", v)?,
            "serial" => d.serial = Some(v.to_owned()),
            "wwn" => d.wwn = Some(v.to_owned()),
            "block-size" => {
                d.block_size = num("block-size", v)?;
                if d.block_size != 512 && d.block_size != 4096 {
                    return Err(ScsiConfigError::BadValue {
                        key: "block-size",
                        value: v.into(),
                        why: "must be 512 or 4096".into(),
                    });
                }
            }
            "rotational" => d.rotational = onoff("rotational", v)?,
            _ => {
                return Err(ScsiConfigError::UnknownKey {
                    spec: spec.into(),
                    key: k.into(),
                })
            }
        }
    }
    d.path = path.ok_or_else(|| missing("path"))?;
    match &mut d.passthrough {
        Some(opts) => *opts = sg_opts,
        None if !sg_opts.is_empty() => {
            return Err(ScsiConfigError::BadValue {
                key: "sg",
                value: sg_opts[0].0.clone(),
                why: "is an option of passthrough disks: give sg=/dev/sgN instead of path=".into(),
            })
        }
        None => {}
    }
    d.controller = controller.ok_or_else(|| missing("controller"))?;
    d.target = target.ok_or_else(|| missing("target"))?;
    d.lun = lun.ok_or_else(|| missing("lun"))?;
    Ok(d)
}

/// Parse every spec and group the disks by controller (ascending).
pub fn parse_all(
    scsi: &[String],
    disks: &[String],
) -> Result<Vec<(ControllerSpec, Vec<DiskSpec>)>, ScsiConfigError> {
    let mut ctrls: BTreeMap<u32, (ControllerSpec, Vec<DiskSpec>)> = BTreeMap::new();
    for s in scsi {
        let c = parse_controller(s)?;
        if ctrls.contains_key(&c.controller) {
            return Err(ScsiConfigError::DuplicateController(c.controller));
        }
        ctrls.insert(c.controller, (c, Vec::new()));
    }
    for s in disks {
        let d = parse_disk(s)?;
        let entry = ctrls.entry(d.controller).or_insert_with(|| {
            (
                ControllerSpec {
                    controller: d.controller,
                    queues: None,
                    initiator: None,
                },
                Vec::new(),
            )
        });
        if entry
            .1
            .iter()
            .any(|o| o.target == d.target && o.lun == d.lun)
        {
            return Err(ScsiConfigError::DuplicateLun {
                controller: d.controller,
                target: d.target,
                lun: d.lun,
            });
        }
        entry.1.push(d);
    }
    Ok(ctrls.into_values().collect())
}

/// An opened logical unit with its LUN and its port-name identity text.
type OpenLu = (Lun, Arc<dyn LogicalUnit>, String);

/// Open one logical unit: an emulated disk over a file or block device, or
/// an SG_IO passthrough LUN. Also returns the text the target port name is
/// derived from (the same on every VM that opens the same disk).
fn open_lu(d: &DiskSpec) -> Result<(Arc<dyn LogicalUnit>, String), ScsiConfigError> {
    let Some(opts) = &d.passthrough else {
        let disk = open_disk(d)?;
        let id = disk.config().identity.to_string();
        return Ok((disk, id));
    };
    let perr = |source| ScsiConfigError::Passthrough {
        path: d.path.clone(),
        source,
    };
    let mut cfg = PassthroughConfig::default();
    let mut pr_state = None;
    for (k, v) in opts {
        if k == "pr-state" {
            pr_state = Some(PathBuf::from(v));
        } else {
            cfg.set(k, v).map_err(perr)?;
        }
    }
    if let Some(serial) = &d.serial {
        cfg.set("serial", serial).map_err(perr)?;
    }
    if matches!(cfg.pr, PrRouting::Emulated) {
        let pr = match &pr_state {
            Some(p) => SharedPr::open_at(p),
            None => SharedPr::open(&d.path),
        }
        .map_err(|source| ScsiConfigError::Pr {
            path: d.path.clone(),
            source,
        })?;
        cfg.reservations = Some(pr as Arc<dyn Reservations>);
    }
    let id = opts
        .iter()
        .find(|(k, _)| k == "naa")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            d.path
                .canonicalize()
                .unwrap_or_else(|_| d.path.clone())
                .display()
                .to_string()
        });
    let lu = PassthroughLu::open(&d.path, cfg).map_err(perr)?;
    Ok((Arc::new(lu), id))
}

/// Open one emulated disk: backend, PR state (shared disks), identity.
fn open_disk(d: &DiskSpec) -> Result<Arc<Disk>, ScsiConfigError> {
    let backend = FileBackend::open(
        &d.path,
        FileOptions {
            read_only: d.readonly,
            direct: false,
            shared: d.shared,
        },
    )
    .map_err(|source| ScsiConfigError::Open {
        path: d.path.clone(),
        source,
    })?;
    let pr = if d.shared {
        Some(
            SharedPr::open(&d.path).map_err(|source| ScsiConfigError::Pr {
                path: d.path.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    let identity = match (&d.wwn, &pr) {
        (Some(w), _) => DiskIdentity::parse(w).unwrap_or_else(|_| DiskIdentity::from_text(w)),
        (None, Some(p)) => DiskIdentity::from_uuid(p.disk_uuid()),
        (None, None) => {
            let canon = d.path.canonicalize().unwrap_or_else(|_| d.path.clone());
            DiskIdentity::from_text(&canon.display().to_string())
        }
    };
    let mut cfg = DiskConfig::new(identity);
    cfg.serial = d.serial.clone();
    cfg.block_size = d.block_size;
    cfg.read_only = d.readonly;
    cfg.rotation_rate = if d.rotational { 0 } else { 1 };
    let pr = pr.map(|p| p as Arc<dyn Reservations>);
    Disk::new(cfg, Arc::new(backend), pr)
        .map(Arc::new)
        .map_err(|source| ScsiConfigError::Disk {
            path: d.path.clone(),
            source,
        })
}

/// Queue-notify doorbells as KVM ioeventfds (any value, any width).
struct Registrar(Arc<dyn IoEventRegistrar>);

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registrar")
    }
}

impl NotifyRegistrar for Registrar {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.0
            .register_ioevent(fd, IoEventAddress::Mmio(addr), DataMatch::Any)
    }
    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.0
            .unregister_ioevent(fd, IoEventAddress::Mmio(addr), DataMatch::Any)
    }
}

/// Build the controllers `config` asks for and plug them into `dm`.
/// Returns each controller's shared state (hot-plug, tests).
pub fn add_controllers(
    dm: &mut DeviceManager,
    mem: &vm_memory::GuestMemoryMmap,
    vm_name: &str,
    cpus: u8,
    scsi: &[String],
    disks: &[String],
) -> Result<Vec<Arc<Controller>>, DeviceError> {
    let mut out = Vec::new();
    for (c, disks) in parse_all(scsi, disks)? {
        let initiator = c.initiator.clone().unwrap_or_else(|| {
            PortName::derived_naa(&format!("arbiter-initiator:{vm_name}/scsi{}", c.controller))
        });
        let mut by_target: BTreeMap<u8, Vec<OpenLu>> = BTreeMap::new();
        for d in &disks {
            let (lu, id) = open_lu(d)?;
            by_target.entry(d.target).or_default().push((d.lun, lu, id));
        }
        let mut slots = Vec::new();
        for (tid, mut luns) in by_target {
            luns.sort_by_key(|(l, _, _)| *l);
            let first = luns[0].2.clone();
            let port = TargetPort {
                relative_id: 1,
                name: PortName::derived_naa(&format!("arbiter-target:{first}/{tid}")),
            };
            let target = EmulatedTarget::new();
            let mut lun_ids = Vec::new();
            for (l, disk, _) in luns {
                target
                    .add_lun(l, disk)
                    .map_err(|e| ScsiConfigError::Controller {
                        controller: c.controller,
                        why: e.to_string(),
                    })?;
                lun_ids.push(l);
            }
            slots.push((
                tid,
                TargetSlot::new(Arc::new(target), initiator.clone(), port, lun_ids),
            ));
        }
        let cerr = |why: String| ScsiConfigError::Controller {
            controller: c.controller,
            why,
        };
        let dev = VirtioScsi::new(
            ScsiControllerConfig {
                num_queues: c.queues.unwrap_or(u16::from(cpus.max(1))),
                queue_size: devices::virtio::scsi::DEFAULT_QUEUE_SIZE,
                initiator,
            },
            slots,
        )
        .map_err(|e| cerr(e.to_string()))?;
        let shared = dev.controller();
        let vectors = u16::try_from(dev.queue_max_sizes().len() + 1).unwrap_or(u16::MAX);
        let bar = dm.allocate_mmio32(BAR0_SIZE)?;
        let msi = dm.interrupt_manager().create_msi_group(vectors)?;
        let transport = VirtioPciTransport::new(
            dev,
            mem.clone(),
            bar,
            msi,
            None,
            Some(Arc::new(Registrar(dm.ioevents()))),
        )
        .map_err(|e| cerr(e.to_string()))?;
        let transport = Arc::new(Mutex::new(transport));
        let addr = dm.add_pci_device(transport.clone())?;
        // INTA# through the PIIX3 PIRQ routes, for drivers without MSI-X.
        let (line, irq) = dm.intx_line(addr.device, 1);
        transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_intx(line, irq);
        log::info!(
            "virtio-scsi controller {} at 00:{:02x}.{} with {} disk(s)",
            c.controller,
            addr.device,
            addr.function,
            disks.len()
        );
        out.push(shared);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_specs() {
        assert_eq!(
            parse_controller("controller=0,queues=4,initiator=naa.5001405000000009").unwrap(),
            ControllerSpec {
                controller: 0,
                queues: Some(4),
                initiator: Some("naa.5001405000000009".parse().unwrap()),
            }
        );
        assert_eq!(parse_controller("controller=2").unwrap().queues, None);
        assert!(matches!(
            parse_controller("queues=4"),
            Err(ScsiConfigError::Missing {
                key: "controller",
                ..
            })
        ));
        assert!(matches!(
            parse_controller("controller=0,queues=0"),
            Err(ScsiConfigError::BadValue { key: "queues", .. })
        ));
        assert!(matches!(
            parse_controller("controller=0,colour=red"),
            Err(ScsiConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            parse_controller("controller=0,initiator=bogus"),
            Err(ScsiConfigError::BadValue {
                key: "initiator",
                ..
            })
        ));
        assert!(matches!(
            parse_controller("controller"),
            Err(ScsiConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn disk_specs() {
        let d = parse_disk(
            "path=/tmp/a.img,controller=1,target=2,lun=300,readonly=on,shared=on,\
             serial=S1,wwn=0x5000c500a1b2c3d4,block-size=4096,rotational=on",
        )
        .unwrap();
        assert_eq!(
            d,
            DiskSpec {
                path: "/tmp/a.img".into(),
                controller: 1,
                target: 2,
                lun: 300,
                readonly: true,
                shared: true,
                serial: Some("S1".into()),
                wwn: Some("0x5000c500a1b2c3d4".into()),
                block_size: 4096,
                rotational: true,
                passthrough: None,
            }
        );
        // A passthrough LUN: sg= names the device, its options ride along.
        let d = parse_disk(
            "sg=/dev/sg3,controller=0,target=1,lun=2,pr=helper:/run/pr.sock,naa=6001405abcdef0123,deny=35",
        )
        .unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/sg3"));
        assert_eq!(
            d.passthrough,
            Some(vec![
                ("pr".to_owned(), "helper:/run/pr.sock".to_owned()),
                ("naa".to_owned(), "6001405abcdef0123".to_owned()),
                ("deny".to_owned(), "35".to_owned()),
            ])
        );
        // Passthrough options on an emulated disk are refused, not ignored.
        assert!(matches!(
            parse_disk("path=x.img,controller=0,target=0,lun=0,pr=emulated"),
            Err(ScsiConfigError::BadValue { key: "sg", .. })
        ));
        let d = parse_disk("path=x,controller=0,target=0,lun=0").unwrap();
        assert!(!d.readonly && !d.shared && !d.rotational && d.block_size == 512);
        for bad in [
            "path=x,controller=0,target=256,lun=0",
            "path=x,controller=0,target=0,lun=16384",
            "path=x,controller=0,target=0,lun=0,block-size=1024",
            "path=x,controller=0,target=0,lun=0,shared=maybe",
        ] {
            assert!(
                matches!(parse_disk(bad), Err(ScsiConfigError::BadValue { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_disk("controller=0,target=0,lun=0"),
            Err(ScsiConfigError::Missing { key: "path", .. })
        ));
    }

    #[test]
    fn grouping_and_duplicates() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let g = parse_all(
            &s(&["controller=1,queues=2"]),
            &s(&[
                "path=a,controller=1,target=0,lun=0",
                "path=b,controller=0,target=0,lun=0",
                "path=c,controller=1,target=0,lun=1",
            ]),
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].0.controller, g[0].0.queues, g[0].1.len()),
            (0, None, 1)
        );
        assert_eq!(
            (g[1].0.controller, g[1].0.queues, g[1].1.len()),
            (1, Some(2), 2)
        );
        assert!(matches!(
            parse_all(&s(&["controller=0", "controller=0"]), &[]),
            Err(ScsiConfigError::DuplicateController(0))
        ));
        assert!(matches!(
            parse_all(
                &[],
                &s(&[
                    "path=a,controller=0,target=1,lun=2",
                    "path=b,controller=0,target=1,lun=2"
                ])
            ),
            Err(ScsiConfigError::DuplicateLun { .. })
        ));
    }
}
