//! How far a job of several items (a chunk) got, for when its worker dies inside it.
//!
//! A front's runner that runs a chunk item by item reports, after each item, how many
//! items are finished and the results written so far ([`items_finished`]): the bytes go
//! to the items area of the worker's control block, then one control word says how many
//! items and bytes they are. Nothing is sent and the parent reads nothing while the
//! worker lives: the job's result goes the usual way. When the worker dies (or is killed
//! at a time limit) inside the chunk, the supervisor reads the word and the bytes (a
//! [`Partial`], in the job's [`Done`](crate::Done)); a [`Feed`](crate::Feed) then delivers
//! the finished items, fails (or retries) the item that was running alone, and sends the
//! items not started again. So a crash costs one task, whatever the chunk size.
//!
//! The worker is not trusted: the word is checked against the job (never more items than
//! it has, never more bytes than the area), and the results are the front's to decode,
//! as any result.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use crate::process::{CTL_ITEMS, ITEMS_LEN, ITEMS_OFFSET};
use crate::sys::SharedRegion;

/// The mark in the items word: the running job reports per item.
const MARK: u64 = 1 << 63;

/// The finished items of a chunk whose worker died inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// How many of the job's first items finished (their results are in `results`); the
    /// item after them was running.
    pub finished: u32,
    /// Their results, as the job's result would have begun (the front's format).
    pub results: Vec<u8>,
}

thread_local! {
    /// The control block of the job running on this thread, while a job runs.
    static CURRENT: Cell<*const SharedRegion> = const { Cell::new(std::ptr::null()) };
}

/// Marks the start of a job in `ctl` (nothing reported yet) and makes it the one
/// [`items_finished`] reports to; [`end_job`] ends that.
pub(crate) fn begin_job(ctl: &SharedRegion) {
    ctl.word(CTL_ITEMS).store(0, Ordering::Release);
    CURRENT.with(|c| c.set(ctl));
}

/// The running job has ended: [`items_finished`] reports nowhere until the next.
pub(crate) fn end_job() {
    CURRENT.with(|c| c.set(std::ptr::null()));
}

/// For a front's runner that runs a job of several items: records that the job's first
/// `items` items are finished and that `results` holds their results, as the job's
/// result begins (bytes before `unchanged` are as at the last call: 0 after any
/// rewrite). Call it once before the first item (with 0) and after each item. If the
/// worker then dies, the finished items are delivered, the next one fails alone and the
/// others are sent again (see [`Partial`]).
///
/// Returns `false` when `results` is too large to record (the items area holds 2 MiB):
/// the runner should then end the job after this item, leaving the others to be sent
/// again, since an item finished past that point would be lost with the worker. Outside
/// a job (or not in a worker) it does nothing and returns `true`.
///
/// # Examples
/// ```
/// // A runner of chunks, after writing each item's result into `out`:
/// let out = vec![0u8; 16];
/// let keep_going = procpool_engine::items_finished(2, &out, 0);
/// assert!(keep_going); // not in a worker's job: nothing to record
/// ```
#[inline]
pub fn items_finished(items: u32, results: &[u8], unchanged: usize) -> bool {
    let ctl = CURRENT.with(Cell::get);
    if ctl.is_null() {
        return true;
    }
    // SAFETY: set by `begin_job` from the control block the worker loop owns, and
    // cleared by `end_job` before the job's end; jobs run on this thread only.
    let ctl = unsafe { &*ctl };
    if results.len() > ITEMS_LEN || items >= 1 << 31 {
        return false;
    }
    let from = unchanged.min(results.len());
    ctl.write(ITEMS_OFFSET + from, &results[from..]);
    let word = MARK | (u64::from(items) << 32) | results.len() as u64;
    ctl.word(CTL_ITEMS).store(word, Ordering::Release);
    true
}

/// What a dead worker reported of its running job of `weight` items, if it reported per
/// item and the report fits the job.
pub(crate) fn read(ctl: &SharedRegion, weight: u32) -> Option<Partial> {
    let word = ctl.word(CTL_ITEMS).load(Ordering::Acquire);
    if word & MARK == 0 {
        return None;
    }
    let finished = ((word >> 32) as u32) & !(1 << 31);
    let bytes = (word & u64::from(u32::MAX)) as usize;
    if finished > weight || bytes > ITEMS_LEN {
        return None;
    }
    let mut results = Vec::new();
    ctl.read_to_vec(ITEMS_OFFSET, bytes, &mut results);
    Some(Partial { finished, results })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::CONTROL_LEN;

    #[test]
    fn reports_are_read_back_and_forged_ones_refused() {
        let ctl = SharedRegion::create("items-test", CONTROL_LEN).unwrap();
        begin_job(&ctl);
        assert_eq!(read(&ctl, 4), None, "nothing reported");
        assert!(items_finished(0, &[7], 0));
        assert!(items_finished(1, &[7, 1, 2], 1));
        assert!(
            items_finished(2, &[9, 1, 2, 3], 0),
            "rewritten from the start"
        );
        end_job();
        assert!(items_finished(3, &[1], 0), "outside a job: nothing");
        assert_eq!(
            read(&ctl, 4),
            Some(Partial {
                finished: 2,
                results: vec![9, 1, 2, 3]
            })
        );
        assert_eq!(read(&ctl, 1), None, "more items than the job has");
        let w = ctl.word(CTL_ITEMS);
        w.store(MARK | (1 << 32) | (ITEMS_LEN as u64 + 1), Ordering::Relaxed);
        assert_eq!(read(&ctl, 4), None, "more bytes than the area");
        w.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(read(&ctl, u32::MAX), None);
        begin_job(&ctl);
        assert!(!items_finished(1, &vec![0; ITEMS_LEN + 1], 0), "too large");
        end_job();
    }
}
