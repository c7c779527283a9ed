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
}

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
        let mut body = Vec::with_capacity(self.prep.len() + 256);
        body.extend_from_slice(&(self.prep.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.prep);
        for (k, v) in env {
            body.extend_from_slice(k.as_bytes());
            body.push(b'=');
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
        if guard
            .as_ref()
            .is_some_and(|t| t.owner != std::process::id())
        {
            // Inherited through a fork: neither ours to use nor to kill.
            std::mem::forget(guard.take());
        }
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
    /// Kills and reaps the template.
    fn end(self) {
        let pid = self.pid as libc::pid_t;
        drop(self.ctl);
        // SAFETY: plain kill and waitpid calls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            while libc::waitpid(pid, std::ptr::null_mut(), 0) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
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
        })
    }
}

/// Sends one request (the worker's socket end, then the initializer's descriptors, by
/// `SCM_RIGHTS`, then the body) and reads the answer: a pid, or a negative errno.
fn request(ctl: &mut UnixStream, fds: &[BorrowedFd<'_>], body: &[u8]) -> io::Result<i64> {
    let head = (body.len() as u32).to_le_bytes();
    send_with_fds(ctl, &head, fds)?;
    let mut sent = 0;
    while sent < body.len() {
        match rustix::net::send(&*ctl, &body[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
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

/// Starts a process from the template, as a worker is started, but for the caller's own
/// use (`procpool.Process`): `fd` becomes its standard input (a socket on which the
/// caller then sends what the process runs), `env` is added to its environment, `prep`
/// is `_template.prep()`. The template, if not yet running, is started on the engine's
/// spawner thread, so the process lives until it ends or this process dies. Returns the
/// pid; the process is a child of this process.
#[pyo3::pyfunction]
pub(crate) fn _launch(
    py: pyo3::Python<'_>,
    fd: i32,
    env: Vec<(OsString, OsString)>,
    prep: Vec<u8>,
) -> pyo3::PyResult<u32> {
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
    let launcher = TemplateLauncher {
        python: python.into(),
        path,
        prep,
        init_fds: None,
    };
    // SAFETY: the caller keeps `fd` open for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    let pid = py.detach(move || {
        use std::os::fd::AsFd;
        if _template_running() {
            // Its parent-death signal is set already: any thread may ask it (a template
            // found dead is started again below, on the spawner thread).
            if let Ok(pid) = launcher.launch_running(fd.as_fd(), &env) {
                return Ok(pid);
            }
        }
        procpool_engine::on_spawner_thread(move || launcher.launch(fd.as_fd(), &env))
    })?;
    Ok(pid)
}

/// In a process started by [`_launch`], after `setsid`: dies, with its process group,
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
