//! Preparation: time a worker spends getting a job's inputs ready (a front decoding a
//! shared value the job refers to, once per worker) that does not count against the job's
//! time limit, up to an allowance of its own that the parent enforces.
//!
//! The worker marks a preparation with [`preparing`]: while the guard lives, the control
//! block says when the preparation began and what it is; when it drops, its time is added
//! to the job's total. The parent reads these words when it checks the job's limit and
//! subtracts what they claim from the job's time, but never more than the allowance
//! ([`EngineConfig::prepare_allowance`](crate::EngineConfig::prepare_allowance)) and never
//! more than the job has run: a task that scribbles on the words (a worker is untrusted)
//! can lengthen its life by the allowance at most, once per job (and not at all in a job
//! that carries no descriptors, so refers to no shared value), and a preparation that
//! runs past the allowance kills the worker with an error naming what was being prepared
//! ([`TaskErrorKind::PreparationTimedOut`](crate::TaskErrorKind::PreparationTimedOut)).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::{self, SharedRegion};

/// Control word: when the preparation under way began (monotonic nanoseconds; 0: none).
pub(crate) const CTL_PREP_SINCE: usize = 64;
/// Control word: nanoseconds of the current job's finished preparations.
pub(crate) const CTL_PREP_SPENT: usize = 65;
/// Control word: how many bytes of text follow (what is being prepared).
const CTL_PREP_WHAT_LEN: usize = 66;
/// Control words: the text, 8 bytes a word.
const CTL_PREP_WHAT: usize = 67;
/// The most bytes of text kept.
const WHAT_MAX: usize = 31 * 8;

thread_local! {
    /// The first control word of the worker running a job on this thread (null outside
    /// a job), and how deep in preparations this thread is.
    static WORDS: Cell<(*const AtomicU64, u32)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Worker side, at the start of a job: clears the previous job's preparation (before the
/// job is marked started) and lets [`preparing`] on this thread reach the control block
/// until [`end_job`].
pub(crate) fn begin_job(ctl: &SharedRegion) {
    ctl.word(CTL_PREP_SINCE).store(0, Ordering::Release);
    ctl.word(CTL_PREP_SPENT).store(0, Ordering::Release);
    WORDS.with(|w| w.set((ctl.word(0) as *const AtomicU64, 0)));
}

/// Worker side, at the end of a job.
pub(crate) fn end_job() {
    WORDS.with(|w| w.set((std::ptr::null(), 0)));
}

fn word(base: *const AtomicU64, i: usize) -> &'static AtomicU64 {
    // SAFETY: `base` is the first word of the worker's control block, set by `begin_job`
    // for the job running on this thread and cleared by `end_job`; the block (mapped for
    // the worker's whole life, its first page holding these words) outlives the job.
    unsafe { &*base.add(i) }
}

/// Marks the time until the guard is dropped as preparation of the job running on this
/// thread: getting its inputs ready, which is not the task's own work. `what` says what
/// (for the error if it runs past the allowance: "decoding a `Shared<Vec<u64>>` of 12 MB",
/// say; at most 248 bytes are kept).
///
/// The parent does not count a preparation against the job's time limit, but gives all
/// the preparations of one job together at most the pool's allowance
/// ([`EngineConfig::prepare_allowance`](crate::EngineConfig::prepare_allowance)); past it
/// the worker is killed and the job fails with
/// [`TaskErrorKind::PreparationTimedOut`](crate::TaskErrorKind::PreparationTimedOut).
/// Outside a job, on a thread other than the job's, or inside another preparation, the
/// guard does nothing.
///
/// # Examples
///
/// ```
/// // In a runner, around work that only gets a job's inputs ready:
/// let table = {
///     let _p = procpool_engine::preparing("decoding a lookup table of 3 bytes");
///     vec![1u8, 2, 3]
/// };
/// assert_eq!(table.len(), 3);
/// ```
pub fn preparing(what: &str) -> Preparing {
    let (base, depth) = WORDS.with(Cell::get);
    if base.is_null() {
        return Preparing { base };
    }
    WORDS.with(|w| w.set((base, depth + 1)));
    if depth == 0 {
        let bytes = &what.as_bytes()[..what.len().min(WHAT_MAX)];
        for (k, chunk) in bytes.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            word(base, CTL_PREP_WHAT + k).store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        word(base, CTL_PREP_WHAT_LEN).store(bytes.len() as u64, Ordering::Release);
        let now = sys::monotonic_nanos().max(1);
        word(base, CTL_PREP_SINCE).store(now, Ordering::Release);
    }
    Preparing { base }
}

/// A preparation under way (see [`preparing`]); it ends when this is dropped.
#[derive(Debug)]
#[must_use = "the preparation ends when the guard is dropped"]
pub struct Preparing {
    base: *const AtomicU64,
}

impl Drop for Preparing {
    fn drop(&mut self) {
        if self.base.is_null() {
            return;
        }
        let (base, depth) = WORDS.with(Cell::get);
        if base != self.base || depth == 0 {
            return; // The job ended meanwhile.
        }
        WORDS.with(|w| w.set((base, depth - 1)));
        if depth == 1 {
            let since = word(base, CTL_PREP_SINCE).swap(0, Ordering::AcqRel);
            let took = sys::monotonic_nanos().saturating_sub(since);
            word(base, CTL_PREP_SPENT).fetch_add(took, Ordering::AcqRel);
        }
    }
}

