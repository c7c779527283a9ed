//! The worker side: the loop a worker process runs instead of its `main`.
//!
//! The loop receives frames of jobs, hands each job to a [`Runner`] (the front's way of
//! resolving a function reference and calling it), and sends the outcomes back. Before
//! each job it writes the job's sequence number and start time into the control block
//! shared with the parent, so the parent knows exactly which job a dying worker held and
//! how long a job has run. Jobs arrive many to a frame; each result is published in the
//! results ring (see `ring`) as soon as its job ends, so that a crash in one job never
//! loses the result of another, and no system call is made while the parent is busy.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::claim::Claimer;
use crate::direct::Spinner;
use crate::items;
use crate::process::{
    CONTROL_LEN, CTL_BELL, CTL_DIRECT_SEQ, CTL_STARTED_AT, CTL_STARTED_SEQ, DATA_LEN, ENV_WORKER,
    REGIONS_MARK, WorkerEnv, my_fingerprint,
};
use crate::ring::{self, RingWriter};
use crate::sys::{self, SharedRegion};
use crate::transport::{FrameReader, OutQueue, SHARE_THRESHOLD};
use crate::wire::{self, Down, Failure, Outcome, PROTOCOL_VERSION, Refusal, Up};

/// Runs jobs inside a worker process. The engine knows nothing of functions or of
/// serialization: a front implements this trait to resolve `func` (bytes it made itself in
/// the parent) and to decode the argument and encode the result.
pub trait Runner {
    /// Runs one job: decodes `payload`, calls the function named by `func`, and appends
    /// the encoded result to `out` (which is empty on entry). A panic is caught by the
    /// engine and reported as [`Failure::Panic`].
    ///
    /// # Errors
    /// A [`Failure`] that is not a panic, typically [`Failure::Codec`].
    fn run(&mut self, func: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure>;
}

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
    static IS_TASK_THREAD: RefCell<bool> = const { RefCell::new(false) };
    static LAST_BACKTRACE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The descriptors of the job running on this thread, until the runner takes them.
    static JOB_FDS: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
}

