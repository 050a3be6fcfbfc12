//! Boot real guests (Linux, OVMF, the freestanding test guests) wherever the
//! tests run: one API, "run this scenario with these VMs".
//!
//! * **Direct**: `/dev/kvm` has VMX or SVM. The scenario runs on this host.
//! * **Nested**: no hardware virtualization, but `qemu-system-x86_64` exists.
//!   The scenario runs inside a *lab host*: the Debian kernel under QEMU's
//!   software emulation (TCG) of an AMD CPU with SVM and nested paging, where
//!   `kvm_amd` gives a hardware-style `/dev/kvm` (`tests/lab/`,
//!   `resources/lab-host.md`).
//! * Otherwise the scenario is skipped, with the reason.
//!
//! A [`Scenario`] is a list of [`Vm`]s (run one after another, or together)
//! and the disks they use. It becomes a shell script over
//! `tests/lab/host/lablib.sh`, the same in both modes, that reports each VM
//! in parseable lines; the runner turns them into a [`Report`]. Full logs go
//! to `target/lab/logs/<scenario>.log`. In nested mode the outer QEMU
//! sometimes freezes for good (a known QEMU problem: its vCPU thread waits
//! forever, the process is idle): the lab host prints a heartbeat every 5 s;
//! when nothing arrives for [`STALL`] and the outer QEMU uses (almost) no CPU,
//! the runner kills it and retries, at most [`HANG_RETRIES`] times, and
//! counts it in the report. A stall with a busy outer QEMU is not that hang
//! and fails the run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{guests, kvm};

/// No output from the lab host for this long means it stalled (the lab host
/// prints a heartbeat every 5 s).
pub const STALL: Duration = Duration::from_secs(40);

/// How many times a run is repeated after a detected hang (the known idle
/// hang once came 4 times in a row in one CI run, in QEMU's and arbiter's VMs
/// alike).
pub const HANG_RETRIES: u32 = 6;

/// Time the lab host needs around the scenario itself (boot, kvm_amd,
/// power-off), added to the sum of the VM time limits.
const LAB_OVERHEAD: Duration = Duration::from_secs(120);

/// Memory of the lab host (MiB).
const LAB_MEMORY_MIB: u32 = 3072;

/// Errors of the lab runner (a failing guest is not one: see [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A builder script failed.
    #[error("{script} failed ({status}): {stderr}")]
    Build {
        /// The script.
        script: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Starting or talking to a process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The `arbiter` binary was not found.
    #[error("no arbiter binary at {0} (build it first: cargo build -p vmm, or set ARBITER_BIN)")]
    NoArbiter(PathBuf),
    /// The `arbiter-lab` binary was not found.
    #[error(
        "no arbiter-lab binary at {0} (build it first: cargo build -p arbiter-tests, or set \
         ARBITER_LAB_BIN)"
    )]
    NoLabRunner(PathBuf),
    /// The lab host did not run the scenario to its end.
    #[error("lab host failed: {reason} (full log: {})", log.display())]
    LabHost {
        /// What went wrong.
        reason: String,
        /// The full log.
        log: PathBuf,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Which monitor runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// The `arbiter` binary under test.
    Arbiter,
    /// `qemu-system-x86_64 -enable-kvm`: the peer baseline.
    Qemu,
    /// `arbiter-lab`, the runner itself, started by the lab: a scenario
    /// within a scenario (proves the direct mode inside the lab host, whose
    /// `/dev/kvm` is hardware-style).
    Lab,
}

/// One VM of a scenario: the monitor, its arguments and what counts as a pass.
///
/// Arguments may name the lab's files with placeholders, replaced in both
/// modes: `{kernel}` `{initrd}` `{esp}` (the Linux test guest: bzImage,
/// initramfs, EFI system partition image), `{ovmf}` (OVMF.fd), `{guest:NAME}`
/// (a freestanding test guest, `NAME.elf`), `{disk:NAME}` (a disk made by
/// [`Scenario::disk`]), `{tmp}` (scratch directory), `{lio:PORT}` (the
/// `/dev/sgN` of port PORT of a LIO logical unit made by [`Scenario::lio`]);
/// `{{` is a literal `{`.
#[derive(Debug, Clone)]
pub struct Vm {
    name: String,
    monitor: Monitor,
    args: Vec<String>,
    expect_exit: Option<i32>,
    expect_serial: Option<String>,
    timeout: Duration,
    controllers: Vec<u32>,
    timed: bool,
}

/// How a [`Vm::scsi_disk`] is attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskOpts {
    /// The guest cannot write it.
    pub readonly: bool,
    /// Other VMs open the same file (arbiter: `shared=on`, one PR state;
    /// QEMU: `share-rw=on`).
    pub shared: bool,
    /// QEMU: first in the firmware's boot order (`bootindex=1`); arbiter's
    /// firmware boots from what it finds.
    pub boot: bool,
}

impl Vm {
    /// `arbiter run ...` named `name` (the name is also passed as `--name`).
    pub fn arbiter(name: &str) -> Self {
        Vm {
            name: name.to_owned(),
            monitor: Monitor::Arbiter,
            args: vec!["run".into(), "--name".into(), name.into()],
            expect_exit: Some(0),
            expect_serial: None,
            timeout: Duration::from_secs(300),
            controllers: Vec::new(),
            timed: false,
        }
    }

    /// `qemu-system-x86_64 -enable-kvm -cpu host` with no default devices and
    /// the serial console on stdout: the peer monitor.
    pub fn qemu(name: &str) -> Self {
        let base = "-enable-kvm -cpu host -nodefaults -display none -monitor none -no-reboot \
                    -serial stdio";
        Vm {
            name: name.to_owned(),
            monitor: Monitor::Qemu,
            args: base.split_whitespace().map(str::to_owned).collect(),
            expect_exit: Some(0),
            expect_serial: None,
            timeout: Duration::from_secs(300),
            controllers: Vec::new(),
            timed: false,
        }
    }

    /// `arbiter-lab ARGS` (see [`Monitor::Lab`]); its output is the inner
    /// run's guest console and, on stderr, its summary line.
    pub fn lab_runner(name: &str) -> Self {
        Vm {
            name: name.to_owned(),
            monitor: Monitor::Lab,
            args: Vec::new(),
            expect_exit: Some(0),
            expect_serial: None,
            timeout: Duration::from_secs(300),
            controllers: Vec::new(),
            timed: false,
        }
    }

    /// Boot the distribution's OVMF (`OVMF.fd`, one image, variables not kept).
    pub fn ovmf(self) -> Self {
        match self.monitor {
            Monitor::Arbiter => self.args(["--firmware", "{ovmf}"]),
            Monitor::Qemu => self.args(["-bios", "{ovmf}"]),
            Monitor::Lab => panic!("Vm::ovmf: pass arbiter-lab its own arguments"),
        }
    }

