//! Starting workers from the template process (see `procpool/_template.py`).
//!
//! One template per parent process, started on first use from the engine's spawner
//! thread (so that its parent-death signal, and its workers', fire only when the
//! process ends) and started again when it is found dead. A request carries the new
//! worker's socket end by `SCM_RIGHTS` and its settings; the template forks the worker
//! with `CLONE_PARENT`, so the worker is this process's child, and answers its pid.

use std::ffi::OsString;
use std::io::{self, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use procpool_engine::Launcher;
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// How long the template may take to answer (its first answer includes its start).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts workers from this process's template.
#[derive(Debug)]
pub(crate) struct TemplateLauncher {
    /// The interpreter (`sys.executable`).
    pub(crate) python: PathBuf,
    /// `sys.path` of the parent, for the template to import the same procpool.
    pub(crate) path: Vec<OsString>,
    /// The parent's settings for its workers (see `_template.prep`).
    pub(crate) prep: Vec<u8>,
    /// Descriptors the initializer's arguments refer to: each worker gets them at its
    /// start (`_passfd.take_init_fds`).
    pub(crate) init_fds: Option<procpool_engine::JobFds>,
}

#[derive(Debug)]
struct Template {
    /// Its pid: a child of this process (started with `Command`, or a fork of this
    /// process made by `_template.fork_here`).
    pid: u32,
    ctl: UnixStream,
    /// The process that started it: a child made by `fork` must start its own (the
    /// template forks workers as children of its own parent).
    owner: u32,
    /// A spare process asked for (see [`_request_spare`]) whose pid, the template's
    /// answer, has not been read yet: this process's end of its socket, and the settings
    /// it was asked with. The answer is read before any other request is sent.
    pending: Option<(UnixStream, Vec<u8>)>,
}

/// A process started ahead of time from the template for the next `procpool.Process`
/// (see [`_request_spare`]): forked, in its own session, bound to die with this process,
/// and waiting on its socket for what to run. A child of this process.
#[derive(Debug)]
struct Spare {
    pid: u32,
    /// A descriptor of the process (`pidfd_open`), so that no signal can reach another
    /// process that reused its pid.
    pidfd: OwnedFd,
    /// This process's end of its socket.
    sock: UnixStream,
    /// The settings (`_template.prep()`) it was forked with: it stands for a process
    /// started later only if they are still the caller's.
    prep: Vec<u8>,
    /// The process that asked for it (a child made by `fork` must not use it).
    owner: u32,
}

/// The spare process, if one waits.
static SPARE: Mutex<Option<Spare>> = Mutex::new(None);

/// Set once a template was left with threads by preloading: templates started from then
/// on preload nothing (see `_template._preload`).
static NO_PRELOAD: AtomicBool = AtomicBool::new(false);

/// The process's template, if started.
static TEMPLATE: Mutex<Option<Template>> = Mutex::new(None);

impl Launcher for TemplateLauncher {
    fn launch(&self, stdin: BorrowedFd<'_>, env: &[(OsString, OsString)]) -> io::Result<u32> {
        self.launch_with(stdin, env, true)
    }
}

impl TemplateLauncher {
    /// Starts a child from the template running already (an error if there is none, or
    /// if it is found dead): unlike [`Launcher::launch`], any thread may call this, as
    /// no template is started.
    pub(crate) fn launch_running(
        &self,
        stdin: BorrowedFd<'_>,
        env: &[(OsString, OsString)],
    ) -> io::Result<u32> {
        self.launch_with(stdin, env, false)
    }

    fn launch_with(
        &self,
        stdin: BorrowedFd<'_>,
        env: &[(OsString, OsString)],
        may_start: bool,
    ) -> io::Result<u32> {
        let body = request_body(&self.prep, env);
        let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
        if guard
            .as_ref()
            .is_some_and(|t| t.owner != std::process::id())
        {
            // Inherited through a fork: neither ours to use nor to kill.
            std::mem::forget(guard.take());
        }
        settle(&mut guard);
        let mut last = None;
        for _ in 0..2 {
            if guard.is_none() {
                if !may_start {
                    return Err(last.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "no template running")
                    }));
                }
                *guard = Some(self.start()?);
            }
            let t = guard.as_mut().expect("started above");
            let mut fds = vec![stdin];
            if let Some(extra) = &self.init_fds {
                fds.extend(extra.iter().map(|f| f.as_fd()));
            }
            match request(&mut t.ctl, &fds, &body) {
                Ok(pid) if pid > 0 => return Ok(pid as u32),
                Ok(err) if err == -i64::from(libc::EAGAIN) && !NO_PRELOAD.load(Relaxed) => {
                    // Preloading the parent's modules left the template with threads: it
                    // exited; its successors preload nothing.
                    NO_PRELOAD.store(true, Relaxed);
                    if let Some(t) = guard.take() {
                        t.end();
                    }
                    last = Some(io::Error::other("the template was left with threads"));
                }
                Ok(err) => return Err(io::Error::from_raw_os_error((-err) as i32)),
                Err(e) => {
                    // The template died (or hangs): it is replaced on the next try.
                    if let Some(t) = guard.take() {
                        t.end();
                    }
                    last = Some(e);
                }
            }
        }
        Err(io::Error::other(format!(
            "the procpool template process ({}) failed to start a worker: {}",
            self.python.display(),
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }
}

impl Template {
    /// Kills and reaps the template (and a spare process it was asked for and has not
    /// reported yet, if its answer came).
    fn end(self) {
        let pid = self.pid as libc::pid_t;
        // SAFETY: plain kill and waitpid calls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            while libc::waitpid(pid, std::ptr::null_mut(), 0) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
        if let Some((sock, _)) = self.pending {
            // All the template wrote is there now: a spare it forked is killed and
            // reaped, found by its answer or by the spare's own word.
            let mut answer = [0u8; 8];
            let _ = self.ctl.set_nonblocking(true);
            if (&self.ctl).read_exact(&mut answer).is_ok() {
                let spare = i64::from_le_bytes(answer);
                if let Some(pidfd) = (spare > 0).then(|| pidfd_open(spare as u32).ok()).flatten() {
                    discard(&pidfd);
                }
            } else {
                reap_unreported(sock);
            }
        }
        drop(self.ctl);
    }
}

impl TemplateLauncher {
    fn start(&self) -> io::Result<Template> {
        let (mine, theirs) = UnixStream::pair()?;
        mine.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let path = std::env::join_paths(&self.path).unwrap_or_default();
        let child = Command::new(&self.python)
            .arg("-c")
            .arg(
                "import os, sys\n\
                 p = os.environ.pop('PROCPOOL_TEMPLATE_PATH', '')\n\
                 sys.path[:0] = [x for x in p.split(os.pathsep) if x]\n\
                 from procpool._template import main\n\
                 main()\n",
            )
            .env("PROCPOOL_TEMPLATE_PATH", path)
            .env("PROCPOOL_TEMPLATE_PARENT", std::process::id().to_string())
            .env(
                "PROCPOOL_TEMPLATE_NO_PRELOAD",
                if NO_PRELOAD.load(Relaxed) { "1" } else { "" },
            )
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", self.python.display()),
                )
            })?;
        let pid = child.id();
        // Reaped by `Template::end` (or never, as before: it lives as long as this
        // process).
        drop(child);
        Ok(Template {
            pid,
            ctl: mine,
            owner: std::process::id(),
            pending: None,
        })
    }
}

