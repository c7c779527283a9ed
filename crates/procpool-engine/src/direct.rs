//! Direct calls: a call's single job (a batch marked with
//! [`Batch::allow_direct`](crate::Batch::allow_direct): an `apply`, a `spawn`) for an idle
//! worker goes from the caller's thread straight into the worker's socket, and the worker's result wakes that thread through a futex word in the
//! worker's control block. A call then costs two wake-ups (the worker's and the caller's)
//! instead of four (through the supervisor both ways), and none when both sides are still
//! spinning.
//!
//! # Lanes
//!
//! Each worker slot has a *lane*, a small state under a mutex that the supervisor and the
//! callers share:
//!
//! - **Closed**: the supervisor deals with the worker as usual.
//! - **Open**: the supervisor found the worker ready and idle (nothing held, nothing
//!   waiting to be sent to it, no revocation or kill under way, quota left) while no job
//!   waited in the pool's queue, and lent it out: it will not write to the worker, read
//!   its results or retire it until it closes the lane again. It leaves with the lane the
//!   next sequence number and how many more tasks the worker may take.
//! - **Lent**: a caller took the open lane for one job (only while the pool's queue is
//!   empty, checked under the queue's lock, so a direct job never overtakes a queued
//!   one). It wrote the job to the socket itself, and waits for the result: it spins for a
//!   few tens of microseconds, then sleeps on the futex word. When the result comes
//!   through the results ring, the caller checks it as the supervisor would (positions,
//!   lengths, sequence number: the worker is untrusted) and takes it; the lane is open
//!   again, with a tally the supervisor folds into its books when it next closes it.
//!
//! The supervisor *adopts* a lent job whenever it needs the worker: the worker's socket
//! or process descriptor has news (a death, a result too large for the ring), the job's
//! time limit passed (on the supervisor's clock: the caller wakes it when it sends a job
//! that has one), jobs wait in the queue, a batch is cancelled, the pool stops, or the
//! caller hands the job back (it drops or detaches its handle, waits from async code, or
//! found something it does not trust). The job then becomes an ordinary job in flight
//! with that worker, sent at the time the caller sent it, and everything the supervisor
//! guarantees (deaths attributed, time limits, work conservation, a job run at most
//! once) holds as for any other; the caller, woken through the futex word, waits for the
//! supervisor's answer instead.
//!
//! A task may write anything into the control block: a forged futex word or waiting flag
//! only wakes the caller for nothing (it checks, and after too many such wake-ups hands
//! the job back), a forged ring entry is handed back to the supervisor unread, which
//! kills the worker with a protocol error.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::job::{BatchInner, Job, Queued};
use crate::process::{CTL_BELL, CTL_DIRECT_SEQ, CTL_DIRECT_WAITING, CTL_DIRECT_WAKE};
use crate::ring::RingReader;
use crate::shared::{Mode, Shared};
use crate::sys::{self, SharedRegion};
use crate::wire;

/// Largest payload sent directly; larger ones go through the supervisor (which may put
/// them in the worker's data region).
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a caller spins for its result before it sleeps.
pub(crate) const CALLER_SPIN: Duration = Duration::from_micros(50);
/// A gap this long between two looks while spinning means the thread was preempted: the
/// cores are busy, and spinning on would only take time from the thread it waits for.
/// Another runnable thread takes a core for a scheduler slice (a millisecond or so);
/// shorter gaps are the machine's own hiccups (interrupts, a virtual machine's exits to
/// its host), which on a 2-core VM came 30 to 100 times a second per spinning thread and
/// lasted 21 to 32 µs: at a 20 µs bound they kept spinning off most of the time.
pub(crate) const PREEMPTED: Duration = Duration::from_micros(200);
/// After a spin was preempted, a thread sleeps at once for this long: on cores other
/// programs keep busy, a thread that spins loses its turn to them, and a sleeping one is
/// woken first when its answer comes.
pub(crate) const BACK_OFF: Duration = Duration::from_millis(20);

/// Spinning with a back-off: one per spinning thread.
#[derive(Debug, Default)]
pub(crate) struct Spinner {
    off_until: Option<Instant>,
}

impl Spinner {
    /// Until when to spin from `now` for at most `max` (`now` itself: not at all, while
    /// backing off).
    pub(crate) fn until(&mut self, now: Instant, max: Duration) -> Instant {
        match self.off_until {
            Some(t) if now < t => now,
            _ => {
                self.off_until = None;
                now + max
            }
        }
    }

