//! Run the `arbiter` binary on a guest with a timeout and collect what it
//! printed and how it ended.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a VM run ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status of `arbiter`; `None` if it was killed (timeout or signal).
    pub status: Option<i32>,
    /// Everything it wrote to stdout (the guest's serial console by default).
    pub stdout: String,
    /// Everything it wrote to stderr (arbiter's own messages).
    pub stderr: String,
    /// Whether the run was killed at the timeout.
    pub timed_out: bool,
}

impl Outcome {
    /// Exit status a test guest produces by returning `code` from guest_main.
    pub fn guest_code(code: u32) -> i32 {
        i32::try_from(((code << 1) | 1) & 0xFF).unwrap_or(i32::MAX)
    }
}

/// A VM to run: the binary, its arguments and a time limit.
#[derive(Debug, Clone)]
pub struct VmRun {
    bin: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
}

impl VmRun {
    /// `arbiter` at `bin`, with no arguments yet and a 60 s limit.
    pub fn new(bin: impl AsRef<Path>) -> Self {
        VmRun {
            bin: bin.as_ref().to_owned(),
            args: Vec::new(),
            timeout: Duration::from_secs(60),
            stdin: None,
        }
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

    /// Set the time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Bytes fed to arbiter's stdin (the guest's serial input).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Run to completion or to the time limit.
    pub fn run(&self) -> std::io::Result<Outcome> {
        let mut child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&bytes);
            });
        }
        let mut out_pipe = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let mut err_pipe = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out_pipe.read_to_end(&mut v);
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err_pipe.read_to_end(&mut v);
            v
        });
        let start = Instant::now();
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if start.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
        Ok(Outcome {
            status: status.code(),
            stdout,
            stderr,
            timed_out,
        })
    }
}
