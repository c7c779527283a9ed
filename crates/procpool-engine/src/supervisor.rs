//! The supervisor: one thread per pool that owns the worker processes.
//!
//! It is the one place that knows which jobs each worker holds. It waits in `poll` on
//! every worker's socket and process descriptor and on an eventfd that callers ring when
//! they queue work; it deals jobs to workers by the work-conserving rule of `dispatch`
//! (short windows from measured job times, and jobs taken back from a busy worker for an
//! idle one), sends them many to a frame, reads results, and enforces time limits on its
//! own clock. When a worker dies it reads what the worker sent before dying, then uses
//! the control block to tell the job that was running (which fails, or is retried) from
//! the jobs not yet started (which go back to the front of the queue), and starts a
//! replacement.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{PoolError, TaskError, TaskErrorKind};
use crate::job::{Done, Queued};
use crate::process::{self, SpawnOptions, WorkerProc};
use crate::ring::RingReader;
use crate::shared::{Mode, Shared};
use crate::sys::{self, Ready};
use crate::transport::{FrameReader, OutQueue};

mod dispatch;
mod intake;
mod lanes;
mod lifecycle;
mod observe;
mod retry;

use intake::{Ctx, Early, drain_ring, drain_socket, handle_frames, read_some};
pub(crate) use intake::{finished, own};

/// How long a worker told to shut down may take before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Jobs in flight past which a worker's results are collected on a timer instead of a
/// doorbell each.
const DEEP_QUEUE: usize = 4;
/// Shortest and longest nap while collecting results on a timer, in nanoseconds.
const MIN_NAP: f64 = 50_000.0;
const MAX_NAP: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Init,
    Ready,
    Retiring,
}

#[derive(Debug, Clone)]
enum KillReason {
    /// Job `seq` ran past its limit.
    Timeout {
        seq: u64,
        limit: Duration,
        ran: Duration,
        /// When the job's preparation ran past its allowance instead: what was being
        /// prepared, the allowance, and the time it took.
        prep: Option<Box<(String, Duration, Duration)>>,
    },
    Cancel,
    Protocol(String),
    /// The parent could not allocate memory to receive a result of this many bytes.
    OutOfMemory(u64),
    Shutdown,
}

/// What a worker's jobs are expected to take: the sum of their `est_nanos`, and how many
/// have no expectation (their batch has no measurement yet).
#[derive(Debug, Default, Clone, Copy)]
struct Backlog {
    nanos: f64,
    unknown: usize,
}

impl Backlog {
    fn add(&mut self, est: f64) {
        self.nanos += est;
        self.unknown += usize::from(est <= 0.0);
    }

    fn remove(&mut self, est: f64) {
        self.nanos = (self.nanos - est).max(0.0);
        self.unknown = self.unknown.saturating_sub(usize::from(est <= 0.0));
    }
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    q: Queued,
    /// Already answered (cancelled): drop whatever comes back.
    answered: bool,
    /// The range of the data region holding the payload, if it went that way.
    shared: Option<(usize, usize)>,
    /// When it was handed to the worker.
    sent: Instant,
    /// What it was expected to take when sent (its batch's average; 0: unknown).
    est_nanos: f64,
}

#[derive(Debug)]
struct Worker {
    proc: WorkerProc,
    phase: Phase,
    deadline: Option<Instant>,
    reader: FrameReader,
    out: OutQueue,
    in_flight: VecDeque<InFlight>,
    /// Results that overtook an earlier one (see `accept`).
    early: BTreeMap<u64, Early>,
    next_seq: u64,
    items_sent: u64,
    /// Expected run time of the jobs the worker holds.
    backlog: Backlog,
    /// Since when the first job the worker holds has been due: when it was sent to an
    /// idle worker, or when the result before it came back. The job cannot have started
    /// earlier, so its time limit counts from here (see `check_deadlines`).
    front_since: Instant,
    /// The last job known to be claimed by the worker (see `claim`).
    claim_floor: u64,
    /// A revocation the worker has not answered yet: the `through` it was sent with.
    revoke_pending: Option<u64>,
    kill_reason: Option<KillReason>,
    /// When a worker sent SIGTERM for a timeout gets SIGKILL.
    hard_kill_at: Option<Instant>,
    start_error: Option<PoolError>,
    eof: bool,
    /// Its lane is open or lent (see `lanes`): leave it alone.
    lent: bool,
}

