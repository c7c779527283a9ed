//! Starting a worker process and holding it until it is reaped.
//!
//! A worker is the parent's own executable started again (`/proc/self/exe`), with the
//! parent's arguments and an environment variable that tells `init()` it is a worker (and
//! the parent's pid, executable fingerprint and message limit). Its standard input is one
//! end of a socket pair; waiting in that socket are two sealed memfds: the control block
//! (which task the worker is running, since when) and the data region where the parent
//! writes large arguments.
//!
//! A worker leads a session (and process group) of its own; killing or reaping it kills
//! its whole group, so the processes its tasks started die with it. The design, and how
//! a worker dies with its parent, is written down in `sys::linux_proc`.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use crate::error::{Death, PoolError};
use crate::identity::ENV_INDEX;
use crate::sys::{self, GrowingRegion, SharedRegion};
use crate::wire::PROTOCOL_VERSION;

/// Environment variable naming a worker's inherited descriptors.
pub(crate) const ENV_WORKER: &str = "PROCPOOL_WORKER";

/// Control word: sequence number of the job the worker started last.
pub(crate) const CTL_STARTED_SEQ: usize = 0;
/// Control word: when it started (monotonic nanoseconds).
pub(crate) const CTL_STARTED_AT: usize = 1;
/// Control word: bytes the worker published in the results ring (see `ring`).
pub(crate) const CTL_RING_WRITE: usize = 2;
/// Control word: bytes of the results ring the parent has read.
pub(crate) const CTL_RING_READ: usize = 3;
/// Control word: set by the parent before it sleeps; a worker that publishes a result
/// then clears it and rings the doorbell.
pub(crate) const CTL_SLEEPING: usize = 4;
/// Control word: the claim word (see `claim`): the job the worker claimed last, and the
/// parent's stop flag.
pub(crate) const CTL_CLAIM: usize = 5;
/// Control word: the futex word a caller waiting for a job it sent straight to the worker
/// sleeps on (its low 32 bits); the worker bumps it after each result (see `direct`).
pub(crate) const CTL_DIRECT_WAKE: usize = 16;
/// Control word: set by such a caller before it sleeps; a worker that publishes a result
/// then clears it and wakes the futex.
pub(crate) const CTL_DIRECT_WAITING: usize = 17;
/// Control word: bumped by the parent after each write to the worker's socket, so that a
/// worker spinning for its next job sees it come without a system call.
pub(crate) const CTL_BELL: usize = 24;
/// Control word: the last job a caller sent straight to the worker (a worker spins for
/// its next job only after such a job; a task that writes it only makes its worker spin).
pub(crate) const CTL_DIRECT_SEQ: usize = 25;
/// Control word: how far the running job's items got (see `items`): 0, or a mark, the
/// items finished and the bytes of their results in the items area. Reset at each job's
/// start; read by the parent only after the worker died. Written after every item, so it
/// sits on a cache line of its own, away from the words the parent reads while the
/// worker runs.
pub(crate) const CTL_ITEMS: usize = 32;
/// Where the results ring starts in the control block.
pub(crate) const RING_OFFSET: usize = 4096;
/// Size of the results ring.
pub(crate) const RING_LEN: usize = 4 << 20;
/// Where the items area starts: the results of the running job's finished items, as the
/// worker wrote them so far (see `items`).
pub(crate) const ITEMS_OFFSET: usize = RING_OFFSET + RING_LEN;
/// Size of the items area.
pub(crate) const ITEMS_LEN: usize = 2 << 20;
/// Size of the control block shared with each worker: a page of control words, the
/// results ring, then the items area. Pages cost memory only once written.
pub(crate) const CONTROL_LEN: usize = ITEMS_OFFSET + ITEMS_LEN;

/// Size of each worker's data region, where large arguments are written. Its pages cost
/// memory only once written, and the parent maps only the part it has used.
pub(crate) const DATA_LEN: usize = 128 << 20;

