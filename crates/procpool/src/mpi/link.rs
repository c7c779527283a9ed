//! The caller's side: the engine's [`Remote`] link over MPI, one agent per other rank.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpi::traits::*;
use procpool_engine::{EngineConfig, PoolError, Remote, RemoteDone, RemoteJob, TaskError};

use super::msg::{self, Reader, Writer};
use super::runtime::{self, Inbox, Nap, Outbox};

/// How long terminating the agents' pools may take before the job is ended.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time an agent has, past the workers' handshake limit, to start its pool.
const START_SLACK: Duration = Duration::from_secs(30);

/// The caller's link to the agents of the MPI job.
#[derive(Debug)]
pub(crate) struct MpiLink {
    /// Workers per agent the caller asked for (`Builder::workers`), if any.
    per_agent: Option<usize>,
    /// Agents whose pool was started and not yet stopped, by rank.
    started: Vec<i32>,
    slack_set: bool,
    /// Jobs and cancels on their way.
    outbox: Outbox,
    /// Large answers on their way.
    inbox: Inbox,
}

impl MpiLink {
    pub(crate) fn new(per_agent: Option<usize>) -> Self {
        Self {
            per_agent,
            started: Vec::new(),
            slack_set: false,
            outbox: Outbox::default(),
            inbox: Inbox::default(),
        }
    }
}

fn link_error(m: impl Into<String>) -> PoolError {
    PoolError::Io(Arc::new(io::Error::other(m.into())))
}

fn closed() -> PoolError {
    link_error("MPI was finalized (the caller's rank is exiting)")
}

/// Runs `f` with the runtime lock, unless MPI is gone.
fn with_mpi<T>(
    f: impl FnOnce(&mut runtime::Runtime) -> Result<T, PoolError>,
) -> Result<T, PoolError> {
    let mut rt = runtime::lock().ok_or_else(closed)?;
    if rt.finalized {
        return Err(closed());
    }
    f(&mut rt)
}

fn world() -> mpi::topology::SimpleCommunicator {
    mpi::topology::SimpleCommunicator::world()
}

impl Remote for MpiLink {
    fn start(&mut self, config: &EngineConfig) -> Result<Vec<usize>, PoolError> {
        if config.max_message > msg::MAX_MESSAGE - 4096 {
            return Err(PoolError::Config(
                "a max_message_size this close to 2 GiB is not supported over MPI (an MPI \
                 message carries at most 2 GiB); choose at most 1.9 GiB"
                    .into(),
            ));
        }
        let agents = with_mpi(|rt| {
            if rt.pool_open {
                return Err(PoolError::Config(
                    "an MPI pool is already open: the agents serve one pool at a time; drop \
                     or join the other first"
                        .into(),
                ));
            }
            let agents = rt.agents.clone()?;
            rt.pool_open = true;
            Ok(agents)
        })?;
        // Default: each host's cores shared among the agents on it.
        let counts: Vec<usize> = agents
            .iter()
            .map(|h| match self.per_agent {
                Some(n) => n,
                None => {
                    let sharing = agents.iter().filter(|o| o.host == h.host).count();
                    (h.cores / sharing.max(1)).max(1)
                }
            })
            .collect();
        let r = with_mpi(|_| {
            for (i, n) in counts.iter().enumerate() {
                let rank = i as i32 + 1;
                world()
                    .process_at_rank(rank)
                    .send_with_tag(&msg::encode_start(config, *n)[..], msg::START);
                self.started.push(rank);
            }
            Ok(())
        });
        r.and_then(|()| {
            self.await_started(
                &agents,
                config.handshake_timeout.saturating_add(START_SLACK),
            )
        })
        .inspect_err(|_| self.stop(true))
    }

