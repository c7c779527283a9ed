//! The caller's side: the engine's [`Remote`] link over MPI, one agent per other rank.

use std::ffi::c_int;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpi::traits::*;
use procpool_engine::{AgentLost, EngineConfig, PoolError, Remote, RemoteDone, RemoteJob};

use super::msg::{self, Reader, Writer};
use super::runtime::{self, Inbox, Nap, Outbox, Probed, error_string, improbe, mrecv};

/// How many MPI errors in a row, without a newly failed rank to explain them, break the
/// link.
const MAX_UNEXPLAINED_ERRORS: u32 = 8;

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
    /// Each agent's host, by agent (rank - 1).
    hosts: Vec<String>,
    /// Ranks lost, as this link handled them.
    dead: Vec<i32>,
    /// Agents lost and not yet reported to the dispatcher.
    gone: Vec<AgentLost>,
    /// Whether a lost agent is survived (ULFM), or why not.
    ft: Result<(), String>,
}

impl MpiLink {
    pub(crate) fn new(per_agent: Option<usize>) -> Self {
        Self {
            per_agent,
            started: Vec::new(),
            slack_set: false,
            outbox: Outbox::default(),
            inbox: Inbox::default(),
            hosts: Vec::new(),
            dead: Vec::new(),
            gone: Vec::new(),
            ft: Err("no MPI pool was started".into()),
        }
    }

    /// Rank `rank` is lost: not waited for nor sent to again, and reported to the
    /// dispatcher.
    fn lose(&mut self, rank: i32, why: &str) {
        if self.dead.contains(&rank) {
            return;
        }
        self.dead.push(rank);
        self.started.retain(|&r| r != rank);
        self.gone.push(AgentLost {
            agent: rank as usize - 1,
            why: why.to_string(),
        });
    }

    /// After an MPI call failed with `rc` (0: a request failed, code unknown): the ranks
    /// newly lost, each handled; an error when nothing explains a failed call.
    fn failed(&mut self, rt: &mut runtime::Runtime, rc: c_int) -> Result<Vec<i32>, PoolError> {
        let new = rt.newly_failed();
        for &r in &new {
            let why = rt
                .lost
                .iter()
                .find(|(l, _)| *l == r)
                .map_or("its process ended", |(_, w)| w.as_str())
                .to_string();
            self.lose(r, &why);
        }
        if new.is_empty() && rc != 0 {
            return Err(link_error(format!(
                "an MPI call failed: {}",
                error_string(rc)
            )));
        }
        Ok(new)
    }

    /// Takes in what the outbox and inbox found failed.
    fn check_requests(&mut self, rt: &mut runtime::Runtime) -> Result<(), PoolError> {
        if std::mem::take(&mut self.outbox.failed) | std::mem::take(&mut self.inbox.failed) {
            self.failed(rt, 0)?;
        }
        Ok(())
    }

