//! What this host's `/dev/kvm` can run, so that tests can skip with a reason
//! instead of failing or silently passing.

use std::fs::OpenOptions;

/// Whether `/dev/kvm` can be opened read-write. `Err` says why not.
pub fn available() -> Result<(), String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened read-write: {e}"))
}

/// Whether the host CPU has hardware virtualization (VMX or SVM), so that
/// real guests (OVMF, Linux) run under `/dev/kvm`. Hosts with a PVM-style
/// `/dev/kvm` only run small integer-only guests.
pub fn hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

/// Print a skip line in the form CI logs are searched for, and return.
/// Usage: `if let Err(why) = kvm::available() { return kvm::skip("test", &why); }`
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}