    /// A disk image `file` (a placeholder such as `{disk:NAME}` or `{esp}`, or
    /// a path) as LUN 0 of `target` on virtio-scsi controller `controller`
    /// (each controller is its own initiator port), declaring the controller
    /// the first time.
    pub fn scsi_disk(mut self, controller: u32, target: u32, file: &str, o: DiskOpts) -> Self {
        let new_controller = !self.controllers.contains(&controller);
        if new_controller {
            self.controllers.push(controller);
        }
        let onoff = |b: bool| if b { "on" } else { "off" };
        let args: Vec<String> = match self.monitor {
            Monitor::Arbiter => {
                let mut a = Vec::new();
                if new_controller {
                    a.push("--scsi".to_owned());
                    a.push(format!("controller={controller}"));
                }
                a.push("--scsi-disk".to_owned());
                a.push(format!(
                    "path={file},controller={controller},target={target},lun=0,readonly={},shared={}",
                    onoff(o.readonly),
                    onoff(o.shared)
                ));
                a
            }
            Monitor::Qemu => {
                let mut a = Vec::new();
                if new_controller {
                    a.push("-device".to_owned());
                    a.push(format!("virtio-scsi-pci,id=scsi{controller}"));
                }
                let id = format!("c{controller}t{target}");
                a.push("-drive".to_owned());
                a.push(format!(
                    "file={file},if=none,id={id},format=raw,readonly={}",
                    onoff(o.readonly)
                ));
                a.push("-device".to_owned());
                let mut dev =
                    format!("scsi-hd,drive={id},bus=scsi{controller}.0,scsi-id={target},lun=0");
                if o.shared {
                    dev += ",share-rw=on";
                }
                if o.boot {
                    dev += ",bootindex=1";
                }
                a.push(dev);
                a
            }
            Monitor::Lab => panic!("Vm::scsi_disk: pass arbiter-lab its own arguments"),
        };
        self.args(args)
    }

    /// A host SCSI device `dev` (a placeholder such as `{lio:a}`, or a path
    /// to `/dev/sgN`) passed through as LUN 0 of `target` on virtio-scsi
    /// controller `controller`, declaring the controller the first time.
    /// Arbiter: `--scsi-disk sg=DEV,...` with `options` appended (e.g.
    /// `pr=passthrough`); QEMU: `scsi-generic` (`options` unused).
    pub fn scsi_passthrough(
        mut self,
        controller: u32,
        target: u32,
        dev: &str,
        options: &str,
    ) -> Self {
        let new_controller = !self.controllers.contains(&controller);
        if new_controller {
            self.controllers.push(controller);
        }
        let mut a = Vec::new();
        match self.monitor {
            Monitor::Arbiter => {
                if new_controller {
                    a.push("--scsi".to_owned());
                    a.push(format!("controller={controller}"));
                }
                let mut spec = format!("sg={dev},controller={controller},target={target},lun=0");
                if !options.is_empty() {
                    spec.push(',');
                    spec += options;
                }
                a.push("--scsi-disk".to_owned());
                a.push(spec);
            }
            Monitor::Qemu => {
                if new_controller {
                    a.push("-device".to_owned());
                    a.push(format!("virtio-scsi-pci,id=scsi{controller}"));
                }
                let id = format!("c{controller}t{target}");
                a.push("-drive".to_owned());
                a.push(format!("file={dev},if=none,id={id},format=raw"));
                a.push("-device".to_owned());
                a.push(format!(
                    "scsi-generic,drive={id},bus=scsi{controller}.0,scsi-id={target},lun=0"
                ));
            }
            Monitor::Lab => panic!("Vm::scsi_passthrough: pass arbiter-lab its own arguments"),
        }
        self.args(a)
    }

    /// Append arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Boot the lab's Linux test guest by direct kernel boot and run the
    /// guest-side script `script` (tests/lab/guest/scripts/SCRIPT.sh, or
    /// `disk`); the VM passes when the guest's init reports it is done.
    pub fn linux(self, script: &str) -> Self {
        let cmdline = format!("console=ttyS0 panic=-1 lab.script={script}");
        let args: Vec<String> = match self.monitor {
            Monitor::Arbiter => vec![
                "--kernel".into(),
                "{kernel}".into(),
                "--initrd".into(),
                "{initrd}".into(),
                "--cmdline".into(),
                cmdline,
            ],
            Monitor::Qemu => vec![
                "-kernel".into(),
                "{kernel}".into(),
                "-initrd".into(),
                "{initrd}".into(),
                "-append".into(),
                cmdline,
            ],
            Monitor::Lab => panic!("Vm::linux: pass arbiter-lab --linux SCRIPT"),
        };
        self.args(args).expect_serial("@@GUEST done")
    }

    /// The exit status that counts as a pass (`None`: any).
    pub fn expect_exit(mut self, code: Option<i32>) -> Self {
        self.expect_exit = code;
        self
    }

    /// A fixed string the VM's output must contain.
    pub fn expect_serial(mut self, s: &str) -> Self {
        self.expect_serial = Some(s.to_owned());
        self
    }

    /// Also measure the time from the VM's start until its expected serial
    /// text appears ([`VmReport::serial_seconds`]; polled every 0.2 s).
    pub fn time_to_serial(mut self) -> Self {
        self.timed = true;
        self
    }

    /// Time limit of the VM (its own clock, inside the lab host in nested mode).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug, Clone)]
enum Step {
    Disk(String, u32),
    One(Vm),
    Together(Vec<Vm>),
    AgentStart(Vm),
    Agent(String, String, Duration),
    AgentStop(String),
    File(String, Vec<u8>, bool),
    Host(String, String),
    Lio(String, u32, Vec<String>),
}

/// What to run: disks and VMs, in order.
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    steps: Vec<Step>,
}

impl Scenario {
    /// An empty scenario; `name` names its log file.
    pub fn new(name: &str) -> Self {
        Scenario {
            name: name.to_owned(),
            steps: Vec::new(),
        }
    }

    /// A zero-filled raw disk of `mib` MiB, `{disk:NAME}` in VM arguments.
    pub fn disk(mut self, name: &str, mib: u32) -> Self {
        self.steps.push(Step::Disk(name.to_owned(), mib));
        self
    }

