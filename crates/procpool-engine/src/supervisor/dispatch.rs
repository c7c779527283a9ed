//! Handing jobs to workers: which worker gets which queued job (the scheduling rule),
//! taking back jobs a busy worker has not started, and sending jobs: many to a frame, large
//! payloads through the worker's data region (a ring of the ranges of jobs in flight).
//!
//! # The scheduling rule
//!
//! The pool is *work-conserving*: no job that has not started waits while a worker is
//! idle. Two mechanisms together give that without a round trip per tiny task:
//!
//! - **Short windows, from measurements.** A worker may hold more than the job it runs
//!   only while what it holds is known to be short: every job's batch must have a
//!   measured average time, the sum of the expectations must stay under [`WINDOW_NANOS`]
//!   (2 ms), the job it runs must not have overrun its expectation, and no worker takes
//!   more than its fair share of the jobs waiting anywhere. A job of unknown length goes
//!   only to an idle worker, so nothing queues behind it. Jobs go round the workers one at
//!   a time, to the workers that are ready as they become ready.
//! - **Taking back ("revoke").** When a worker is idle and no queued job is left for it,
//!   the supervisor takes back the jobs another worker holds but has not started (see
//!   `claim`: an atomic flag in the worker's control block settles, for each job,
//!   whether the worker started it or the parent took it back), puts them at the front of
//!   the queue and deals them out again by the same rule. A worker whose first job runs
//!   past its expectation has its queue taken back the same way as soon as another worker
//!   is idle, so a job never waits behind a long one.
//!
//! Crash guarantees are unchanged: a revoked job never ran, and a worker's death fails (or
//! retries) exactly the job it was running.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{InFlight, KillReason, Phase, Supervisor, Worker, answer};
use crate::claim;
use crate::error::TaskErrorKind;
use crate::job::Queued;
use crate::transport::SHARE_THRESHOLD;
use crate::wire::{self, Down, SharedJobFrame};

/// Payloads at least this large go through the worker's data region: one copy by the
/// supervisor, read in place by the worker. (Through the socket, a chunk of a `map` of
/// numbers, 40–150 KiB, cost a kernel copy on each side, and the supervisor's was its
/// largest cost.)
const SHM_THRESHOLD: usize = 32 * 1024;
/// The part of a data region used while it has room, at least three payloads' worth:
/// see [`alloc_shared`]. (At 1 MiB, an `imap` of 128 KiB chunks, two in flight per
/// worker, kept up to 1 MiB of each worker's region resident in the parent, for 384 KiB
/// of payloads.)
const SOFT_RING: usize = 256 << 10;
/// Most expected work a worker may hold, in nanoseconds of measured job time.
const WINDOW_NANOS: f64 = 2_000_000.0;
/// Most jobs a worker may hold.
const MAX_WINDOW: usize = 1024;
/// Jobs a busy worker holds but has not started are taken back for an idle worker when
/// they are expected to take at least this long (a revocation costs about a round trip).
const STEAL_MIN_NANOS: f64 = 100_000.0;
/// A job has overrun its expectation once it has been due this many times as long...
const OVERRUN_FACTOR: f64 = 4.0;
/// ...and at least this long.
const OVERRUN_MIN: Duration = Duration::from_millis(1);

impl Worker {
    /// Records a job sent to the worker.
    pub(super) fn hold(
        &mut self,
        seq: u64,
        q: Queued,
        shared: Option<(usize, usize)>,
        now: Instant,
    ) {
        let est_nanos = q.batch.avg_nanos();
        self.backlog.add(est_nanos);
        self.in_flight.push_back(InFlight {
            seq,
            q,
            answered: false,
            shared,
            sent: now,
            est_nanos,
        });
    }

    /// Whether the worker can be given jobs now.
    pub(super) fn can_take(&self) -> bool {
        self.phase == Phase::Ready
            && self.kill_reason.is_none()
            && self.revoke_pending.is_none()
            && !self.lent
    }

    /// When the job the worker runs counts as having overrun its expectation (`None`:
    /// the worker holds nothing).
    fn overrun_at(&self) -> Option<Instant> {
        let front = self.in_flight.front()?;
        let expect = Duration::from_nanos((front.est_nanos * OVERRUN_FACTOR) as u64);
        Some(self.front_since + expect.max(OVERRUN_MIN))
    }