/// Parent side: how long the worker says job `seq` (which it marked started) has spent
/// preparing, as of `mono_now`: finished preparations and the one under way. Zero when the
/// worker has moved on to another job meanwhile.
pub(crate) fn claimed(ctl: &SharedRegion, seq: u64, mono_now: u64) -> Duration {
    let spent = ctl.word(CTL_PREP_SPENT).load(Ordering::Acquire);
    let since = ctl.word(CTL_PREP_SINCE).load(Ordering::Acquire);
    if ctl
        .word(crate::process::CTL_STARTED_SEQ)
        .load(Ordering::Acquire)
        != seq
    {
        return Duration::ZERO;
    }
    let running = if since == 0 {
        0
    } else {
        mono_now.saturating_sub(since)
    };
    Duration::from_nanos(spent.saturating_add(running))
}

/// Parent side: what the worker says it is preparing, as a printable sentence part.
pub(crate) fn what(ctl: &SharedRegion) -> String {
    let len = (ctl.word(CTL_PREP_WHAT_LEN).load(Ordering::Acquire) as usize).min(WHAT_MAX);
    let mut bytes = Vec::with_capacity(len);
    for k in 0..len.div_ceil(8) {
        let w = ctl.word(CTL_PREP_WHAT + k).load(Ordering::Relaxed);
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    bytes.truncate(len);
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().is_empty() {
        "preparing its input".into()
    } else {
        text
    }
}

/// What the parent makes of a job's time: `ran` in all (by its own clock), of which the
/// worker claims `prep` was preparation, against the job's `limit` and the pool's
/// `allowance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Within both; look again after this long at the latest.
    Within(Duration),
    /// The task's own time (this much) reached its limit.
    TaskOver(Duration),
    /// The preparations (this much) ran past the allowance.
    PrepOver(Duration),
}

/// Judges a job's time (see [`Judged`]). Preparation counts apart from the task's time
/// only up to `allowance`: the job lives at most `limit + allowance`.
pub(crate) fn judge(ran: Duration, limit: Duration, prep: Duration, allowance: Duration) -> Judged {
    // No allowance: preparation is the task's time, as any other work.
    let prep = if allowance.is_zero() {
        Duration::ZERO
    } else {
        prep.min(ran)
    };
    if prep > allowance {
        return Judged::PrepOver(prep);
    }
    let task = ran - prep;
    if task >= limit {
        return Judged::TaskOver(task);
    }
    // The task's time and the preparation's can each grow at most as fast as the clock.
    let next = (limit - task).min((allowance - prep).saturating_add(Duration::from_millis(1)));
    Judged::Within(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn preparation_counts_apart_up_to_the_allowance() {
        // 300 ms in all, 250 of them decoding: 50 ms of task against a 100 ms limit.
        assert_eq!(
            judge(300 * MS, 100 * MS, 250 * MS, 1000 * MS),
            Judged::Within(50 * MS)
        );
        assert_eq!(
            judge(300 * MS, 100 * MS, 150 * MS, 1000 * MS),
            Judged::TaskOver(150 * MS)
        );
        // A claim beyond the allowance kills, whatever the task's own time.
        assert_eq!(
            judge(300 * MS, 100 * MS, 250 * MS, 200 * MS),
            Judged::PrepOver(250 * MS)
        );
        // A claim beyond what ran is cut to what ran.
        assert_eq!(
            judge(300 * MS, 100 * MS, 900 * MS, 1000 * MS),
            Judged::Within(100 * MS)
        );
        // Nothing claimed: the plain limit.
        assert_eq!(
            judge(100 * MS, 100 * MS, Duration::ZERO, 1000 * MS),
            Judged::TaskOver(100 * MS)
        );
        // An allowance too long for the clock is no bound, never an overflow.
        assert_eq!(
            judge(300 * MS, 100 * MS, 250 * MS, Duration::MAX),
            Judged::Within(50 * MS)
        );
        // No allowance: decoding is the task's time.
        assert_eq!(
            judge(300 * MS, 100 * MS, 250 * MS, Duration::ZERO),
            Judged::TaskOver(300 * MS)
        );
    }

    /// Whatever a worker writes in the words, the parent reads a sentence and never
    /// credits more than the allowance: a job lives at most `limit + allowance`.
    #[test]
    fn words_a_worker_scribbles_never_stretch_a_job_past_limit_and_allowance() {
        let ctl = SharedRegion::create("prep-test", 4096).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            for i in [CTL_PREP_SINCE, CTL_PREP_SPENT, CTL_PREP_WHAT_LEN] {
                let v = match rand() % 3 {
                    0 => rand(),
                    1 => rand() % 1000,
                    _ => u64::MAX - rand() % 3,
                };
                ctl.word(i).store(v, Ordering::Relaxed);
            }
            for k in 0..WHAT_MAX / 8 {
                ctl.word(CTL_PREP_WHAT + k).store(rand(), Ordering::Relaxed);
            }
            ctl.word(crate::process::CTL_STARTED_SEQ)
                .store(7, Ordering::Relaxed);
            let text = what(&ctl);
            assert!(!text.is_empty() && !text.chars().any(char::is_control));
            let prep = claimed(&ctl, 7, rand());
            let (ran, limit, allowance) = (
                Duration::from_nanos(rand() % 10_000_000_000),
                Duration::from_nanos(1 + rand() % 1_000_000_000),
                Duration::from_nanos(rand() % 1_000_000_000),
            );
            match judge(ran, limit, prep, allowance) {
                Judged::Within(next) => {
                    assert!(ran < limit + allowance, "{ran:?} {limit:?} {allowance:?}");
                    assert!(!next.is_zero());
                }
                Judged::TaskOver(task) => assert!(task >= limit && task <= ran),
                Judged::PrepOver(spent) => assert!(spent > allowance && spent <= ran),
            }
        }
    }

    #[test]
    fn a_preparation_outside_a_job_does_nothing() {
        let p = preparing("nothing");
        assert!(p.base.is_null());
    }
}