/// A request's body: `u32` length of the parent's settings, the settings, then the
/// variables as `KEY=VALUE\0` pairs.
fn request_body(prep: &[u8], env: &[(OsString, OsString)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(prep.len() + 256);
    body.extend_from_slice(&(prep.len() as u32).to_le_bytes());
    body.extend_from_slice(prep);
    for (k, v) in env {
        body.extend_from_slice(k.as_bytes());
        body.push(b'=');
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body
}

/// Sends one request (the worker's socket end, then the initializer's descriptors, by
/// `SCM_RIGHTS`, then the body).
fn send_request(ctl: &UnixStream, fds: &[BorrowedFd<'_>], body: &[u8]) -> io::Result<()> {
    let head = (body.len() as u32).to_le_bytes();
    send_with_fds(ctl, &head, fds)?;
    let mut sent = 0;
    while sent < body.len() {
        match rustix::net::send(ctl, &body[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends one request (see [`send_request`]) and reads the answer: a pid, or a negative
/// errno.
fn request(ctl: &mut UnixStream, fds: &[BorrowedFd<'_>], body: &[u8]) -> io::Result<i64> {
    send_request(ctl, fds, body)?;
    let mut answer = [0u8; 8];
    ctl.read_exact(&mut answer)?;
    Ok(i64::from_le_bytes(answer))
}

fn send_with_fds(ctl: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "no room for the descriptors in the control buffer",
        ));
    }
    loop {
        match rustix::net::sendmsg(
            ctl,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) if n < data.len() => return Err(io::Error::other("short write to the template")),
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The variable that marks a template request as a `procpool.Process` (not a pool
/// worker); see `_template._child`.
const PROCESS_ENV: (&str, &str) = ("PROCPOOL_PROCESS", "1");

/// Starts a process from the template for the caller's own use (`procpool.Process`):
/// the spare process (see [`_request_spare`]) when one waits, was forked with the same
/// settings `prep` (`_template.prep()`) and is alive; else a new one, started as a
/// worker is. Its standard input is a socket on which the caller then sends what the
/// process runs. The template, if not yet running, is started on the engine's spawner
/// thread, so the process lives until it ends or this process dies. Returns the pid
/// (a child of this process), the caller's end of the socket and a pidfd of the
/// process, both owned by the caller from now on.
#[pyo3::pyfunction]
pub(crate) fn _launch_process(
    py: pyo3::Python<'_>,
    prep: Vec<u8>,
) -> pyo3::PyResult<(u32, i32, i32)> {
    use std::os::fd::IntoRawFd;
    if let Some(s) = py.detach(|| take_spare(&prep)) {
        return Ok((s.pid, s.sock.into_raw_fd(), s.pidfd.into_raw_fd()));
    }
    let launcher = process_launcher(py, prep)?;
    let (pid, sock, pidfd) = py.detach(move || -> io::Result<(u32, UnixStream, OwnedFd)> {
        use std::os::fd::AsFd;
        let (mine, theirs) = UnixStream::pair()?;
        let env = vec![(OsString::from(PROCESS_ENV.0), OsString::from(PROCESS_ENV.1))];
        let mut pid = None;
        if _template_running() {
            // Its parent-death signal is set already: any thread may ask it (a template
            // found dead is started again below, on the spawner thread).
            pid = launcher.launch_running(theirs.as_fd(), &env).ok();
        }
        let pid = match pid {
            Some(pid) => pid,
            None => {
                procpool_engine::on_spawner_thread(move || launcher.launch(theirs.as_fd(), &env))?
            }
        };
        match pidfd_open(pid) {
            Ok(pidfd) => Ok((pid, mine, pidfd)),
            Err(e) => {
                // SAFETY: plain kill and waitpid calls on our own child, not yet reaped
                // by anyone (nothing of the caller knows its pid yet).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
                }
                Err(e)
            }
        }
    })?;
    Ok((pid, sock.into_raw_fd(), pidfd.into_raw_fd()))
}

/// Asks the template, without waiting for its answer, to fork a spare process with the
/// settings `prep` (`_template.prep()`): a `procpool.Process` child that sets itself up
/// (its session, its parent-death signal) and waits for what to run, so that the next
/// [`_launch_process`] hands it over at once instead of asking the template and waiting
/// for a fork. Nothing is done when a spare waits or was asked for already, or when no
/// template runs. The spare dies with this process (its parent-death signal) and is
/// killed and reaped here when found stale (other settings) or when the template that
/// was asked for it dies before answering.
#[pyo3::pyfunction]
pub(crate) fn _request_spare(py: pyo3::Python<'_>, prep: Vec<u8>) {
    py.detach(move || {
        let me = std::process::id();
        let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = guard.as_mut() else { return };
        if t.owner != me || t.pending.is_some() {
            return;
        }
        if SPARE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.owner == me)
        {
            return;
        }
        let Ok((mine, theirs)) = UnixStream::pair() else {
            return;
        };
        let body = request_body(
            &prep,
            &[
                (OsString::from(PROCESS_ENV.0), OsString::from(PROCESS_ENV.1)),
                (OsString::from("PROCPOOL_SPARE"), OsString::from("1")),
            ],
        );
        match send_request(&t.ctl, &[theirs.as_fd()], &body) {
            Ok(()) => t.pending = Some((mine, prep)),
            Err(_) => {
                if let Some(t) = guard.take() {
                    t.end();
                }
            }
        }
    });
}

/// The launcher of a `procpool.Process` (the interpreter and `sys.path` of the caller).
fn process_launcher(py: pyo3::Python<'_>, prep: Vec<u8>) -> pyo3::PyResult<TemplateLauncher> {
    use pyo3::prelude::*;
    let sys = py.import("sys")?;
    let python: OsString = sys.getattr("executable")?.extract()?;
    if python.is_empty() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "sys.executable is empty: procpool cannot start Python processes from an \
             embedded interpreter",
        ));
    }
    let path: Vec<OsString> = sys
        .getattr("path")?
        .try_iter()?
        .filter_map(|p| p.ok()?.extract().ok())
        .collect();
    Ok(TemplateLauncher {
        python: python.into(),
        path,
        prep,
        init_fds: None,
    })
}

/// Reads the template's answer to a spare request still unread, if any: the spare is
/// kept (in [`SPARE`]) if it came. A template that does not answer is ended (its
/// answers could no longer be told apart).
fn settle(guard: &mut Option<Template>) {
    let Some(t) = guard.as_mut() else { return };
    let Some((sock, prep)) = t.pending.take() else {
        return;
    };
    let mut answer = [0u8; 8];
    match (&t.ctl).read_exact(&mut answer) {
        Ok(()) => {
            let pid = i64::from_le_bytes(answer);
            if pid == -i64::from(libc::EAGAIN) {
                // Preloading left the template with threads: it exited (see
                // `launch_with`).
                NO_PRELOAD.store(true, Relaxed);
                if let Some(t) = guard.take() {
                    t.end();
                }
                return;
            }
            if pid <= 0 {
                return; // its fork failed: no spare
            }
            let pid = pid as u32;
            let Ok(pidfd) = pidfd_open(pid) else {
                return; // gone already (reaped by the program or the kernel)
            };
            let new = Spare {
                pid,
                pidfd,
                sock,
                prep,
                owner: std::process::id(),
            };
            let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = spare.replace(new) {
                if old.owner == std::process::id() {
                    discard(&old.pidfd);
                } else {
                    std::mem::forget(old);
                }
            }
        }
        Err(_) => {
            if let Some(t) = guard.take() {
                t.end();
            }
            reap_unreported(sock);
        }
    }
}

/// The template died, or stopped answering, after a spare was asked for and before its
/// pid came: a spare it forked writes its own pid first on its socket (`sock`), so it is
/// killed and reaped here rather than left a zombie. An end of file means none was
/// forked (the template's copy of the spare's socket end went with it).
fn reap_unreported(sock: UnixStream) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut pid = [0u8; 8];
    if (&sock).read_exact(&mut pid).is_ok() {
        let pid = i64::from_le_bytes(pid);
        if let Some(pidfd) = (pid > 0).then(|| pidfd_open(pid as u32).ok()).flatten() {
            discard(&pidfd);
        }
    }
}

/// The spare process, if one waits with settings `prep` and is alive; a stale or dead
/// one is killed and reaped.
fn take_spare(prep: &[u8]) -> Option<Spare> {
    let me = std::process::id();
    {
        let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|t| t.owner == me) {
            settle(&mut guard);
        }
    }
    let s = SPARE.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    if s.owner != me {
        // Inherited through a fork: not our child.
        std::mem::forget(s);
        return None;
    }
    if s.prep != prep || !alive(&s.pidfd) {
        discard(&s.pidfd);
        return None;
    }
    Some(s)
}

/// `P_PIDFD` of `waitid` (Linux 5.4).
const P_PIDFD: libc::idtype_t = 3;

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain system call; the descriptor it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process of `pidfd` is still running (its pidfd is readable once it ends).
fn alive(pidfd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0
}

/// Kills (through its pidfd: never another process that took its pid) and reaps a
/// spare process.
fn discard(pidfd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system calls on a pidfd we own; the waitid fills a local siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        ) < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// In a process started by [`_launch_process`], after `setsid`: dies, with its process group,
/// when its parent dies.
#[pyo3::pyfunction]
pub(crate) fn _die_with_parent_group() -> pyo3::PyResult<()> {
    Ok(procpool_engine::die_with_parent_group()?)
}

/// Whether this process has its template running (started by this process, and not
/// found dead yet).
#[pyo3::pyfunction]
pub(crate) fn _template_running() -> bool {
    TEMPLATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|t| t.owner == std::process::id())
}