    /// Whether the worker may take one more job expected to take `est` nanoseconds (0:
    /// unknown), besides the jobs `picked` for it this turn, given each worker's fair
    /// share.
    fn has_room(&self, picked: &Picked, est: f64, fair: usize, now: Instant) -> bool {
        let held = self.in_flight.len() + picked.jobs.len();
        if held == 0 {
            return true;
        }
        let known = est > 0.0 && !picked.unknown && self.backlog.unknown == 0;
        known
            && held < fair
            && held < MAX_WINDOW
            && self.backlog.nanos + picked.backlog + est <= WINDOW_NANOS
            && self.overrun_at().is_none_or(|at| now < at)
    }
}

/// Jobs dealt to one worker in one turn.
struct Picked {
    slot: usize,
    /// Tasks the worker may still take before it is recycled.
    quota: u64,
    jobs: Vec<Queued>,
    /// Their expected time.
    backlog: f64,
    /// Whether one of them has no expected time.
    unknown: bool,
}

impl Supervisor {
    /// Hands queued jobs to workers with room, taking back jobs from busy workers for
    /// idle ones. Returns when to look again (a held job may overrun by then).
    pub(super) fn dispatch(&mut self) -> Option<Duration> {
        let now = Instant::now();
        self.deal(now);
        let again = self.steal_for_idle(now);
        for w in self.slots.iter_mut().flatten() {
            if !w.out.is_empty() {
                w.flush();
            }
        }
        for i in 0..self.slots.len() {
            self.maybe_retire(i);
        }
        again
    }

    /// Deals queued jobs to workers with room and sends them.
    fn deal(&mut self, now: Instant) {
        let picked = self.pick_jobs(now);
        let max_message = self.shared.config.max_message;
        for p in picked {
            if let Some(w) = self.slots[p.slot].as_mut() {
                send_jobs(w, p.jobs, max_message, now);
            }
        }
    }

    fn pick_jobs(&mut self, now: Instant) -> Vec<Picked> {
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
        if q.jobs.is_empty() {
            return picked;
        }
        // Each worker's fair share of all the jobs not finished: what is queued and what
        // the ready workers hold.
        let ready = self
            .slots
            .iter()
            .flatten()
            .filter(|w| w.phase == Phase::Ready);
        let (workers, held) =
            ready.fold((0usize, 0usize), |(n, h), w| (n + 1, h + w.in_flight.len()));
        let fair = (q.jobs.len() + held).div_ceil(workers.max(1));
        let mut takers: Vec<Picked> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let w = s.as_ref()?;
                w.can_take().then(|| Picked {
                    slot: i,
                    quota: recycle.map_or(u64::MAX, |l| l.saturating_sub(w.items_sent)),
                    jobs: Vec::new(),
                    backlog: 0.0,
                    unknown: false,
                })
            })
            .collect();
        // Jobs go round the workers one at a time, so that a batch is spread evenly.
        let mut progress = true;
        while progress && !q.jobs.is_empty() {
            progress = false;
            for t in takers.iter_mut().filter(|t| t.quota > 0) {
                let Some(job) = next_live(&mut q.jobs, max_message) else {
                    break;
                };
                let Some(w) = self.slots[t.slot].as_mut() else {
                    q.jobs.push_front(job);
                    continue;
                };
                let est = job.batch.avg_nanos();
                if !w.has_room(t, est, fair, now) {
                    q.jobs.push_front(job);
                    t.quota = 0;
                    continue;
                }
                let weight = u64::from(job.job.weight.max(1));
                // A job larger than what is left of the quota waits for a fresh worker;
                // this one has done its share (it retires once idle).
                if weight > t.quota && recycle.is_some() && w.items_sent > 0 {
                    q.jobs.push_front(job);
                    w.items_sent = recycle.unwrap_or(u64::MAX);
                    t.quota = 0;
                    continue;
                }
                t.quota = t.quota.saturating_sub(weight);
                w.items_sent += weight;
                t.backlog += est;
                t.unknown |= est <= 0.0;
                t.jobs.push(job);
                progress = true;
            }
        }
        picked.extend(takers.into_iter().filter(|t| !t.jobs.is_empty()));
        picked
    }

    /// Takes back jobs not started from busy workers while another worker is idle with
    /// nothing queued for it, and deals them again. Returns when a held job that is not
    /// worth taking back yet would overrun (and so become worth it).
    fn steal_for_idle(&mut self, now: Instant) -> Option<Duration> {
        let mut recheck: Option<Instant> = None;
        loop {
            // Idle and able to take work (a worker at its recycling quota retires instead).
            let recycle = self.shared.config.recycle_after;
            let idle = self
                .slots
                .iter()
                .flatten()
                .filter(|w| w.can_take() && w.in_flight.is_empty())
                .filter(|w| recycle.is_none_or(|l| w.items_sent < l))
                .count();
            if idle == 0 {
                break;
            }
            let mut victim: Option<(usize, usize)> = None;
            for (i, w) in self.slots.iter().enumerate() {
                let Some(w) = w else { continue };
                let waiting = w.in_flight.len().saturating_sub(1);
                if !w.can_take() || waiting == 0 {
                    continue;
                }
                let overrun = w.overrun_at();
                // What the jobs after the first (the one that may be running) add up to.
                let mut unstarted = w.backlog;
                unstarted.remove(w.in_flight.front().map_or(0.0, |f| f.est_nanos));
                let unknown = unstarted.unknown > 0;
                let unstarted = unstarted.nanos;
                let worth =
                    unknown || unstarted >= STEAL_MIN_NANOS || overrun.is_some_and(|at| now >= at);
                if !worth {
                    if let Some(at) = overrun {
                        recheck = Some(recheck.map_or(at, |r| r.min(at)));
                    }
                    continue;
                }
                if victim.is_none_or(|(_, n)| waiting > n) {
                    victim = Some((i, waiting));
                }
            }
            let Some((i, _)) = victim else { break };
            if !self.revoke(i) {
                continue;
            }
            self.deal(now);
        }
        recheck.map(|at| at.saturating_duration_since(now))
    }

    /// Takes back every job worker `i` holds and has not started, to the front of the
    /// queue. Returns whether any came back.
    pub(super) fn revoke(&mut self, i: usize) -> bool {
        let Some(w) = self.slots[i].as_mut() else {
            return false;
        };
        let last_sent = w.next_seq - 1;
        let claimed = match claim::stop(&w.proc.ctl, w.claim_floor, last_sent) {
            Ok(c) => c,
            Err(m) => {
                w.kill(KillReason::Protocol(m));
                return false;
            }
        };
        w.claim_floor = claimed;
        let mut back: Vec<Queued> = Vec::new();
        while w.in_flight.back().is_some_and(|f| f.seq > claimed) {
            let f = w.in_flight.pop_back().expect("checked above");
            w.backlog.remove(f.est_nanos);
            w.items_sent = w
                .items_sent
                .saturating_sub(u64::from(f.q.job.weight.max(1)));
            if !f.answered {
                back.push(f.q);
            }
        }
        if w.in_flight.is_empty() {
            w.backlog = Default::default();
        }
        wire::encode_down(w.out.buf(), &Down::Revoke { through: last_sent });
        w.revoke_pending = Some(last_sent);
        w.flush();
        let any = !back.is_empty();
        let mut q = self.shared.lock();
        for j in back {
            q.jobs.push_front(j);
        }
        any
    }
}