    /// A file `$LAB_TMP/NAME` (`{tmp}/NAME` in VM arguments) with `data`
    /// (e.g. a small FAT image built on this host): carried inside the
    /// scenario script (gzip + base64), so it reaches a nested lab host too.
    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        let (bytes, zipped) = match gzip(data) {
            Some(z) => (z, true),
            None => (data.to_vec(), false),
        };
        self.steps.push(Step::File(name.to_owned(), bytes, zipped));
        self
    }

    /// Run `snippet` (POSIX sh, with lablib.sh's helpers and `$LAB_TMP`,
    /// `$LAB_OVMF_CODE`, `$LAB_OVMF_VARS`) where the VMs run, reported like a
    /// VM named `name`: what it prints is its output, exit status 0 passes.
    pub fn host(mut self, name: &str, snippet: &str) -> Self {
        self.steps
            .push(Step::Host(name.to_owned(), snippet.to_owned()));
        self
    }

    /// Run `vm` to its end.
    pub fn vm(mut self, vm: Vm) -> Self {
        self.steps.push(Step::One(vm));
        self
    }

    /// Start all `vms`, then wait for each.
    pub fn together(mut self, vms: Vec<Vm>) -> Self {
        self.steps.push(Step::Together(vms));
        self
    }

    /// Start `vm` as an agent: its guest runs `scripts/agent.sh` (use
    /// `Vm::linux("agent")`), which executes the command lines sent with
    /// [`Scenario::agent`]; the VM runs on while the scenario goes on.
    pub fn agent_start(mut self, vm: Vm) -> Self {
        self.steps.push(Step::AgentStart(vm));
        self
    }

    /// Run `command` (one line of sh, with the guest's lab helpers) in agent
    /// VM `vm` and wait for it, at most `timeout`.
    pub fn agent(mut self, vm: &str, command: &str, timeout: Duration) -> Self {
        self.steps
            .push(Step::Agent(vm.to_owned(), command.to_owned(), timeout));
        self
    }

    /// End agent VM `vm` and wait for it like any VM.
    pub fn agent_stop(mut self, vm: &str) -> Self {
        self.steps.push(Step::AgentStop(vm.to_owned()));
        self
    }

    /// A real SCSI logical unit for passthrough disks: Linux's target (LIO)
    /// with a `mib` MiB fileio backstore named `lu`, exported through one
    /// tcm_loop port per entry of `ports` (each its own SCSI host with its
    /// own initiator name: one I_T nexus per port). `{lio:PORT}` in VM
    /// arguments is that port's `/dev/sgN`, found through sysfs from the
    /// port's SCSI address (lablib.sh `lab_lio`). Port names: ASCII letters,
    /// digits and `_`, unique in the scenario. The scenario's end removes
    /// the configuration again. Needs the target modules and root: in direct
    /// mode a host without them skips the scenario (with the reason).
    pub fn lio(mut self, lu: &str, mib: u32, ports: &[&str]) -> Self {
        self.steps.push(Step::Lio(
            lu.to_owned(),
            mib,
            ports.iter().map(|p| (*p).to_owned()).collect(),
        ));
        self
    }

    fn uses_lio(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Lio(..)))
    }

    fn vms(&self) -> impl Iterator<Item = &Vm> {
        self.steps.iter().flat_map(|s| match s {
            Step::One(v) | Step::AgentStart(v) => std::slice::from_ref(v).iter(),
            Step::Together(v) => v.iter(),
            Step::Disk(..)
            | Step::Agent(..)
            | Step::AgentStop(..)
            | Step::File(..)
            | Step::Host(..)
            | Step::Lio(..) => [].iter(),
        })
    }

    fn uses(&self, m: Monitor) -> bool {
        self.vms().any(|v| v.monitor == m)
    }

    fn time_limit(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Disk(..) | Step::AgentStop(..) => Duration::from_secs(5),
                Step::File(..) => Duration::from_secs(5),
                Step::Host(..) => Duration::from_secs(30),
                Step::Lio(..) => Duration::from_secs(30),
                Step::One(v) | Step::AgentStart(v) => v.timeout,
                Step::Agent(_, _, t) => *t,
                Step::Together(v) => v.iter().map(|v| v.timeout).max().unwrap_or_default(),
            })
            .sum()
    }

    /// The scenario as a script over lablib.sh.
    pub fn script(&self) -> String {
        let mut s = format!("# scenario {}\n", self.name);
        for step in &self.steps {
            match step {
                Step::Disk(name, mib) => s += &format!("lab_disk {} {mib}\n", quote(name)),
                Step::One(vm) if vm.timed => s += &timed_vm(vm),
                Step::One(vm) => s += &format!("lab_vm {}\n", vm_line(vm)),
                Step::File(name, data, zipped) => s += &file_step(name, data, *zipped),
                Step::Host(name, snippet) => s += &host_step(name, snippet),
                Step::Together(vms) => {
                    for vm in vms {
                        s += &format!("lab_vm_start {}\n", vm_line(vm));
                    }
                    for vm in vms {
                        s += &format!("lab_vm_wait {}\n", quote(&vm.name));
                    }
                }
                Step::AgentStart(vm) => {
                    // lab_agent_start takes no exit status: the agent ends when told.
                    s += &format!("lab_agent_start {}\n", vm_words(vm, false));
                }
                Step::Agent(vm, cmd, t) => {
                    s += &format!(
                        "lab_agent {} {} {}\n",
                        quote(vm),
                        t.as_secs().max(1),
                        quote(cmd)
                    );
                }
                Step::AgentStop(vm) => s += &format!("lab_agent_stop {}\n", quote(vm)),
                Step::Lio(lu, mib, ports) => {
                    s += &format!("lab_lio {} {mib}", quote(lu));
                    for p in ports {
                        s += &format!(" {}", quote(p));
                    }
                    s += "\n";
                }
            }
        }
        if self.uses_lio() {
            s += "lab_lio_teardown\n";
        }
        s
    }
}

/// The split OVMF images inside the lab host (build-labhost.sh copies
/// Debian's `OVMF_CODE_4M.fd` and `OVMF_VARS_4M.fd` there); direct mode
/// sets `LAB_OVMF_CODE`/`LAB_OVMF_VARS` to the distribution's files.
const NESTED_OVMF_CODE: &str = "/lab/ovmf/OVMF_CODE_4M.fd";
const NESTED_OVMF_VARS: &str = "/lab/ovmf/OVMF_VARS_4M.fd";

/// `lab_vm`, plus an `@@TIME name=N serial=S` line: seconds from the VM's
/// start until its expected serial text appeared.
fn timed_vm(vm: &Vm) -> String {
    let n = quote(&vm.name);
    let pat = quote(vm.expect_serial.as_deref().unwrap_or(""));
    let serial = format!("\"$LAB_TMP\"/{n}.serial");
    format!(
        "lab_vm_start {line}\n\
         _t0=$(cat \"$LAB_TMP\"/{n}.t0)\n\
         while ! grep -qF {pat} {serial} 2>/dev/null; do\n\
         \t[ -f \"$LAB_TMP\"/{n}.rc ] && break\n\
         \tsleep 0.2\n\
         done\n\
         grep -qF {pat} {serial} 2>/dev/null && echo \"@@TIME name=\"{n}\" serial=$(lab_elapsed \"$_t0\")\"\n\
         lab_vm_wait {n}\n",
        line = vm_line(vm)
    )
}

/// A [`Scenario::file`] step: the data as a base64 here-document.
fn file_step(name: &str, data: &[u8], zipped: bool) -> String {
    let target = format!("\"$LAB_TMP\"/{}", quote(name));
    let mut s = if zipped {
        format!("base64 -d <<'@@EOF' | gunzip -c >{target}\n")
    } else {
        format!("base64 -d >{target} <<'@@EOF'\n")
    };
    s += &base64(data);
    s += "@@EOF\n";
    s += &format!(
        "echo \"@@LAB file name={} bytes=$(wc -c <{target})\"\n",
        escape(name)
    );
    s
}

/// A [`Scenario::host`] step, reported as `@@SERIAL`/`@@VM` lines.
fn host_step(name: &str, snippet: &str) -> String {
    let n = quote(name);
    let out = format!("\"$LAB_TMP\"/{n}.host");
    format!(
        "_h0=$(lab_now)\n\
         (\n\
         LAB_OVMF_CODE=${{LAB_OVMF_CODE:-{NESTED_OVMF_CODE}}}\n\
         LAB_OVMF_VARS=${{LAB_OVMF_VARS:-{NESTED_OVMF_VARS}}}\n\
         {snippet}\n) >{out} 2>&1\n\
         _hrc=$?\n\
         sed \"s/^/@@SERIAL \"{n}\"| /\" {out}\n\
         if [ $_hrc = 0 ]; then _hs=pass; _hr=; else _hs=fail; _hr=\" reason=host_step\"; fi\n\
         echo \"@@VM name=\"{n}\" status=$_hs exit=$_hrc time=$(lab_elapsed \"$_h0\")$_hr\"\n"
    )
}

/// Standard base64, 76 characters a line.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, c) in data.chunks(3).enumerate() {
        let b = [
            c[0],
            c.get(1).copied().unwrap_or(0),
            c.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4u32 {
            if usize::try_from(k).unwrap_or(4) <= c.len() {
                let six = usize::try_from((n >> (18 - 6 * k)) & 63).unwrap_or(0);
                out.push(char::from(A[six]));
            } else {
                out.push('=');
            }
        }
        if (i + 1) % 19 == 0 {
            out.push('\n');
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `data` compressed by the `gzip` command (`None` if that fails).
fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).is_ok());
    let out = child.wait_with_output().ok()?;
    (writer.join().unwrap_or(false) && out.status.success()).then_some(out.stdout)
}

