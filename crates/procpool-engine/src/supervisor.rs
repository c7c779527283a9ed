//! The supervisor: one thread per pool that owns the worker processes.
//!
//! It is the one place that knows which jobs each worker holds. It waits in `poll` on
//! every worker's socket and process descriptor and on an eventfd that callers ring when
//! they queue work; it sends jobs (many to a frame, up to a per-worker window sized from
//! the measured job time), reads results, and enforces time limits. When a worker dies it
//! reads what the worker sent before dying, then uses the control block to tell the job
//! that was running (which fails, or is retried) from the jobs not yet started (which go
//! back to the front of the queue), and starts a replacement.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{BatchInner, Done, Queued};
use crate::error::{Death, HandshakeError, PoolError, TaskError, TaskErrorKind};
use crate::pool::{Mode, Shared};
use crate::process::{self, SpawnOptions, WorkerProc};
use crate::ring::RingReader;
use crate::sys::SharedRegion;
use crate::sys::{self, Ready};
use crate::transport::{FrameReader, OutQueue, SHARE_THRESHOLD};
use crate::wire::{
    self, Down, Failure, Outcome, PROTOCOL_VERSION, ResultFrame, SharedJobFrame, Up,
};

/// Target amount of work in flight per worker, in nanoseconds of measured job time.
const WINDOW_NANOS: f64 = 2_000_000.0;
/// Most jobs in flight per worker.
const MAX_WINDOW: usize = 1024;
/// How long a worker told to shut down may take before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Jobs in flight past which a worker's results are collected on a timer instead of a
/// doorbell each.
const DEEP_QUEUE: usize = 4;
/// Shortest and longest nap while collecting results on a timer, in nanoseconds.
const MIN_NAP: f64 = 50_000.0;
const MAX_NAP: f64 = 1_000_000.0;
/// Payloads at least this large go through the worker's data region.
const SHM_THRESHOLD: usize = 256 * 1024;
/// Reads per worker per loop turn, so one chatty worker cannot starve the others.
const READS_PER_TURN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Init,
    Ready,
    Retiring,
}

#[derive(Debug, Clone)]
enum KillReason {
    Timeout { limit: Duration, ran: Duration },
    Cancel,
    Protocol(String),
    Shutdown,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    q: Queued,
    /// Already answered (cancelled): drop whatever comes back.
    answered: bool,
    /// The range of the data region holding the payload, if it went that way.
    shared: Option<(usize, usize)>,
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
    kill_reason: Option<KillReason>,
    /// When a worker sent SIGTERM for a timeout gets SIGKILL.
    hard_kill_at: Option<Instant>,
    start_error: Option<PoolError>,
    eof: bool,
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
        if let Err(e) = self.out.flush(self.proc.sock.as_fd()) {
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
    starting: bool,
    spawn_opts: SpawnOptions,
    ready_buf: Vec<Ready>,
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let n = shared.config.workers;
        let spawn_opts = SpawnOptions {
            executable: shared.config.executable.clone(),
            max_message: shared.config.max_message,
        };
        Self {
            shared,
            slots: (0..n).map(|_| None).collect(),
            retiring: Vec::new(),
            avg_nanos: 0.0,
            start_failures: 0,
            first_failure: None,
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
            for b in cancels {
                self.cancel(&b);
            }
            if self.starting && self.one_started() {
                self.report_started(Ok(()));
            }
            self.dispatch();
            if mode == Mode::Join && self.idle() {
                self.shutdown_all();
                if self.retiring.is_empty() {
                    return;
                }
            }
            self.respawn(mode);
            let timeout = self.check_deadlines();
            if self.starting && self.failed_start() {
                return;
            }
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
        let proc = process::spawn(&self.spawn_opts)?;
        sys::set_nonblocking(proc.sock.as_fd(), true)?;
        let max_body = self.shared.config.max_message.saturating_add(64);
        self.slots[i] = Some(Worker {
            proc,
            phase: Phase::Handshake,
            deadline: Some(Instant::now() + self.shared.config.handshake_timeout),
            reader: FrameReader::new(max_body),
            out: OutQueue::default(),
            in_flight: VecDeque::new(),
            early: BTreeMap::new(),
            next_seq: 1,
            items_sent: 0,
            kill_reason: None,
            hard_kill_at: None,
            start_error: None,
            eof: false,
        });
        self.publish_pids();
        Ok(())
    }

    fn publish_pids(&self) {
        let pids = self.slots.iter().flatten().map(Worker::pid).collect();
        *self.shared.pids.lock().unwrap_or_else(|e| e.into_inner()) = pids;
    }

    fn respawn(&mut self, mode: Mode) {
        if self.shared.lock().broken.is_some() {
            return;
        }
        if mode == Mode::Join && self.idle() {
            return;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].is_none()
                && let Err(e) = self.spawn_into(i)
            {
                self.start_failed(e);
                return;
            }
        }
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
        self.shared.lock().broken = Some(broken);
    }