/// The next queued job worth sending: jobs of abandoned batches are dropped (a detached
/// batch's run), jobs of cancelled ones answered `Cancelled`, and one over the message limit is answered
/// `TooLarge` on the spot.
pub(super) fn next_live(jobs: &mut VecDeque<Queued>, max_message: usize) -> Option<Queued> {
    while let Some(job) = jobs.pop_front() {
        if job.batch.is_dropped() {
            continue;
        }
        if job.batch.is_cancelled() {
            // Its cancel is not handled yet: answer it here, once.
            answer(&job, TaskErrorKind::Cancelled, None);
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
        if job.job.fd_count() > wire::MAX_JOB_FDS {
            let kind = TaskErrorKind::Codec {
                message: format!(
                    "the job carries {} descriptors; at most {} may travel with one job",
                    job.job.fd_count(),
                    wire::MAX_JOB_FDS
                ),
            };
            answer(&job, kind, None);
            continue;
        }
        return Some(job);
    }
    None
}

/// Encodes jobs for a worker, in order: payloads of [`SHM_THRESHOLD`] bytes or more are
/// copied into the worker's data region when it has room, the others travel in the frame.
pub(super) fn send_jobs(w: &mut Worker, jobs: Vec<Queued>, max_message: usize, now: Instant) {
    if w.in_flight.is_empty() {
        w.front_since = now;
    }
    let mut inline: Vec<(u64, Queued)> = Vec::new();
    let mut inline_bytes = 0usize;
    for q in jobs {
        let seq = w.next_seq;
        w.next_seq += 1;
        if let Some(fds) = q.job.fds.clone().filter(|f| !f.is_empty()) {
            // The job's descriptors go in a frame of their own just before it.
            put_inline(w, std::mem::take(&mut inline), inline_bytes, now);
            inline_bytes = 0;
            w.out.attach_fds(fds.clone());
            let count = fds.len() as u32;
            wire::encode_down(w.out.buf(), &Down::Fds { seq, count });
        }
        let len = q.job.payload.len();
        let shared = if len >= SHM_THRESHOLD {
            alloc_shared(&w.in_flight, w.proc.data.len(), len)
        } else {
            None
        };
        // A region whose mapping cannot grow (no address space left) sends it inline.
        let shared = shared.filter(|&at| w.proc.data.write(at, &q.job.payload).is_ok());
        if let Some(offset) = shared {
            put_inline(w, std::mem::take(&mut inline), inline_bytes, now);
            inline_bytes = 0;
            let frame = SharedJobFrame {
                seq,
                func: &q.job.func,
                offset: offset as u64,
                len: len as u64,
            };
            let at = wire::begin_shared_jobs(w.out.buf(), 1);
            wire::put_shared_job(w.out.buf(), &frame);
            wire::end_frame(w.out.buf(), at);
            w.hold(seq, q, Some((offset, len)), now);
            continue;
        }
        let cost = wire::job_overhead(&q.job.func) + len;
        if !inline.is_empty() && inline_bytes + cost > max_message {
            put_inline(w, std::mem::take(&mut inline), inline_bytes, now);
            inline_bytes = 0;
        }
        inline_bytes += cost;
        inline.push((seq, q));
    }
    put_inline(w, inline, inline_bytes, now);
}

/// Where a payload of `len` bytes fits in a data region of `size` bytes, given the
/// ranges of the jobs in flight (which free up in the order they were taken: a ring).
pub(super) fn alloc_shared(
    in_flight: &VecDeque<InFlight>,
    size: usize,
    len: usize,
) -> Option<usize> {
    let mut ranges = in_flight.iter().filter_map(|f| f.shared);
    let Some((head, _)) = ranges.next() else {
        return (len <= size).then_some(0);
    };
    let (last_off, last_len) = in_flight.iter().rev().find_map(|f| f.shared)?;
    let tail = last_off + last_len;
    if tail > head {
        // Used: head..tail. Free: tail..size, then 0..head. Wrap early, once past a few
        // payloads' worth, when the start has room: the pages the parent has written
        // stay in its memory (and the worker's), so a ring that went round the whole
        // region would cost the region's size in each for a handful of jobs in flight.
        let soft = size.min(SOFT_RING.max(3 * len));
        if tail + len <= soft {
            Some(tail)
        } else if len <= head {
            Some(0)
        } else if tail + len <= size {
            Some(tail)
        } else {
            None
        }
    } else {
        // Wrapped. Used: head..size and 0..tail. Free: tail..head.
        (tail + len <= head).then_some(tail)
    }
}

/// Encodes jobs whose payloads travel in the frame.
fn put_inline(w: &mut Worker, jobs: Vec<(u64, Queued)>, body: usize, now: Instant) {
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
        w.hold(seq, q, None, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;
    use std::sync::Arc;

    fn flight(shared: Option<(usize, usize)>) -> InFlight {
        InFlight {
            seq: 1,
            q: Queued {
                job: Job {
                    func: Arc::from(&b""[..]),
                    payload: Arc::new(Vec::new()),
                    index: 0,
                    attempts: 0,
                    weight: 1,
                    timeout: None,
                    fds: None,
                },
                batch: Arc::default(),
                attempts: 0,
                bounced: 0,
            },
            answered: false,
            shared,
            sent: Instant::now(),
            est_nanos: 0.0,
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

    #[test]
    fn the_ring_wraps_early_in_a_large_region() {
        const MIB: usize = 1 << 20;
        let mut f: VecDeque<InFlight> = VecDeque::new();
        // Jobs of 1 MiB, two in flight: the ring stays within three of them, however
        // long it runs, instead of going round all of the region.
        let mut highest = 0;
        for _ in 0..1000 {
            let at = alloc_shared(&f, 128 * MIB, MIB).expect("room");
            highest = highest.max(at + MIB);
            f.push_back(flight(Some((at, MIB))));
            if f.len() > 2 {
                f.pop_front();
            }
        }
        assert!(highest <= 3 * MIB, "{highest}");
        // Past the soft end with no room at the start, it still uses the rest.
        let mut f: VecDeque<InFlight> = VecDeque::new();
        f.push_back(flight(Some((0, 3 * MIB))));
        assert_eq!(alloc_shared(&f, 128 * MIB, MIB), Some(3 * MIB));
    }
}