/// Takes the descriptors that travelled with the job this worker thread is running (see
/// [`Job::fds`](crate::Job::fds)), in the order they were given. For a front's runner,
/// while it decodes the job's payload; descriptors not taken are closed when the job
/// ends. Empty outside a job, or when the job carried none (or they were taken).
pub fn take_job_fds() -> Vec<OwnedFd> {
    JOB_FDS.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

/// Whether this process was started as a worker and has not yet entered its loop.
pub fn is_worker_process() -> bool {
    std::env::var_os(ENV_WORKER).is_some()
}

/// If this process was started as a worker, runs the worker loop with `make_runner()` and
/// exits; otherwise returns at once.
pub fn serve_if_worker<R: Runner>(make_runner: impl FnOnce() -> R) {
    let Some(raw) = take_env() else { return };
    crate::identity::adopt();
    let code = match WorkerEnv::decode(&raw) {
        Some(env) => serve(env, my_fingerprint(), &mut make_runner()),
        None => malformed(&raw),
    };
    exit(code)
}

/// The worker loop of a process started by a [`Launcher`](crate::Launcher): takes the
/// worker's socket (standard input) and settings (environment), checks that the parent
/// expects `identity` (its [`EngineConfig::identity`](crate::EngineConfig::identity)),
/// serves jobs with `runner` until the parent shuts it down or goes away, and returns the
/// process's exit code (the caller flushes what it must and exits with it; the process
/// is of no further use).
///
/// Returns 2 at once, with a message on standard error, when the process was not started
/// as a worker.
pub fn serve_launched(identity: u64, runner: &mut dyn Runner) -> i32 {
    let Some(raw) = take_env() else {
        eprintln!("procpool: {ENV_WORKER} is not set; this process was not started as a worker");
        return 2;
    };
    crate::identity::adopt();
    match WorkerEnv::decode(&raw) {
        Some(env) => serve(env, identity, runner),
        None => malformed(&raw),
    }
}

#[cold]
fn malformed(raw: &str) -> i32 {
    eprintln!("procpool: malformed {ENV_WORKER}={raw:?}; this process is not a worker");
    2
}

/// Called when a worker process tries to create a pool of its own, which means its
/// `main` never called `init()`: tells the parent so, and exits.
pub fn refuse_init_missing() -> ! {
    let raw = take_env().unwrap_or_default();
    eprintln!(
        "procpool: this process was started as a worker but its main created a pool before \
         calling procpool::init(); call procpool::init() as the first line of main"
    );
    if WorkerEnv::decode(&raw).is_some()
        && let Ok(sock) = sys::take_stdin()
    {
        let mut out = OutQueue::default();
        wire::encode_up(out.buf(), &Up::Refused(Refusal::InitMissing));
        let _ = out.flush(sock.as_fd());
    }
    exit(3)
}

fn take_env() -> Option<String> {
    let raw = std::env::var(ENV_WORKER).ok()?;
    // SAFETY: workers call this at the very start of `main` (or before it, from test
    // support), before any other thread reads the environment. Removing the variable
    // keeps pools made inside tasks from mistaking themselves for workers.
    unsafe { std::env::remove_var(ENV_WORKER) };
    Some(raw)
}

fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The worker's connection and state.
struct Conn {
    reader: FrameReader,
    fds: Fds,
    /// Where the parent writes large arguments.
    data: SharedRegion,
    io: Io,
}

/// Everything but the reader, which holds the bytes of the frame being handled.
struct Io {
    sock: OwnedFd,
    ctl: SharedRegion,
    out: OutQueue,
    /// A result encoded for the results ring.
    entry: Vec<u8>,
    /// The results ring's writer, which knows where it last published.
    ring: RingWriter,
    max_message: usize,
    result_buf: Vec<u8>,
    claimer: Claimer,
    /// The job run last came straight from a caller.
    after_direct: bool,
    spinner: Spinner,
}

fn serve(env: WorkerEnv, identity: u64, runner: &mut dyn Runner) -> i32 {
    match connect(&env) {
        Ok(Some((sock, ctl, data))) => run_connected(env, identity, runner, sock, ctl, data),
        Ok(None) => 0, // The parent died before we started: nobody wants us.
        Err(e) => {
            eprintln!("procpool worker: cannot set up: {e}");
            2
        }
    }
}

/// Takes what the parent gave: the socket (on standard input) and the shared regions
/// waiting in it. Closes anything else inherited, and arranges to die with the parent.
fn connect(env: &WorkerEnv) -> std::io::Result<Option<(OwnedFd, SharedRegion, SharedRegion)>> {
    let sock = sys::take_stdin()?;
    sys::kill_my_group_with_parent()?;
    sys::take_parent_name(env.parent);
    if sys::parent_pid() != env.parent {
        return Ok(None);
    }
    let mut mark = [0u8; REGIONS_MARK.len()];
    let mut fds = sys::recv_fds(sock.as_fd(), &mut mark)?.into_iter();
    let (Some(ctl), Some(data), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err(std::io::Error::other(
            "expected two shared regions from the parent",
        ));
    };
    if mark != REGIONS_MARK {
        return Err(std::io::Error::other(
            "unexpected first message from the parent",
        ));
    }
    sys::close_all_but(&[sock.as_raw_fd(), ctl.as_raw_fd(), data.as_raw_fd()])?;
    let ctl = SharedRegion::open(ctl, CONTROL_LEN)?;
    let data = SharedRegion::open(data, DATA_LEN)?;
    Ok(Some((sock, ctl, data)))
}

/// Descriptors received and not yet handed to a job: those that arrived with the bytes
/// (in order), and those of the next job announced by a [`Down::Fds`] frame.
#[derive(Debug, Default)]
struct Fds {
    arrived: VecDeque<OwnedFd>,
    next: Option<(u64, Vec<OwnedFd>)>,
}

impl Fds {
    /// Sets aside the `count` descriptors announced for job `seq`.
    fn announce(&mut self, seq: u64, count: u32) -> std::io::Result<()> {
        let count = count as usize;
        if count > wire::MAX_JOB_FDS || count > self.arrived.len() {
            return Err(std::io::Error::other(format!(
                "job {seq} announces {count} descriptors; {} arrived",
                self.arrived.len()
            )));
        }
        self.next = Some((seq, self.arrived.drain(..count).collect()));
        Ok(())
    }

    /// The descriptors of job `seq` (empty when it has none).
    fn for_job(&mut self, seq: u64) -> Vec<OwnedFd> {
        match self.next.take() {
            Some((s, fds)) if s == seq => fds,
            // Announced for a later job: kept. (For an earlier one: dropped.)
            Some((s, fds)) if s > seq => {
                self.next = Some((s, fds));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

fn run_connected(
    env: WorkerEnv,
    mine: u64,
    runner: &mut dyn Runner,
    sock: OwnedFd,
    ctl: SharedRegion,
    data: SharedRegion,
) -> i32 {
    // Before any task code runs: the ring is as the parent made it.
    let ring = RingWriter::new(&ctl);
    let mut conn = Conn {
        reader: FrameReader::new(env.max_message.saturating_add(64)),
        fds: Fds::default(),
        data,
        io: Io {
            sock,
            ctl,
            out: OutQueue::default(),
            ring,
            entry: Vec::new(),
            max_message: env.max_message,
            result_buf: Vec::new(),
            claimer: Claimer::default(),
            after_direct: false,
            spinner: Spinner::default(),
        },
    };
    let hello = if env.version != PROTOCOL_VERSION {
        Up::Refused(Refusal::Version {
            parent: env.version,
            worker: PROTOCOL_VERSION,
        })
    } else if env.fingerprint != mine {
        Up::Refused(Refusal::BinaryMismatch {
            parent: env.fingerprint,
            worker: mine,
        })
    } else {
        Up::Hello {
            version: PROTOCOL_VERSION,
            fingerprint: mine,
            pid: sys::my_pid(),
        }
    };
    let refused = matches!(hello, Up::Refused(_));
    wire::encode_up(conn.io.out.buf(), &hello);
    if conn.io.out.flush(conn.io.sock.as_fd()).is_err() || refused {
        return if refused { 4 } else { 0 };
    }
    install_panic_hook();
    match conn.run(runner) {
        Ok(()) => 0,
        Err(e) => {
            // The parent went away or sent garbage: nobody to report to.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("procpool worker {}: {e}", sys::my_pid());
            }
            1
        }
    }
}

impl Conn {
    fn run(&mut self, runner: &mut dyn Runner) -> std::io::Result<()> {
        let Conn {
            reader,
            fds,
            data,
            io,
        } = self;
        loop {
            let (len, stop) = match reader.frame() {
                Ok(Some((body, used))) => {
                    let msg = wire::decode_down(body).map_err(|e| {
                        std::io::Error::other(format!("bad frame from parent: {e}"))
                    })?;
                    let stop = match msg {
                        Down::Jobs(jobs) => {
                            for j in jobs {
                                let job_fds = fds.for_job(j.seq);
                                // A job the parent took back is skipped.
                                if io.claim(j.seq)? {
                                    io.run_job(runner, j.seq, j.func, j.payload, job_fds)?;
                                }
                            }
                            false
                        }
                        Down::SharedJobs(jobs) => {
                            for j in jobs {
                                let job_fds = fds.for_job(j.seq);
                                // Claimed first: the range of a job taken back may be
                                // reused by the parent at once, and is never read.
                                if !io.claim(j.seq)? {
                                    continue;
                                }
                                // SAFETY: the parent does not touch a job's range of the
                                // data region until the job's result is back.
                                let payload =
                                    unsafe { data.slice(j.offset, j.len) }.ok_or_else(|| {
                                        std::io::Error::other(format!(
                                            "job {} lies outside the data region",
                                            j.seq
                                        ))
                                    })?;
                                io.run_job(runner, j.seq, j.func, payload, job_fds)?;
                            }
                            false
                        }
                        Down::Init { func, payload } => {
                            let r = run_one(runner, func, payload, &mut io.result_buf);
                            // A worker whose initializer failed is of no use: it reports
                            // and exits, and the parent counts a failed start.
                            let failed = r.is_err();
                            wire::encode_up(io.out.buf(), &Up::InitDone(r));
                            io.out.flush(io.sock.as_fd())?;
                            failed
                        }
                        Down::Shutdown => true,
                        Down::Fds { seq, count } => {
                            fds.announce(seq, count)?;
                            false
                        }
                        Down::Revoke { through } => {
                            io.claimer.revoked(&io.ctl, through);
                            wire::encode_up(io.out.buf(), &Up::Revoked { through });
                            io.out.flush(io.sock.as_fd())?;
                            false
                        }
                    };
                    (used, stop)
                }
                Ok(None) => {
                    if std::mem::take(&mut io.after_direct) {
                        wait_for_more(io.sock.as_fd(), &io.ctl, &mut io.spinner);
                    }
                    receive_more(reader, &mut fds.arrived, io.sock.as_fd())?;
                    continue;
                }
                Err(e) => return Err(std::io::Error::other(format!("bad frame from parent: {e}"))),
            };
            reader.consume(len);
            if stop {
                return Ok(());
            }
        }
    }
}

/// How long an idle worker spins for its next job before it sleeps in `recvmsg`: a
/// caller that sends jobs one after the other then never waits for the worker to wake.
const WORKER_SPIN: Duration = Duration::from_micros(20);

/// After a job a caller sent directly (another is likely to follow at once), spins a
/// little while nothing is to be read: until the parent rings the bell (it does
/// after each write to the socket) or [`WORKER_SPIN`] passes.
fn wait_for_more(sock: BorrowedFd<'_>, ctl: &SharedRegion, spinner: &mut Spinner) {
    let bell = ctl.word(CTL_BELL);
    let rung = bell.load(Ordering::SeqCst);
    if sys::readable_now(sock) {
        return;
    }
    let mut last = Instant::now();
    let until = spinner.until(last, WORKER_SPIN);
    while last < until {
        for _ in 0..64 {
            if bell.load(Ordering::Relaxed) != rung {
                return;
            }
            std::hint::spin_loop();
        }
        if !spinner.go_on(Instant::now(), &mut last, until) {
            return;
        }
    }
}

/// Blocks until more bytes arrive.
fn receive_more(
    reader: &mut FrameReader,
    fds: &mut VecDeque<OwnedFd>,
    sock: BorrowedFd<'_>,
) -> std::io::Result<()> {
    loop {
        match reader.fill_with_fds(sock, fds) {
            Ok(0) => return Err(std::io::ErrorKind::BrokenPipe.into()),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Io {
    /// Claims job `seq` (see `claim`): `false` when the parent took it back. A worker
    /// whose results ring a task wrote into stops here, before it claims (and so before
    /// it could run) another job: the parent may have taken the forged entry as a
    /// result, and the real one would then reach it as a lie. Exiting fails only the
    /// job the forger ran (its claimed, unanswered job); the jobs sent after it were not
    /// claimed and go to another worker.
    fn claim(&mut self, seq: u64) -> std::io::Result<bool> {
        self.ring.intact(&self.ctl).map_err(compromised)?;
        Ok(self.claimer.claim(&self.ctl, seq))
    }

    /// Marks a claimed job started in the control block, runs it, and sends its result.
    fn run_job(
        &mut self,
        runner: &mut dyn Runner,
        seq: u64,
        func: &[u8],
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> std::io::Result<()> {
        JOB_FDS.with(|f| *f.borrow_mut() = fds);
        crate::prepare::begin_job(&self.ctl);
        let start = sys::monotonic_nanos();
        // Nothing of this job's items is finished yet (see `items`).
        items::begin_job(&self.ctl);
        self.ctl
            .word(CTL_STARTED_AT)
            .store(start, Ordering::Release);
        self.ctl.word(CTL_STARTED_SEQ).store(seq, Ordering::Release);
        let outcome = run_one(runner, func, payload, &mut self.result_buf);
        items::end_job();
        crate::prepare::end_job();
        let nanos = sys::monotonic_nanos() - start;
        // Descriptors the runner did not take are closed now.
        drop(take_job_fds());
        // A caller sending jobs one by one wrote this job's number before sending it.
        self.after_direct = self.ctl.word(CTL_DIRECT_SEQ).load(Ordering::Relaxed) == seq;
        self.push_result(seq, nanos, outcome)
    }

    /// Sends the job's result at once: bytes in the socket survive the worker's death,
    /// so a crash in a later job never loses an earlier job's result.
    fn push_result(
        &mut self,
        seq: u64,
        nanos: u64,
        outcome: Result<(), Failure>,
    ) -> std::io::Result<()> {
        let size = self.result_buf.len();
        let outcome = match outcome {
            Ok(()) if size > self.max_message => Err(Failure::TooLarge {
                size: size as u64,
                limit: self.max_message as u64,
            }),
            other => other,
        };
        // The usual way: into the results ring, no system call unless the parent sleeps.
        if size < ring::MAX_ENTRY {
            self.entry.clear();
            // A result goes into the ring behind its head, in one copy.
            let pushed = match &outcome {
                Ok(()) => {
                    wire::put_ok_head(&mut self.entry, seq, nanos, size);
                    self.ring
                        .push_parts(&self.ctl, &[&self.entry, &self.result_buf])
                }
                Err(f) => {
                    wire::put_result(&mut self.entry, seq, nanos, &Outcome::Err(f.clone()));
                    self.ring.push(&self.ctl, &self.entry)
                }
            };
            if let Some(wake) = pushed.map_err(compromised)? {
                self.result_buf.clear();
                // A caller that sent the job directly may sleep on it.
                crate::direct::ring_waiter(&self.ctl, false);
                if wake {
                    wire::encode_up(self.out.buf(), &Up::Doorbell);
                    return self.out.flush(self.sock.as_fd());
                }
                return Ok(());
            }
        }
        // Too large for the ring, or the ring is full: through the socket.
        match outcome {
            Ok(()) if size >= SHARE_THRESHOLD => {
                wire::put_large_result_head(self.out.buf(), seq, nanos, size);
                self.out.push_owned(std::mem::take(&mut self.result_buf));
            }
            Ok(()) => {
                let frame = wire::begin_results(self.out.buf());
                wire::put_result(self.out.buf(), seq, nanos, &Outcome::Ok(&self.result_buf));
                wire::end_results(self.out.buf(), frame, 1);
            }
            Err(f) => {
                let frame = wire::begin_results(self.out.buf());
                wire::put_result(self.out.buf(), seq, nanos, &Outcome::Err(f));
                wire::end_results(self.out.buf(), frame, 1);
            }
        }
        self.result_buf.clear();
        let r = self.out.flush(self.sock.as_fd());
        // A caller waiting for a direct job learns that it must wait for the supervisor.
        crate::direct::ring_waiter(&self.ctl, false);
        r
    }
}

/// The error that ends a worker whose results ring a task wrote into: it publishes
/// nothing more and exits, and its parent sees it die.
#[cold]
fn compromised(e: ring::RingError) -> std::io::Error {
    std::io::Error::other(format!("{}; this worker stops", e.0))
}

fn run_one(
    runner: &mut dyn Runner,
    func: &[u8],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    out.clear();
    IS_TASK_THREAD.with(|t| *t.borrow_mut() = true);
    let r = panic::catch_unwind(AssertUnwindSafe(|| runner.run(func, payload, out)));
    IS_TASK_THREAD.with(|t| *t.borrow_mut() = false);
    match r {
        Ok(r) => r.map_err(Failure::truncated),
        Err(payload) => {
            let (message, location) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| (panic_message(&*payload), None));
            Err(Failure::Panic { message, location }.truncated())
        }
    }
}

/// Takes what the panic hook recorded of the last panic caught in a task thread:
/// `(message, location)`. For fronts that catch panics themselves (one per item of a
/// chunk).
pub fn take_last_panic() -> Option<(String, Option<String>)> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

/// Takes the backtrace of the last panic caught in a task thread, captured only when
/// the user asked for backtraces (`RUST_BACKTRACE` or `RUST_LIB_BACKTRACE`, as
/// [`std::backtrace::Backtrace::capture`] decides).
pub fn take_last_backtrace() -> Option<String> {
    LAST_BACKTRACE.with(|b| b.borrow_mut().take())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Panics in the task thread are captured for the parent instead of printed; panics in
/// other threads a task starts are printed as usual.
fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if IS_TASK_THREAD.with(|t| *t.borrow()) {
            let message = panic_message(info.payload());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
            let bt = std::backtrace::Backtrace::capture();
            let bt =
                (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
            LAST_BACKTRACE.with(|b| *b.borrow_mut() = bt);
        } else {
            default(info);
        }
    }));
}
