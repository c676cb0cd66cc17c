//! The process factory: an IC is a host process that runs the same image
//! as a virtine, at the same fixed addresses, with hypercalls served by a
//! runtime inside that process (a trap on the doorbell page) instead of a
//! VM exit. The classic abstraction, plugged in like any other ICF so it
//! can be compared with the others; the pivot kind of `mutate`.
//!
//! Each run execs a helper (a program that calls [`child::main`], e.g.
//! `xos-vmm __process-ic`): a fresh single-threaded process, so nothing of
//! the monitor's threads or locks is inherited. The image travels on fd 3
//! (a memfd), the result comes back on fd 4.

pub mod child;

use crate::error::IcfError;
use crate::factory::{
    Availability, IcSpec, IsolationContext, IsolationContextFactory, ProcessImage,
};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmm::exit::{Exception, GuestRegs, RunStats};
use vmm::interrupt::StopReason;
use vmm::pivot::EfState;
use vmm::{Fault, GuestExit, GuestIo, Interrupter, RunOutcome};

/// Name of the kind.
pub const NAME: &str = "process";

/// The program (and leading arguments) that becomes a process IC.
#[derive(Clone, Debug)]
pub struct Helper {
    /// Executable.
    pub program: PathBuf,
    /// Arguments before the IC's own (e.g. `["__process-ic"]`).
    pub args: Vec<OsString>,
}

/// Creates process ICs.
#[derive(Clone, Debug, Default)]
pub struct ProcessFactory {
    helper: Option<Helper>,
}

impl ProcessFactory {
    /// A factory whose ICs exec `helper`.
    pub fn new(helper: Helper) -> Self {
        ProcessFactory {
            helper: Some(helper),
        }
    }
}

impl IsolationContextFactory for ProcessFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "a host process running the image at its fixed addresses; hypercalls trap into the process's own runtime"
    }

    fn init(&self) -> Availability {
        match &self.helper {
            None => Availability::Unavailable(
                "no process helper is configured (the xos-vmm binary provides one)".into(),
            ),
            Some(h) if !h.program.exists() => Availability::Unavailable(format!(
                "the process helper {} does not exist",
                h.program.display()
            )),
            Some(_) => Availability::Available,
        }
    }

    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        Ok(Box::new(self.new_ic(spec)?))
    }

    fn convert_from_process(
        &self,
        image: ProcessImage,
    ) -> Result<Box<dyn IsolationContext>, IcfError> {
        image.validate()?;
        let mut spec = image.spec;
        spec.mem_size = image.state.mem_size;
        let mut ic = self.new_ic(spec)?;
        ic.resume = Some(Box::new(image.state));
        Ok(Box::new(ic))
    }
}

impl ProcessFactory {
    fn new_ic(&self, spec: IcSpec) -> Result<ProcessIc, IcfError> {
        spec.check_no_virtio(NAME)?;
        let Some(helper) = self.helper.clone() else {
            return Err(IcfError::Unavailable {
                icf: NAME,
                reason: "no process helper is configured".into(),
            });
        };
        Ok(ProcessIc {
            helper,
            spec,
            interrupter: Interrupter::new(),
            resume: None,
            stopped_at: None,
        })
    }
}

/// One process IC.
pub struct ProcessIc {
    helper: Helper,
    spec: IcSpec,
    interrupter: Interrupter,
    /// An execution flow carried over from another IC, continued by `run`.
    resume: Option<Box<EfState>>,
    /// The execution flow, when the last run stopped at a safe point.
    stopped_at: Option<Box<EfState>>,
}