    fn send(&mut self, agent: usize, jobs: &[RemoteJob<'_>]) -> Result<(), PoolError> {
        let rank = agent as i32 + 1;
        let mut w = Writer::default();
        // Sent without blocking: a large message takes a while (seconds for 64 MiB on a
        // loaded host), and the dispatcher meanwhile deals to and hears from the others.
        let outbox = &mut self.outbox;
        let mut flush = |w: &mut Writer| {
            if w.len() > 0 {
                let bytes = std::mem::take(&mut w.0);
                with_mpi(|_| {
                    outbox.send(rank, msg::JOBS, bytes);
                    Ok(())
                })?;
            }
            Ok::<(), PoolError>(())
        };
        for j in jobs {
            let size = j.job.func.len() + j.job.payload.len() + 64;
            if size > msg::MAX_MESSAGE {
                return Err(link_error(format!(
                    "a job of {size} bytes is larger than an MPI message can carry (2 GiB); \
                     lower max_message_size or send the data another way"
                )));
            }
            if w.len() + size > msg::PACK_BYTES {
                flush(&mut w)?;
            }
            msg::put_job(&mut w, j);
        }
        flush(&mut w)
    }

    fn cancel(&mut self, agent: usize, batch: u64, kill: bool) -> Result<(), PoolError> {
        let mut w = Writer::default();
        w.u64(batch).u8(u8::from(kill));
        // Through the outbox too, after the jobs it ends (messages between two ranks
        // arrive in the order they were posted).
        with_mpi(|_| {
            self.outbox.send(agent as i32 + 1, msg::CANCEL, w.0);
            Ok(())
        })
    }

    fn poll(&mut self, out: &mut Vec<RemoteDone>) -> Result<(), PoolError> {
        if !self.slack_set {
            // This runs on the dispatcher thread, whose naps are short.
            runtime::fine_timer_slack();
            self.slack_set = true;
        }
        with_mpi(|_| {
            self.outbox.progress();
            let world = world();
            let mut got = Vec::new();
            while let Some((message, status)) = world
                .any_process()
                .immediate_matched_probe_with_tag(msg::RESULTS)
            {
                let rank = status.source_rank();
                let len = status.count(u8::equivalent_datatype()).max(0) as usize;
                if len > msg::LARGE {
                    // Received while the other agents are heard and dealt to.
                    self.inbox.receive(message, len, rank);
                } else {
                    got.push(((message, status).matched_receive_vec::<u8>().0, rank));
                }
            }
            got.extend(self.inbox.take_done());
            for (bytes, rank) in got {
                decode_results(&bytes, rank, out).map_err(|e| {
                    link_error(format!("MPI rank {rank} sent a malformed message: {e}"))
                })?;
            }
            Ok(())
        })
    }

    fn stop(&mut self, terminate: bool) {
        let ranks = std::mem::take(&mut self.started);
        let r = with_mpi(|rt| {
            rt.pool_open = false;
            for &r in &ranks {
                world()
                    .process_at_rank(r)
                    .send_with_tag(&[u8::from(terminate)][..], msg::END);
            }
            Ok(())
        });
        if r.is_err() {
            return; // MPI is gone: the agents were told to leave.
        }
        let mut waiting = ranks;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut nap = Nap::default();
        while !waiting.is_empty() {
            let got = with_mpi(|_| {
                self.outbox.progress();
                self.inbox.take_done();
                let world = world();
                // Answers still on their way are read and dropped, and so is a late
                // answer to START (from an agent given up on while it started).
                for tag in [msg::RESULTS, msg::STARTED] {
                    while let Some(probed) =
                        world.any_process().immediate_matched_probe_with_tag(tag)
                    {
                        probed.matched_receive_vec::<u8>();
                    }
                }
                Ok(world
                    .any_process()
                    .immediate_matched_probe_with_tag(msg::ENDED)
                    .map(|probed| probed.matched_receive_vec::<u8>().1.source_rank()))
            });
            match got {
                Err(_) => return,
                Ok(Some(r)) => {
                    waiting.retain(|&w| w != r);
                    nap.reset();
                }
                // Joining waits for what the agents run (tasks of abandoned calls run to
                // their end, as in a local pool); terminating is bounded.
                Ok(None) if terminate && Instant::now() > deadline => runtime::abort_job(
                    1,
                    &format!(
                        "MPI ranks {waiting:?} did not stop their pools within {STOP_TIMEOUT:?}"
                    ),
                ),
                Ok(None) => nap.sleep(),
            }
        }
        // Each agent read everything before it said ENDED, and sent everything before:
        // what is on its way arrives at once (bounded all the same).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let busy = with_mpi(|_| {
                self.inbox.take_done();
                Ok(self.outbox.progress() || self.inbox.busy())
            });
            if !matches!(busy, Ok(true)) {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl MpiLink {
    /// Waits for every agent's answer to START; the worker counts, or the first refusal.
    fn await_started(
        &mut self,
        agents: &[msg::Hello],
        limit: Duration,
    ) -> Result<Vec<usize>, PoolError> {
        let mut counts: Vec<Option<usize>> = vec![None; agents.len()];
        // A limit past what an `Instant` holds is no limit.
        let deadline = Instant::now().checked_add(limit);
        let mut nap = Nap::default();
        let mut failure = None;
        while counts.iter().any(Option::is_none) {
            let got = with_mpi(|_| {
                Ok(world()
                    .any_process()
                    .immediate_matched_probe_with_tag(msg::STARTED)
                    .map(|probed| {
                        let (b, s) = probed.matched_receive_vec::<u8>();
                        (b, s.source_rank())
                    }))
            })?;
            let Some((bytes, rank)) = got else {
                if deadline.is_some_and(|d| Instant::now() > d) {
                    let late: Vec<usize> = (0..counts.len())
                        .filter(|&i| counts[i].is_none())
                        .map(|i| i + 1)
                        .collect();
                    return Err(link_error(format!(
                        "MPI ranks {late:?} did not start their workers within {limit:?}"
                    )));
                }
                nap.sleep();
                continue;
            };
            nap.reset();
            let i = rank as usize - 1;
            let h = &agents[i];
            let mut r = Reader(&bytes);
            let answer = match r.u8() {
                Ok(0) => r.u64().map(|n| Ok(n as usize)),
                Ok(_) => msg::get_pool_error(&mut r, rank).map(Err),
                Err(e) => Err(e),
            };
            match answer {
                Ok(Ok(n)) => counts[i] = Some(n),
                Ok(Err(e)) => {
                    counts[i] = Some(0);
                    self.started.retain(|&s| s != rank);
                    // The agent's error as its pool gave it (a caller matches on it as on
                    // a local pool's; an `Io` or `Spawn` error names the rank).
                    let e = match e {
                        PoolError::Config(m) => {
                            PoolError::Config(format!("MPI rank {rank} (host {}): {m}", h.host))
                        }
                        e => e,
                    };
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    return Err(link_error(format!(
                        "MPI rank {rank} sent a malformed message: {e}"
                    )));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(counts.into_iter().flatten().collect()),
        }
    }
}

fn decode_results(bytes: &[u8], rank: i32, out: &mut Vec<RemoteDone>) -> Result<(), String> {
    let mut r = Reader(bytes);
    while !r.is_empty() {
        let ((tag, nanos, pid, outcome), partial) = msg::get_answer_partial(&mut r, rank)?;
        out.push(RemoteDone {
            tag,
            outcome: outcome.map_err(|e: TaskError| e),
            nanos,
            pid,
            partial,
        });
    }
    Ok(())
}