    /// Every message with `tag` waiting now, without blocking (those over
    /// [`msg::LARGE`] through the inbox when `large` is set); lost ranks handled.
    fn receive_all(
        &mut self,
        rt: &mut runtime::Runtime,
        tag: i32,
        large: bool,
    ) -> Result<Vec<(Vec<u8>, i32)>, PoolError> {
        let mut got = Vec::new();
        let mut errors = 0;
        loop {
            let probed: Probed = match improbe(runtime::any_source(), tag) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(got),
                Err(rc) => {
                    errors += 1;
                    let new = self.failed(rt, rc)?;
                    if new.is_empty() || errors > MAX_UNEXPLAINED_ERRORS {
                        return Err(link_error(format!(
                            "MPI failed while rank 0 listened to the agents: {}",
                            error_string(rc)
                        )));
                    }
                    continue;
                }
            };
            let rank = probed.source;
            if large && probed.len > msg::LARGE {
                // Received while the other agents are heard and dealt to.
                self.inbox.receive(probed);
                continue;
            }
            match mrecv(probed) {
                Ok(bytes) => got.push((bytes, rank)),
                Err(rc) => {
                    self.failed(rt, rc)?;
                }
            }
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
            self.ft = rt.ft.as_ref().map(drop).map_err(Clone::clone);
            let lost = rt.lost.clone();
            Ok((agents, lost))
        })?;
        let (agents, lost) = agents;
        self.hosts = agents.iter().map(|h| h.host.clone()).collect();
        for (r, why) in &lost {
            self.lose(*r, why);
        }
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
        // Each agent's own pool does not retry a task whose worker died: rank 0 does,
        // so that the retry may go to another agent.
        let agent_config = EngineConfig {
            retries: 0,
            ..config.clone()
        };
        let r = with_mpi(|_| {
            for (i, n) in counts.iter().enumerate() {
                let rank = i as i32 + 1;
                if self.dead.contains(&rank) {
                    continue;
                }
                world()
                    .process_at_rank(rank)
                    .send_with_tag(&msg::encode_start(&agent_config, *n)[..], msg::START);
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
        if self.dead.contains(&rank) {
            return Ok(()); // Its jobs come back to the dispatcher with the loss.
        }
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
        if self.dead.contains(&(agent as i32 + 1)) {
            return Ok(());
        }
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
        with_mpi(|rt| {
            self.outbox.progress();
            let mut got = self.receive_all(rt, msg::RESULTS, true)?;
            got.extend(self.inbox.take_done());
            self.check_requests(rt)?;
            for (bytes, rank) in got {
                let place = self.describe(rank as usize - 1);
                decode_results(&bytes, rank, &place, out).map_err(|e| {
                    link_error(format!("MPI rank {rank} sent a malformed message: {e}"))
                })?;
            }
            Ok(())
        })
    }

    fn lost(&mut self, out: &mut Vec<AgentLost>) {
        out.append(&mut self.gone);
    }

    fn survives_loss(&self) -> Result<(), String> {
        self.ft.clone()
    }

    fn describe(&self, agent: usize) -> String {
        self.describe_rank(agent as i32 + 1)
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
            let got = with_mpi(|rt| {
                self.outbox.progress();
                self.inbox.take_done();
                self.check_requests(rt)?;
                // Answers still on their way are read and dropped, and so is a late
                // answer to START (from an agent given up on while it started).
                for tag in [msg::RESULTS, msg::STARTED] {
                    self.receive_all(rt, tag, false)?;
                }
                let ended = self.receive_all(rt, msg::ENDED, false)?;
                Ok(ended.into_iter().map(|(_, r)| r).collect::<Vec<i32>>())
            });
            match got {
                Err(_) => return,
                Ok(ended) if !ended.is_empty() || waiting.iter().any(|w| self.dead.contains(w)) => {
                    waiting.retain(|w| !ended.contains(w) && !self.dead.contains(w));
                    nap.reset();
                }
                // Joining waits for what the agents run (tasks of abandoned calls run to
                // their end, as in a local pool); terminating is bounded.
                Ok(_) if terminate && Instant::now() > deadline => runtime::abort_job(
                    1,
                    &format!(
                        "MPI ranks {waiting:?} did not stop their pools within {STOP_TIMEOUT:?}"
                    ),
                ),
                Ok(_) => nap.sleep(),
            }
        }
        // Each agent read everything before it said ENDED, and sent everything before:
        // what is on its way arrives at once (bounded all the same).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let busy = with_mpi(|rt| {
                self.inbox.take_done();
                let busy = self.outbox.progress() || self.inbox.busy();
                self.check_requests(rt)?;
                Ok(busy)
            });
            if !matches!(busy, Ok(true)) {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl MpiLink {
    fn describe_rank(&self, rank: i32) -> String {
        let host = self
            .hosts
            .get(rank as usize - 1)
            .map_or("?", String::as_str);
        format!("MPI rank {rank} (host {host})")
    }
}

impl MpiLink {
    /// Waits for every agent's answer to START; the worker counts, or the first refusal.
    fn await_started(
        &mut self,
        agents: &[msg::Hello],
        limit: Duration,
    ) -> Result<Vec<usize>, PoolError> {
        let mut counts: Vec<Option<usize>> = (1..=agents.len() as i32)
            .map(|r| self.dead.contains(&r).then_some(0))
            .collect();
        // A limit past what an `Instant` holds is no limit.
        let deadline = Instant::now().checked_add(limit);
        let mut nap = Nap::default();
        let mut failure = None;
        while counts.iter().any(Option::is_none) {
            let got = with_mpi(|rt| {
                let got = self.receive_all(rt, msg::STARTED, false)?;
                self.outbox.progress();
                self.check_requests(rt)?;
                Ok(got)
            })?;
            for &r in &self.dead {
                if let Some(c @ None) = counts.get_mut(r as usize - 1) {
                    *c = Some(0);
                }
            }
            if got.is_empty() {
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
            }
            nap.reset();
            for (bytes, rank) in got {
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
        }
        if failure.is_none() && counts.iter().all(|c| *c == Some(0)) && !self.dead.is_empty() {
            let lost = self
                .dead
                .iter()
                .map(|&r| format!("{}: lost while its pool started", self.describe_rank(r)))
                .collect();
            failure = Some(PoolError::AgentsLost { lost });
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(counts.into_iter().flatten().collect()),
        }
    }
}

fn decode_results(
    bytes: &[u8],
    rank: i32,
    place: &str,
    out: &mut Vec<RemoteDone>,
) -> Result<(), String> {
    let mut r = Reader(bytes);
    while !r.is_empty() {
        let ((tag, nanos, pid, outcome), partial) = msg::get_answer_partial(&mut r, rank)?;
        out.push(RemoteDone {
            tag,
            outcome: outcome.map_err(|e| e.at(place)),
            nanos,
            pid,
            partial,
        });
    }
    Ok(())
}