    /// Whether to spin on at `now`, the last look having been at `*last`: not past
    /// `until`, and not after a preemption (which starts a back-off).
    pub(crate) fn go_on(&mut self, now: Instant, last: &mut Instant, until: Instant) -> bool {
        if now.saturating_duration_since(*last) >= PREEMPTED {
            self.off_until = Some(now + BACK_OFF);
            return false;
        }
        *last = now;
        now < until
    }
}

thread_local! {
    static CALLER_SPINNER: std::cell::RefCell<Spinner> = std::cell::RefCell::default();
}
/// Wake-ups that bring nothing (a task writing the futex word) before a caller hands its
/// job back to the supervisor.
const MAX_EMPTY_WAKES: u32 = 64;
/// Job times kept in a lane's tally for the supervisor's average.
const TALLY_TIMES: usize = 16;

/// What a caller needs of a worker to send it a job and wait for the result.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) pid: u32,
    pub(crate) sock: Arc<OwnedFd>,
    pub(crate) ctl: Arc<SharedRegion>,
}

/// What went on in a lane since the supervisor opened it.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Weight of the jobs sent (counts towards the worker's recycling quota).
    pub(crate) sent_weight: u64,
    /// The last job whose result the caller took (it was claimed).
    pub(crate) last_done: u64,
    /// The times of the last jobs done.
    pub(crate) nanos: Vec<u64>,
}

/// A job a caller sent to the lane's worker.
#[derive(Debug)]
pub(crate) struct Lent {
    pub(crate) seq: u64,
    pub(crate) q: Queued,
    /// When the caller sent it: its time limit counts from here.
    pub(crate) sent: Instant,
    /// When its time limit runs out.
    pub(crate) deadline: Option<Instant>,
    /// The caller gave it back to the supervisor.
    pub(crate) handback: bool,
    /// The end of its frame the socket did not take; the supervisor sends it.
    pub(crate) unsent: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) enum State {
    #[default]
    Closed,
    Open,
    Lent(Box<Lent>),
}

#[derive(Debug, Default)]
pub(crate) struct LaneInner {
    pub(crate) state: State,
    pub(crate) link: Option<Link>,
    /// The sequence number of the next job sent to the worker.
    pub(crate) next_seq: u64,
    /// Tasks (by weight) the worker may still take before it is recycled.
    pub(crate) quota: u64,
    pub(crate) tally: Tally,
    /// How many times the lane was opened: a ticket of an earlier opening (another
    /// worker, whose numbers may repeat) is not this one's.
    pub(crate) opened: u64,
}

/// One worker slot's lane.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    inner: Mutex<LaneInner>,
}

impl Lane {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LaneInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job a caller sent directly: lane `lane`, sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    lane: usize,
    opened: u64,
    seq: u64,
}

impl Ticket {
    /// Whether `lent`, in a lane opened `opened` times, is this ticket's job, still the
    /// caller's to wait for.
    fn holds(&self, opened: u64, lent: &Lent) -> bool {
        self.opened == opened && self.seq == lent.seq && !lent.handback
    }
}

/// How waiting for a direct job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Its answer is in the batch, or the supervisor has the job and will answer.
    Settled,
    /// Not yet (a wait that does not block, or the deadline passed).
    Pending,
}

/// Tells the worker's futex waiter (a caller waiting for a direct job) that something
/// happened: a result was published, or the supervisor took the job.
pub(crate) fn ring_waiter(ctl: &SharedRegion, always: bool) {
    ctl.word32(CTL_DIRECT_WAKE).fetch_add(1, SeqCst);
    let waiting = ctl.word(CTL_DIRECT_WAITING);
    if always || (waiting.load(SeqCst) != 0 && waiting.swap(0, SeqCst) != 0) {
        sys::futex_wake(ctl.word32(CTL_DIRECT_WAKE));
    }
}

/// Tells a worker spinning for its next job that bytes were written to its socket.
pub(crate) fn ring_bell(ctl: &SharedRegion) {
    ctl.word(CTL_BELL).fetch_add(1, SeqCst);
}