    fn idle(&self) -> bool {
        self.shared.lock().jobs.is_empty()
            && self.slots.iter().flatten().all(|w| w.in_flight.is_empty())
    }

    /// Jobs a worker may hold at once.
    fn window(&self) -> usize {
        if self.avg_nanos <= 0.0 {
            return 1;
        }
        ((WINDOW_NANOS / self.avg_nanos) as usize).clamp(1, MAX_WINDOW)
    }

    /// Hands queued jobs to workers with room. Jobs are picked under the queue's lock
    /// and encoded (and large payloads copied) after it is released.
    fn dispatch(&mut self) {
        let picked = self.pick_jobs();
        let max_message = self.shared.config.max_message;
        for (i, jobs) in picked {
            if let Some(w) = self.slots[i].as_mut() {
                send_jobs(w, jobs, max_message);
            }
        }
        for w in self.slots.iter_mut().flatten() {
            if !w.out.is_empty() {
                w.flush();
            }
        }
        for i in 0..self.slots.len() {
            self.maybe_retire(i);
        }
    }

    fn pick_jobs(&mut self) -> Vec<(usize, Vec<Queued>)> {
        let recycle = self.shared.config.recycle_after;
        let max_message = self.shared.config.max_message;
        let mut picked = Vec::new();
        let mut q = self.shared.lock();
        // Long jobs go one at a time: a job queued behind a long (or stuck) one would wait
        // for it even when another worker is free.
        let window = self.window();
        if let Some(broken) = q.broken.clone()
            && !self.slots.iter().flatten().any(|w| w.phase == Phase::Ready)
        {
            for j in q.jobs.drain(..) {
                let kind = TaskErrorKind::PoolBroken(broken.clone());
                answer(&j, kind, None);
            }
            return picked;
        }
        // Jobs go round the workers one at a time, so that a batch is spread evenly even
        // when the window (sized from earlier, maybe shorter, jobs) would let one worker
        // take it all.
        struct Take {
            slot: usize,
            room: usize,
            /// Tasks the worker may still take before it is recycled.
            quota: u64,
            jobs: Vec<Queued>,
        }
        let mut takers: Vec<Take> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let w = s.as_ref()?;
                (w.phase == Phase::Ready && w.kill_reason.is_none()).then(|| Take {
                    slot: i,
                    room: window.saturating_sub(w.in_flight.len()),
                    quota: recycle.map_or(u64::MAX, |l| l.saturating_sub(w.items_sent)),
                    jobs: Vec::new(),
                })
            })
            .collect();
        let mut progress = true;
        while progress && !q.jobs.is_empty() {
            progress = false;
            for t in takers.iter_mut().filter(|t| t.room > 0 && t.quota > 0) {
                let Some(job) = next_live(&mut q.jobs, max_message) else {
                    break;
                };
                let weight = u64::from(job.job.weight.max(1));
                let Some(w) = self.slots[t.slot].as_mut() else {
                    continue;
                };
                // A job larger than what is left of the quota waits for a fresh worker;
                // this one has done its share (it retires once idle).
                if weight > t.quota && recycle.is_some() && w.items_sent > 0 {
                    q.jobs.push_front(job);
                    w.items_sent = recycle.unwrap_or(u64::MAX);
                    t.quota = 0;
                    continue;
                }
                t.quota = t.quota.saturating_sub(weight);
                t.room -= 1;
                w.items_sent += weight;
                t.jobs.push(job);
                progress = true;
            }
        }
        picked.extend(
            takers
                .into_iter()
                .filter(|t| !t.jobs.is_empty())
                .map(|t| (t.slot, t.jobs)),
        );
        picked
    }

    fn cancel(&mut self, batch: &Arc<BatchInner>) {
        let mut q = self.shared.lock();
        let mut kept = VecDeque::with_capacity(q.jobs.len());
        for j in q.jobs.drain(..) {
            if Arc::ptr_eq(&j.batch, batch) {
                deliver(&j, TaskErrorKind::Cancelled, None, j.attempts);
            } else {
                kept.push_back(j);
            }
        }
        q.jobs = kept;
        drop(q);
        for w in self.slots.iter_mut().flatten() {
            let (started, _) = w.proc.started();
            let mut kill = false;
            for f in w.in_flight.iter_mut() {
                if Arc::ptr_eq(&f.q.batch, batch) && !f.answered {
                    f.answered = true;
                    let pid = w.proc.pid;
                    deliver(&f.q, TaskErrorKind::Cancelled, Some(pid), f.q.attempts + 1);
                    // Only the job running now is worth a kill; an earlier one has ended
                    // (its result is on the way) and a later one has not begun.
                    kill |= f.seq == started;
                }
            }
            if kill {
                w.kill(KillReason::Cancel);
            }
        }
    }

    /// Kills workers past a deadline; returns how long until the next one.
    fn check_deadlines(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mono = sys::monotonic_nanos();
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        let grace = self.shared.config.kill_grace;
        for w in self.slots.iter_mut().flatten() {
            if let Some(at) = w.hard_kill_at {
                if now >= at {
                    w.proc.kill();
                    w.hard_kill_at = None;
                } else {
                    soonest(at - now);
                }
            }
            if w.kill_reason.is_some() {
                continue;
            }
            if let Some(d) = w.deadline {
                if now >= d {
                    let t = self.shared.config.handshake_timeout;
                    w.start_error.get_or_insert(PoolError::Handshake {
                        pid: Some(w.proc.pid),
                        reason: HandshakeError::TimedOut(t),
                    });
                    w.kill(KillReason::Shutdown);
                    continue;
                }
                soonest(d - now);
            }
            if w.phase != Phase::Ready {
                continue;
            }
            let (started, at) = w.proc.started();
            for f in &w.in_flight {
                let Some(limit) = f.q.job.timeout else {
                    continue;
                };
                if f.answered {
                    continue;
                }
                if f.seq == started {
                    let ran = Duration::from_nanos(mono.saturating_sub(at));
                    if ran >= limit {
                        w.kill_reason = Some(KillReason::Timeout { limit, ran });
                        match grace {
                            Some(g) if !g.is_zero() => {
                                w.proc.terminate();
                                w.hard_kill_at = Some(now + g);
                                soonest(g);
                            }
                            _ => w.proc.kill(),
                        }
                        break;
                    }
                    soonest(limit - ran);
                } else if f.seq > started {
                    // Not started yet: look again shortly.
                    soonest(limit.min(Duration::from_millis(2)));
                }
                break;
            }
        }
        for w in &mut self.retiring {
            if let Some(d) = w.deadline {
                if now >= d {
                    w.proc.kill();
                } else {
                    soonest(d - now);
                }
            }
        }
        next
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
            fds.push((w.sock(), sock));
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
        let Some(w) = self.slots[i].as_mut() else {
            return;
        };
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
                self.start_failures = 0;
                self.first_failure = None;
            }
        }
        drain_ring(w, &mut self.avg_nanos);
        if w.eof && !pid.read {
            // The worker closed its socket but lives: it is of no more use.
            w.kill(KillReason::Shutdown);
        }
        if pid.read {
            let w = self.slots[i].take().expect("slot checked above");
            self.bury(w);
            self.publish_pids();
            return;
        }
        self.maybe_retire(i);
    }

    /// Sends a worker that reached its task quota into retirement.
    fn maybe_retire(&mut self, i: usize) {
        let Some(limit) = self.shared.config.recycle_after else {
            return;
        };
        let Some(w) = self.slots[i].as_mut() else {
            return;
        };
        if w.phase == Phase::Ready && w.items_sent >= limit && w.in_flight.is_empty() {
            let w = self.slots[i].take().expect("slot checked above");
            self.retire(w);
            self.publish_pids();
        }
    }

    fn retire(&mut self, mut w: Worker) {
        wire::encode_down(w.out.buf(), &Down::Shutdown);
        w.flush();
        w.phase = Phase::Retiring;
        w.deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        self.retiring.push(w);
    }

    /// Handles the end of a worker that held a slot.
    fn bury(&mut self, mut w: Worker) {
        drain_socket(&mut w, &mut self.avg_nanos);
        drain_ring(&mut w, &mut self.avg_nanos);
        let death = w.proc.reap();
        match w.phase {
            Phase::Handshake | Phase::Init => {
                let e = w.start_error.take().unwrap_or(PoolError::Handshake {
                    pid: Some(w.proc.pid),
                    reason: HandshakeError::Exited(death),
                });
                self.start_failed(e);
            }
            Phase::Ready | Phase::Retiring => self.attribute(w, death),
        }
    }

    /// Fails the job a dead worker was running and sends the others back to the queue.
    fn attribute(&mut self, mut w: Worker, death: Death) {
        let (started, _) = w.proc.started();
        let retries = self.shared.config.retries;
        let mut again: Vec<Queued> = Vec::new();
        for mut f in w.in_flight.drain(..) {
            if f.answered || f.q.batch.is_dead() {
                continue;
            }
            if let Some(e) = w.early.remove(&f.seq) {
                // Its result came, though an earlier job's never did.
                let (index, attempts) = (f.q.job.index, f.q.attempts + 1);
                let pid = Some(w.proc.pid);
                f.q.batch.deliver([Done {
                    index,
                    outcome: e
                        .outcome
                        .map_err(|fail| TaskError::new(fail.into(), index, pid, attempts)),
                    nanos: e.nanos,
                    pid,
                }]);
                continue;
            }
            if f.seq > started {
                again.push(f.q);
                continue;
            }
            let attempts = f.q.attempts + 1;
            let kind = match &w.kill_reason {
                Some(KillReason::Timeout { limit, ran }) => TaskErrorKind::TimedOut {
                    limit: *limit,
                    ran: *ran,
                },
                Some(KillReason::Cancel) => TaskErrorKind::Cancelled,
                Some(KillReason::Protocol(m)) => TaskErrorKind::Protocol { message: m.clone() },
                Some(KillReason::Shutdown) | None => {
                    if attempts <= retries {
                        f.q.attempts = attempts;
                        again.push(f.q);
                        continue;
                    }
                    TaskErrorKind::WorkerDied { death }
                }
            };
            deliver(&f.q, kind, Some(w.proc.pid), attempts);
        }
        let mut q = self.shared.lock();
        for j in again.into_iter().rev() {
            q.jobs.push_front(j);
        }
    }

    fn shutdown_all(&mut self) {
        for i in 0..self.slots.len() {
            if let Some(mut w) = self.slots[i].take() {
                if w.phase == Phase::Ready {
                    self.retire(w);
                } else {
                    w.proc.kill_and_reap();
                }
            }
        }
        self.publish_pids();
    }

    fn terminate(&mut self) {
        let mut all: Vec<Worker> = self.slots.iter_mut().filter_map(Option::take).collect();
        all.append(&mut self.retiring);
        for w in &all {
            w.proc.kill();
        }
        for mut w in all {
            w.proc.reap();
            for f in w.in_flight.drain(..) {
                if !f.answered {
                    deliver(
                        &f.q,
                        TaskErrorKind::Terminated,
                        Some(w.proc.pid),
                        f.q.attempts + 1,
                    );
                }
            }
        }
        let jobs = std::mem::take(&mut self.shared.lock().jobs);
        for j in jobs {
            answer(&j, TaskErrorKind::Terminated, None);
        }
        self.publish_pids();
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

/// Encodes jobs for a worker, in order: payloads of [`SHM_THRESHOLD`] bytes or more are
/// copied into the worker's data region when it has room, the others travel in the frame.
/// The next queued job worth sending: jobs of abandoned batches are dropped, and one over
/// the message limit is answered `TooLarge` on the spot.
fn next_live(jobs: &mut VecDeque<Queued>, max_message: usize) -> Option<Queued> {
    while let Some(job) = jobs.pop_front() {
        if job.batch.is_dead() {
            continue;
        }
        let size = job.job.payload.len();
        if size > max_message {
            let kind = TaskErrorKind::TooLarge {
                size: size as u64,
                limit: max_message as u64,
            };
            answer(&job, kind, None);
            continue;
        }
        return Some(job);
    }
    None
}

fn send_jobs(w: &mut Worker, jobs: Vec<Queued>, max_message: usize) {
    let mut inline: Vec<(u64, Queued)> = Vec::new();
    let mut inline_bytes = 0usize;
    for q in jobs {
        let seq = w.next_seq;
        w.next_seq += 1;
        let len = q.job.payload.len();
        let shared = if len >= SHM_THRESHOLD {
            alloc_shared(&w.in_flight, w.proc.data.len(), len)
        } else {
            None
        };
        if let Some(offset) = shared {
            put_inline(w, std::mem::take(&mut inline), inline_bytes);
            inline_bytes = 0;
            w.proc.data.write(offset, &q.job.payload);
            let frame = SharedJobFrame {
                seq,
                func: &q.job.func,
                offset: offset as u64,
                len: len as u64,
            };
            let at = wire::begin_shared_jobs(w.out.buf(), 1);
            wire::put_shared_job(w.out.buf(), &frame);
            wire::end_frame(w.out.buf(), at);
            w.in_flight.push_back(InFlight {
                seq,
                q,
                answered: false,
                shared: Some((offset, len)),
            });
            continue;
        }
        let cost = wire::job_overhead(&q.job.func) + len;
        if !inline.is_empty() && inline_bytes + cost > max_message {
            put_inline(w, std::mem::take(&mut inline), inline_bytes);
            inline_bytes = 0;
        }
        inline_bytes += cost;
        inline.push((seq, q));
    }
    put_inline(w, inline, inline_bytes);
}

/// Where a payload of `len` bytes fits in a data region of `size` bytes, given the
/// ranges of the jobs in flight (which free up in the order they were taken: a ring).
fn alloc_shared(in_flight: &VecDeque<InFlight>, size: usize, len: usize) -> Option<usize> {
    let mut ranges = in_flight.iter().filter_map(|f| f.shared);
    let Some((head, _)) = ranges.next() else {
        return (len <= size).then_some(0);
    };
    let (last_off, last_len) = in_flight.iter().rev().find_map(|f| f.shared)?;
    let tail = last_off + last_len;
    if tail > head {
        // Used: head..tail. Free: tail..size, then 0..head.
        if tail + len <= size {
            Some(tail)
        } else {
            (len <= head).then_some(0)
        }
    } else {
        // Wrapped. Used: head..size and 0..tail. Free: tail..head.
        (tail + len <= head).then_some(tail)
    }
}

/// Encodes jobs whose payloads travel in the frame.
fn put_inline(w: &mut Worker, jobs: Vec<(u64, Queued)>, body: usize) {
    if jobs.is_empty() {
        return;
    }
    wire::put_jobs_header(w.out.buf(), jobs.len() as u32, body);
    for (seq, q) in jobs {
        let payload = &q.job.payload;
        wire::put_job_head(w.out.buf(), seq, &q.job.func, payload.len());
        if payload.len() >= SHARE_THRESHOLD {
            w.out.push_shared(payload.clone());
        } else {
            w.out.buf().extend_from_slice(payload);
        }
        w.in_flight.push_back(InFlight {
            seq,
            q,
            answered: false,
            shared: None,
        });
    }
}

/// Reads what the worker's socket holds now (bounded per turn).
fn read_some(w: &mut Worker) {
    for _ in 0..READS_PER_TURN {
        match w.reader.fill(w.proc.sock.as_fd()) {
            Ok(0) => {
                w.eof = true;
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                w.eof = true;
                return;
            }
        }
        if w.reader.frame().is_ok_and(|f| f.is_some()) {
            return;
        }
    }
}

/// Reads everything a dead worker left in its socket.
fn drain_socket(w: &mut Worker, avg_nanos: &mut f64) {
    let mut ctx = Ctx {
        avg_nanos,
        init: None,
    };
    loop {
        handle_frames(w, &mut ctx);
        if w.eof || matches!(w.kill_reason, Some(KillReason::Protocol(_))) {
            return;
        }
        match w.reader.fill(w.proc.sock.as_fd()) {
            Ok(0) => w.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => w.eof = true,
        }
    }
}

/// What message handling needs beyond the worker.
struct Ctx<'a> {
    avg_nanos: &'a mut f64,
    init: Option<&'a (Arc<[u8]>, Vec<u8>)>,
}

