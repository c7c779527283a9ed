//! An agent: what ranks other than 0 run. It starts a local pool of worker processes (the
//! engine) when the caller's rank asks, runs the jobs it is sent there, and sends back
//! every job's answer. A task that crashes or passes its time limit kills a local
//! worker, which the local pool replaces; the agent itself runs no task code.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use procpool_engine::{Batch, Engine, Partial, TaskError, TaskErrorKind};

use super::msg::{self, Reader, Writer};
use super::runtime::{self, Inbox, Nap, Outbox, abort_job};

/// Longest wait for a local answer before the agent looks at MPI again (a cancel or a
/// new call's first jobs wait at most this long).
const ANSWER_WAIT: Duration = Duration::from_millis(2);

/// How long an agent that saw rank 0's process end waits for MPI to report it (see
/// `Agent::caller_gone`).
const CALLER_GRACE: Duration = Duration::from_millis(1000);

/// How a front other than Rust's completes an agent's local pool configuration (its
/// launcher, its workers' identity): set by `front::init`; none for Rust programs.
pub(super) static LOCAL: OnceLock<super::LocalHook> = OnceLock::new();

/// A batch of the caller's, as this agent runs it.
struct Local {
    batch: Batch,
    /// Tags of its jobs not yet answered.
    open: HashSet<u64>,
}

/// The agent's state between messages.
#[derive(Default)]
struct Agent {
    engine: Option<Engine>,
    batches: HashMap<u64, Local>,
    outbox: Outbox,
    answers: Writer,
}

/// Serves the caller's rank until it says EXIT (or the job ends).
pub(crate) fn serve(rank: i32) {
    let mut agent = Agent::default();
    let mut inbox = Inbox::default();
    // Messages held back until the large ones before them arrived: every message after
    // the first held back one, except jobs (whose order does not matter).
    let mut held: VecDeque<(i32, Vec<u8>)> = VecDeque::new();
    let mut nap = Nap::new(Duration::from_micros(50), Duration::from_millis(2));
    let fail = |e: String| -> ! {
        abort_job(
            1,
            &format!("MPI rank {rank} received a malformed message from rank 0: {e}"),
        )
    };
    loop {
        let mut busy = false;
        loop {
            // An error here (with ULFM on) is rank 0 lost: the job is over.
            let probed = match runtime::improbe(0, runtime::any_tag()) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(rc) => agent.caller_lost(rank, rc),
            };
            busy = true;
            let tag = probed.tag;
            if tag == msg::JOBS && probed.len > msg::LARGE && held.is_empty() {
                inbox.receive(probed);
                continue;
            }
            let bytes = runtime::mrecv(probed).unwrap_or_else(|rc| agent.caller_lost(rank, rc));
            if (inbox.busy() && tag != msg::JOBS) || !held.is_empty() {
                held.push_back((tag, bytes));
                continue;
            }
            match agent.handle(tag, &bytes) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => fail(e),
            }
        }
        if super::caller::gone() {
            // Checked after every message was read: an EXIT sent before rank 0 left
            // ends this agent the ordinary way.
            agent.caller_gone(rank);
        }
        for (bytes, _) in inbox.take_done() {
            busy = true;
            agent.jobs(&bytes).unwrap_or_else(|e| fail(e));
        }
        while !inbox.busy()
            && let Some((tag, bytes)) = held.pop_front()
        {
            match agent.handle(tag, &bytes) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => fail(e),
            }
        }
        busy |= agent.collect();
        agent.flush();
        let sending = agent.outbox.progress();
        if agent.outbox.failed || inbox.failed {
            agent.caller_lost(rank, 0);
        }
        if busy {
            nap.reset();
        } else if sending || inbox.busy() {
            // Large messages move while this rank calls MPI.
            std::thread::yield_now();
        } else {
            agent.wait(nap.next());
        }
    }
}

impl Agent {
    /// Rank 0 is lost (an MPI error talking to it, which only ULFM returns): the job is
    /// over. The local pool's workers are killed, then this rank leaves the job.
    fn caller_lost(&mut self, rank: i32, rc: std::ffi::c_int) -> ! {
        self.end(true);
        let why = if rc == 0 {
            "a message to or from it failed".to_string()
        } else {
            runtime::error_string(rc)
        };
        runtime::leave_job(
            1,
            &format!("MPI rank {rank} lost the caller's rank 0 ({why})"),
        )
    }

