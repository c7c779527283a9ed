//! What comes back from a worker: frames on its socket and entries in its results ring,
//! checked (everything a worker sends is untrusted) and handed to the callers' batches.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use super::{InFlight, KillReason, Phase, Worker};
use crate::claim;
use crate::error::{HandshakeError, PoolError, TaskError, TaskErrorKind};
use crate::job::{BatchInner, Done, Queued};
use crate::ring::{Popped, RingReader};
use crate::sys::SharedRegion;
use crate::transport::FrameReader;
use crate::wire::{self, Down, Outcome, PROTOCOL_VERSION, Up};

/// Reads per worker per loop turn, so one chatty worker cannot starve the others.
const READS_PER_TURN: usize = 16;

/// Reads what the worker's socket holds now (bounded per turn).
pub(super) fn read_some(w: &mut Worker) {
    for _ in 0..READS_PER_TURN {
        match w.reader.fill(w.proc.sock.as_fd()) {
            Ok(0) => {
                w.eof = true;
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                // The result cannot be received: its task fails, the worker is replaced.
                let size = w.reader.frame_len().unwrap_or(0) as u64;
                w.kill(KillReason::OutOfMemory(size));
                return;
            }
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
pub(super) fn drain_socket(w: &mut Worker, avg_nanos: &mut f64) {
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
pub(super) struct Ctx<'a> {
    pub(super) avg_nanos: &'a mut f64,
    pub(super) init: Option<&'a (Arc<[u8]>, Vec<u8>)>,
}

/// Handles every complete frame a worker sent.
pub(super) fn handle_frames(w: &mut Worker, ctx: &mut Ctx<'_>) {
    loop {
        if matches!(w.kill_reason, Some(KillReason::Protocol(_))) {
            return;
        }
        let (reader, view) = split(w, ctx.init.is_some());
        let (used, result) = match reader.frame() {
            Ok(None) => {
                let due = view.in_flight.front().map(|f| f.seq);
                let held = view.in_flight.len();
                drop(view);
                match wire::check_up_prefix(reader.pending(), held, due) {
                    Ok(()) => return,
                    Err(e) => (0, Err(e.to_string())),
                }
            }
            Err(e) => {
                drop(view);
                (0, Err(e.to_string()))
            }
            Ok(Some((body, used))) => match large_result(reader.pending(), body, *view.phase) {
                // Handed over in the reader's own buffer, not copied.
                Some(r) => {
                    let mut bytes = reader.take(used);
                    bytes.drain(..r.at);
                    bytes.truncate(r.len);
                    (
                        0,
                        handle_owned_result(view, r.seq, r.nanos, bytes, ctx.avg_nanos),
                    )
                }
                None => (used, handle_message(view, body, ctx.avg_nanos)),
            },
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

/// Splits a worker into its reader (which holds the bytes of the message being handled)
/// and the fields a message may change.
fn split(w: &mut Worker, has_init: bool) -> (&mut FrameReader, WorkerView<'_>) {
    let Worker {
        reader,
        phase,
        deadline,
        in_flight,
        early,
        start_error,
        proc,
        backlog,
        claim_floor,
        revoke_pending,
        front_since,
        ..
    } = w;
    let view = WorkerView {
        pid: proc.pid,
        identity: proc.identity,
        ctl: &proc.ctl,
        early,
        phase,
        deadline,
        in_flight,
        start_error,
        has_init,
        backlog,
        claim_floor,
        revoke_pending,
        front_since,
        front_moved: false,
    };
    (reader, view)
}

/// The fields of a worker a message may change (split from its reader, which holds the
/// message's bytes).
struct WorkerView<'a> {
    pid: u32,
    /// What its hello must name.
    identity: u64,
    ctl: &'a SharedRegion,
    early: &'a mut BTreeMap<u64, Early>,
    phase: &'a mut Phase,
    deadline: &'a mut Option<Instant>,
    in_flight: &'a mut VecDeque<InFlight>,
    start_error: &'a mut Option<PoolError>,
    has_init: bool,
    backlog: &'a mut super::Backlog,
    claim_floor: &'a mut u64,
    revoke_pending: &'a mut Option<u64>,
    front_since: &'a mut Instant,
    /// A result came for the first job held: the next one is due from now (set when the
    /// view is dropped, so that a burst of results reads the clock once).
    front_moved: bool,
}

impl Drop for WorkerView<'_> {
    fn drop(&mut self) {
        if self.front_moved {
            *self.front_since = Instant::now();
        }
    }
}

/// Results at least this large that come alone in a frame are handed over in the frame
/// reader's buffer instead of copied.
const OWN_RESULT_MIN: usize = 1 << 20;

/// Where the one large result of a results frame lies.
struct LargeResult {
    seq: u64,
    nanos: u64,
    /// Offset of its bytes from the start of the frame.
    at: usize,
    len: usize,
}

/// The one large successful result of the frame whose body is `body` (`frame`: the
/// reader's bytes, starting with that frame), if that is what it carries.
fn large_result(frame: &[u8], body: &[u8], phase: Phase) -> Option<LargeResult> {
    if body.len() < OWN_RESULT_MIN || !matches!(phase, Phase::Ready | Phase::Retiring) {
        return None;
    }
    let Ok(Up::Results(rs)) = wire::decode_up(body) else {
        return None;
    };
    let [r] = rs.as_slice() else {
        return None;
    };
    let Outcome::Ok(b) = r.outcome else {
        return None;
    };
    (b.len() >= OWN_RESULT_MIN).then(|| LargeResult {
        seq: r.seq,
        nanos: r.nanos,
        at: b.as_ptr() as usize - frame.as_ptr() as usize,
        len: b.len(),
    })
}

/// Handles a frame of one large result, whose bytes the caller took out of the reader.
fn handle_owned_result(
    mut w: WorkerView<'_>,
    seq: u64,
    nanos: u64,
    bytes: Vec<u8>,
    avg_nanos: &mut f64,
) -> Result<bool, String> {
    // Results in the ring were published before this one was sent: first them.
    let mut out = Deliverer::default();
    let r = drain_ring_into(&mut w, avg_nanos, &mut out)
        .and_then(|()| accept(&mut w, seq, nanos, || Ok(bytes), avg_nanos, &mut out));
    out.flush();
    r.map(|()| false)
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
            if version != PROTOCOL_VERSION || fingerprint != w.identity {
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
                rs.into_iter().try_for_each(|r| {
                    let outcome = || own(r.outcome);
                    accept(&mut w, r.seq, r.nanos, outcome, avg_nanos, &mut out)
                })
            });
            out.flush();
            r.map(|()| false)
        }
        (Phase::Ready | Phase::Retiring, Up::Revoked { through }) => {
            if *w.revoke_pending != Some(through) || claim::is_stopped(w.ctl) {
                return Err(format!(
                    "answer to a revocation through job {through} that was not asked for"
                ));
            }
            *w.revoke_pending = None;
            Ok(false)
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
pub(super) struct Early {
    pub(super) nanos: u64,
    pub(super) outcome: Result<Vec<u8>, TaskErrorKind>,
}

/// Takes one result. Results come in job order on each channel, but the ring and the
/// socket may overtake each other: a result for a later job the worker holds waits for
/// the earlier ones; one for a job it does not hold, or a second one, is a lie.
fn accept(
    w: &mut WorkerView<'_>,
    seq: u64,
    nanos: u64,
    outcome: impl FnOnce() -> Result<Vec<u8>, TaskErrorKind>,
    avg_nanos: &mut f64,
    out: &mut Deliverer,
) -> Result<(), String> {
    let (Some(front), Some(back)) = (w.in_flight.front(), w.in_flight.back()) else {
        return Err(format!(
            "result for job {seq} which the worker does not hold"
        ));
    };
    let (front, back) = (front.seq, back.seq);
    if seq != front && (seq < front || seq > back || w.early.contains_key(&seq)) {
        return Err(format!(
            "result for job {seq} while the worker holds jobs {front} to {back}"
        ));
    }
    let outcome = outcome();
    if seq != front {
        w.early.insert(seq, Early { nanos, outcome });
        return Ok(());
    }
    take_due(w, nanos, outcome, avg_nanos, out);
    while let Some(seq) = w.in_flight.front().map(|f| f.seq) {
        let Some(e) = w.early.remove(&seq) else { break };
        take_due(w, e.nanos, e.outcome, avg_nanos, out);
    }
    Ok(())
}

/// A result as owned bytes, or the failure it reports.
pub(crate) fn own(outcome: Outcome<'_>) -> Result<Vec<u8>, TaskErrorKind> {
    match outcome {
        Outcome::Ok(b) => copy_result(b),
        Outcome::Err(f) => Err(f.into()),
    }
}

/// The result's bytes, owned; a result the parent cannot allocate fails its task instead
/// of aborting the process.
fn copy_result(b: &[u8]) -> Result<Vec<u8>, TaskErrorKind> {
    let mut v = crate::bufs::take(b.len()).map_err(|()| TaskErrorKind::OutOfMemory {
        size: b.len() as u64,
    })?;
    v.extend_from_slice(b);
    Ok(v)
}

/// Answers the job due next with its result.
fn take_due(
    w: &mut WorkerView<'_>,
    nanos: u64,
    outcome: Result<Vec<u8>, TaskErrorKind>,
    avg_nanos: &mut f64,
    out: &mut Deliverer,
) {
    let Some(f) = w.in_flight.pop_front() else {
        return;
    };
    if w.in_flight.is_empty() {
        *w.backlog = super::Backlog::default();
    } else {
        w.backlog.remove(f.est_nanos);
    }
    *w.claim_floor = (*w.claim_floor).max(f.seq);
    w.front_moved = true;
    *avg_nanos = if *avg_nanos <= 0.0 {
        nanos as f64
    } else {
        0.8 * *avg_nanos + 0.2 * nanos as f64
    };
    f.q.batch.observe(nanos);
    if f.answered {
        return;
    }
    if let Some((batch, done)) = finished(f.q, w.pid, nanos, outcome) {
        out.push(batch, done);
    }
}

/// The answer to a job that ran on worker `pid` and gave `outcome`; `None` when nobody
/// wants it any more. The job's payload is dropped first, so the caller may reuse its
/// buffer.
pub(crate) fn finished(
    q: Queued,
    pid: u32,
    nanos: u64,
    outcome: Result<Vec<u8>, TaskErrorKind>,
) -> Option<(Arc<BatchInner>, Done)> {
    let Queued {
        job,
        batch,
        attempts,
        ..
    } = q;
    let index = job.index;
    drop(job);
    // A cancelled batch still gets a result that came before its cancel was handled:
    // the job is no longer held, so the cancel will not answer it. A detached or
    // abandoned one wants none.
    if batch.is_abandoned() {
        return None;
    }
    let pid = Some(pid);
    let outcome = outcome.map_err(|kind| TaskError::new(kind, index, pid, attempts + 1));
    let done = Done {
        index,
        outcome,
        nanos,
        pid,
        partial: None,
    };
    Some((batch, done))
}

/// Takes every result published in the worker's results ring.
fn drain_ring_into(
    w: &mut WorkerView<'_>,
    avg_nanos: &mut f64,
    out: &mut Deliverer,
) -> Result<(), String> {
    let ring = RingReader::new(w.ctl);
    let mut buf = Vec::new();
    while let Some(popped) = ring.pop_result(&mut buf).map_err(|e| e.0)? {
        match popped {
            Popped::Whole => {
                let r = wire::decode_result(&buf).map_err(|e| format!("bad ring entry: {e}"))?;
                accept(w, r.seq, r.nanos, || own(r.outcome), avg_nanos, out)?;
            }
            Popped::Ok { seq, nanos, bytes } => {
                let bytes = bytes.map_err(|size| TaskErrorKind::OutOfMemory { size: size as u64 });
                accept(w, seq, nanos, || bytes, avg_nanos, out)?;
            }
        }
    }
    Ok(())
}

/// Takes every result published in a ready worker's results ring; a lie there kills the
/// worker with a protocol error.
pub(super) fn drain_ring(w: &mut Worker, avg_nanos: &mut f64) {
    if !matches!(w.phase, Phase::Ready | Phase::Retiring)
        || matches!(w.kill_reason, Some(KillReason::Protocol(_)))
        || !RingReader::new(&w.proc.ctl).has_data()
    {
        return;
    }
    let (_, mut view) = split(w, false);
    let mut out = Deliverer::default();
    let r = drain_ring_into(&mut view, avg_nanos, &mut out);
    drop(view);
    out.flush();
    if let Err(m) = r {
        w.kill(KillReason::Protocol(m));
    }
}
