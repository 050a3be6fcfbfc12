//! The `arbiter` command line. This is a contract that tests, scripts and
//! users rely on: extend it, don't break it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Arbiter: a KVM virtual machine monitor for Windows failover-cluster labs.
///
/// Arbiter boots guests (Windows through UEFI with your distribution's OVMF,
/// Linux and test guests by direct kernel boot) and gives them virtio-scsi
/// disks that several VMs can share, with SCSI-3 persistent reservations
/// kept per initiator, so a cluster's storage validation passes on one host.
#[derive(Debug, Parser)]
#[command(
    name = "arbiter",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
#[command(after_help = "Examples:\n  \
    arbiter run --memory 64M --kernel target/guests/hello.elf\n  \
    arbiter run --name node1 --memory 4G --cpus 2 --firmware code=/usr/share/OVMF/OVMF_CODE_4M.fd,vars=node1_VARS.fd \\\n      \
    --scsi controller=0 --scsi-disk path=shared.img,controller=0,target=0,lun=0,shared=on\n\n\
    Run 'arbiter run --help' for every option of a VM.")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot one virtual machine and run it until it powers off.
    ///
    /// The VM's exit decides arbiter's exit status: 0 after an ACPI power-off,
    /// (v << 1) | 1 when a test guest writes v to the debug-exit port 0xF4,
    /// and non-zero with a report on stderr after a triple fault or an
    /// internal error.
    Run(Box<RunArgs>),
}

/// `arbiter run` options. Every option can also come from `--config FILE`
/// (TOML, same names); flags given on the command line win.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Size values take K, M, G or T suffixes (powers of 1024).\n\
Options marked [planned] are accepted by the parser but refused at start-up until their feature lands."
)]
pub struct RunArgs {
    /// Name of the VM (used in logs and to derive default SCSI initiator names).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Guest RAM, e.g. 512M or 4G. RAM above the PCI hole goes above 4 GiB.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,

    /// vCPUs: N[,hyperv=on][,kvm=off]. hyperv=on: Hyper-V enlightenments for
    /// Windows, emulated by KVM (relaxed timing, VP index, hypercall page,
    /// reference counter and TSC page, SynIC and synthetic timers, frequency
    /// and APIC access MSRs, TLB flush and IPI hypercalls; KVM's own CPUID
    /// leaves move to 0x40000100); the host's KVM must offer them.
    /// kvm=off hides KVM's CPUID leaves (then Linux uses Hyper-V's).
    #[arg(long, value_name = "N[,hyperv=on][,kvm=off]")]
    pub cpus: Option<String>,

    /// Kernel to boot directly: a PVH ELF (test guests, vmlinux) or a bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk for --kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line for --kernel.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,

    /// UEFI firmware (stock OVMF): OVMF.fd (one image, mapped as ROM: UEFI
    /// variables are not kept) or code=OVMF_CODE.fd,vars=MY_VARS.fd (CFI
    /// flash; variables persist in MY_VARS.fd, your copy of OVMF_VARS.fd).
    /// With --kernel, OVMF boots that kernel (EFI stub) through fw_cfg.
    #[arg(long, value_name = "FILE|code=FILE,vars=FILE")]
    pub firmware: Option<String>,

    /// Screen: png=PATH[,interval=MS] writes what the guest shows on its
    /// framebuffer to PATH as a PNG picture, every MS milliseconds (default
    /// 1000) when it changed and once more when the VM stops (open PATH in
    /// any image viewer). The framebuffer is QEMU's "ramfb" that OVMF's
    /// graphics driver sets up through fw_cfg (etc/ramfb): firmware screens
    /// and boot loaders draw there, and an OS as long as it keeps using the
    /// firmware's framebuffer (GOP). Without a framebuffer, no file is written.
    #[arg(long, value_name = "png=PATH[,interval=MS]")]
    pub display: Option<String>,

    /// Serial port COM1: stdio (default), file=PATH or none.
    #[arg(long, value_name = "stdio|file=PATH|none")]
    pub serial: Option<String>,

    /// What a guest reset does: reboot (default) or exit (ends arbiter with status 0x80).
    #[arg(long, value_name = "reboot|exit")]
    pub on_reset: Option<String>,

    /// virtio-scsi controller: controller=N[,queues=Q][,initiator=naa.HEX16|iqn.NAME].
    /// Each controller is one SCSI initiator port (its own I_T nexus); the
    /// default name derives from --name and N. Repeatable.
    #[arg(long, value_name = "controller=N,...")]
    pub scsi: Vec<String>,

    /// SCSI disk: path=FILE,controller=N,target=T,lun=L[,readonly=on][,shared=on]
    /// [,serial=S][,wwn=0x...][,block-size=512|4096][,rotational=off].
    /// shared=on: one persistent-reservation state for every VM that opens
    /// FILE (cluster disks). Or a host SCSI device passed through with SG_IO:
    /// sg=/dev/sgN|/dev/sdX,controller=N,target=T,lun=L[,pr=passthrough|emulated|helper:SOCKET]
    /// [,pr-state=FILE][,allow=OPS][,deny=OPS][,hide-mode-pages=PAGES][,naa=HEX16]. Repeatable.
    #[arg(long, value_name = "path=FILE,...")]
    pub scsi_disk: Vec<String>,

    /// Network device [planned].
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,

    /// Add the "pci-testdev" PCI function (ID 1234:11e5: registers, MSI-X,
    /// an ioeventfd doorbell) that the platform test guests exercise.
    #[arg(long, hide = true)]
    pub pci_testdev: bool,

    /// Read the VM's settings from a TOML file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}
