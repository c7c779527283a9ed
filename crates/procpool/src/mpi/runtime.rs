//! MPI in this process: start-up, the executable check, ending the job on every exit
//! path, and the few MPI calls the backend makes.
//!
//! MPI is initialized once, by [`crate::init`], at the `MPI_THREAD_SERIALIZED` level:
//! every MPI call is made under the [`lock`] of this module, from whichever thread.
//! `MPI_Finalize` runs at process exit (an `atexit` handler), after every agent was told
//! to stop (a panic unwinding out of rank 0's `main` takes that path too); a panic on an
//! agent's main thread ends the whole job with `MPI_Abort`.

use std::ffi::{c_int, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use mpi::traits::*;

use procpool_engine::{HandshakeError, PoolError};

use super::msg::{self, Hello};

/// How long the caller's rank waits for every agent to say hello at start-up.
const HELLO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long rank 0 waits at exit for every agent to say it leaves.
const BYE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long ending the job may take before the process leaves without `MPI_Finalize`
/// (which makes the launcher end every rank).
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(30);

/// MPI's state in this process, behind [`lock`].
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) rank: i32,
    pub(crate) size: i32,
    /// The agents' hellos, by rank - 1 (caller's rank only), or why they are unusable.
    pub(crate) agents: Result<Vec<Hello>, PoolError>,
    /// An MPI pool is open (one at a time).
    pub(crate) pool_open: bool,
    /// `MPI_Finalize` ran: no MPI call may follow.
    pub(crate) finalized: bool,
    /// The fault-tolerance extension (ULFM) when the library has it and the job was
    /// launched with it on, or why a lost rank ends the job.
    pub(crate) ft: Result<Ulfm, String>,
    /// Ranks known to be lost, with what happened (ascending by when).
    pub(crate) lost: Vec<(i32, String)>,
}

type AckFn = unsafe extern "C" fn(mpi::ffi::MPI_Comm) -> c_int;
type AckedFn = unsafe extern "C" fn(mpi::ffi::MPI_Comm, *mut mpi::ffi::MPI_Group) -> c_int;

/// The ULFM calls this backend makes (`MPIX_Comm_failure_ack`,
/// `MPIX_Comm_failure_get_acked`), looked up at run time: a library without them (Open
/// MPI 4, MPICH built without ULFM) links and runs as before, and a lost rank ends the
/// job there. Only point-to-point messages are used, on `MPI_COMM_WORLD`, so no
/// communicator needs revoking or shrinking: a failed rank is acknowledged (which lets
/// receives from any source go on) and its agent is given up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ulfm {
    ack: AckFn,
    acked: AckedFn,
}

/// Looks up the ULFM calls and whether this job runs with fault tolerance on; on
/// success, errors on `MPI_COMM_WORLD` are returned as codes from then on.
fn ulfm() -> Result<Ulfm, String> {
    let sym = |name: &std::ffi::CStr| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other
        // preconditions; the result is checked for null below.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (Some(ack), Some(acked)) = (
        sym(c"MPIX_Comm_failure_ack"),
        sym(c"MPIX_Comm_failure_get_acked"),
    ) else {
        return Err(format!(
            "the MPI library ({}) lacks the ULFM fault-tolerance extension, so losing an \
             agent ends the job; build against Open MPI 5 (`scripts/setup` installs it \
             into .venv from PyPI) and launch with `mpirun --with-ft ulfm`",
            library_version()
        ));
    };
    let on = std::env::var("OMPI_MCA_mpi_ft_enable")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"));
    if !on {
        return Err(
            "the MPI library has the ULFM extension, but the job was launched without fault \
             tolerance, so losing an agent ends the job; launch with `mpirun --with-ft ulfm`"
                .into(),
        );
    }
    // SAFETY: both symbols are the library's ULFM calls, whose C signatures these are.
    let u = unsafe {
        Ulfm {
            ack: std::mem::transmute::<*mut c_void, AckFn>(ack),
            acked: std::mem::transmute::<*mut c_void, AckedFn>(acked),
        }
    };
    // SAFETY: MPI is initialized; MPI_COMM_WORLD and MPI_ERRORS_RETURN are valid handles.
    let rc = unsafe {
        mpi::ffi::MPI_Comm_set_errhandler(mpi::ffi::RSMPI_COMM_WORLD, mpi::ffi::RSMPI_ERRORS_RETURN)
    };
    if rc != 0 {
        return Err(format!(
            "MPI_Comm_set_errhandler failed: {}",
            error_string(rc)
        ));
    }
    Ok(u)
}