impl Shared {
    /// Sends `job` straight to an idle worker, if one is lent out and no job waits in
    /// the queue. Gives the job back when it must be queued.
    pub(crate) fn try_direct(
        &self,
        batch: &Arc<BatchInner>,
        job: Job,
        admitted: bool,
    ) -> Result<Ticket, Job> {
        let len = job.payload.len();
        if self.lanes.is_empty()
            || job.fd_count() > 0
            || len > MAX_PAYLOAD
            || len > self.config.max_message
        {
            return Err(job);
        }
        let q = self.lock();
        if q.broken.is_some()
            || q.mode != Mode::Run
            || (q.closed && !admitted)
            || !q.jobs.is_empty()
        {
            return Err(job);
        }
        let weight = u64::from(job.weight.max(1));
        let n = self.lanes.len();
        // From the lane lent last: its worker, just done, spins for its next job (see
        // `worker::wait_for_more`), while one further on sleeps and must be woken.
        // Concurrent callers find it lent and go on to the next.
        let start = self.next_lane.load(SeqCst) % n;
        for k in 0..n {
            let i = (start + k) % n;
            let mut l = self.lanes[i].lock();
            if !matches!(l.state, State::Open) || l.quota < weight {
                continue;
            }
            let Some(link) = l.link.clone() else { continue };
            drop(q);
            if i != start {
                // Calls one after the other from one thread write nothing here.
                self.next_lane.store(i, SeqCst);
            }
            let seq = l.next_seq;
            let l_opened = l.opened;
            let mut frame = Vec::with_capacity(16 + wire::job_overhead(&job.func) + len);
            wire::put_jobs_header(&mut frame, 1, wire::job_overhead(&job.func) + len);
            wire::put_job_head(&mut frame, seq, &job.func, len);
            frame.extend_from_slice(&job.payload);
            link.ctl.word(CTL_DIRECT_SEQ).store(seq, SeqCst);
            let sent = Instant::now();
            let mut handback = false;
            let unsent = match send_some(&link, &frame) {
                Ok(0) => {
                    // Nothing went (the worker does not read its socket): queue it.
                    return Err(job);
                }
                Ok(n) => frame.split_off(n),
                // The worker is gone or going: the supervisor sees to it (a job that
                // never reached a worker is dealt again).
                Err(_) => {
                    handback = true;
                    frame
                }
            };
            handback |= !unsent.is_empty();
            ring_bell(&link.ctl);
            l.next_seq += 1;
            l.quota -= weight;
            l.tally.sent_weight += weight;
            let deadline = job.timeout.and_then(|t| sent.checked_add(t));
            // The supervisor keeps time limits: it must know when this one ends.
            let wake = handback || deadline.is_some();
            l.state = State::Lent(Box::new(Lent {
                seq,
                q: Queued {
                    attempts: job.attempts,
                    job,
                    batch: batch.clone(),
                    bounced: 0,
                },
                sent,
                deadline,
                handback,
                unsent,
            }));
            drop(l);
            if wake {
                self.wake();
            }
            return Ok(Ticket {
                lane: i,
                opened: l_opened,
                seq,
            });
        }
        Err(job)
    }

    /// Waits for the answer to a direct job until `deadline` (`block`: at all). On
    /// `Settled` the ticket is spent.
    pub(crate) fn wait_direct(&self, t: Ticket, deadline: Option<Instant>, block: bool) -> Waited {
        let lane = &self.lanes[t.lane];
        let ctl = {
            let l = lane.lock();
            match (&l.state, &l.link) {
                (State::Lent(x), Some(link)) if t.holds(l.opened, x) => link.ctl.clone(),
                _ => return Waited::Settled,
            }
        };
        let word = ctl.word32(CTL_DIRECT_WAKE);
        let waiting = ctl.word(CTL_DIRECT_WAITING);
        let ring = RingReader::new(&ctl);
        let mut last = Instant::now();
        let spin_until = CALLER_SPINNER.with(|s| s.borrow_mut().until(last, CALLER_SPIN));
        let mut empty_wakes = 0u32;
        let mut seen = word.load(SeqCst);
        loop {
            if ring.has_data() || word.load(SeqCst) != seen {
                if self.complete_direct(t) {
                    return Waited::Settled;
                }
                seen = word.load(SeqCst);
            }
            if !block {
                return Waited::Pending;
            }
            let now = Instant::now();
            if now < spin_until
                && CALLER_SPINNER.with(|s| s.borrow_mut().go_on(now, &mut last, spin_until))
            {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                continue;
            }
            let left = match deadline {
                Some(d) if now >= d => return Waited::Pending,
                Some(d) => Some(d - now),
                None => None,
            };
            let v = word.load(SeqCst);
            waiting.store(1, SeqCst);
            if ring.has_data() || word.load(SeqCst) != v {
                continue;
            }
            // The lane may have changed before the flag went up (a supervisor that
            // adopted the job bumps the word, so a change after `v` is seen).
            if self.complete_direct(t) {
                return Waited::Settled;
            }
            sys::futex_wait(word, v, left);
            seen = v;
            if !ring.has_data() && word.load(SeqCst) == v {
                continue; // A timeout or a signal.
            }
            empty_wakes += 1;
            if empty_wakes > MAX_EMPTY_WAKES {
                // Something keeps writing the word without publishing a result: let the
                // supervisor watch this job.
                self.hand_back(t);
                return Waited::Settled;
            }
        }
    }