/// A pidfd for process `pid`, if the kernel gives one.
fn pidfd_of(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a fresh fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec memfd holding `bytes`, positioned at its start.
fn memfd_with(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    // SAFETY: the name is a valid C string; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"xos-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    std::io::Seek::rewind(&mut file)?;
    Ok(file)
}

/// Maps the child's status line to how the guest ended.
fn parse_status(line: &str, mem_size: u64) -> Option<GuestExit> {
    let (kind, rest) = line
        .trim_end()
        .split_once(' ')
        .unwrap_or((line.trim_end(), ""));
    let faulted = |fault, regs: GuestRegs| GuestExit::Faulted {
        fault,
        regs: Box::new(regs),
        mem_size,
    };
    match kind {
        "exit" => rest.parse().ok().map(GuestExit::Exited),
        "abort" => Some(GuestExit::Aborted(rest.to_owned())),
        "safepoint" => Some(GuestExit::SafePoint),
        "signal" => {
            let v: Vec<u64> = rest.split(' ').filter_map(|v| v.parse().ok()).collect();
            let [sig, addr, rip, rsp, rflags, ref gpr @ ..] = v[..] else {
                return None;
            };
            let mut regs = GuestRegs {
                rip,
                rsp,
                rflags,
                cr2: addr,
                cpl: 3,
                ..Default::default()
            };
            for (slot, value) in regs.gpr.iter_mut().zip(gpr) {
                *slot = *value;
            }
            let fault = match sig as i32 {
                libc::SIGILL => Fault::Exception(Exception {
                    vector: 6,
                    error_code: None,
                }),
                libc::SIGFPE => Fault::Exception(Exception {
                    vector: 0,
                    error_code: None,
                }),
                s => Fault::Signal { signal: s, addr },
            };
            Some(faulted(fault, regs))
        }
        "fault" => Some(faulted(
            Fault::UnexpectedExit(rest.to_owned()),
            GuestRegs::default(),
        )),
        _ => None,
    }
}

impl ProcessIc {
    /// How the run ended, from the stop reason and the child's report;
    /// at a safe point, the execution flow's state is taken from `pivot`.
    fn exit_of(
        &mut self,
        stopped: StopReason,
        status_code: std::process::ExitStatus,
        status: OwnedFd,
        mut pivot: std::fs::File,
    ) -> Result<GuestExit, IcfError> {
        self.stopped_at = None;
        Ok(match stopped {
            StopReason::Timeout => GuestExit::TimedOut {
                limit: self.spec.timeout.unwrap_or_default(),
                regs: Box::default(),
            },
            StopReason::Kill => GuestExit::Killed,
            StopReason::None => {
                let mut line = String::new();
                let _ = std::fs::File::from(status).read_to_string(&mut line);
                match parse_status(&line, self.spec.mem_size) {
                    Some(GuestExit::SafePoint) => {
                        let mut bytes = Vec::new();
                        std::io::Seek::rewind(&mut pivot)
                            .and_then(|_| pivot.read_to_end(&mut bytes))
                            .map_err(|e| IcfError::Unavailable {
                                icf: NAME,
                                reason: format!("cannot read the execution flow's state: {e}"),
                            })?;
                        let state = EfState::decode(&bytes).map_err(vmm::RunError::from)?;
                        self.stopped_at = Some(Box::new(state));
                        GuestExit::SafePoint
                    }
                    Some(exit) => exit,
                    None if line.starts_with("error ") => {
                        return Err(IcfError::Unavailable {
                            icf: NAME,
                            reason: line[6..].trim_end().to_owned(),
                        })
                    }
                    None => GuestExit::Faulted {
                        fault: Fault::UnexpectedExit(format!(
                            "the process ended without reporting ({status_code})"
                        )),
                        regs: Box::default(),
                        mem_size: self.spec.mem_size,
                    },
                }
            }
        })
    }

    fn spawn(
        &self,
        io: &GuestIo,
    ) -> std::io::Result<(std::process::Child, OwnedFd, std::fs::File)> {
        let image = memfd_with(self.spec.program.bytes())?;
        let pivot = memfd_with(&self.resume.as_ref().map(|s| s.encode()).unwrap_or_default())?;
        let (status_read, status_write) = pipe()?;
        let mut cmd = Command::new(&self.helper.program);
        cmd.args(&self.helper.args)
            .arg("--mem")
            .arg(self.spec.mem_size.to_string());
        if self.resume.is_some() {
            cmd.arg("--resume");
        }
        for e in &self.spec.env {
            cmd.arg("--env").arg(std::ffi::OsStr::from_bytes(e));
        }
        let window = match &self.spec.window {
            Some(end) => {
                let notify = match end.mechanism() {
                    crate::ComMechanism::ShmRingFutex => "futex",
                    _ => "poll",
                };
                cmd.arg("--window").arg(end.side().to_string()).arg(notify);
                Some(end.memfd().try_clone()?)
            }
            None => None,
        };
        let window_fd = window.as_ref().map(|f| f.as_raw_fd());
        cmd.arg("--");
        for a in &self.spec.args {
            cmd.arg(std::ffi::OsStr::from_bytes(a));
        }
        let inherit = io.inherited();
        let stdio = || {
            if inherit {
                Stdio::inherit()
            } else {
                Stdio::piped()
            }
        };
        cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
        let (image_fd, status_fd) = (image.as_raw_fd(), status_write.as_raw_fd());
        let pivot_fd = pivot.as_raw_fd();
        // SAFETY: only fcntl, dup2 and sigprocmask between fork and exec
        // (all async-signal-safe). They place the image, status, pivot and
        // window fds at 3..6 without close-on-exec, while the originals
        // keep it so no other child inherits them. Going through fds >= 10
        // first avoids the two traps of dup2: onto itself (a no-op that
        // keeps close-on-exec) and onto another source's number.
        unsafe {
            cmd.pre_exec(move || {
                // First every source above 10, then each onto its number:
                // a source whose number is a target (3..6) must not be
                // overwritten before it is copied.
                let sources = [Some(image_fd), Some(status_fd), Some(pivot_fd), window_fd];
                let targets = [
                    child::IMAGE_FD,
                    child::STATUS_FD,
                    child::PIVOT_FD,
                    child::WINDOW_FD,
                ];
                let mut high = [-1; 4];
                for (h, source) in high.iter_mut().zip(sources) {
                    if let Some(fd) = source {
                        *h = libc::fcntl(fd, libc::F_DUPFD, 10);
                        if *h < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                for (h, target) in high.into_iter().zip(targets) {
                    if h >= 0 && libc::dup2(h, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Safe-point requests stay pending until the child has its
                // handler (a blocked mask survives exec).
                let mut block: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut block);
                libc::sigaddset(&mut block, child::SAFE_POINT_SIGNAL);
                libc::sigprocmask(libc::SIG_BLOCK, &block, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(status_write);
        drop(image);
        drop(window);
        Ok((child, status_read, pivot))
    }
}

impl IsolationContext for ProcessIc {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, mut io: GuestIo) -> Result<RunOutcome, IcfError> {
        let interrupter = std::mem::take(&mut self.interrupter);
        self.interrupter = Interrupter::new();
        let spawn_err = |e: std::io::Error| IcfError::Unavailable {
            icf: NAME,
            reason: format!("cannot start the process: {e}"),
        };
        let start = Instant::now();
        let (mut child, status, pivot) = self.spawn(&io).map_err(spawn_err)?;
        let pid = child.id() as i32;
        // Safe-point requests reach the child as a signal, through a pidfd
        // so that a request after it was reaped cannot hit a reused pid.
        if let Some(pidfd) = pidfd_of(pid) {
            interrupter.set_safe_point_hook(Some(Box::new(move || {
                // SAFETY: a pidfd we own; the signal's handler in the
                // child only sets a flag read at its next safe point.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        child::SAFE_POINT_SIGNAL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    )
                };
            })));
        }
        if let Some(end) = &self.spec.window {
            end.run_starting(child.id());
        }

        // Pump standard streams when they are not inherited.
        let mut pumps = Vec::new();
        if let Some(mut stdin) = child.stdin.take() {
            let mut input =
                std::mem::replace(&mut io.stdin, Box::new(vmm::io::BytesInput::default()));
            pumps.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = input.read(&mut buf) {
                    if n == 0 || stdin.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }));
        }
        let mut out_pumps = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            let mut sink = std::mem::replace(&mut io.stdout, Box::new(std::io::sink()));
            out_pumps.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut out, &mut sink);
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let mut sink = std::mem::replace(&mut io.stderr, Box::new(std::io::sink()));
            out_pumps.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut err, &mut sink);
            }));
        }

        // Wait, stopping the process at the time limit or on a kill.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let deadline = self.spec.timeout.map(|t| start + t);
        let mut stopped = StopReason::None;
        let waited = loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(std::io::Error::other("the waiting thread ended"))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let reason = match interrupter.reason() {
                StopReason::None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    StopReason::Timeout
                }
                r => r,
            };
            if reason != StopReason::None && stopped == StopReason::None {
                stopped = reason;
                // SAFETY: signals our own child, which has not been reaped
                // (the waiting thread reports when it has).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        };
        for p in out_pumps {
            let _ = p.join();
        }
        drop(pumps); // the stdin pump ends when the child's stdin closes
        interrupter.set_safe_point_hook(None);
        let guest_time = start.elapsed();
        let exit = waited
            .map_err(spawn_err)
            .and_then(|status_code| self.exit_of(stopped, status_code, status, pivot));
        if let Some(end) = &self.spec.window {
            if self.stopped_at.is_some() {
                end.run_paused();
            } else {
                end.run_ended();
            }
        }
        let exit = exit?;
        Ok(RunOutcome {
            exit,
            stats: RunStats::default(),
            guest_time,
            snapshot: None,
            pivot: None,
        })
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.spec.timeout = timeout;
    }

    fn into_process_image(self: Box<Self>) -> Result<ProcessImage, IcfError> {
        match self.stopped_at {
            Some(state) => Ok(ProcessImage {
                state: *state,
                spec: self.spec,
            }),
            None => Err(IcfError::NotAtSafePoint { icf: NAME }),
        }
    }

    fn set_host_functions(&mut self, functions: vmm::HostFunctions) {
        self.spec.host_functions = functions;
    }
}
