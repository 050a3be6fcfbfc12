//! vCPUs: set-up (CPUID, LAPIC LINT pins, boot registers) and the run loop
//! on one thread per vCPU, dispatching port and MMIO exits to the buses.

use std::sync::Arc;
use std::thread::JoinHandle;

use devices::bus::Bus;
use devices::lifecycle::ExitReason;
use kvm_bindings::{kvm_lapic_state, CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::cpuid;
use crate::stop::{StopFlag, VmStop};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// An ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Ioctl {
        /// vCPU index.
        id: u8,
        /// Step.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Hyper-V enlightenments (`hyperv=on`).
    #[error("vCPU {0}: {1}")]
    Hyperv(u8, #[source] crate::arch::x86_64::hyperv::HypervError),
    /// Thread could not start.
    #[error("vCPU {0}: starting its thread: {1}")]
    Thread(u8, std::io::Error),
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = l.regs[off + i].to_ne_bytes()[0];
    }
    u32::from_le_bytes(b)
}

fn set_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = i8::from_ne_bytes([*x]) as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Create vCPU `id` of `count` and give it CPUID and LAPIC LINT wiring
/// (LINT0 ExtINT for the PIC, LINT1 NMI). With `hyperv` (the KVM handle),
/// the vCPU gets the Hyper-V enlightenments (see [`super::hyperv`]);
/// without `kvm_leaves`, KVM's own CPUID leaves are hidden.
pub fn create(
    vm: &VmFd,
    id: u8,
    count: u8,
    supported: &CpuId,
    tsc_khz: Option<u32>,
    hyperv: Option<&Kvm>,
    kvm_leaves: bool,
) -> Result<VcpuFd, VcpuError> {
    let e = |what| move |source| VcpuError::Ioctl { id, what, source };
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(e("KVM_CREATE_VCPU"))?;
    let mut c = supported.clone();
    let tsc_khz = tsc_khz.or_else(|| vcpu.get_tsc_khz().ok().filter(|k| *k > 0));
    cpuid::patch(&mut c, id, count, tsc_khz);
    if vm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        cpuid::set_tsc_deadline(&mut c);
    }
    if !kvm_leaves {
        cpuid::remove_kvm_leaves(&mut c);
    }
    if hyperv.is_some() {
        super::hyperv::add_leaves(&vcpu, &mut c).map_err(|h| VcpuError::Hyperv(id, h))?;
    }
    vcpu.set_cpuid2(&c).map_err(e("KVM_SET_CPUID2"))?;
    if let Some(kvm) = hyperv {
        super::hyperv::setup_vcpu(kvm, &vcpu, id).map_err(|h| VcpuError::Hyperv(id, h))?;
    }
    let mut lapic = vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    let lvt0 = get_reg(&lapic, APIC_LVT0);
    set_reg(
        &mut lapic,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_reg(&lapic, APIC_LVT1);
    set_reg(
        &mut lapic,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(e("KVM_SET_LAPIC"))?;
    vcpu.set_fpu(&crate::arch::x86_64::regs::boot_fpu())
        .map_err(e("KVM_SET_FPU"))?;
    Ok(vcpu)
}

/// Registers and control state, one block of text, for crash reports.
pub fn dump_registers(vcpu: &VcpuFd) -> String {
    let mut s = String::new();
    match vcpu.get_regs() {
        Ok(r) => s.push_str(&format!(
            "rip={:#018x} rsp={:#018x} rflags={:#010x}\n\
             rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n\
             rsi={:#018x} rdi={:#018x} rbp={:#018x}\n\
             r8={:#018x} r9={:#018x} r10={:#018x} r11={:#018x}\n\
             r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            r.r8,
            r.r9,
            r.r10,
            r.r11,
            r.r12,
            r.r13,
            r.r14,
            r.r15
        )),
        Err(e) => s.push_str(&format!("(registers unavailable: {e})\n")),
    }
    match vcpu.get_sregs() {
        Ok(sr) => s.push_str(&format!(
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\n\
             cs={:#x} (base {:#x} l={} db={}) ss={:#x} gdt={:#x}/{:#x} idt={:#x}/{:#x}",
            sr.cr0,
            sr.cr2,
            sr.cr3,
            sr.cr4,
            sr.efer,
            sr.cs.selector,
            sr.cs.base,
            sr.cs.l,
            sr.cs.db,
            sr.ss.selector,
            sr.gdt.base,
            sr.gdt.limit,
            sr.idt.base,
            sr.idt.limit
        )),
        Err(e) => s.push_str(&format!("(special registers unavailable: {e})")),
    }
    s
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Install the no-op handler for [`kick_signal`] (once per process).
pub fn install_kick_handler() {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop);
}

/// Run `vcpu` on a new thread until the VM stops.
pub fn spawn(
    id: u8,
    mut vcpu: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stop: Arc<StopFlag>,
) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || run_loop(id, &mut vcpu, &pio, &mmio, &stop))
        .map_err(|e| VcpuError::Thread(id, e))
}

fn run_loop(id: u8, vcpu: &mut VcpuFd, pio: &Bus, mmio: &Bus, stop: &StopFlag) {
    if id == 0 {
        crate::trace_first_entry();
    }
    while !stop.stopped() {
        match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    if !pio.read(u64::from(port), data) {
                        data.fill(0xFF);
                    }
                }
                VcpuExit::IoOut(port, data) => {
                    if !pio.write(u64::from(port), data) {
                        log::trace!("vcpu{id}: unhandled out {port:#x}");
                    }
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !mmio.read(addr, data) {
                        data.fill(0xFF);
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !mmio.write(addr, data) {
                        log::trace!("vcpu{id}: unhandled MMIO write {addr:#x}");
                    }
                }
                VcpuExit::Hlt => {
                    // Only seen without an in-kernel LAPIC; keep polling.
                    std::thread::yield_now();
                }
                VcpuExit::Shutdown => {
                    let regs = dump_registers(vcpu);
                    stop.request(VmStop::TripleFault { cpu: id, regs });
                }
                VcpuExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => stop.request(VmStop::Device(ExitReason::PowerOff)),
                    KVM_SYSTEM_EVENT_RESET => stop.request(VmStop::Device(ExitReason::Reset)),
                    other => {
                        let regs = dump_registers(vcpu);
                        stop.request(VmStop::InternalError {
                            cpu: id,
                            what: format!("system event {other}"),
                            regs,
                        });
                    }
                },
                VcpuExit::FailEntry(reason, cpu) => {
                    let regs = dump_registers(vcpu);
                    stop.request(VmStop::InternalError {
                        cpu: id,
                        what: format!("VM entry failed: reason {reason:#x} on host CPU {cpu}"),
                        regs,
                    });
                }
                VcpuExit::InternalError => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so
                    // KVM filled the `internal` member of the exit union.
                    let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let regs = dump_registers(vcpu);
                    stop.request(VmStop::InternalError {
                        cpu: id,
                        what: format!("KVM internal error, suberror {sub}"),
                        regs,
                    });
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
                VcpuExit::Hyperv => {
                    let what = super::hyperv::handle_exit(vcpu);
                    log::debug!("vcpu{id}: Hyper-V exit {what:?}");
                }
                other => {
                    let what = format!("unexpected exit {other:?}");
                    let regs = dump_registers(vcpu);
                    stop.request(VmStop::InternalError {
                        cpu: id,
                        what,
                        regs,
                    });
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                let regs = dump_registers(vcpu);
                stop.request(VmStop::InternalError {
                    cpu: id,
                    what: format!("KVM_RUN: {e}"),
                    regs,
                });
            }
        }
    }
}
