//! Sending jobs to a worker: frames of jobs, and large payloads through the worker's
//! data region (a ring of the ranges of jobs in flight).

use std::collections::VecDeque;

use super::{InFlight, Worker, answer};
use crate::batch::Queued;
use crate::error::TaskErrorKind;
use crate::transport::SHARE_THRESHOLD;
use crate::wire::{self, SharedJobFrame};

/// Payloads at least this large go through the worker's data region.
const SHM_THRESHOLD: usize = 256 * 1024;

/// The next queued job worth sending: jobs of abandoned batches are dropped, and one over
/// the message limit is answered `TooLarge` on the spot.
pub(super) fn next_live(jobs: &mut VecDeque<Queued>, max_message: usize) -> Option<Queued> {
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

/// Encodes jobs for a worker, in order: payloads of [`SHM_THRESHOLD`] bytes or more are
/// copied into the worker's data region when it has room, the others travel in the frame.
pub(super) fn send_jobs(w: &mut Worker, jobs: Vec<Queued>, max_message: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Job;
    use std::sync::Arc;

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