    /// Takes the direct job's result if it is published. Returns whether the job is
    /// settled (answered into its batch, or in the supervisor's hands).
    fn complete_direct(&self, t: Ticket) -> bool {
        let mut l = self.lanes[t.lane].lock();
        let link = match (&l.state, &l.link) {
            (State::Lent(x), Some(link)) if t.holds(l.opened, x) => link.clone(),
            _ => return true,
        };
        let ring = RingReader::new(&link.ctl);
        let mut buf = Vec::new();
        let next = match ring.peek(&mut buf) {
            Ok(None) => return false,
            Ok(Some(next)) => next,
            Err(_) => return self.hand_back_locked(&mut l),
        };
        let (nanos, outcome) = match wire::decode_result(&buf) {
            Ok(r) if r.seq == t.seq => (r.nanos, crate::supervisor::own(r.outcome)),
            // A lie, or a result for another job: left for the supervisor to judge.
            _ => return self.hand_back_locked(&mut l),
        };
        // Bytes on the worker's socket (a stray write by its task, made before the result
        // was published, or its end closed): the supervisor reads them first and judges
        // the job, as it would had it sent the job itself.
        if sys::readable_now(link.sock.as_fd()) {
            return self.hand_back_locked(&mut l);
        }
        ring.advance(next);
        let State::Lent(lent) = std::mem::replace(&mut l.state, State::Open) else {
            unreachable!("checked above")
        };
        l.tally.last_done = lent.seq;
        if l.tally.nanos.len() < TALLY_TIMES {
            l.tally.nanos.push(nanos);
        }
        let spent = l.quota == 0;
        drop(l);
        lent.q.batch.observe(nanos);
        if let Some((batch, done)) = crate::supervisor::finished(lent.q, link.pid, nanos, outcome) {
            batch.deliver([done]);
        }
        if spent {
            // The worker reached its quota: the supervisor retires it.
            self.wake();
        }
        true
    }

    /// Gives a direct job back to the supervisor, which answers it as any other.
    pub(crate) fn hand_back(&self, t: Ticket) {
        let mut l = self.lanes[t.lane].lock();
        if matches!(&l.state, State::Lent(x) if t.holds(l.opened, x)) {
            self.hand_back_locked(&mut l);
        }
    }

    fn hand_back_locked(&self, l: &mut LaneInner) -> bool {
        if let State::Lent(x) = &mut l.state {
            x.handback = true;
        }
        self.wake();
        true
    }
}

/// Writes as much of `frame` as the socket takes now, without waiting; a partial write
/// is completed by the supervisor. `Ok(0)`: the socket took nothing.
fn send_some(link: &Link, frame: &[u8]) -> std::io::Result<usize> {
    loop {
        match sys::send_vectored(link.sock.as_fd(), &[std::io::IoSlice::new(frame)]) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_hiccup_while_spinning_is_not_a_preemption() {
        let mut s = Spinner::default();
        let t0 = Instant::now();
        let until = s.until(t0, CALLER_SPIN);
        assert_eq!(until, t0 + CALLER_SPIN);
        let mut last = t0;
        // An interrupt or a VM exit: 30 µs between two looks.
        let after = t0 + Duration::from_micros(30);
        assert!(
            s.go_on(after, &mut last, until),
            "spinning stopped after a hiccup"
        );
        assert_eq!(last, after);
        // The spin ends at its time, and the next one spins whole.
        assert!(!s.go_on(until, &mut last, until));
        assert_eq!(s.until(until, CALLER_SPIN), until + CALLER_SPIN);
    }

    #[test]
    fn a_preemption_stops_spinning_for_the_back_off_then_it_spins_again() {
        let mut s = Spinner::default();
        let t0 = Instant::now();
        let until = s.until(t0, CALLER_SPIN);
        let mut last = t0;
        let back = t0 + PREEMPTED;
        assert!(
            !s.go_on(back, &mut last, until),
            "spun on after a preemption"
        );
        let during = back + BACK_OFF - Duration::from_micros(1);
        assert_eq!(
            s.until(during, CALLER_SPIN),
            during,
            "spun while backing off"
        );
        let after = back + BACK_OFF;
        assert_eq!(s.until(after, CALLER_SPIN), after + CALLER_SPIN);
    }
}
