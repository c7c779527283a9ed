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

use crate::batch::{Done, Queued};
use crate::error::{PoolError, TaskError, TaskErrorKind};
use crate::pool::{Mode, Shared};
use crate::process::{self, SpawnOptions, WorkerProc};
use crate::ring::RingReader;
use crate::sys::{self, Ready};
use crate::transport::{FrameReader, OutQueue};

mod dispatch;
mod intake;
mod lifecycle;

use dispatch::{next_live, send_jobs};
use intake::{Ctx, Early, drain_ring, drain_socket, handle_frames, read_some};

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

    /// Jobs a worker may hold at once when they take `nanos` each (0: not known yet,
    /// one at a time).
    fn window(nanos: f64) -> usize {
        if nanos <= 0.0 {
            return 1;
        }
        ((WINDOW_NANOS / nanos) as usize).clamp(1, MAX_WINDOW)
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
        if let Some(broken) = q.broken.clone()
            && !self.slots.iter().flatten().any(|w| w.phase == Phase::Ready)
        {
            for j in q.jobs.drain(..) {
                let kind = TaskErrorKind::PoolBroken(broken.clone());
                answer(&j, kind, None);
            }
            return picked;
        }
        // Jobs go round the workers one at a time, so that a batch is spread evenly. How
        // many a worker may hold comes from the job's own batch: its measured job time
        // (see `window`), one at a time until the batch's first result, so that long jobs
        // after short ones are not queued behind each other.
        struct Take {
            slot: usize,
            held: usize,
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
                    held: w.in_flight.len(),
                    quota: recycle.map_or(u64::MAX, |l| l.saturating_sub(w.items_sent)),
                    jobs: Vec::new(),
                })
            })
            .collect();
        let mut progress = true;
        while progress && !q.jobs.is_empty() {
            progress = false;
            for t in takers.iter_mut().filter(|t| t.quota > 0) {
                let Some(job) = next_live(&mut q.jobs, max_message) else {
                    break;
                };
                if t.held >= Self::window(job.batch.avg_nanos()) {
                    q.jobs.push_front(job);
                    continue;
                }
                let weight = u64::from(job.job.weight.max(1));
                let Some(w) = self.slots[t.slot].as_mut() else {
                    q.jobs.push_front(job);
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
                t.held += 1;
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
    }]);
}

fn answer(q: &Queued, kind: TaskErrorKind, pid: Option<u32>) {
    deliver(q, kind, pid, q.attempts);
}