/// The MPI library's version line.
fn library_version() -> String {
    let mut buf = vec![0u8; 8192];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_LIBRARY_VERSION_STRING (at most 8192) bytes.
    unsafe { mpi::ffi::MPI_Get_library_version(buf.as_mut_ptr().cast(), &mut len) };
    buf.truncate(len.clamp(0, 8192) as usize);
    let s = String::from_utf8_lossy(&buf);
    s.lines()
        .next()
        .unwrap_or("unknown")
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// MPI's text for an error code.
pub(crate) fn error_string(code: c_int) -> String {
    let mut buf = vec![0u8; 512];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_ERROR_STRING (256) bytes and more.
    unsafe { mpi::ffi::MPI_Error_string(code, buf.as_mut_ptr().cast(), &mut len) };
    buf.truncate(len.clamp(0, 512) as usize);
    format!("{} (MPI error {code})", String::from_utf8_lossy(&buf))
}

impl Runtime {
    /// After an MPI call failed: the ranks newly known as failed (acknowledged, so that
    /// receives from any source go on), each recorded in `lost`. Empty without ULFM.
    pub(crate) fn newly_failed(&mut self) -> Vec<i32> {
        let Ok(u) = self.ft else { return Vec::new() };
        // SAFETY: reading a constant handle of the library.
        let world = unsafe { mpi::ffi::RSMPI_COMM_WORLD };
        let mut ranks = Vec::new();
        // SAFETY: ULFM calls on MPI_COMM_WORLD with valid out-pointers; the groups made
        // here are freed here.
        unsafe {
            (u.ack)(world);
            let mut failed = std::mem::MaybeUninit::uninit();
            if (u.acked)(world, failed.as_mut_ptr()) != 0 {
                return Vec::new();
            }
            let mut failed = failed.assume_init();
            let mut n: c_int = 0;
            mpi::ffi::MPI_Group_size(failed, &mut n);
            if n > 0 {
                let mut all = std::mem::MaybeUninit::uninit();
                mpi::ffi::MPI_Comm_group(world, all.as_mut_ptr());
                let mut all = all.assume_init();
                let from: Vec<c_int> = (0..n).collect();
                let mut to = vec![-1 as c_int; n as usize];
                mpi::ffi::MPI_Group_translate_ranks(failed, n, from.as_ptr(), all, to.as_mut_ptr());
                mpi::ffi::MPI_Group_free(&mut all);
                ranks = to;
            }
            mpi::ffi::MPI_Group_free(&mut failed);
        }
        ranks.retain(|&r| r >= 0 && !self.lost.iter().any(|(l, _)| *l == r));
        ranks.sort_unstable();
        for &r in &ranks {
            self.lost
                .push((r, "its process ended (ULFM reported it failed)".into()));
        }
        ranks
    }

    /// Whether `rank` is known to be lost.
    pub(crate) fn is_lost(&self, rank: i32) -> bool {
        self.lost.iter().any(|(r, _)| *r == rank)
    }
}

/// `MPI_ANY_SOURCE`.
pub(crate) fn any_source() -> i32 {
    // SAFETY: reading a constant of the library.
    unsafe { mpi::ffi::RSMPI_ANY_SOURCE }
}

/// `MPI_ANY_TAG`.
pub(crate) fn any_tag() -> i32 {
    // SAFETY: reading a constant of the library.
    unsafe { mpi::ffi::RSMPI_ANY_TAG }
}

/// A message matched by [`improbe`], to be received with [`mrecv`] or [`Inbox::receive`].
#[derive(Debug)]
pub(crate) struct Probed {
    pub(crate) message: mpi::ffi::MPI_Message,
    pub(crate) source: i32,
    pub(crate) tag: i32,
    pub(crate) len: usize,
}

// SAFETY: a message handle is an opaque value, used under the runtime lock.
unsafe impl Send for Probed {}

/// `MPI_Improbe` on `MPI_COMM_WORLD` (source and tag may be `MPI_ANY_*`), with its
/// error code: rsmpi's probes read the flag even when the call failed.
pub(crate) fn improbe(source: i32, tag: i32) -> Result<Option<Probed>, c_int> {
    let mut flag: c_int = 0;
    let mut message = std::mem::MaybeUninit::<mpi::ffi::MPI_Message>::uninit();
    let mut status = std::mem::MaybeUninit::<mpi::ffi::MPI_Status>::uninit();
    // SAFETY: valid out-pointers; read only when the call succeeded and set the flag.
    unsafe {
        let rc = mpi::ffi::MPI_Improbe(
            source,
            tag,
            mpi::ffi::RSMPI_COMM_WORLD,
            &mut flag,
            message.as_mut_ptr(),
            status.as_mut_ptr(),
        );
        if rc != 0 {
            return Err(rc);
        }
        if flag == 0 {
            return Ok(None);
        }
        let status = status.assume_init();
        let mut count: c_int = 0;
        mpi::ffi::MPI_Get_count(&status, mpi::ffi::RSMPI_UINT8_T, &mut count);
        Ok(Some(Probed {
            message: message.assume_init(),
            source: status.MPI_SOURCE,
            tag: status.MPI_TAG,
            len: count.max(0) as usize,
        }))
    }
}

/// Receives a matched message whole (`MPI_Mrecv`).
pub(crate) fn mrecv(mut p: Probed) -> Result<Vec<u8>, c_int> {
    let mut buf = vec![0u8; p.len];
    // SAFETY: the buffer holds the probed message's length; the handle is consumed.
    let rc = unsafe {
        mpi::ffi::MPI_Mrecv(
            buf.as_mut_ptr().cast::<c_void>(),
            p.len as c_int,
            mpi::ffi::RSMPI_UINT8_T,
            &mut p.message,
            mpi::ffi::RSMPI_STATUS_IGNORE,
        )
    };
    if rc != 0 { Err(rc) } else { Ok(buf) }
}

static RUNTIME: OnceLock<Mutex<Runtime>> = OnceLock::new();

/// This process's rank (-1 before MPI is initialized), readable without the lock.
static RANK: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The runtime, if MPI was initialized (this process is a rank of a job).
pub(crate) fn lock() -> Option<MutexGuard<'static, Runtime>> {
    RUNTIME
        .get()
        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`).
fn launched() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Called by [`crate::init`] in a process that is not a worker: under an MPI launcher,
/// initializes MPI; on ranks other than 0, serves as an agent and exits.
pub(crate) fn init() {
    if RUNTIME.get().is_some() || !launched() {
        return;
    }
    let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
    else {
        return; // Initialized by someone else: leave MPI to them.
    };
    // Finalized by `at_exit`, never by a drop (a drop during a panic's unwinding hangs
    // the job in `MPI_Finalize`).
    std::mem::forget(universe);
    let world = mpi::topology::SimpleCommunicator::world();
    let (rank, size) = (world.rank(), world.size());
    RANK.store(rank, std::sync::atomic::Ordering::Relaxed);
    let ft = ulfm();
    install_panic_hook(rank);
    if threading < mpi::Threading::Serialized {
        eprintln!(
            "procpool: the MPI library offers no thread support beyond {threading:?}; \
             procpool's MPI backend needs MPI_THREAD_SERIALIZED. Ending the job."
        );
        world.abort(1);
    }
    let me = Hello {
        fingerprint: fingerprint(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        pid: std::process::id(),
        host: host_name(),
    };
    if rank != 0 {
        world
            .process_at_rank(0)
            .send_with_tag(&msg::encode_hello(&me)[..], msg::HELLO);
        let _ = RUNTIME.set(Mutex::new(Runtime {
            rank,
            size,
            agents: Ok(Vec::new()),
            pool_open: false,
            finalized: false,
            ft,
            lost: Vec::new(),
        }));
        super::agent::serve(rank);
        finalize_and_exit(0);
    }
    let mut rt = Runtime {
        rank,
        size,
        agents: Ok(Vec::new()),
        pool_open: false,
        finalized: false,
        ft,
        lost: Vec::new(),
    };
    rt.agents = gather_hellos(&mut rt, &me).map_err(|(m, e)| {
        eprintln!("procpool: {m}");
        e
    });
    let _ = RUNTIME.set(Mutex::new(rt));
    // SAFETY: `at_exit` is an `extern "C" fn()` that stays valid for the whole process.
    if unsafe { on_exit(at_exit, std::ptr::null_mut()) } != 0 {
        eprintln!("procpool: could not register the MPI shutdown; ending the job.");
        world.abort(1);
    }
}

/// Receives every agent's hello and checks that it runs this executable.
/// On failure, a sentence for standard error (naming the rank and host) and the error
/// that MPI pools will be refused with.
/// A rank lost before its hello is kept as a placeholder (pid 0, its host unknown): the
/// link never deals to it.
fn gather_hellos(rt: &mut Runtime, me: &Hello) -> Result<Vec<Hello>, (String, PoolError)> {
    let size = rt.size;
    let other = |m: String| {
        let e = PoolError::Io(std::sync::Arc::new(std::io::Error::other(m.clone())));
        (m, e)
    };
    let mut got: Vec<Option<Hello>> = vec![None; size.max(1) as usize - 1];
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut nap = Nap::default();
    while got.iter().any(Option::is_none) {
        match improbe(any_source(), msg::HELLO) {
            Err(rc) => {
                let failed = rt.newly_failed();
                if failed.is_empty() {
                    return Err(other(format!(
                        "MPI failed while rank 0 waited for the agents' hellos: {}",
                        error_string(rc)
                    )));
                }
                for r in failed {
                    if let Some(slot @ None) = got.get_mut(r as usize - 1) {
                        *slot = Some(Hello {
                            fingerprint: me.fingerprint,
                            cores: 0,
                            pid: 0,
                            host: "?".into(),
                        });
                    }
                }
            }
            Ok(Some(probed)) => {
                let r = probed.source;
                let bytes = mrecv(probed)
                    .map_err(|rc| other(format!("MPI rank {r}'s hello: {}", error_string(rc))))?;
                let h = msg::decode_hello(&bytes)
                    .map_err(|e| other(format!("MPI rank {r} sent a malformed hello: {e}")))?;
                if let Some(slot) = got.get_mut(r as usize - 1) {
                    *slot = Some(h);
                }
                // Who rank 0 is, for the agent to watch it if on this host (a small
                // message: sent at once; an error is the agent lost, seen later).
                let caller = msg::encode_caller(&super::caller::me());
                // SAFETY: a valid buffer of `len` bytes, a rank of MPI_COMM_WORLD.
                let rc = unsafe {
                    mpi::ffi::MPI_Send(
                        caller.as_ptr().cast(),
                        caller.len() as c_int,
                        mpi::ffi::RSMPI_UINT8_T,
                        r,
                        msg::CALLER,
                        mpi::ffi::RSMPI_COMM_WORLD,
                    )
                };
                let _ = rc;
                nap.reset();
            }
            Ok(None) if Instant::now() > deadline => {
                let missing: Vec<usize> = (1..size as usize)
                    .filter(|r| got[r - 1].is_none())
                    .collect();
                return Err(other(format!(
                    "MPI ranks {missing:?} did not start procpool within {HELLO_TIMEOUT:?}: \
                     every rank must run this program, whose main calls procpool::init() first"
                )));
            }
            Ok(None) => nap.sleep(),
        }
    }
    let agents: Vec<Hello> = got.into_iter().flatten().collect();
    for (i, h) in agents.iter().enumerate() {
        if h.fingerprint != me.fingerprint {
            let e = PoolError::Handshake {
                pid: Some(h.pid),
                reason: HandshakeError::BinaryMismatch {
                    parent: me.fingerprint,
                    worker: h.fingerprint,
                },
            };
            let m = format!(
                "MPI rank {} (pid {} on host {}) runs a different executable (fingerprint \
                 {:016x}) than rank 0 (fingerprint {:016x} on host {}): functions travel as \
                 offsets into the executable, so every rank must run the same file; build \
                 once and launch that binary on every host",
                i + 1,
                h.pid,
                h.host,
                h.fingerprint,
                me.fingerprint,
                me.host
            );
            return Err((m, e));
        }
    }
    Ok(agents)
}

/// A fingerprint of the executable's contents (not of its file: ranks on other hosts see
/// other device and inode numbers for the same program): its XXH3 hash, 0 when it cannot
/// be read.
fn fingerprint() -> u64 {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open("/proc/self/exe") else {
        return 0;
    };
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return hash.digest(),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A panic on an agent's main thread (its loop) ends the job at once.
fn install_panic_hook(rank: i32) {
    if rank == 0 {
        // Not on the caller's rank: a panic that `main` catches is the program's
        // business, and one it does not catch unwinds out of `main` (dropping its
        // pools, which stops the agents' pools) into the process's exit, where
        // `at_exit` tells the agents to leave. Only an agent's loop must never unwind
        // (into the user's `main`, which would go on as if it were rank 0).
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if std::thread::current().name() == Some("main") {
            abort_job(101, "its main thread panicked");
        }
    }));
}

/// Ends every rank of the job now (`MPI_Abort`), saying why on standard error.
pub(crate) fn abort_job(code: c_int, why: &str) -> ! {
    // Not from the runtime: another thread may hold its lock inside a long MPI call.
    let rank = RANK.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("procpool: MPI rank {rank} is ending the job: {why} (MPI_Abort, code {code})");
    // Bounded: under ULFM, `MPI_Abort` after rank 0's loss sometimes never returns nor
    // ends the process (seen about once in three runs of `mpi_attack kill_rank0`); this
    // rank then leaves by itself, and the launcher ends the job once every rank has.
    std::thread::spawn(move || {
        std::thread::sleep(ABORT_TIMEOUT);
        // SAFETY: `_exit` ends the process; nothing of it is used after.
        unsafe { libc::_exit(code) };
    });
    mpi::topology::SimpleCommunicator::world().abort(code)
}

/// Leaves a job whose caller's rank 0 ULFM reported lost, saying why on standard error:
/// this rank exits at once with `code`, without `MPI_Abort` (the local pool's workers
/// were killed before). ULFM reports that loss to every rank, so each agent leaves by
/// itself, and the launcher ends the job once every rank has left. `MPI_Abort` from
/// these ranks made Open MPI 5's `prterun` deadlock on its own lock after every rank had
/// gone, in about 1 job in 40 whose rank 0 was SIGKILLed (none in 430 such jobs without).
pub(crate) fn leave_job(code: c_int, why: &str) -> ! {
    let rank = RANK.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("procpool: MPI rank {rank} is leaving the job: {why} (exit code {code})");
    // SAFETY: `_exit` ends the process; nothing of it is used after.
    unsafe { libc::_exit(code) }
}

/// How long `MPI_Abort` may take before the rank leaves without it.
const ABORT_TIMEOUT: Duration = Duration::from_secs(2);

unsafe extern "C" {
    /// glibc's `on_exit`: like `atexit`, with the exit status.
    fn on_exit(f: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

/// How long `MPI_Finalize` may take once ranks were lost before rank 0 leaves without
/// it, with its own exit status (Open MPI 5's finalize sometimes waits for good for a
/// rank that died early; every agent was told to leave by then).
const FINALIZE_AFTER_LOSS: Duration = Duration::from_secs(5);

/// Runs at the exit of the caller's rank (return from `main`, `std::process::exit`):
/// stops every agent, then finalizes MPI. Bounded: past [`FINALIZE_TIMEOUT`] the process
/// leaves without finalizing, which makes the launcher end the job.
extern "C" fn at_exit(status: c_int, _: *mut c_void) {
    // Bounded from the start: another thread may hold the lock inside a long MPI call.
    std::thread::spawn(|| {
        std::thread::sleep(FINALIZE_TIMEOUT);
        eprintln!(
            "procpool: the MPI job did not end within {FINALIZE_TIMEOUT:?} of rank 0's exit; \
             leaving without MPI_Finalize so that the launcher ends every rank"
        );
        // SAFETY: `_exit` ends the process; nothing of it is used after.
        unsafe { libc::_exit(70) };
    });
    let Some(mut rt) = lock() else { return };
    if rt.finalized {
        return;
    }
    let world = mpi::topology::SimpleCommunicator::world();
    let open = rt.pool_open;
    let mut left = 0;
    for r in 1..rt.size {
        if rt.is_lost(r) {
            continue;
        }
        let p = world.process_at_rank(r);
        if open {
            p.send_with_tag(&[1u8][..], msg::END);
        }
        p.send_with_tag(&[][..] as &[u8], msg::EXIT);
        left += 1;
    }
    // Everything the agents still send is read (a large message left unread would hold
    // its sender), until each says BYE (or is lost).
    let deadline = Instant::now() + BYE_TIMEOUT;
    let mut nap = Nap::default();
    while left > 0 && Instant::now() < deadline {
        match improbe(any_source(), any_tag()) {
            Ok(Some(probed)) => {
                let tag = probed.tag;
                let _ = mrecv(probed);
                if tag == msg::BYE {
                    left -= 1;
                }
                nap.reset();
            }
            Ok(None) => nap.sleep(),
            Err(_) => {
                let failed = rt.newly_failed();
                if failed.is_empty() {
                    break;
                }
                left -= failed.len() as i32;
            }
        }
    }
    if left > 0 {
        eprintln!(
            "procpool: {left} MPI agents did not say goodbye within {BYE_TIMEOUT:?}; \
             finalizing all the same"
        );
    }
    rt.finalized = true;
    rt.pool_open = false;
    if !rt.lost.is_empty() {
        std::thread::spawn(move || {
            std::thread::sleep(FINALIZE_AFTER_LOSS);
            // SAFETY: `_exit` ends the process; nothing of it is used after.
            unsafe { libc::_exit(status) };
        });
    }
    // SAFETY: every MPI call of this process is made under the lock we hold, and none
    // follows: `finalized` makes the others refuse.
    unsafe { mpi::ffi::MPI_Finalize() };
}

fn finalize_and_exit(code: i32) -> ! {
    if let Some(mut rt) = lock() {
        rt.finalized = true;
        if rt.ft.is_ok() {
            // An agent does not know which other agents were lost, and Open MPI 5's
            // finalize sometimes waits for good for one that died early: bounded (a
            // finalize takes milliseconds otherwise).
            std::thread::spawn(move || {
                std::thread::sleep(FINALIZE_AFTER_LOSS);
                // SAFETY: `_exit` ends the process; nothing of it is used after.
                unsafe { libc::_exit(code) };
            });
        }
        // SAFETY: as in `at_exit`.
        unsafe { mpi::ffi::MPI_Finalize() };
    }
    std::process::exit(code)
}

/// A growing pause between looks at MPI, which gives no descriptor to wait on: from a
/// few microseconds while messages flow, up to `fast` for a while after the last one
/// ([`BRISK`]), then up to `slow` (an idle rank costs next to no CPU).
#[derive(Debug)]
pub(crate) struct Nap {
    cur: Duration,
    fast: Duration,
    slow: Duration,
    last: Instant,
}

/// How long after its last message a rank keeps looking often.
const BRISK: Duration = Duration::from_millis(50);

impl Default for Nap {
    fn default() -> Self {
        Self::new(Duration::from_micros(100), Duration::from_millis(1))
    }
}

impl Nap {
    pub(crate) fn new(fast: Duration, slow: Duration) -> Self {
        fine_timer_slack();
        Self {
            cur: Duration::ZERO,
            fast,
            slow,
            last: Instant::now(),
        }
    }
    pub(crate) fn reset(&mut self) {
        self.cur = Duration::ZERO;
        self.last = Instant::now();
    }
    /// The next pause.
    pub(crate) fn next(&mut self) -> Duration {
        let max = if self.last.elapsed() < BRISK {
            self.fast
        } else {
            self.slow
        };
        self.cur = (self.cur * 2).clamp(Duration::from_micros(2), max);
        self.cur
    }
    pub(crate) fn sleep(&mut self) {
        std::thread::sleep(self.next());
    }
}

/// Makes this thread's sleeps end within microseconds of their time (the default slack
/// of 50 µs would dominate the naps above).
pub(crate) fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a number of nanoseconds and affects this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 5_000 as libc::c_ulong, 0, 0, 0) };
}

/// Messages sent without blocking (`MPI_Isend`), kept until MPI is done with them: a
/// rank that blocks in a send while the other blocks in its own would deadlock them.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: Vec<(Vec<u8>, mpi::ffi::MPI_Request)>,
    /// A send failed (its peer was lost, with ULFM): the owner asks which ranks failed.
    pub(crate) failed: bool,
}

// SAFETY: a request handle is an opaque value; the outbox is used under the runtime lock.
unsafe impl Send for Outbox {}

impl Drop for Outbox {
    /// A message MPI may still read from is leaked, never freed under it (it does not
    /// happen when the other side read everything, as at every orderly stop).
    fn drop(&mut self) {
        for (bytes, _) in self.pending.drain(..) {
            std::mem::forget(bytes);
        }
    }
}

/// A buffer whose request ended in an error: freed only when MPI freed the request
/// (else MPI may still touch it, and it is leaked; this happens once per lost peer).
fn release_failed(bytes: Vec<u8>, req: mpi::ffi::MPI_Request) {
    // SAFETY: reading a constant handle of the library.
    if req == unsafe { mpi::ffi::RSMPI_REQUEST_NULL } {
        drop(bytes);
    } else {
        std::mem::forget(bytes);
    }
}

impl Outbox {
    /// Starts sending `bytes` (at most [`msg::MAX_MESSAGE`]) to `rank` with `tag`.
    pub(crate) fn send(&mut self, rank: i32, tag: i32, bytes: Vec<u8>) {
        let mut req = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
        // SAFETY: the buffer lives in `pending` (its heap block does not move) until
        // `MPI_Test` says the send completed; the length fits an `int` (checked by the
        // callers, which cut messages at `MAX_MESSAGE`).
        let rc = unsafe {
            mpi::ffi::MPI_Isend(
                bytes.as_ptr().cast::<c_void>(),
                bytes.len() as c_int,
                mpi::ffi::RSMPI_UINT8_T,
                rank,
                tag,
                mpi::ffi::RSMPI_COMM_WORLD,
                req.as_mut_ptr(),
            )
        };
        if rc != 0 {
            // Its peer is lost (errors are returned only with ULFM on).
            std::mem::forget(bytes);
            self.failed = true;
            return;
        }
        // SAFETY: MPI_Isend succeeded, so it set the request.
        self.pending.push((bytes, unsafe { req.assume_init() }));
    }

    /// Drops the messages MPI is done with; whether some are still pending.
    pub(crate) fn progress(&mut self) -> bool {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let mut flag: c_int = 0;
            // SAFETY: a live request of ours; MPI_Test frees it when complete.
            let rc = unsafe {
                mpi::ffi::MPI_Test(
                    &mut self.pending[i].1,
                    &mut flag,
                    mpi::ffi::RSMPI_STATUS_IGNORE,
                )
            };
            if rc != 0 {
                failed.push(self.pending.remove(i));
            } else if flag != 0 {
                self.pending.remove(i);
            } else {
                i += 1;
            }
        }
        if !failed.is_empty() {
            self.failed = true;
            for (bytes, req) in failed {
                release_failed(bytes, req);
            }
        }
        !self.pending.is_empty()
    }
}

/// Messages received without blocking, so that a rank serves the messages after a large
/// one while it arrives (64 MiB take seconds on a loaded host): an agent its next jobs,
/// the caller's rank the other agents' answers.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Buffer, request, source rank.
    pending: Vec<(Vec<u8>, mpi::ffi::MPI_Request, i32)>,
    /// A receive failed (its sender was lost, with ULFM): the owner asks which ranks
    /// failed.
    pub(crate) failed: bool,
}

// SAFETY: as for `Outbox`.
unsafe impl Send for Inbox {}

impl Inbox {
    /// Starts receiving the message `probed` matched.
    pub(crate) fn receive(&mut self, mut probed: Probed) {
        let len = probed.len;
        let mut buf = vec![0u8; len];
        let mut req = std::mem::MaybeUninit::<mpi::ffi::MPI_Request>::uninit();
        // SAFETY: the buffer lives in `pending` (its heap block does not move) until
        // `MPI_Test` says the receive completed; `len` is the probed message's size (an
        // MPI count, so it fits an `int`). MPI_Imrecv consumes the message handle.
        let rc = unsafe {
            mpi::ffi::MPI_Imrecv(
                buf.as_mut_ptr().cast::<c_void>(),
                len as c_int,
                mpi::ffi::RSMPI_UINT8_T,
                &mut probed.message,
                req.as_mut_ptr(),
            )
        };
        if rc != 0 {
            std::mem::forget(buf);
            self.failed = true;
            return;
        }
        // SAFETY: MPI_Imrecv succeeded, so it set the request.
        self.pending
            .push((buf, unsafe { req.assume_init() }, probed.source));
    }

    /// The messages received in full since the last call, with their source.
    pub(crate) fn take_done(&mut self) -> Vec<(Vec<u8>, i32)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let mut flag: c_int = 0;
            // SAFETY: a live request of ours; MPI_Test frees it when complete.
            let rc = unsafe {
                mpi::ffi::MPI_Test(
                    &mut self.pending[i].1,
                    &mut flag,
                    mpi::ffi::RSMPI_STATUS_IGNORE,
                )
            };
            if rc != 0 {
                // Its sender was lost mid-message: what came is not a message.
                let (bytes, req, _) = self.pending.remove(i);
                release_failed(bytes, req);
                self.failed = true;
            } else if flag == 0 {
                i += 1;
            } else {
                let (bytes, _, source) = self.pending.remove(i);
                done.push((bytes, source));
            }
        }
        done
    }

    /// Whether a message is still on its way.
    pub(crate) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl Drop for Inbox {
    /// As for `Outbox`: a buffer MPI may still write to is leaked, never freed under it.
    fn drop(&mut self) {
        for (bytes, ..) in self.pending.drain(..) {
            std::mem::forget(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fingerprint_is_the_hash_of_the_executable() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let fp = super::fingerprint();
        assert_ne!(fp, 0);
        assert_eq!(fp, xxhash_rust::xxh3::xxh3_64(&exe));
        let mut other = exe.clone();
        let mid = other.len() / 2;
        other[mid] ^= 1;
        assert_ne!(xxhash_rust::xxh3::xxh3_64(&other), fp);
    }
}