/// Single-quote for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An argument with placeholders, as a double-quoted sh word.
fn word(arg: &str) -> String {
    let mut out = String::from("\"");
    let mut rest = arg;
    while !rest.is_empty() {
        // `{{` is a literal `{`: a placeholder left for an inner runner.
        if let Some(after) = rest.strip_prefix("{{") {
            out.push('{');
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix('{') {
            if let Some(end) = after.find('}') {
                let key = &after[..end];
                let var = match key.split_once(':') {
                    None => match key {
                        "kernel" => Some("${LAB_GUEST_KERNEL}".to_owned()),
                        "initrd" => Some("${LAB_GUEST_INITRD}".to_owned()),
                        "esp" => Some("${LAB_GUEST_ESP}".to_owned()),
                        "ovmf" => Some("${LAB_OVMF}".to_owned()),
                        "ovmf_code" => Some(format!("${{LAB_OVMF_CODE:-{NESTED_OVMF_CODE}}}")),
                        "ovmf_vars" => Some(format!("${{LAB_OVMF_VARS:-{NESTED_OVMF_VARS}}}")),
                        "tmp" => Some("${LAB_TMP}".to_owned()),
                        _ => None,
                    },
                    Some(("guest", n)) => Some(format!("${{LAB_TEST_GUESTS}}/{}.elf", escape(n))),
                    Some(("disk", n)) => Some(format!("${{LAB_TMP}}/{}.img", escape(n))),
                    Some(("lio", n))
                        if !n.is_empty()
                            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                    {
                        Some(format!("${{LAB_LIO_{n}}}"))
                    }
                    Some(_) => None,
                };
                if let Some(v) = var {
                    out += &v;
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out += &escape(&c.to_string());
        rest = &rest[c.len_utf8()..];
    }
    out.push('"');
    out
}

/// Escape for the inside of sh double quotes.
fn escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn vm_line(vm: &Vm) -> String {
    vm_words(vm, true)
}

/// NAME TIMEOUT [EXPECT_EXIT] PATTERN MONITOR ARGS... as sh words.
fn vm_words(vm: &Vm, with_exit: bool) -> String {
    let monitor = match vm.monitor {
        Monitor::Arbiter => "\"$ARBITER\"",
        Monitor::Qemu => "\"$QEMU\"",
        Monitor::Lab => "\"$ARBITER_LAB\"",
    };
    let exit = if with_exit {
        format!(
            " {}",
            vm.expect_exit.map_or("-".to_owned(), |c| c.to_string())
        )
    } else {
        String::new()
    };
    let mut l = format!(
        "{} {}{exit} {} {monitor}",
        quote(&vm.name),
        vm.timeout.as_secs().max(1),
        quote(vm.expect_serial.as_deref().unwrap_or("")),
    );
    for a in &vm.args {
        l.push(' ');
        l += &word(a);
    }
    l
}

/// The persistent-reservation sequence of `tests/lab/guest/scripts/pr.sh`,
/// in order: each step's result name and the sg3-utils exit status it must
/// give (0 GOOD, 6 UNIT ATTENTION, 24 RESERVATION CONFLICT). Node A holds key
/// 0xa, node B key 0xb; type 5 is Write Exclusive - Registrants Only. Checked
/// against Linux's LIO target by `lab_reference_pr_sequence_against_linux_lio`.
pub const PR_STEPS: &[(&str, &str)] = &[
    ("pr_a_register", "0"),
    ("pr_a_reserve_wero", "0"),
    ("pr_b_sees_reservation", "0"),
    ("pr_b_write_unregistered_conflict", "24"),
    ("pr_b_read_allowed", "0"),
    ("pr_b_register", "0"),
    ("pr_b_write_as_registrant", "0"),
    ("pr_b_read_keys", "0"),
    ("pr_b_preempt_a", "0"),
    ("pr_b_holds_reservation", "0"),
    ("pr_a_unit_attention_registrations_preempted", "6"),
    ("pr_a_ready_after_unit_attention", "0"),
    ("pr_a_write_after_preempt_conflict", "24"),
    ("pr_a_read_keys_only_b", "0"),
    ("pr_b_clear", "0"),
    ("pr_a_no_keys_after_clear", "0"),
    ("pr_a_no_reservation_after_clear", "0"),
    ("pr_a_write_after_clear", "0"),
];

/// Panic unless the VMs together reported each of the [`PR_STEPS`] exactly
/// once, passed with its expected exit status, and no other `pr_` result.
pub fn assert_pr_steps(vms: &[&VmReport], log: &Path) {
    let all: Vec<(&str, &GuestResult)> = vms
        .iter()
        .flat_map(|v| v.results.iter().map(move |r| (v.name.as_str(), r)))
        .filter(|(_, r)| r.name.starts_with("pr_"))
        .collect();
    for (vm, r) in &all {
        assert!(
            PR_STEPS.iter().any(|(n, _)| *n == r.name),
            "{vm}: unexpected step {r:?} (log: {})",
            log.display()
        );
    }
    for (step, rc) in PR_STEPS {
        let got: Vec<&(&str, &GuestResult)> = all.iter().filter(|(_, r)| r.name == *step).collect();
        assert_eq!(
            got.len(),
            1,
            "{step} reported {} times (log: {})",
            got.len(),
            log.display()
        );
        let (vm, r) = got[0];
        assert_eq!(
            (r.status.as_str(), r.fields.get("rc").map(String::as_str)),
            ("pass", Some(*rc)),
            "{vm}: {step}: {r:?} (log: {})",
            log.display()
        );
    }
}

impl VmReport {
    /// Panic unless the guest reported exactly the [`PR_STEPS`], in order, each
    /// passed with its expected exit status.
    pub fn assert_pr_sequence(&self, log: &Path) {
        let got: Vec<&str> = self
            .results
            .iter()
            .filter(|r| r.name.starts_with("pr_"))
            .map(|r| r.name.as_str())
            .collect();
        let want: Vec<&str> = PR_STEPS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            got,
            want,
            "{}: PR steps (log: {})",
            self.name,
            log.display()
        );
        for (step, rc) in PR_STEPS {
            let r = self.result(step).unwrap_or_else(|| unreachable!());
            assert_eq!(
                (r.status.as_str(), r.fields.get("rc").map(String::as_str)),
                ("pass", Some(*rc)),
                "{}: {step}: {r:?} (log: {})",
                self.name,
                log.display()
            );
        }
    }
}

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On this host's `/dev/kvm` (VMX/SVM).
    Direct,
    /// In a lab host under QEMU's TCG.
    Nested,
}

/// The mode this host supports, or why it supports none.
/// `ARBITER_LAB_MODE=direct|nested` forces one (e.g. `direct` on a PVM host
/// for the freestanding test guests, or `nested` on a VMX/SVM host to test
/// the lab host itself).
pub fn mode() -> Result<Mode, String> {
    match std::env::var("ARBITER_LAB_MODE").as_deref() {
        Ok("direct") => return Ok(Mode::Direct),
        Ok("nested") => return Ok(Mode::Nested),
        Ok(other) if !other.is_empty() => {
            return Err(format!(
                "ARBITER_LAB_MODE={other} (expected direct or nested)"
            ))
        }
        _ => {}
    }
    if kvm::hardware_virtualization() && kvm::available().is_ok() {
        return Ok(Mode::Direct);
    }
    if which("qemu-system-x86_64").is_some() {
        return Ok(Mode::Nested);
    }
    Err(format!(
        "no hardware virtualization ({}) and no qemu-system-x86_64 for a nested lab host \
         (apt-get install qemu-system-x86)",
        match kvm::available() {
            Ok(()) => "/dev/kvm has no VMX/SVM".to_owned(),
            Err(e) => e,
        }
    ))
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// A result line the Linux test guest printed: `@@RESULT name=N status=S k=v ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestResult {
    /// The check's name.
    pub name: String,
    /// `pass` or `fail`.
    pub status: String,
    /// The other `key=value` fields.
    pub fields: BTreeMap<String, String>,
}

/// How one VM ended.
#[derive(Debug, Clone, Default)]
pub struct VmReport {
    /// The VM's name.
    pub name: String,
    /// Whether it met its exit status and serial expectations in time.
    pub passed: bool,
    /// The monitor's exit status.
    pub exit: Option<i32>,
    /// Seconds from start to end, on the clock where it ran.
    pub seconds: f64,
    /// Why it failed (empty when it passed).
    pub reason: String,
    /// Everything it printed (serial console, then its stderr prefixed `stderr: `).
    pub output: Vec<String>,
    /// The `@@RESULT` lines in its output.
    pub results: Vec<GuestResult>,
    /// With [`Vm::time_to_serial`]: seconds from start until the expected
    /// serial text appeared.
    pub serial_seconds: Option<f64>,
}

impl VmReport {
    /// The guest result named `name`, if the guest reported it.
    pub fn result(&self, name: &str) -> Option<&GuestResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// What a scenario run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Where it ran.
    pub mode: Mode,
    /// One entry per VM, in the order they ended.
    pub vms: Vec<VmReport>,
    /// Hangs of the outer QEMU detected and retried.
    pub hang_retries: u32,
    /// Wall-clock time of the successful attempt (including the lab host's boot).
    pub wall: Duration,
    /// Nested: wall-clock seconds from starting the outer QEMU to `/dev/kvm` ready.
    pub lab_boot: Option<Duration>,
    /// The full log of the run (every attempt).
    pub log: PathBuf,
}

impl Report {
    /// The VM named `name`; panics (with the log path) if it did not report.
    pub fn vm(&self, name: &str) -> &VmReport {
        self.vms.iter().find(|v| v.name == name).unwrap_or_else(|| {
            panic!(
                "scenario {}: VM {name} did not report (log: {})",
                self.scenario,
                self.log.display()
            )
        })
    }

    /// Panic with the failing VMs' reasons and output tails unless all passed.
    pub fn assert_passed(&self) {
        let failed: Vec<&VmReport> = self.vms.iter().filter(|v| !v.passed).collect();
        if failed.is_empty() {
            return;
        }
        let mut msg = format!(
            "scenario {} ({:?}): {} VM(s) failed; full log: {}\n",
            self.scenario,
            self.mode,
            failed.len(),
            self.log.display()
        );
        for v in failed {
            msg += &format!(
                "--- {}: {} (exit {:?}, {:.1} s); last lines:\n",
                v.name, v.reason, v.exit, v.seconds
            );
            let start = v.output.len().saturating_sub(40);
            for l in &v.output[start..] {
                msg += l;
                msg.push('\n');
            }
        }
        panic!("{msg}");
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "LAB {} mode={:?} wall={:.1}s hang_retries={}",
            self.scenario,
            self.mode,
            self.wall.as_secs_f64(),
            self.hang_retries
        );
        if let Some(b) = self.lab_boot {
            s += &format!(" lab_boot={:.1}s", b.as_secs_f64());
        }
        for v in &self.vms {
            s += &format!(
                " | {} {} {:.1}s",
                v.name,
                if v.passed { "pass" } else { "FAIL" },
                v.seconds
            );
        }
        s
    }
}

/// The outcome of [`run`].
#[derive(Debug)]
pub enum Run {
    /// Not run, with the reason (already printed as `SKIPPED test: reason`).
    Skipped(String),
    /// Run; check the report.
    Done(Report),
}

/// The repository root (tests/..).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `target/lab` (or `$ARBITER_LAB_DIR`): cached images, logs, scratch.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("ARBITER_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("lab"))
}