/// Kernel buffer size asked for each socket (the kernel caps it at `wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Starts worker processes another way than re-executing the running program: a front
/// whose workers are not this executable (an interpreter, a template process that forks
/// them) plugs in here, through [`EngineConfig::launcher`](crate::EngineConfig::launcher).
///
/// The process started must
/// - be a child of this process (its pid is waited on through a pidfd, and reaped here),
///   leading a session of its own (`setsid`), with an empty signal mask;
/// - have `stdin` as its standard input, and the variables `env` in its environment;
/// - then run [`serve_launched`](crate::serve_launched) with the identity set in
///   [`EngineConfig::identity`](crate::EngineConfig::identity).
///
/// `launch` is called on the engine's one spawner thread (see `process::on_spawner_thread`),
/// so a child it starts with `PR_SET_PDEATHSIG` lives until the process ends.
///
/// ```
/// use std::ffi::OsString;
/// use std::os::fd::BorrowedFd;
/// use procpool_engine::Launcher;
///
/// #[derive(Debug)]
/// struct Refuse;
/// impl Launcher for Refuse {
///     fn launch(&self, _stdin: BorrowedFd<'_>, _env: &[(OsString, OsString)]) -> std::io::Result<u32> {
///         Err(std::io::Error::other("no workers here"))
///     }
/// }
/// ```
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Starts one worker; returns its pid.
    ///
    /// # Errors
    /// Why the process could not be started (the pool retries, then gives up with
    /// [`PoolError::Spawn`]).
    fn launch(&self, stdin: BorrowedFd<'_>, env: &[(OsString, OsString)]) -> std::io::Result<u32>;
}

/// Where workers come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpawnOptions {
    /// Executable to start instead of `/proc/self/exe`.
    pub(crate) executable: Option<PathBuf>,
    /// Starts workers instead of re-executing an executable.
    pub(crate) launcher: Option<Arc<dyn Launcher>>,
    /// What the handshake checks instead of the executable's fingerprint.
    pub(crate) identity: Option<u64>,
    /// Largest frame body either side accepts.
    pub(crate) max_message: usize,
    /// The pool slot the worker takes (see `identity`), if it is a pool's.
    pub(crate) index: Option<usize>,
}

/// The fingerprint of this process's executable, computed once.
pub(crate) fn my_fingerprint() -> u64 {
    static FP: OnceLock<u64> = OnceLock::new();
    *FP.get_or_init(|| sys::exe_fingerprint().unwrap_or(0))
}

/// What a worker reads from [`ENV_WORKER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerEnv {
    pub(crate) version: u32,
    pub(crate) parent: u32,
    /// The executable's fingerprint, or the identity a front chose
    /// ([`EngineConfig::identity`](crate::EngineConfig::identity)).
    pub(crate) fingerprint: u64,
    pub(crate) max_message: usize,
}

impl WorkerEnv {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}:{}:{:x}:{}",
            self.version, self.parent, self.fingerprint, self.max_message
        )
    }

    pub(crate) fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        let env = WorkerEnv {
            version: it.next()?.parse().ok()?,
            parent: it.next()?.parse().ok()?,
            fingerprint: u64::from_str_radix(it.next()?, 16).ok()?,
            max_message: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(env)
    }
}

/// A live (or not yet reaped) worker process. Dropping it kills and reaps the process.
#[derive(Debug)]
pub(crate) struct WorkerProc {
    pub(crate) pid: u32,
    /// What its handshake must name (see [`WorkerEnv::fingerprint`]).
    pub(crate) identity: u64,
    pidfd: OwnedFd,
    /// Shared with a caller that sends a job straight to the worker (see `direct`).
    pub(crate) sock: Arc<OwnedFd>,
    pub(crate) ctl: Arc<SharedRegion>,
    /// Where large arguments are written for the worker to read.
    /// Mapped in the parent only as far as it is used (see `GrowingRegion`).
    pub(crate) data: GrowingRegion,
    death: Option<Death>,
}