/// Handles every complete frame a worker sent.
fn handle_frames(w: &mut Worker, ctx: &mut Ctx<'_>) {
    loop {
        if matches!(w.kill_reason, Some(KillReason::Protocol(_))) {
            return;
        }
        let Worker {
            reader,
            phase,
            deadline,
            in_flight,
            early,
            start_error,
            proc,
            ..
        } = &mut *w;
        let (used, result) = match reader.frame() {
            Ok(None) => {
                let due = in_flight.front().map(|f| f.seq);
                match wire::check_up_prefix(reader.pending(), in_flight.len(), due) {
                    Ok(()) => return,
                    Err(e) => (0, Err(e.to_string())),
                }
            }
            Err(e) => (0, Err(e.to_string())),
            Ok(Some((body, used))) => {
                let view = WorkerView {
                    pid: proc.pid,
                    ctl: &proc.ctl,
                    early,
                    phase,
                    deadline,
                    in_flight,
                    start_error,
                    has_init: ctx.init.is_some(),
                };
                (used, handle_message(view, body, ctx.avg_nanos))
            }
        };
        w.reader.consume(used);
        if w.start_error.is_some() && w.phase != Phase::Ready {
            // Refused or failed its initializer: it will not serve.
            w.kill(KillReason::Shutdown);
        }
        match result {
            Err(m) => {
                w.kill(KillReason::Protocol(m));
                return;
            }
            Ok(true) => {
                if let Some((func, payload)) = ctx.init {
                    wire::encode_down(w.out.buf(), &Down::Init { func, payload });
                    w.flush();
                }
            }
            Ok(false) => {}
        }
    }
}

