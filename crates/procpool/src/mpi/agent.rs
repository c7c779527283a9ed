//! An agent: what ranks other than 0 run. It starts a local pool of worker processes (the
//! engine) when the caller's rank asks, runs the jobs it is sent there, and sends back
//! every job's answer. A task that crashes or passes its time limit kills a local
//! worker, which the local pool replaces; the agent itself runs no task code.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mpi::traits::*;
use procpool_engine::{Batch, Engine, Job, TaskError, TaskErrorKind};

use super::msg::{self, Reader, Writer};
use super::runtime::{Nap, Outbox, abort_job};

/// Longest wait for a local answer before the agent looks at MPI again (a cancel or a
/// new call's first jobs wait at most this long).
const ANSWER_WAIT: Duration = Duration::from_millis(2);

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
    let world = mpi::topology::SimpleCommunicator::world();
    let caller = world.process_at_rank(0);
    let mut agent = Agent::default();
    let mut nap = Nap::new(Duration::from_micros(50), Duration::from_millis(2));
    loop {
        let mut busy = false;
        while let Some(probed) = caller.immediate_matched_probe() {
            let (bytes, status) = probed.matched_receive_vec::<u8>();
            let tag = status.tag();
            busy = true;
            let r = match tag {
                msg::START => agent.start(&bytes),
                msg::JOBS => agent.jobs(&bytes),
                msg::CANCEL => agent.cancel(&bytes),
                msg::END => {
                    agent.end(bytes.first() == Some(&1));
                    agent.outbox.send(0, msg::ENDED, Vec::new());
                    Ok(())
                }
                msg::EXIT => {
                    agent.end(true);
                    agent.outbox.send(0, msg::BYE, Vec::new());
                    // Rank 0 reads everything until each agent's BYE; bounded all the
                    // same, so that an agent never hangs here.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while agent.outbox.progress() && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    return;
                }
                t => Err(format!("a message with unknown tag {t}")),
            };
            if let Err(e) = r {
                abort_job(
                    1,
                    &format!("MPI rank {rank} received a malformed message from rank 0: {e}"),
                );
            }
        }
        busy |= agent.collect();
        agent.flush();
        agent.outbox.progress();
        if busy {
            nap.reset();
        } else {
            agent.wait(nap.next());
        }
    }
}

impl Agent {
    fn start(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config = msg::decode_start(bytes)?;
        self.end(true);
        let mut w = Writer::default();
        match Engine::start(config) {
            Ok(e) => {
                w.u8(0).u64(e.config().workers as u64);
                self.engine = Some(e);
            }
            Err(e) => {
                w.u8(1).str(&e.to_string());
            }
        }
        self.outbox.send(0, msg::STARTED, w.0);
        Ok(())
    }

    fn jobs(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader(bytes);
        while !r.is_empty() {
            let tag = r.u64()?;
            let batch = r.u64()?;
            let weight = r.u32()?;
            let timeout = r.opt_u64()?.map(Duration::from_nanos);
            let func: Arc<[u8]> = r.bytes()?.into();
            let payload = Arc::new(r.bytes()?.to_vec());
            let job = Job {
                func,
                payload,
                index: tag,
                weight,
                timeout,
                fds: None,
            };
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
        if kill {
            // The local pool answers each job, the running ones killed.
            if let Some(l) = self.batches.get(&id) {
                l.batch.cancel();
            }
        } else if let Some(l) = self.batches.remove(&id) {
            // Dropped: nobody reads the answers, but each tag is answered once so that
            // the caller knows this agent's room.
            l.batch.abandon();
            for tag in l.open {
                let e = TaskError::new(TaskErrorKind::Cancelled, tag, None, 0);
                self.answer(tag, &Err(e));
            }
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
            self.answer_with(d.index, d.nanos, d.pid, &d.outcome);
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
            self.answer_with(d.index, d.nanos, d.pid, &d.outcome);
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
        let size = outcome.as_ref().map_or(256, |b| b.len() + 64);
        if self.answers.len() + size > msg::PACK_BYTES {
            self.flush();
        }
        msg::put_answer(&mut self.answers, tag, nanos, pid, outcome);
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