/// The `arbiter` binary: `$ARBITER_BIN`, else the one of the same cargo
/// profile as this executable (a test in `<profile>/deps/`, or a binary in
/// `<profile>/`).
pub fn arbiter_bin() -> Result<PathBuf, Error> {
    profile_bin("arbiter", "ARBITER_BIN").map_err(|e| match e {
        Ok(p) => Error::NoArbiter(p),
        Err(e) => e,
    })
}

/// The `arbiter-lab` binary (this runner as a command): `$ARBITER_LAB_BIN`,
/// else the one of the same cargo profile as this executable.
pub fn lab_runner_bin() -> Result<PathBuf, Error> {
    profile_bin("arbiter-lab", "ARBITER_LAB_BIN").map_err(|e| match e {
        Ok(p) => Error::NoLabRunner(p),
        Err(e) => e,
    })
}

/// `$env`, else binary `name` beside this executable's cargo profile;
/// `Err(Ok(path))` names where it was looked for.
fn profile_bin(name: &str, env: &str) -> Result<PathBuf, Result<PathBuf, Error>> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(Ok(p)) };
    }
    let exe = std::env::current_exe().map_err(|e| Err(io_err("current_exe")(e)))?;
    let dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_owned).unwrap_or_default()
    } else {
        dir
    };
    let p = profile_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Ok(p))
    }
}