/// The fields of a worker a message may change (split from its reader, which holds the
/// message's bytes).
struct WorkerView<'a> {
    pid: u32,
    ctl: &'a SharedRegion,
    early: &'a mut BTreeMap<u64, Early>,
    phase: &'a mut Phase,
    deadline: &'a mut Option<Instant>,
    in_flight: &'a mut VecDeque<InFlight>,
    start_error: &'a mut Option<PoolError>,
    has_init: bool,
}

/// Handles one message; `Ok(true)` when the initializer is to be sent.
fn handle_message(mut w: WorkerView<'_>, body: &[u8], avg_nanos: &mut f64) -> Result<bool, String> {
    let msg = wire::decode_up(body).map_err(|e| e.to_string())?;
    match (*w.phase, msg) {
        (
            Phase::Handshake,
            Up::Hello {
                version,
                fingerprint,
                ..
            },
        ) => {
            if version != PROTOCOL_VERSION || fingerprint != process::my_fingerprint() {
                return Err(format!(
                    "hello with version {version} and fingerprint {fingerprint:016x}"
                ));
            }
            *w.deadline = None;
            *w.phase = if w.has_init {
                Phase::Init
            } else {
                Phase::Ready
            };
            Ok(w.has_init)
        }
        (Phase::Handshake, Up::Refused(r)) => {
            *w.start_error = Some(PoolError::Handshake {
                pid: Some(w.pid),
                reason: r.into(),
            });
            Ok(false)
        }
        (Phase::Init, Up::InitDone(r)) => {
            match r {
                Ok(()) => *w.phase = Phase::Ready,
                Err(f) => {
                    *w.start_error = Some(PoolError::Handshake {
                        pid: Some(w.pid),
                        reason: HandshakeError::Initializer(Box::new(f.into())),
                    });
                }
            }
            Ok(false)
        }
        (Phase::Ready | Phase::Retiring, Up::Results(rs)) => {
            // Results in the ring were published before this one was sent: first them.
            let mut out = Deliverer::default();
            let r = drain_ring_into(&mut w, avg_nanos, &mut out).and_then(|()| {
                rs.into_iter()
                    .try_for_each(|r| accept(&mut w, r, avg_nanos, &mut out))
            });
            out.flush();
            r.map(|()| false)
        }
        (Phase::Ready | Phase::Retiring, Up::Doorbell) => {
            let mut out = Deliverer::default();
            let r = drain_ring_into(&mut w, avg_nanos, &mut out);
            out.flush();
            r.map(|()| false)
        }
        (phase, msg) => Err(format!("unexpected {msg:?} in phase {phase:?}")),
    }
}