    /// Rank 0's process ended (seen by `caller` on its host) without ending the job: the
    /// local pool's workers are killed, then the job is ended. A rank 0 killed by a
    /// signal is also reported by ULFM, usually within milliseconds, to every rank;
    /// leaving through that report, as without the watch, is waited for a moment, since
    /// `MPI_Abort` called before the runtime took in rank 0's death sometimes made
    /// `mpirun` exit with code 0 (1 run in about 13). Without that report (rank 0 left by
    /// `_exit`), agents on other hosts cannot know: `MPI_Abort` ends the job for them.
    fn caller_gone(&mut self, rank: i32) -> ! {
        self.end(true);
        let until = std::time::Instant::now() + CALLER_GRACE;
        while std::time::Instant::now() < until {
            // What rank 0 sent before it ended is of no use now: dropped.
            if let Err(rc) = runtime::improbe(0, runtime::any_tag()) {
                self.caller_lost(rank, rc);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        abort_job(
            1,
            &format!(
                "MPI rank {rank}: the caller's rank 0 (on this host) ended without \
                 MPI_Finalize; ending the job"
            ),
        )
    }

    /// Handles one message from the caller's rank; whether it says to leave.
    fn handle(&mut self, tag: i32, bytes: &[u8]) -> Result<bool, String> {
        match tag {
            msg::START => self.start(bytes)?,
            msg::JOBS => self.jobs(bytes)?,
            msg::CANCEL => self.cancel(bytes)?,
            msg::CALLER => {
                let caller = msg::decode_caller(bytes)?;
                if let Err(e) = super::caller::watch(&caller) {
                    eprintln!(
                        "procpool: the MPI agent of pid {} cannot watch rank 0 on its host \
                         ({e}): if rank 0 exits without MPI_Finalize under ULFM, the job \
                         may not end",
                        std::process::id()
                    );
                }
            }
            msg::END => {
                self.end(bytes.first() == Some(&1));
                self.outbox.send(0, msg::ENDED, Vec::new());
            }
            msg::EXIT => {
                self.end(true);
                self.outbox.send(0, msg::BYE, Vec::new());
                // Rank 0 reads everything until each agent's BYE; bounded all the same,
                // so that an agent never hangs here.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while self.outbox.progress() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(50));
                }
                return Ok(true);
            }
            t => return Err(format!("a message with unknown tag {t}")),
        }
        Ok(false)
    }

    fn start(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut config = msg::decode_start(bytes)?;
        self.end(true);
        let mut w = Writer::default();
        let local = LOCAL.get().map_or(Ok(()), |complete| complete(&mut config));
        match local.and_then(|()| Engine::start(config)) {
            Ok(e) => {
                w.u8(0).u64(e.config().workers as u64);
                self.engine = Some(e);
            }
            Err(e) => {
                w.u8(1);
                msg::put_pool_error(&mut w, &e);
            }
        }
        self.outbox.send(0, msg::STARTED, w.0);
        Ok(())
    }

    fn jobs(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader(bytes);
        while !r.is_empty() {
            let (batch, job) = msg::get_job(&mut r)?;
            let tag = job.index;
            let submitted = match &self.engine {
                Some(engine) => {
                    let local = self.batches.entry(batch).or_insert_with(|| Local {
                        batch: engine.batch(),
                        open: HashSet::new(),
                    });
                    let r = local.batch.submit([job]);
                    if r.is_ok() {
                        local.open.insert(tag);
                    }
                    r.map(drop).map_err(TaskErrorKind::PoolBroken)
                }
                // A job for a pool that was stopped meanwhile.
                None => Err(TaskErrorKind::Terminated),
            };
            if let Err(kind) = submitted {
                self.answer(tag, &Err(TaskError::new(kind, tag, None, 0)));
            }
        }
        Ok(())
    }

    fn cancel(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader(bytes);
        let (id, kill) = (r.u64()?, r.u8()? == 1);
        // With kill, the local pool answers each job, the running ones killed. Without
        // (a dropped call), the jobs held here run to their end and are answered then,
        // as in a local pool: answering them at once would tell the caller that
        // workers still busy with them have room, and new work would wait behind them
        // while other workers idle. What runs so is bounded by what the caller deals
        // ahead (a few milliseconds of work per worker).
        if kill && let Some(l) = self.batches.get(&id) {
            l.batch.cancel();
        }
        Ok(())
    }

    /// Waits `pause` when no job is out in the local pool; otherwise until a local
    /// answer comes, at most [`ANSWER_WAIT`]: the caller sends more work only in return
    /// for answers, so MPI need not be looked at more often meanwhile.
    fn wait(&mut self, pause: Duration) {
        let Some(l) = self.batches.values().max_by_key(|l| l.open.len()) else {
            std::thread::sleep(pause);
            return;
        };
        if let Ok(d) = l.batch.recv_timeout(ANSWER_WAIT) {
            let id = self
                .batches
                .iter()
                .find(|(_, l)| l.open.contains(&d.index))
                .map(|(id, _)| *id);
            if let Some(l) = id.and_then(|id| self.batches.get_mut(&id)) {
                l.open.remove(&d.index);
            }
            self.answer_full(d.index, d.nanos, d.pid, &d.outcome, d.partial.as_ref());
        }
    }

    /// Takes the local pool's answers; whether there were any.
    fn collect(&mut self) -> bool {
        let mut any = false;
        let mut emptied = Vec::new();
        let mut got = Vec::new();
        for (id, l) in &mut self.batches {
            while l.batch.ready() > 0 {
                let Ok(d) = l.batch.recv_timeout(Duration::ZERO) else {
                    break;
                };
                l.open.remove(&d.index);
                got.push(d);
            }
            if l.open.is_empty() {
                emptied.push(*id);
            }
        }
        for d in got {
            any = true;
            self.answer_full(d.index, d.nanos, d.pid, &d.outcome, d.partial.as_ref());
        }
        for id in emptied {
            self.batches.remove(&id);
        }
        any
    }

    fn answer(&mut self, tag: u64, outcome: &Result<Vec<u8>, TaskError>) {
        self.answer_with(tag, 0, None, outcome);
    }

    fn answer_with(
        &mut self,
        tag: u64,
        nanos: u64,
        pid: Option<u32>,
        outcome: &Result<Vec<u8>, TaskError>,
    ) {
        self.answer_full(tag, nanos, pid, outcome, None);
    }

    /// An answer, with the finished items of a chunk whose local worker died inside it
    /// (they go to rank 0 item by item's results, with the running item's error).
    fn answer_full(
        &mut self,
        tag: u64,
        nanos: u64,
        pid: Option<u32>,
        outcome: &Result<Vec<u8>, TaskError>,
        partial: Option<&Partial>,
    ) {
        let too_large = matches!(outcome, Ok(b) if b.len() + 64 > msg::MAX_MESSAGE);
        if too_large {
            let size = outcome.as_ref().map_or(0, |b| b.len() as u64);
            let kind = TaskErrorKind::TooLarge {
                size,
                limit: msg::MAX_MESSAGE as u64 - 64,
            };
            let e = Err(TaskError::new(kind, tag, pid, 1));
            return self.answer_with(tag, nanos, pid, &e);
        }
        let size = outcome.as_ref().map_or(256, |b| b.len() + 64)
            + partial.map_or(0, |p| p.results.len() + 8);
        if self.answers.len() + size > msg::PACK_BYTES {
            self.flush();
        }
        msg::put_answer_partial(&mut self.answers, tag, nanos, pid, outcome, partial);
    }

    fn flush(&mut self) {
        if self.answers.len() > 0 {
            let bytes = std::mem::take(&mut self.answers.0);
            self.outbox.send(0, msg::RESULTS, bytes);
        }
    }

    /// Stops the local pool: joins it (nothing is out when the caller joins), or kills
    /// its workers.
    fn end(&mut self, terminate: bool) {
        self.batches.clear();
        self.answers.0.clear();
        if let Some(e) = self.engine.take() {
            if terminate {
                e.terminate();
            } else {
                e.join();
            }
        }
    }
}