/// Run a builder script; KEY=VALUE lines of its stdout. Exit status 3 means
/// the host lacks a tool: `Ok(Err(reason))`.
fn run_script(args: &[&str]) -> Result<Result<BTreeMap<String, String>, String>, Error> {
    let script = repo_root().join("tests/lab").join(args[0]);
    let out = Command::new("bash")
        .arg(&script)
        .args(&args[1..])
        .env("ARBITER_LAB_DIR", lab_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(3) {
        return Ok(Err(stderr.trim().to_owned()));
    }
    if !out.status.success() {
        return Err(Error::Build {
            script: script.display().to_string(),
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()))
}

/// Serializes lab runs: inside this process, and across test binaries
/// through a lock file (each nested run wants a whole core).
struct LabLock {
    _file: std::fs::File,
}

static IN_PROCESS: Mutex<()> = Mutex::new(());

fn lock_lab() -> Result<LabLock, Error> {
    std::fs::create_dir_all(lab_dir()).map_err(io_err("creating target/lab"))?;
    let path = lab_dir().join("run.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(Error::Io {
            what: "flock target/lab/run.lock".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(LabLock { _file: file })
}

/// Run `scenario` in the best mode this host has. `test` names the calling
/// test for the `SKIPPED` line.
pub fn run(test: &str, scenario: &Scenario) -> Result<Run, Error> {
    let mode = match mode() {
        Ok(m) => m,
        Err(why) => {
            kvm::skip(test, &why);
            return Ok(Run::Skipped(why));
        }
    };
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let _lock = lock_lab()?;
    let arbiter = if scenario.uses(Monitor::Arbiter) || scenario.uses(Monitor::Lab) {
        Some(arbiter_bin()?)
    } else {
        None
    };
    let runner = if scenario.uses(Monitor::Lab) {
        Some(lab_runner_bin()?)
    } else {
        None
    };
    let bins = Bins {
        arbiter: arbiter.as_deref(),
        runner: runner.as_deref(),
    };
    let logs = lab_dir().join("logs");
    std::fs::create_dir_all(&logs).map_err(io_err("creating target/lab/logs"))?;
    let log = logs.join(format!("{}.log", scenario.name));
    let _ = std::fs::remove_file(&log);
    let run_dir = lab_dir().join("runs").join(&scenario.name);
    std::fs::create_dir_all(&run_dir).map_err(io_err("creating the run directory"))?;
    let script_path = run_dir.join("scenario.sh");
    std::fs::write(&script_path, scenario.script()).map_err(io_err("writing scenario.sh"))?;
    let result = match mode {
        Mode::Direct => run_direct(test, scenario, bins, &script_path, &log)?,
        Mode::Nested => run_nested(test, scenario, bins, &run_dir, &log)?,
    };
    if let Run::Done(report) = &result {
        eprintln!("{}", report.summary());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lab_dir().join("timings.log"))
            .and_then(|mut f| writeln!(f, "{}", report.summary()));
    }
    Ok(result)
}

/// The binaries a scenario runs.
#[derive(Clone, Copy)]
struct Bins<'a> {
    arbiter: Option<&'a Path>,
    runner: Option<&'a Path>,
}

/// The Linux test guest's images: those in `$ARBITER_LAB_GUEST` (a folder
/// with `vmlinuz`, `initrd.gz`, `esp.img`, as the lab host carries them),
/// else built (or found cached) by build-guest.sh.
fn guest_images() -> Result<Result<BTreeMap<String, String>, String>, Error> {
    let Some(dir) = std::env::var_os("ARBITER_LAB_GUEST") else {
        return run_script(&["build-guest.sh"]);
    };
    let dir = PathBuf::from(dir);
    let mut env = BTreeMap::new();
    for (k, f) in [
        ("LAB_GUEST_KERNEL", "vmlinuz"),
        ("LAB_GUEST_INITRD", "initrd.gz"),
        ("LAB_GUEST_ESP", "esp.img"),
    ] {
        let p = dir.join(f);
        if !p.is_file() {
            return Ok(Err(format!("ARBITER_LAB_GUEST: no {}", p.display())));
        }
        env.insert(k.to_owned(), p.display().to_string());
    }
    Ok(Ok(env))
}

fn run_direct(
    test: &str,
    scenario: &Scenario,
    bins: Bins,
    script: &Path,
    log: &Path,
) -> Result<Run, Error> {
    if scenario.uses_lio() {
        if let Err(why) = lio_direct_ready() {
            kvm::skip(test, &why);
            return Ok(Run::Skipped(why));
        }
    }
    if scenario.uses(Monitor::Qemu) && which("qemu-system-x86_64").is_none() {
        let why =
            "the scenario's peer VM needs qemu-system-x86_64 (apt-get install qemu-system-x86)"
                .to_owned();
        kvm::skip(test, &why);
        return Ok(Run::Skipped(why));
    }
    let env = match guest_images()? {
        Ok(env) => env,
        Err(why) => {
            kvm::skip(test, &why);
            return Ok(Run::Skipped(why));
        }
    };
    let tmp = lab_dir().join("tmp").join(&scenario.name);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err("creating the scratch directory"))?;
    let lablib = std::env::var_os("ARBITER_LAB_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/lab/host/lablib.sh"));
    let ovmf = std::env::var_os("ARBITER_LAB_OVMF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/ovmf/OVMF.fd"));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(". \"$1\"; . \"$2\"; echo \"@@LAB end\"")
        .arg("sh")
        .arg(&lablib)
        .arg(script)
        .env("LAB_MODE", "direct")
        .env("LAB_TMP", &tmp)
        .env("QEMU", "qemu-system-x86_64")
        .env("LAB_OVMF", ovmf)
        .env("LAB_OVMF_CODE", "/usr/share/OVMF/OVMF_CODE_4M.fd")
        .env("LAB_OVMF_VARS", "/usr/share/OVMF/OVMF_VARS_4M.fd")
        .env("LAB_TEST_GUESTS", guests::dir());
    if let Some(a) = bins.arbiter {
        cmd.env("ARBITER", a);
    }
    if let Some(r) = bins.runner {
        cmd.env("ARBITER_LAB", r);
    }
    for k in ["LAB_GUEST_KERNEL", "LAB_GUEST_INITRD", "LAB_GUEST_ESP"] {
        if let Some(v) = env.get(k) {
            cmd.env(k, v);
        }
    }
    let limit = scenario.time_limit() + Duration::from_secs(30);
    let attempt = watch(cmd, limit, None, log, 1)?;
    finish(scenario, Mode::Direct, attempt, 0, log)
}

/// Direct mode: can this host make LIO logical units ([`Scenario::lio`])?
/// It needs root (configfs, sg nodes, CAP_SYS_RAWIO for the reservation
/// commands) and the target modules (loaded already, or loadable).
fn lio_direct_ready() -> Result<(), String> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the scenario's LIO logical unit (configfs, tcm_loop, pr=passthrough) \
                    needs root in direct mode"
                .into(),
        );
    }
    for m in ["target_core_mod", "target_core_file", "tcm_loop", "sg"] {
        if Path::new("/sys/module").join(m).exists() {
            continue;
        }
        let ok = Command::new("modprobe")
            .args(["-n", "-q", m])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "the scenario's LIO logical unit needs the kernel module {m}, which is \
                 neither loaded nor loadable here (modprobe -n {m} fails; the Debian kernel \
                 package has it)"
            ));
        }
    }
    Ok(())
}

fn run_nested(
    test: &str,
    scenario: &Scenario,
    bins: Bins,
    run_dir: &Path,
    log: &Path,
) -> Result<Run, Error> {
    let arbiter_arg = bins
        .arbiter
        .map_or("-".to_owned(), |a| a.display().to_string());
    let runner_arg = bins
        .runner
        .map_or("-".to_owned(), |a| a.display().to_string());
    let run_dir_s = run_dir.display().to_string();
    let guests_s = guests::dir().display().to_string();
    let script_s = run_dir.join("scenario.sh").display().to_string();
    let env = match run_script(&[
        "build-labhost.sh",
        "run",
        &run_dir_s,
        &arbiter_arg,
        &guests_s,
        &script_s,
        &runner_arg,
    ])? {
        Ok(env) => env,
        Err(why) => {
            kvm::skip(test, &why);
            return Ok(Run::Skipped(why));
        }
    };
    let get = |k: &str| {
        env.get(k).cloned().ok_or_else(|| Error::Build {
            script: "tests/lab/build-labhost.sh".into(),
            status: "ok".into(),
            stderr: format!("did not print {k}"),
        })
    };
    let kernel = get("LAB_HOST_KERNEL")?;
    let initrd = get("LAB_RUN_INITRD")?;
    let qemu = get("LAB_OUTER_QEMU")?;
    let preload = env.get("LAB_OUTER_PRELOAD").cloned().unwrap_or_default();
    let limit = scenario.time_limit() + LAB_OVERHEAD;
    let mut hangs = 0;
    loop {
        let mut cmd = Command::new(&qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "qemu64,+svm,+npt",
            "-smp",
            "1",
            "-m",
        ])
        .arg(LAB_MEMORY_MIB.to_string())
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(["-nodefaults", "-nographic", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot"]);
        if !preload.is_empty() {
            cmd.env("LD_PRELOAD", &preload);
        }
        let attempt = watch(cmd, limit, Some(STALL), log, hangs + 1)?;
        if attempt.hung {
            hangs += 1;
            eprintln!(
                "LAB {}: outer QEMU hang detected (no output for {} s); retry {hangs}/{HANG_RETRIES}",
                scenario.name,
                STALL.as_secs()
            );
            if hangs <= HANG_RETRIES {
                continue;
            }
            return Err(Error::LabHost {
                reason: format!("the outer QEMU hung {hangs} times"),
                log: log.to_owned(),
            });
        }
        return finish(scenario, Mode::Nested, attempt, hangs, log);
    }
}

/// One attempt: its output lines and how it ended.
struct Attempt {
    lines: Vec<String>,
    hung: bool,
    stalled: bool,
    timed_out: bool,
    status: Option<std::process::ExitStatus>,
    wall: Duration,
    lab_boot: Option<Duration>,
}

/// Run `cmd`, collecting stdout+stderr lines into `log`; kill it at `limit`,
/// or after `stall` without output (a hang).
fn watch(
    mut cmd: Command,
    limit: Duration,
    stall: Option<Duration>,
    log: &Path,
    attempt_no: u32,
) -> Result<Attempt, Error> {
    let mut logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    let _ = writeln!(logf, "==== attempt {attempt_no}: {cmd:?}");
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {cmd:?}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward(out, "", &tx)));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward(err, "stderr: ", &tx)));
    }
    drop(tx);
    let mut lines = Vec::new();
    let mut last = Instant::now();
    let mut hung = false;
    let mut stalled = false;
    let mut timed_out = false;
    let mut lab_boot = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                last = Instant::now();
                let _ = writeln!(logf, "[{:8.2}] {line}", start.elapsed().as_secs_f64());
                if lab_boot.is_none() && line.starts_with("@@LAB kvm ") {
                    lab_boot = Some(start.elapsed());
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = writeln!(logf, "==== time limit {} s: killing", limit.as_secs());
            let _ = child.kill();
            break;
        }
        if stall.is_some_and(|s| last.elapsed() > s) {
            let busy = cpu_busy(child.id(), Duration::from_secs(3));
            hung = busy.is_some_and(|b| b < 0.10);
            let _ = writeln!(
                logf,
                "==== no output for {} s; outer QEMU pid {} CPU use {}: {}; killing it",
                last.elapsed().as_secs(),
                child.id(),
                busy.map_or("unknown".to_owned(), |b| format!("{:.0}%", b * 100.0)),
                if hung {
                    "the known idle hang of the outer QEMU"
                } else {
                    "a busy stall (not the known hang)"
                }
            );
            stalled = !hung;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().ok();
    // Lines still buffered after a kill.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        let _ = writeln!(logf, "[{:8.2}] {line}", start.elapsed().as_secs_f64());
        lines.push(line);
    }
    let wall = start.elapsed();
    let _ = writeln!(
        logf,
        "==== attempt {attempt_no} ended after {:.1} s: {status:?}",
        wall.as_secs_f64()
    );
    Ok(Attempt {
        lines,
        hung,
        stalled,
        timed_out,
        status,
        wall,
        lab_boot,
    })
}