/// Starts a worker. The socket it returns is blocking; the caller may change that.
///
/// The worker gets its end of the socket as standard input (the worker moves it away and
/// puts `/dev/null` there before any user code runs) and finds the two shared regions
/// waiting in the socket as descriptors. So the process is started with `posix_spawn`
/// (no `fork` of a possibly large parent, no code between fork and exec) and inherits no
/// other descriptor on purpose. It starts in a session of its own, with an empty signal
/// mask and default signal actions (see `sys::spawn_session_leader`), and from the
/// process's one spawner thread (see [`on_spawner_thread`]).
pub(crate) fn spawn(opts: &SpawnOptions) -> Result<WorkerProc, PoolError> {
    let spawn_err = |e: std::io::Error| PoolError::Spawn(Arc::new(e));
    let (mine, theirs) = sys::socketpair().map_err(spawn_err)?;
    for fd in [&mine, &theirs] {
        sys::grow_socket_buffers(fd.as_fd(), SOCKET_BUFFER);
    }
    let ctl = SharedRegion::create("procpool-control", CONTROL_LEN).map_err(spawn_err)?;
    let data = GrowingRegion::create("procpool-data", DATA_LEN).map_err(spawn_err)?;
    sys::send_fds(mine.as_fd(), REGIONS_MARK, &[ctl.fd(), data.fd()]).map_err(spawn_err)?;
    let env = WorkerEnv {
        version: PROTOCOL_VERSION,
        parent: sys::my_pid(),
        fingerprint: opts.identity.unwrap_or_else(my_fingerprint),
        max_message: opts.max_message,
    };
    if let Some(launcher) = &opts.launcher {
        let launcher = launcher.clone();
        let mut vars = vec![(OsString::from(ENV_WORKER), OsString::from(env.encode()))];
        if let Some(i) = opts.index {
            vars.push((ENV_INDEX.into(), i.to_string().into()));
        }
        let pid =
            on_spawner_thread(move || launcher.launch(theirs.as_fd(), &vars)).map_err(spawn_err)?;
        return watch(pid, env.fingerprint, mine, ctl, data);
    }
    let exe = opts
        .executable
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let exe = cstring(exe.into_os_string()).map_err(spawn_err)?;
    let mut args = std::env::args_os();
    let arg0 = args
        .next()
        .unwrap_or_else(|| OsString::from("procpool-worker"));
    let argv = std::iter::once(arg0)
        .chain(args)
        .map(cstring)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(spawn_err)?;
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os().filter(|(k, _)| k != ENV_WORKER && k != ENV_INDEX) {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        envp.push(cstring(kv).map_err(spawn_err)?);
    }
    envp.push(cstring(format!("{ENV_WORKER}={}", env.encode()).into()).map_err(spawn_err)?);
    if let Some(i) = opts.index {
        envp.push(cstring(format!("{ENV_INDEX}={i}").into()).map_err(spawn_err)?);
    }
    // Standard input is set by dup2 onto descriptor 0, which must not be the source.
    let theirs = if theirs.as_raw_fd() < 3 {
        sys::dup_above_stdio(theirs.as_fd()).map_err(spawn_err)?
    } else {
        theirs
    };
    let pid =
        on_spawner_thread(move || sys::spawn_session_leader(&exe, &argv, &envp, theirs.as_fd()))
            .map_err(spawn_err)?;
    watch(pid, env.fingerprint, mine, ctl, data)
}

/// Holds a started worker by a pidfd.
fn watch(
    pid: u32,
    identity: u64,
    mine: OwnedFd,
    ctl: SharedRegion,
    data: GrowingRegion,
) -> Result<WorkerProc, PoolError> {
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            sys::kill_group(pid);
            return Err(PoolError::Spawn(Arc::new(e)));
        }
    };
    Ok(WorkerProc {
        pid,
        identity,
        pidfd,
        sock: Arc::new(mine),
        ctl: Arc::new(ctl),
        data,
        death: None,
    })
}

fn cstring(s: OsString) -> std::io::Result<CString> {
    CString::new(s.into_vec()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument, environment variable or path holds a NUL byte",
        )
    })
}

/// A job for the spawner thread.
type SpawnJob = Box<dyn FnOnce() + Send>;

