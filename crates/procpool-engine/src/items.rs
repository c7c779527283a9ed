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
use std::sync::atomic::{AtomicU64, Ordering};

use crate::process::{CTL_ITEMS, ITEMS_LEN, ITEMS_OFFSET};
use crate::sys::SharedRegion;

/// The mark in the items word: the running job reports per item.
const MARK: u64 = 1 << 63;

/// The finished items of a chunk whose worker died inside it.
///
/// # Examples
/// ```
/// # fn front(done: procpool_engine::Done) {
/// if let Some(p) = &done.partial {
///     // `p.results` holds the results of the job's first `p.finished` items, in the
///     // front's own format; `done.outcome` is the error of the item after them.
///     println!("{} items finished before the worker died", p.finished);
/// }
/// # }
/// ```
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
/// others are sent again (see [`Partial`]). A runner of many small items takes an
/// [`ItemLog`] once per job instead ([`ItemLog::current`]): the same, cheaper.
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
    ItemLog::current().finished(items, results, unchanged)
}

/// Where the running job's finished items are recorded (see [`items_finished`]): taken
/// once per job by a runner, used after each item, dropped before the job ends.
///
/// # Examples
/// ```
/// let log = procpool_engine::ItemLog::current();
/// let mut out = vec![1u8]; // the results' header, say
/// assert!(log.finished(0, &out, 0));
/// for item in 0..3u8 {
///     out.push(item * 2); // one item's result
///     assert!(log.finished(u32::from(item) + 1, &out, out.len() - 1));
/// }
/// ```
#[derive(Debug)]
pub struct ItemLog {
    /// The items area and the items word of the running job's control block; null
    /// outside a job.
    area: *mut u8,
    word: *const AtomicU64,
}

impl ItemLog {
    /// The log of the job running on this thread (one that records nothing outside a
    /// worker's job).
    ///
    /// ```
    /// let log = procpool_engine::ItemLog::current(); // outside a job: records nothing
    /// assert!(log.finished(1, &[0u8; 8], 0));
    /// ```
    #[inline]
    pub fn current() -> ItemLog {
        let ctl = CURRENT.with(Cell::get);
        if ctl.is_null() {
            return ItemLog {
                area: std::ptr::null_mut(),
                word: std::ptr::null(),
            };
        }
        // SAFETY: set by `begin_job` from the control block the worker loop owns, and
        // cleared by `end_job` when the job ends; jobs run on this thread only.
        let ctl = unsafe { &*ctl };
        ItemLog {
            area: ctl.at(ITEMS_OFFSET),
            word: ctl.word(CTL_ITEMS),
        }
    }

    /// [`items_finished`], through this log.
    ///
    /// ```
    /// let log = procpool_engine::ItemLog::current();
    /// let results = vec![1u8, 2, 3];
    /// let keep_going = log.finished(3, &results, 0);
    /// assert!(keep_going);
    /// ```
    #[inline]
    pub fn finished(&self, items: u32, results: &[u8], unchanged: usize) -> bool {
        if self.area.is_null() {
            return true;
        }
        let len = results.len();
        if len > ITEMS_LEN || items >= 1 << 31 {
            return false;
        }
        let from = unchanged.min(len);
        // SAFETY: `area` is the start of the items area of a live mapping (the worker's
        // control block lives as long as its loop), which has `ITEMS_LEN` bytes; the
        // range ends at `len <= ITEMS_LEN`. The parent reads it only once this process
        // is dead.
        unsafe {
            let src = results.as_ptr().add(from);
            let dst = self.area.add(from);
            // One item's result is often a packed number: one store, no call.
            match len - from {
                8 => dst
                    .cast::<u64>()
                    .write_unaligned(src.cast::<u64>().read_unaligned()),
                4 => dst
                    .cast::<u32>()
                    .write_unaligned(src.cast::<u32>().read_unaligned()),
                n => std::ptr::copy_nonoverlapping(src, dst, n),
            }
            (*self.word).store(
                MARK | (u64::from(items) << 32) | len as u64,
                Ordering::Release,
            );
        }
        true
    }
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