/// Share of one CPU that process `pid` used over `window` (from /proc/PID/stat).
fn cpu_busy(pid: u32, window: Duration) -> Option<f64> {
    fn ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces): state is 3rd,
        // utime and stime are the 14th and 15th of the whole line.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u32::try_from(hz).ok().filter(|&h| h > 0)?;
    let a = ticks(pid)?;
    std::thread::sleep(window);
    let b = ticks(pid)?;
    let used = Duration::from_secs(b.saturating_sub(a)) / hz;
    Some(used.as_secs_f64() / window.as_secs_f64())
}

fn forward(pipe: impl std::io::Read, prefix: &str, tx: &mpsc::Sender<String>) {
    let mut r = BufReader::new(pipe);
    let mut buf = Vec::new();
    while let Ok(n) = r.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
        if tx.send(format!("{prefix}{line}")).is_err() {
            break;
        }
        buf.clear();
    }
}

/// `key=value` fields of a line (words without '=' are skipped).
fn fields(s: &str) -> BTreeMap<String, String> {
    s.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A guest's last serial line may lack its newline (e.g. the UEFI shell's
/// "Reset with ..." before power-off), so the runner's next line (`@@SERIAL`
/// of stderr, `@@VM`, `@@TIME`) continues it: split those off again.
fn split_runner_lines(line: &str) -> Vec<&str> {
    let mut cuts: Vec<usize> = ["@@SERIAL ", "@@VM ", "@@TIME "]
        .iter()
        .flat_map(|m| line.match_indices(m).map(|(i, _)| i))
        .filter(|&i| i > 0)
        .collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut start = 0;
    for c in cuts {
        parts.push(&line[start..c]);
        start = c;
    }
    parts.push(&line[start..]);
    parts
}

/// Turn the `@@VM`, `@@SERIAL` and `@@RESULT` lines into VM reports.
pub fn parse_vms(lines: &[String]) -> Vec<VmReport> {
    let mut out: BTreeMap<String, VmReport> = BTreeMap::new();
    let mut order = Vec::new();
    for line in lines.iter().flat_map(|l| split_runner_lines(l)) {
        // The serial console may put a line after other text (e.g. ANSI resets).
        let Some(at) = line.find("@@") else { continue };
        let l = &line[at..];
        if let Some(rest) = l.strip_prefix("@@TIME ") {
            let f = fields(rest);
            if let (Some(name), Some(t)) = (f.get("name"), f.get("serial")) {
                let vm = out.entry(name.clone()).or_default();
                vm.name = name.clone();
                vm.serial_seconds = t.parse().ok();
            }
        } else if let Some(rest) = l.strip_prefix("@@SERIAL ") {
            let Some((name, text)) = rest.split_once("| ") else {
                continue;
            };
            let vm = out.entry(name.to_owned()).or_default();
            vm.name = name.to_owned();
            if let Some(r) = text
                .find("@@RESULT ")
                .map(|i| &text[i + "@@RESULT ".len()..])
            {
                let mut f = fields(r);
                vm.results.push(GuestResult {
                    name: f.remove("name").unwrap_or_default(),
                    status: f.remove("status").unwrap_or_default(),
                    fields: f,
                });
            }
            vm.output.push(text.to_owned());
        } else if let Some(rest) = l.strip_prefix("@@VM ") {
            let f = fields(rest);
            let (Some(name), Some(status)) = (f.get("name"), f.get("status")) else {
                continue;
            };
            let vm = out.entry(name.clone()).or_default();
            vm.name = name.clone();
            vm.passed = status == "pass";
            vm.exit = f.get("exit").and_then(|e| e.parse().ok());
            vm.seconds = f.get("time").and_then(|t| t.parse().ok()).unwrap_or(0.0);
            vm.reason = f.get("reason").cloned().unwrap_or_default();
            order.push(name.clone());
        }
    }
    order.iter().filter_map(|n| out.remove(n)).collect()
}

fn finish(
    scenario: &Scenario,
    mode: Mode,
    attempt: Attempt,
    hang_retries: u32,
    log: &Path,
) -> Result<Run, Error> {
    let ended = attempt.lines.iter().any(|l| l.contains("@@LAB end"));
    if attempt.stalled {
        return Err(Error::LabHost {
            reason: format!(
                "no output for {} s while the outer QEMU kept running (not the known hang)",
                STALL.as_secs()
            ),
            log: log.to_owned(),
        });
    }
    if mode == Mode::Nested {
        if let Some(l) = attempt
            .lines
            .iter()
            .find(|l| l.contains("@@LAB kvm status=fail"))
        {
            return Err(Error::LabHost {
                reason: format!("/dev/kvm did not come up in the lab host: {l}"),
                log: log.to_owned(),
            });
        }
    }
    if !ended {
        return Err(Error::LabHost {
            reason: format!(
                "the scenario did not finish ({}; exit {:?})",
                if attempt.timed_out {
                    "time limit reached"
                } else {
                    "no @@LAB end line"
                },
                attempt.status
            ),
            log: log.to_owned(),
        });
    }
    let mut vms = parse_vms(&attempt.lines);
    for vm in scenario.vms() {
        if !vms.iter().any(|v| v.name == vm.name) {
            vms.push(VmReport {
                name: vm.name.clone(),
                reason: "did not report".into(),
                ..VmReport::default()
            });
        }
    }
    Ok(Run::Done(Report {
        scenario: scenario.name.clone(),
        mode,
        vms,
        hang_retries,
        wall: attempt.wall,
        lab_boot: attempt.lab_boot,
        log: log.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_quoted_shell_words() {
        assert_eq!(word("{kernel}"), "\"${LAB_GUEST_KERNEL}\"");
        assert_eq!(
            word("file={disk:shared},if=none"),
            "\"file=${LAB_TMP}/shared.img,if=none\""
        );
        assert_eq!(word("{guest:hello}"), "\"${LAB_TEST_GUESTS}/hello.elf\"");
        assert_eq!(word("a $b \"c\" {nope}"), "\"a \\$b \\\"c\\\" {nope}\"");
    }

    #[test]
    fn lio_ports_become_sg_placeholders_made_first_and_torn_down_last() {
        assert_eq!(word("sg={lio:a},pr=x"), "\"sg=${LAB_LIO_a},pr=x\"");
        // not a port name: left as text
        assert_eq!(word("{lio:a b}"), "\"{lio:a b}\"");
        assert_eq!(word("{lio:$x}"), "\"{lio:\\$x}\"");
        let s = Scenario::new("t")
            .lio("lu0", 64, &["a", "b"])
            .vm(Vm::arbiter("n")
                .scsi_passthrough(1, 2, "{lio:b}", "pr=passthrough")
                .timeout(Duration::from_secs(9)));
        let script = s.script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[1], "lab_lio 'lu0' 64 'a' 'b'");
        assert_eq!(
            lines[2],
            "lab_vm 'n' 9 0 '' \"$ARBITER\" \"run\" \"--name\" \"n\" \"--scsi\" \
             \"controller=1\" \"--scsi-disk\" \
             \"sg=${LAB_LIO_b},controller=1,target=2,lun=0,pr=passthrough\""
        );
        assert_eq!(lines[3], "lab_lio_teardown");
        assert_eq!(lines.len(), 4);
        assert_eq!(s.time_limit(), Duration::from_secs(30 + 9));
        let q = Vm::qemu("q").scsi_passthrough(0, 0, "/dev/sg3", "ignored");
        assert!(q.args.ends_with(&[
            "-device".to_owned(),
            "virtio-scsi-pci,id=scsi0".to_owned(),
            "-drive".to_owned(),
            "file=/dev/sg3,if=none,id=c0t0,format=raw".to_owned(),
            "-device".to_owned(),
            "scsi-generic,drive=c0t0,bus=scsi0.0,scsi-id=0,lun=0".to_owned(),
        ]));
        assert!(!Scenario::new("u").disk("d", 1).script().contains("lab_lio"));
    }

    #[test]
    fn scenario_script_runs_vms_in_order_and_together() {
        let s = Scenario::new("t")
            .disk("d", 8)
            .vm(Vm::arbiter("one")
                .args(["--kernel", "{guest:hello}"])
                .expect_exit(Some(33))
                .expect_serial("GUEST PASS")
                .timeout(Duration::from_secs(30)))
            .together(vec![
                Vm::qemu("a").expect_exit(None),
                Vm::qemu("b").timeout(Duration::from_secs(7)),
            ]);
        let script = s.script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[1], "lab_disk 'd' 8");
        assert_eq!(
            lines[2],
            "lab_vm 'one' 30 33 'GUEST PASS' \"$ARBITER\" \"run\" \"--name\" \"one\" \
             \"--kernel\" \"${LAB_TEST_GUESTS}/hello.elf\""
        );
        assert!(lines[3].starts_with("lab_vm_start 'a' 300 - '' \"$QEMU\" \"-enable-kvm\""));
        assert!(lines[4].starts_with("lab_vm_start 'b' 7 0 '' \"$QEMU\""));
        assert_eq!(&lines[5..], ["lab_vm_wait 'a'", "lab_vm_wait 'b'"]);
        assert_eq!(s.time_limit(), Duration::from_secs(5 + 30 + 300));
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "\n");
        assert_eq!(base64(b"f"), "Zg==\n");
        assert_eq!(base64(b"fo"), "Zm8=\n");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy\n");
        assert_eq!(base64(&[0xFB, 0xFF]), "+/8=\n");
        let long = base64(&[0u8; 60]);
        assert_eq!(long.lines().map(str::len).collect::<Vec<_>>(), [76, 4]);
    }

    /// The file and host steps, run by sh over lablib.sh as in the lab host:
    /// the file arrives byte for byte, the host step is reported like a VM.
    #[test]
    fn file_and_host_steps_run_in_sh() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let s = Scenario::new("t")
            .file("blob.bin", &data)
            .host("check", "echo size $(wc -c <\"$LAB_TMP/blob.bin\")\ntrue")
            .host("failing", "echo no; false");
        let script = tmp.path().join("scenario.sh");
        std::fs::write(&script, s.script()).unwrap();
        let lablib = repo_root().join("tests/lab/host/lablib.sh");
        let out = Command::new("sh")
            .arg("-c")
            .arg(". \"$1\"; . \"$2\"")
            .arg("sh")
            .arg(&lablib)
            .arg(&script)
            .env("LAB_TMP", tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(tmp.path().join("blob.bin")).unwrap(), data);
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let vms = parse_vms(&lines);
        assert_eq!(vms.len(), 2, "{lines:?}");
        assert!(vms[0].passed);
        assert_eq!(vms[0].output, ["size 3000"]);
        assert!(!vms[1].passed);
        assert_eq!(vms[1].reason, "host_step");
        assert_eq!(vms[1].output, ["no"]);
    }

    #[test]
    fn runner_lines_glued_to_an_unterminated_serial_line_are_split() {
        let lines: Vec<String> = [
            "@@SERIAL v| Shell> ",
            "@@SERIAL v| Reset with <null string> (0 bytes)@@SERIAL v| stderr: arbiter: note",
            "@@SERIAL w| last words@@VM name=w status=pass exit=0 time=3.5",
            "@@VM name=v status=pass exit=0 time=2.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let vms = parse_vms(&lines);
        assert_eq!(vms.len(), 2);
        let w = vms.iter().find(|v| v.name == "w").unwrap();
        assert!(w.passed);
        assert_eq!(w.output, ["last words"]);
        let v = vms.iter().find(|v| v.name == "v").unwrap();
        assert_eq!(
            v.output,
            [
                "Shell> ",
                "Reset with <null string> (0 bytes)",
                "stderr: arbiter: note"
            ]
        );
    }

    #[test]
    fn time_lines_give_serial_seconds() {
        let lines: Vec<String> = [
            "@@TIME name=q serial=12.50",
            "@@SERIAL q| Shell> ",
            "@@VM name=q status=pass exit=0 time=17.9",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let vms = parse_vms(&lines);
        assert_eq!(vms[0].serial_seconds, Some(12.5));
        let timed = Scenario::new("t").vm(Vm::qemu("q").expect_serial("Shell>").time_to_serial());
        let script = timed.script();
        assert!(script.contains("lab_vm_start 'q'"), "{script}");
        assert!(script.contains("@@TIME name="), "{script}");
        assert!(script.contains("lab_vm_wait 'q'"), "{script}");
    }

    #[test]
    fn vm_lines_are_parsed_into_reports() {
        let lines: Vec<String> = [
            "@@VM name=g event=start monitor=qemu uptime=3.2",
            "\x1b[2J@@SERIAL g| Linux version 6.1",
            "@@SERIAL g| @@RESULT name=sg_inq status=pass vendor=QEMU pdt=disk",
            "@@HB up=12.0",
            "@@SERIAL g| @@RESULT name=rw_block status=fail",
            "@@VM name=g status=fail exit=0 time=14.69 reason=pattern_not_seen",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let vms = parse_vms(&lines);
        assert_eq!(vms.len(), 1);
        let g = &vms[0];
        assert!(!g.passed);
        assert_eq!(g.exit, Some(0));
        assert_eq!(g.reason, "pattern_not_seen");
        assert!((g.seconds - 14.69).abs() < 1e-9);
        assert_eq!(g.output.len(), 3);
        let inq = g.result("sg_inq").unwrap();
        assert_eq!(inq.status, "pass");
        assert_eq!(inq.fields.get("vendor").map(String::as_str), Some("QEMU"));
        assert_eq!(g.result("rw_block").unwrap().status, "fail");
    }
}