/// Results on their way to their batches: consecutive results of one batch are handed
/// over under one lock.
#[derive(Default)]
struct Deliverer {
    group: Vec<Done>,
    batch: Option<Arc<BatchInner>>,
}

impl Deliverer {
    fn push(&mut self, batch: Arc<BatchInner>, done: Done) {
        if !self.batch.as_ref().is_some_and(|g| Arc::ptr_eq(g, &batch)) {
            self.flush();
            self.batch = Some(batch);
        }
        self.group.push(done);
    }

    fn flush(&mut self) {
        if let Some(b) = &self.batch
            && !self.group.is_empty()
        {
            b.deliver(self.group.drain(..));
        }
    }
}

/// A result that came before the one due (through the ring, while an earlier, larger
/// result was still on its way through the socket), owned until its turn.
#[derive(Debug)]
struct Early {
    nanos: u64,
    outcome: Result<Vec<u8>, Failure>,
}

/// Takes one result. Results come in job order on each channel, but the ring and the
/// socket may overtake each other: a result for a later job the worker holds waits for
/// the earlier ones; one for a job it does not hold, or a second one, is a lie.
fn accept(
    w: &mut WorkerView<'_>,
    r: ResultFrame<'_>,
    avg_nanos: &mut f64,
    out: &mut Deliverer,
) -> Result<(), String> {
    let (Some(front), Some(back)) = (w.in_flight.front(), w.in_flight.back()) else {
        return Err(format!(
            "result for job {} which the worker does not hold",
            r.seq
        ));
    };
    let (front, back) = (front.seq, back.seq);
    if r.seq != front {
        if r.seq < front || r.seq > back || w.early.contains_key(&r.seq) {
            return Err(format!(
                "result for job {} while the worker holds jobs {front} to {back}",
                r.seq
            ));
        }
        let outcome = match r.outcome {
            Outcome::Ok(b) => Ok(b.to_vec()),
            Outcome::Err(f) => Err(f),
        };
        w.early.insert(
            r.seq,
            Early {
                nanos: r.nanos,
                outcome,
            },
        );
        return Ok(());
    }
    let outcome = match r.outcome {
        Outcome::Ok(b) => Ok(b.to_vec()),
        Outcome::Err(f) => Err(f),
    };
    take_due(w, r.nanos, outcome, avg_nanos, out);
    while let Some(seq) = w.in_flight.front().map(|f| f.seq) {
        let Some(e) = w.early.remove(&seq) else { break };
        take_due(w, e.nanos, e.outcome, avg_nanos, out);
    }
    Ok(())
}