/// Takes `pid`, a fork of this process made by `_template.fork_here`, as this process's
/// template, `fd` the socket to it (owned from now on). If a template is running
/// already, the new one is ended.
#[pyo3::pyfunction]
pub(crate) fn _adopt_template(pid: u32, fd: i32) {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller gives up `fd` (a socket it detached).
    let ctl = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let _ = ctl.set_read_timeout(Some(ANSWER_TIMEOUT));
    let new = Template {
        pid,
        ctl,
        owner: std::process::id(),
        pending: None,
    };
    let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
    if guard
        .as_ref()
        .is_some_and(|t| t.owner != std::process::id())
    {
        std::mem::forget(guard.take());
    }
    if guard.is_some() {
        drop(guard);
        new.end();
    } else {
        *guard = Some(new);
    }
}

/// The pid of this process's spare process (see [`_request_spare`]), after reading the
/// template's answer if it is still due; None when none waits. For tests.
#[pyo3::pyfunction]
pub(crate) fn _spare_pid(py: pyo3::Python<'_>) -> Option<u32> {
    py.detach(|| {
        let me = std::process::id();
        let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|t| t.owner == me) {
            settle(&mut guard);
        }
        drop(guard);
        SPARE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|s| s.owner == me)
            .map(|s| s.pid)
    })
}

/// The pid of this process's template, if it runs. For tests.
#[pyo3::pyfunction]
pub(crate) fn _template_pid() -> Option<u32> {
    TEMPLATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|t| t.owner == std::process::id())
        .map(|t| t.pid)
}