/// Runs `f` on the process's spawner thread: one internal thread, started on first use,
/// that lives as long as the process.
///
/// A child's parent-death signal (`PR_SET_PDEATHSIG`) fires when the *thread* that
/// started it ends, not the process. Starting every worker from this one thread makes a
/// worker (and a one-off process) live until it is joined, killed, or the parent process
/// dies, whichever thread asked for it.
///
/// Public for fronts that start processes of their own next to their pools (the Python
/// front's `Process`), so that those live as long as the process too.
///
/// ```
/// let tid = procpool_engine::on_spawner_thread(|| Ok(std::thread::current().id())).unwrap();
/// assert_ne!(tid, std::thread::current().id());
/// ```
///
/// # Errors
/// What `f` returns, or an error when the thread cannot be started.
pub fn on_spawner_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    // The thread and the pid of the process that started it: a child made by a plain
    // `fork` inherits the sender but not the thread, and starts its own.
    static SPAWNER: Mutex<Option<(u32, mpsc::Sender<SpawnJob>)>> = Mutex::new(None);
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let job: SpawnJob = Box::new(move || {
        let _ = reply_tx.send(f());
    });
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
        let me = sys::my_pid();
        if spawner.as_ref().is_none_or(|(pid, _)| *pid != me) {
            let (t, rx) = mpsc::channel::<SpawnJob>();
            std::thread::Builder::new()
                .name("procpool-spawner".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })?;
            // A sender inherited through `fork` is forgotten, never dropped: its channel
            // belongs to the parent's memory image.
            if let Some(old) = spawner.replace((me, t)) {
                std::mem::forget(old);
            }
        }
        spawner
            .as_ref()
            .expect("set above")
            .1
            .send(job)
            .map_err(|_| std::io::Error::other("the procpool spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the procpool spawner thread is gone"))?
}

/// The bytes that carry the shared regions' descriptors to a new worker.
pub(crate) const REGIONS_MARK: &[u8] = b"procpool-regions";

impl WorkerProc {
    /// Process descriptor: readable once the process has ended.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends SIGKILL to the worker and to its process group: every process its tasks
    /// started dies with it, unless it left the group on purpose.
    pub(crate) fn kill(&self) {
        if self.death.is_none() {
            // Not reaped yet: the group's id (the worker's pid) is still ours.
            sys::kill_group(self.pid);
            // The worker itself, even if a task moved it to another group.
            let _ = sys::kill(self.pidfd.as_fd());
        }
    }

    /// Waits for the process to end, kills what is left of its process group, and reaps
    /// it.
    pub(crate) fn reap(&mut self) -> Death {
        if let Some(d) = self.death {
            return d;
        }
        let d = sys::reap_with_group(self.pidfd.as_fd(), self.pid).unwrap_or(Death::Unknown);
        self.death = Some(d);
        d
    }

    /// Sends SIGTERM (a polite kill, which the task may handle).
    pub(crate) fn terminate(&self) {
        if self.death.is_none() {
            let _ = sys::terminate(self.pidfd.as_fd());
        }
    }

    /// Kills and reaps.
    pub(crate) fn kill_and_reap(&mut self) -> Death {
        self.kill();
        self.reap()
    }

    /// The job the worker started last and when: `(seq, monotonic nanos)`.
    pub(crate) fn started(&self) -> (u64, u64) {
        let seq = self.ctl.word(CTL_STARTED_SEQ);
        let at = self.ctl.word(CTL_STARTED_AT);
        loop {
            use std::sync::atomic::Ordering::Acquire;
            let s1 = seq.load(Acquire);
            let t = at.load(Acquire);
            if seq.load(Acquire) == s1 {
                return (s1, t);
            }
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trip_and_rejects_junk() {
        let e = WorkerEnv {
            version: 1,
            parent: 77,
            fingerprint: 0xdead_beef,
            max_message: 1 << 20,
        };
        assert_eq!(WorkerEnv::decode(&e.encode()), Some(e));
        assert_eq!(WorkerEnv::decode("1:2:3"), None);
        assert_eq!(WorkerEnv::decode("1:2:zz:6"), None);
        assert_eq!(WorkerEnv::decode("1:2:3:4:5"), None);
    }
}