/// Answers the job due next with its result.
fn take_due(
    w: &mut WorkerView<'_>,
    nanos: u64,
    outcome: Result<Vec<u8>, Failure>,
    avg_nanos: &mut f64,
    out: &mut Deliverer,
) {
    let Some(f) = w.in_flight.pop_front() else {
        return;
    };
    *avg_nanos = if *avg_nanos <= 0.0 {
        nanos as f64
    } else {
        0.8 * *avg_nanos + 0.2 * nanos as f64
    };
    let Queued {
        job,
        batch,
        attempts,
    } = f.q;
    let index = job.index;
    // The payload goes first, so the caller may reuse its buffer.
    drop(job);
    if f.answered || batch.is_dead() {
        return;
    }
    let outcome =
        outcome.map_err(|fail| TaskError::new(fail.into(), index, Some(w.pid), attempts + 1));
    out.push(
        batch,
        Done {
            index,
            outcome,
            nanos,
            pid: Some(w.pid),
        },
    );
}

/// Takes every result published in the worker's results ring.
fn drain_ring_into(
    w: &mut WorkerView<'_>,
    avg_nanos: &mut f64,
    out: &mut Deliverer,
) -> Result<(), String> {
    let ring = RingReader::new(w.ctl);
    let mut buf = Vec::new();
    while ring.pop(&mut buf).map_err(|e| e.0)? {
        let r = wire::decode_result(&buf).map_err(|e| format!("bad ring entry: {e}"))?;
        accept(w, r, avg_nanos, out)?;
    }
    Ok(())
}