impl Worker {
    fn pid(&self) -> u32 {
        self.proc.pid
    }

    fn kill(&mut self, reason: KillReason) {
        if self.kill_reason.is_none() {
            self.kill_reason = Some(reason);
        }
        self.proc.kill();
    }

    fn sock(&self) -> BorrowedFd<'_> {
        self.proc.sock.as_fd()
    }

    fn flush(&mut self) {
        let r = self.out.flush(self.proc.sock.as_fd());
        crate::direct::ring_bell(&self.proc.ctl);
        if let Err(e) = r {
            // The worker is gone or going; its death is handled through its pidfd.
            if self.kill_reason.is_none() && e.kind() != std::io::ErrorKind::BrokenPipe {
                self.kill(KillReason::Protocol(format!("send failed: {e}")));
            }
            self.out = OutQueue::default();
        }
    }
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    slots: Vec<Option<Worker>>,
    retiring: Vec<Worker>,
    avg_nanos: f64,
    start_failures: u32,
    first_failure: Option<PoolError>,
    /// Retrying starts the operating system refused.
    spawn_retry: retry::SpawnRetry,
    starting: bool,
    spawn_opts: SpawnOptions,
    ready_buf: Vec<Ready>,
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let n = shared.config.workers;
        let spawn_opts = SpawnOptions {
            executable: shared.config.executable.clone(),
            launcher: shared.config.launcher.clone(),
            identity: shared.config.identity,
            max_message: shared.config.max_message,
            index: None,
        };
        Self {
            shared,
            slots: (0..n).map(|_| None).collect(),
            retiring: Vec::new(),
            avg_nanos: 0.0,
            start_failures: 0,
            first_failure: None,
            spawn_retry: retry::SpawnRetry::default(),
            starting: true,
            spawn_opts,
            ready_buf: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        for i in 0..self.slots.len() {
            if let Err(e) = self.spawn_into(i) {
                self.report_started(Err(e));
                self.terminate();
                return;
            }
        }
        loop {
            let (mode, cancels) = {
                let mut q = self.shared.lock();
                (q.mode, std::mem::take(&mut q.cancels))
            };
            if mode == Mode::Terminate {
                self.terminate();
                return;
            }
            let lent_due = self.sync_lanes(mode != Mode::Run || !cancels.is_empty());
            for b in cancels {
                if b.is_cancelled() {
                    self.cancel(&b);
                } else {
                    self.take_back(&b);
                }
            }
            if self.starting && self.one_started() {
                self.report_started(Ok(()));
            }
            let recheck = self.dispatch();
            if mode == Mode::Join && self.idle() && self.shutdown_all() {
                return;
            }
            let retry = self.respawn(mode);
            let timeout = [self.check_deadlines(), recheck, retry, lent_due]
                .into_iter()
                .flatten()
                .min();
            if self.starting && self.failed_start() {
                return;
            }
            self.open_lanes(mode);
            self.publish_in_flight();
            self.wait(timeout);
        }
    }

    fn report_started(&mut self, r: Result<(), PoolError>) {
        self.starting = false;
        let mut s = self
            .shared
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *s = Some(r);
        self.shared.started_cv.notify_all();
    }

    /// Whether a worker has passed the handshake: the pool can take work.
    fn one_started(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.as_ref().is_some_and(|w| w.phase != Phase::Handshake))
    }

    /// During start-up any failure fails the whole start.
    fn failed_start(&mut self) -> bool {
        match self.first_failure.clone() {
            Some(e) => {
                self.report_started(Err(e));
                self.terminate();
                true
            }
            None => false,
        }
    }

    fn spawn_into(&mut self, i: usize) -> Result<(), PoolError> {
        self.spawn_opts.index = Some(i);
        let proc = process::spawn(&self.spawn_opts)?;
        crate::events::worker_started(&self.shared, i, proc.pid);
        sys::set_nonblocking(proc.sock.as_fd(), true)?;
        let max_body = self.shared.config.max_message.saturating_add(64);
        self.slots[i] = Some(Worker {
            proc,
            phase: Phase::Handshake,
            // No deadline when it lies beyond what `Instant` can hold (`Duration::MAX`: wait forever).
            deadline: Instant::now().checked_add(self.shared.config.handshake_timeout),
            reader: FrameReader::new(max_body),
            out: OutQueue::default(),
            in_flight: VecDeque::new(),
            early: BTreeMap::new(),
            next_seq: 1,
            items_sent: 0,
            backlog: Backlog::default(),
            front_since: Instant::now(),
            claim_floor: 0,
            revoke_pending: None,
            kill_reason: None,
            hard_kill_at: None,
            start_error: None,
            eof: false,
            lent: false,
        });
        self.publish_pids();
        Ok(())
    }

    fn publish_pids(&self) {
        let pids = self.slots.iter().flatten().map(Worker::pid).collect();
        *self.shared.pids.lock().unwrap_or_else(|e| e.into_inner()) = pids;
    }

    /// Starts workers in empty slots; returns how long until it should try again, when
    /// the system refused a start (see `retry`).
    fn respawn(&mut self, mode: Mode) -> Option<Duration> {
        if self.shared.lock().broken.is_some() {
            return None;
        }
        if mode == Mode::Join && self.idle() {
            return None;
        }
        if self.slots.iter().all(Option::is_some) {
            return None;
        }
        let now = Instant::now();
        if let Some(wait) = self.spawn_retry.not_before(now) {
            return Some(wait);
        }
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                continue;
            }
            match self.spawn_into(i) {
                Ok(()) => {}
                Err(e @ PoolError::Spawn(_)) if !self.starting => {
                    let live = self.slots.iter().flatten().count();
                    if let Some(broken) = self.spawn_retry.refused(e, live, now) {
                        self.shared.lock().broken = Some(broken);
                        // Back at once, to fail the queued jobs.
                        return Some(Duration::ZERO);
                    }
                    return self.spawn_retry.not_before(now);
                }
                Err(e) => {
                    self.start_failed(e);
                    return None;
                }
            }
        }
        None
    }

    fn start_failed(&mut self, e: PoolError) {
        self.start_failures += 1;
        let first = self.first_failure.get_or_insert(e).clone();
        if self.starting || self.start_failures < self.shared.config.max_start_failures {
            return;
        }
        let broken = PoolError::Broken {
            failures: self.start_failures,
            first: Box::new(first),
        };
        crate::events::pool_broken(&broken);
        self.shared.lock().broken = Some(broken);
    }

    /// No job waits, none runs, and no call will submit more.
    fn idle(&self) -> bool {
        let q = self.shared.lock();
        let quiet = q.jobs.is_empty() && q.feeding == 0;
        drop(q);
        quiet
            && self
                .slots
                .iter()
                .flatten()
                .all(|w| w.in_flight.is_empty() && !w.lent)
    }

    fn wait(&mut self, mut timeout: Option<Duration>) {
        let mut soonest = |d: Duration| timeout = Some(timeout.map_or(d, |t| t.min(d)));
        for w in self.slots.iter().flatten().chain(self.retiring.iter()) {
            if !matches!(w.phase, Phase::Ready | Phase::Retiring) || w.in_flight.is_empty() {
                continue;
            }
            // A worker with plenty of short jobs queued need not wake us for each
            // result: we come back when about half its queue is done, take the results
            // together and refill it. Otherwise it rings when it publishes one.
            let queued = w.in_flight.len() as f64 * self.avg_nanos;
            if self.avg_nanos > 0.0 && w.in_flight.len() > DEEP_QUEUE && queued >= 2.0 * MIN_NAP {
                soonest(Duration::from_nanos((queued / 2.0).min(MAX_NAP) as u64));
            } else if RingReader::new(&w.proc.ctl).arm() {
                // It published meanwhile: there is work now.
                soonest(Duration::ZERO);
            }
        }
        let mut fds: Vec<(BorrowedFd<'_>, Ready)> = Vec::with_capacity(1 + 2 * self.slots.len());
        let read = Ready {
            read: true,
            ..Ready::default()
        };
        fds.push((self.shared.wake_fd(), read));
        for w in self.slots.iter().flatten().chain(self.retiring.iter()) {
            let sock = Ready {
                read: !w.eof,
                write: !w.out.is_empty(),
                hup: false,
            };
            // A socket whose end closed reports a hang-up at every poll: once it has
            // nothing left to read or write, its place goes to the process's descriptor
            // with no event asked (which reports nothing before the process is reaped),
            // so that the wait for a dying worker's end sleeps instead of spinning (a
            // spin that takes a core from the exit, and the fork, of its replacement).
            let quiet = w.eof && w.out.is_empty();
            fds.push((if quiet { w.proc.pidfd() } else { w.sock() }, sock));
            fds.push((w.proc.pidfd(), read));
        }
        let mut ready = std::mem::take(&mut self.ready_buf);
        if let Err(e) = sys::poll(&fds, &mut ready, timeout) {
            eprintln!("procpool supervisor: poll failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
            self.ready_buf = ready;
            return;
        }
        drop(fds);
        if ready.first().is_some_and(|r| r.read) {
            sys::drain(self.shared.wake_fd());
        }
        // Retiring workers first: servicing a slot may retire its worker, which must not
        // shift the retiring entries polled above.
        let live = self.slots.iter().flatten().count();
        let polled_retiring = self.retiring.len();
        let mut k = 1 + 2 * live;
        let mut i = 0;
        for _ in 0..polled_retiring {
            let (sock, pid) = (ready[k], ready[k + 1]);
            k += 2;
            if sock.read || sock.hup {
                self.read_worker_retiring(i);
            }
            if sock.write {
                self.retiring[i].flush();
            }
            drain_ring(&mut self.retiring[i], &mut self.avg_nanos);
            if pid.read {
                let mut w = self.retiring.remove(i);
                drain_socket(&mut w, &mut self.avg_nanos);
                drain_ring(&mut w, &mut self.avg_nanos);
                w.proc.reap();
                continue;
            }
            i += 1;
        }
        let mut k = 1;
        for i in 0..self.slots.len() {
            if self.slots[i].is_none() {
                continue;
            }
            let (sock, pid) = (ready[k], ready[k + 1]);
            k += 2;
            self.service_slot(i, sock, pid);
        }
        self.ready_buf = ready;
    }

    fn read_worker_retiring(&mut self, i: usize) {
        let w = &mut self.retiring[i];
        read_some(w);
        let mut ctx = Ctx {
            avg_nanos: &mut self.avg_nanos,
            init: None,
        };
        handle_frames(w, &mut ctx);
    }

    fn service_slot(&mut self, i: usize, sock: Ready, pid: Ready) {
        if sock.read || sock.hup || sock.write || pid.read {
            // News from a worker lent out: the supervisor takes it back first.
            self.reclaim(i);
        }
        let Some(w) = self.slots[i].as_mut() else {
            return;
        };
        if w.lent {
            return;
        }
        if sock.write {
            w.flush();
        }
        if sock.read || sock.hup {
            read_some(w);
            let before = w.phase;
            let mut ctx = Ctx {
                avg_nanos: &mut self.avg_nanos,
                init: self.shared.config.initializer.as_ref(),
            };
            handle_frames(w, &mut ctx);
            if before != Phase::Ready && w.phase == Phase::Ready {
                crate::events::worker_ready(i, w.pid());
                self.start_failures = 0;
                self.first_failure = None;
                self.spawn_retry.started();
            }
        }
        drain_ring(w, &mut self.avg_nanos);
        if w.eof && !pid.read {
            // The worker closed its socket but lives: it is of no more use.
            w.kill(KillReason::Shutdown);
        }
        if pid.read {
            let mut w = self.slots[i].take().expect("slot checked above");
            self.observe_end(i, &mut w);
            self.bury(w);
            self.publish_pids();
            return;
        }
        self.maybe_retire(i);
    }
}

impl Drop for Supervisor {
    /// Runs when the loop returns and also if it panics: no worker outlives the
    /// supervisor, and no caller waits forever.
    fn drop(&mut self) {
        if self.starting {
            let e = self.first_failure.clone().unwrap_or_else(|| {
                PoolError::Io(Arc::new(std::io::Error::other(
                    "the pool's supervisor thread stopped during start-up",
                )))
            });
            self.report_started(Err(e));
        }
        let mut q = self.shared.lock();
        if q.broken.is_none() && std::thread::panicking() {
            q.broken = Some(PoolError::Io(Arc::new(std::io::Error::other(
                "the pool's supervisor thread panicked",
            ))));
        }
        q.mode = Mode::Terminate;
        drop(q);
        self.terminate();
    }
}

fn deliver(q: &Queued, kind: TaskErrorKind, pid: Option<u32>, attempts: u32) {
    if q.batch.is_abandoned() {
        return;
    }
    q.batch.deliver([Done {
        index: q.job.index,
        outcome: Err(TaskError::new(kind, q.job.index, pid, attempts)),
        nanos: 0,
        pid,
        partial: None,
    }]);
}

fn answer(q: &Queued, kind: TaskErrorKind, pid: Option<u32>) {
    deliver(q, kind, pid, q.attempts);
}