/// Takes every result published in a ready worker's results ring; a lie there kills the
/// worker with a protocol error.
fn drain_ring(w: &mut Worker, avg_nanos: &mut f64) {
    if !matches!(w.phase, Phase::Ready | Phase::Retiring)
        || matches!(w.kill_reason, Some(KillReason::Protocol(_)))
        || !RingReader::new(&w.proc.ctl).has_data()
    {
        return;
    }
    let Worker {
        phase,
        deadline,
        in_flight,
        early,
        start_error,
        proc,
        ..
    } = &mut *w;
    let mut view = WorkerView {
        pid: proc.pid,
        ctl: &proc.ctl,
        early,
        phase,
        deadline,
        in_flight,
        start_error,
        has_init: false,
    };
    let mut out = Deliverer::default();
    let r = drain_ring_into(&mut view, avg_nanos, &mut out);
    out.flush();
    if let Err(m) = r {
        w.kill(KillReason::Protocol(m));
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
    }]);
}

fn answer(q: &Queued, kind: TaskErrorKind, pid: Option<u32>) {
    deliver(q, kind, pid, q.attempts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Job;

    fn flight(shared: Option<(usize, usize)>) -> InFlight {
        InFlight {
            seq: 1,
            q: Queued {
                job: Job {
                    func: Arc::from(&b""[..]),
                    payload: Arc::new(Vec::new()),
                    index: 0,
                    weight: 1,
                    timeout: None,
                },
                batch: Arc::default(),
                attempts: 0,
            },
            answered: false,
            shared,
        }
    }

    #[test]
    fn the_data_region_is_a_ring() {
        let mut f: VecDeque<InFlight> = VecDeque::new();
        assert_eq!(alloc_shared(&f, 100, 100), Some(0));
        assert_eq!(alloc_shared(&f, 100, 101), None);
        f.push_back(flight(Some((0, 40))));
        f.push_back(flight(None));
        assert_eq!(alloc_shared(&f, 100, 60), Some(40));
        assert_eq!(alloc_shared(&f, 100, 61), None);
        f.push_back(flight(Some((40, 50))));
        f.pop_front();
        // Used 40..90: 10 bytes at the end, 40 at the start.
        assert_eq!(alloc_shared(&f, 100, 30), Some(0));
        f.push_back(flight(Some((0, 30))));
        // Wrapped: used 40..90 and 0..30; free 30..40.
        assert_eq!(alloc_shared(&f, 100, 10), Some(30));
        assert_eq!(alloc_shared(&f, 100, 11), None);
    }
}
