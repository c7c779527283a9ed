//! Pools whose workers live in other processes that the engine does not start: *agents*
//! reached through a [`Remote`] link (the `procpool` crate's MPI backend is one).
//!
//! An agent runs a local pool of its own (crash isolation and time limits are its
//! business); the engine sees it as `n` worker slots. A dispatcher thread takes the place
//! of the supervisor: it takes jobs from the same queue the callers' [`Batch`]es submit
//! to, deals them to agents with room, and delivers the agents' answers into the batches.
//! Everything above the queue — feeds, chunking, reordering, handles — is the same as
//! for a local pool.
//!
//! Dealing is work-conserving: a job goes to the agent with the most free room, and only
//! to one with a free slot, unless the jobs of its batch are known to be short (under
//! [`PREFETCH_BELOW`]), in which case an agent may hold, per slot, as many as run in
//! [`PREFETCH_WORK`] (at least 2, at most 512) so that its workers never wait for a
//! round trip. A long job never waits at a busy agent while another agent has room, and
//! the work held ahead at an agent is bounded by a few milliseconds per worker.
//!
//! [`Batch`]: crate::Batch

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::EngineConfig;
use crate::error::{PoolError, TaskError, TaskErrorKind};
use crate::items::Partial;
use crate::job::{BatchInner, Done, Job, Queued};
use crate::pool::Engine;
use crate::shared::{Mode, Shared};
use crate::sys::{self, Ready};

/// Jobs of a batch whose average run time is below this may be sent ahead to an agent
/// whose slots are all busy.
pub const PREFETCH_BELOW: Duration = Duration::from_millis(5);

/// How much work (by the batch's measured job time) an agent may hold per slot ahead of
/// its workers, for short jobs.
pub const PREFETCH_WORK: Duration = Duration::from_millis(2);

/// Longest nap of the dispatcher between two looks at its link while jobs are out, for
/// [`BRISK`] after the last activity (a sixteenth of the jobs' measured run time, within
/// these bounds), and after.
const MIN_MAX_NAP: Duration = Duration::from_micros(20);
const MAX_NAP: Duration = Duration::from_millis(1);
const MAX_NAP_QUIET: Duration = Duration::from_millis(1);
const BRISK: Duration = Duration::from_millis(50);

/// One job sent to an agent.
#[derive(Debug)]
pub struct RemoteJob<'a> {
    /// The dispatcher's tag of the job, to be given back with its answer.
    pub tag: u64,
    /// Identifies the job's batch among those the agent holds (for [`Remote::cancel`]).
    pub batch: u64,
    /// The job.
    pub job: &'a Job,
}

/// An agent's answer to one job.
#[derive(Debug)]
pub struct RemoteDone {
    /// The job's [`RemoteJob::tag`].
    pub tag: u64,
    /// The encoded result, or the task's error as the agent's pool gave it.
    pub outcome: Result<Vec<u8>, TaskError>,
    /// How long the job ran, in nanoseconds (0 when it did not run).
    pub nanos: u64,
    /// Process id of the agent's worker that ran it, if one did.
    pub pid: Option<u32>,
    /// For a job of several items whose worker died inside it: the items it finished
    /// (see [`Done::partial`]); the agent passes on what its own pool reported.
    pub partial: Option<Partial>,
}

/// The link between the engine and its agents. Every call is made from one thread at a
/// time (first the caller of [`Engine::start_remote`], then the dispatcher thread).
///
/// # Examples
/// One agent of two slots that answers each job at once with its argument:
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use procpool_engine::*;
///
/// #[derive(Default)]
/// struct Echo(Vec<RemoteDone>);
///
/// impl Remote for Echo {
///     fn start(&mut self, _: &EngineConfig) -> Result<Vec<usize>, PoolError> {
///         Ok(vec![2])
///     }
///     fn send(&mut self, _agent: usize, jobs: &[RemoteJob<'_>]) -> Result<(), PoolError> {
///         for j in jobs {
///             let outcome = Ok(j.job.payload.to_vec());
///             let (tag, nanos, pid, partial) = (j.tag, 1000, None, None);
///             self.0.push(RemoteDone { tag, outcome, nanos, pid, partial });
///         }
///         Ok(())
///     }
///     fn cancel(&mut self, _: usize, _: u64, _: bool) -> Result<(), PoolError> {
///         Ok(()) // every job was answered already
///     }
///     fn poll(&mut self, out: &mut Vec<RemoteDone>) -> Result<(), PoolError> {
///         out.append(&mut self.0);
///         Ok(())
///     }
///     fn stop(&mut self, _terminate: bool) {}
/// }
///
/// let engine = Engine::start_remote(EngineConfig::default(), Box::new(Echo::default()))?;
/// assert_eq!(engine.config().workers, 2);
/// let batch = engine.batch();
/// batch.submit([Job::new(Arc::from(&b"f"[..]), Arc::new(vec![7]), 0)])?;
/// let done = batch.recv_timeout(Duration::from_secs(10)).unwrap();
/// assert_eq!(done.outcome.unwrap(), vec![7]);
/// # Ok::<(), PoolError>(())
/// ```
pub trait Remote: Send + 'static {
    /// Starts the agents' pools with `config` (its `workers` as the caller asked; the
    /// link decides how many each agent runs); returns each agent's worker count.
    ///
    /// # Errors
    /// Why a pool could not be started; the link stops the agents it started.
    fn start(&mut self, config: &EngineConfig) -> Result<Vec<usize>, PoolError>;

    /// Sends jobs to agent `agent` (an index into what `start` returned).
    ///
    /// # Errors
    /// The link failed; the pool breaks.
    fn send(&mut self, agent: usize, jobs: &[RemoteJob<'_>]) -> Result<(), PoolError>;

    /// Tells agent `agent` to end the jobs it holds of batch `batch`: with `kill`, as
    /// cancelled (the running ones killed, each answered); without, nobody reads their
    /// outcomes (each is still answered once, with any outcome, when its worker is
    /// free again: the dispatcher counts the agent's room by the answers).
    ///
    /// # Errors
    /// The link failed; the pool breaks.
    fn cancel(&mut self, agent: usize, batch: u64, kill: bool) -> Result<(), PoolError>;

    /// Appends the answers that arrived to `out`, without blocking.
    ///
    /// # Errors
    /// The link failed; the pool breaks.
    fn poll(&mut self, out: &mut Vec<RemoteDone>) -> Result<(), PoolError>;

    /// Stops the agents' pools: with `terminate` killing what runs, otherwise after the
    /// jobs they hold (none are held when the engine joins). Returns when they stopped.
    /// Agents reported lost are not waited for.
    fn stop(&mut self, terminate: bool);

    /// Appends the agents lost since the last call (their process ended, their host
    /// became unreachable) to `out`, after [`poll`](Self::poll) gave every answer that
    /// came from them. The dispatcher treats each as the loss of all its workers: the
    /// jobs it held run again elsewhere (one that may have started counts as an attempt
    /// under the pool's retries, as after a worker's death), and the pool goes on with
    /// the agents left, failing with [`PoolError::AgentsLost`] when none is. A link that
    /// cannot survive a loss (the default) never reports one.
    fn lost(&mut self, out: &mut Vec<AgentLost>) {
        let _ = out;
    }

    /// Whether the link survives losing an agent, and if not why not (what is missing),
    /// for [`Stats::agents`](crate::Stats::agents). The default: not survived.
    fn survives_loss(&self) -> Result<(), String> {
        Err("this link cannot tell a lost agent from a broken link".into())
    }

    /// A name for agent `agent` in errors and stats (`"MPI rank 2 (host node-a)"`).
    fn describe(&self, agent: usize) -> String {
        format!("agent {agent}")
    }
}

/// An agent a [`Remote`] link lost ([`Remote::lost`]).
///
/// ```
/// let l = procpool_engine::AgentLost { agent: 1, why: "its process ended".into() };
/// assert_eq!(l.agent, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLost {
    /// The agent (an index into what [`Remote::start`] returned).
    pub agent: usize,
    /// What happened, for errors and stats.
    pub why: String,
}

impl Engine {
    /// Starts a pool whose workers are the agents of `remote`. The configuration's
    /// `workers` is passed to [`Remote::start`]; the engine's own is the agents' total.
    ///
    /// # Errors
    /// [`Remote::start`]'s, or [`PoolError::Config`] when the agents have no worker.
    pub fn start_remote(
        mut config: EngineConfig,
        mut remote: Box<dyn Remote>,
    ) -> Result<Engine, PoolError> {
        let slots = remote.start(&config)?;
        let total: usize = slots.iter().sum();
        if total == 0 {
            remote.stop(true);
            return Err(PoolError::Config("the pool's agents have no worker".into()));
        }
        config.workers = total;
        let shared = Shared::new(config)?;
        let dispatcher = Dispatcher::new(shared.clone(), remote, slots);
        let thread = std::thread::Builder::new()
            .name("procpool-dispatcher".into())
            .spawn(move || dispatcher.run());
        match thread {
            Ok(t) => Ok(Engine::from_parts(shared, t)),
            Err(e) => Err(e.into()),
        }
    }
}

/// A job out at an agent.
#[derive(Debug)]
struct Out {
    q: Queued,
    agent: usize,
    batch: u64,
}

struct Dispatcher {
    shared: Arc<Shared>,
    remote: Box<dyn Remote>,
    slots: Vec<usize>,
    /// Agents still dealt to (not lost, their pool not broken).
    alive: Vec<bool>,
    /// Agents lost or taken out, with why, for stats and the final error.
    gone: Vec<String>,
    /// Jobs to run again after a worker's death at an agent, with that agent: dealt
    /// before the queue, to another agent when one has room.
    again: VecDeque<(Queued, Option<usize>)>,
    lost: Vec<AgentLost>,
    /// The first error an agent's broken pool gave, and whether an agent was lost (not
    /// broken): with every agent out, the pool fails with the former when none was
    /// lost (the error a local pool gives, variants and all), else with
    /// [`PoolError::AgentsLost`].
    first_broken: Option<PoolError>,
    any_lost: bool,
    /// Jobs out at each agent.
    held: Vec<usize>,
    out: HashMap<u64, Out>,
    next_tag: u64,
    /// Ids of the batches with jobs out, by the address of their shared part (alive as
    /// long as a job of theirs is out, so the address is not reused meanwhile).
    batch_ids: HashMap<usize, (u64, usize)>,
    next_batch: u64,
    answers: Vec<RemoteDone>,
    nap: Duration,
    /// Running average of the jobs' run times, in nanoseconds (0: none yet).
    avg_nanos: f64,
    last_busy: Instant,
    stopped: bool,
}

impl Dispatcher {
    fn new(shared: Arc<Shared>, remote: Box<dyn Remote>, slots: Vec<usize>) -> Self {
        let d = Self {
            shared,
            held: vec![0; slots.len()],
            alive: vec![true; slots.len()],
            gone: Vec::new(),
            again: VecDeque::new(),
            lost: Vec::new(),
            first_broken: None,
            any_lost: false,
            remote,
            slots,
            out: HashMap::new(),
            next_tag: 0,
            batch_ids: HashMap::new(),
            next_batch: 0,
            answers: Vec::new(),
            nap: Duration::ZERO,
            avg_nanos: 0.0,
            last_busy: Instant::now(),
            stopped: false,
        };
        d.publish_agents();
        d
    }

    /// Writes the agents' state into the pool's stats.
    fn publish_agents(&self) {
        let survives = self.remote.survives_loss();
        let alive = (0..self.slots.len()).filter(|&a| self.alive[a]);
        self.shared.stats.set_agents(crate::stats::AgentStats {
            started: self.slots.len(),
            alive: alive.clone().count(),
            workers_alive: alive.map(|a| self.slots[a]).sum(),
            lost: self.gone.clone(),
            survives_loss: survives.is_ok(),
            note: survives.err(),
        });
    }

    fn run(mut self) {
        loop {
            let (mode, cancels) = {
                let mut q = self.shared.lock();
                (q.mode, std::mem::take(&mut q.cancels))
            };
            if mode == Mode::Terminate {
                self.finish(true);
                return;
            }
            let mut busy = false;
            let step = self.step(&cancels, &mut busy);
            if let Err(e) = step {
                self.fail(e);
                return;
            }
            if mode == Mode::Join && self.idle() {
                self.finish(false);
                return;
            }
            self.shared
                .stats
                .set_in_flight(self.out.len() + self.again.len());
            self.wait(busy);
        }
    }

    fn step(&mut self, cancels: &[Arc<BatchInner>], busy: &mut bool) -> Result<(), PoolError> {
        for b in cancels {
            self.cancel(b)?;
        }
        *busy |= self.deal()?;
        self.answers.clear();
        let mut answers = std::mem::take(&mut self.answers);
        self.remote.poll(&mut answers)?;
        *busy |= !answers.is_empty();
        for a in answers.drain(..) {
            self.answer(a);
        }
        self.answers = answers;
        let mut lost = std::mem::take(&mut self.lost);
        self.remote.lost(&mut lost);
        *busy |= !lost.is_empty();
        for l in lost.drain(..) {
            self.agent_lost(l.agent, &l.why);
        }
        self.lost = lost;
        self.check_alive()
    }

    fn idle(&self) -> bool {
        let q = self.shared.lock();
        q.jobs.is_empty() && q.feeding == 0 && self.out.is_empty() && self.again.is_empty()
    }

    /// With no agent left, the pool breaks.
    fn check_alive(&self) -> Result<(), PoolError> {
        if self.alive.iter().any(|&a| a) {
            return Ok(());
        }
        if let (Some(e), false) = (&self.first_broken, self.any_lost) {
            return Err(e.clone());
        }
        Err(PoolError::AgentsLost {
            lost: self.gone.clone(),
        })
    }

    /// Agent `a` is lost with its workers: the jobs it held run again elsewhere. Those
    /// that may have been running (the oldest, one per worker: an agent's pool runs its
    /// jobs in the order they came) count as an attempt, as after a worker's death; the
    /// others never started and are simply sent again.
    fn agent_lost(&mut self, a: usize, why: &str) {
        if !self.alive.get(a).copied().unwrap_or(false) {
            // Already out (its pool broke): its jobs were handled as they came back.
            self.drop_agent_jobs(a, why);
            return;
        }
        self.alive[a] = false;
        self.any_lost = true;
        let name = self.remote.describe(a);
        self.gone.push(format!("{name}: {why}"));
        self.drop_agent_jobs(a, why);
        self.publish_agents();
    }

    fn drop_agent_jobs(&mut self, a: usize, _why: &str) {
        let name = self.remote.describe(a);
        let mut tags: Vec<u64> = self
            .out
            .iter()
            .filter(|(_, o)| o.agent == a)
            .map(|(t, _)| *t)
            .collect();
        tags.sort_unstable();
        self.held[a] = 0;
        let retries = self.shared.config.retries;
        let mut resend = Vec::new();
        for (i, tag) in tags.into_iter().enumerate() {
            let Some(o) = self.out.remove(&tag) else {
                continue;
            };
            self.release_batch(&o.q.batch);
            let mut q = o.q;
            if q.batch.is_dropped() {
                continue;
            }
            if q.batch.is_cancelled() {
                fail_job(&q, TaskErrorKind::Cancelled);
                continue;
            }
            if i >= self.slots[a] {
                resend.push(q);
                continue;
            }
            let attempts = q.attempts + 1;
            q.attempts = attempts;
            q.job.attempts = attempts;
            if attempts <= retries {
                resend.push(q);
            } else {
                fail_job(
                    &q,
                    TaskErrorKind::AgentLost {
                        agent: name.clone(),
                    },
                );
            }
        }
        for q in resend.into_iter().rev() {
            self.again.push_front((q, None));
        }
    }

    /// Agent `a`'s pool broke: it is taken out of dealing (it would fail every job it
    /// is sent), and the job it refused runs elsewhere.
    fn agent_broken(&mut self, a: usize, e: &PoolError) {
        if self.alive[a] {
            self.alive[a] = false;
            self.first_broken.get_or_insert_with(|| e.clone());
            let name = self.remote.describe(a);
            self.gone.push(format!("{name}: its pool broke: {e}"));
            self.publish_agents();
        }
    }

    /// Naps until a caller wakes the dispatcher or, while jobs are out, a growing pause
    /// (the link has no descriptor to wait on).
    fn wait(&mut self, busy: bool) {
        if busy {
            self.nap = Duration::ZERO;
            self.last_busy = Instant::now();
            return;
        }
        let max = if self.last_busy.elapsed() < BRISK {
            Duration::from_nanos((self.avg_nanos / 16.0) as u64).clamp(MIN_MAX_NAP, MAX_NAP)
        } else {
            MAX_NAP_QUIET
        };
        self.nap = (self.nap * 2).clamp(Duration::from_micros(5), max);
        let timeout = if self.out.is_empty() {
            None
        } else {
            Some(self.nap)
        };
        let fds = [(
            self.shared.wake_fd(),
            Ready {
                read: true,
                ..Ready::default()
            },
        )];
        let mut ready = Vec::with_capacity(1);
        match sys::poll(&fds, &mut ready, timeout) {
            Ok(()) if ready.first().is_some_and(|r| r.read) => sys::drain(self.shared.wake_fd()),
            Ok(()) => {}
            Err(_) => std::thread::sleep(self.nap),
        }
    }

    /// How many more jobs of a batch with average run time `avg` agent `a` may take.
    fn room(&self, a: usize, avg: f64) -> usize {
        if !self.alive[a] {
            return 0;
        }
        let short = avg > 0.0 && avg < PREFETCH_BELOW.as_nanos() as f64;
        let depth = if short {
            (PREFETCH_WORK.as_nanos() as f64 / avg)
                .ceil()
                .clamp(2.0, 512.0) as usize
        } else {
            1
        };
        let cap = depth * self.slots[a];
        cap.saturating_sub(self.held[a])
    }

    /// Deals queued jobs to agents with room; whether any was dealt.
    fn deal(&mut self) -> Result<bool, PoolError> {
        let mut picked: Vec<Vec<u64>> = vec![Vec::new(); self.slots.len()];
        let mut any = false;
        // Jobs to run again: to an agent other than the one where it died, when one is
        // alive (then it waits for its room); to the same one when it is the last.
        let mut waiting = VecDeque::new();
        while let Some((j, avoid)) = self.again.pop_front() {
            if j.batch.is_dropped() {
                continue;
            }
            let avg = j.batch.avg_nanos();
            let others = (0..self.slots.len()).any(|a| self.alive[a] && Some(a) != avoid);
            let best = (0..self.slots.len())
                .filter(|&a| !others || Some(a) != avoid)
                .map(|a| (self.room(a, avg), a))
                .filter(|&(r, _)| r > 0)
                .max_by_key(|&(r, a)| (r, std::cmp::Reverse(a)));
            let Some((_, agent)) = best else {
                waiting.push_back((j, avoid));
                continue;
            };
            self.put_out(j, agent, &mut picked);
            any = true;
        }
        self.again = waiting;
        {
            let shared = self.shared.clone();
            let mut q = shared.lock();
            while let Some(front) = q.jobs.front() {
                if front.batch.is_dropped() {
                    q.jobs.pop_front();
                    continue;
                }
                if front.job.fd_count() > 0 {
                    // Descriptors name open files of this host: they cannot go to another.
                    if let Some(j) = q.jobs.pop_front() {
                        let message = "the argument holds open descriptors of this \
                            host (in Rust a Shared, SharedSlice, SharedArray, Fd or channel \
                            end; in Python a Value, Array, lock, shared(), Queue, \
                            SimpleQueue or Pipe end), which cannot travel to a pool on \
                            other hosts: use a local pool for it, or pass plain data and \
                            return data as the tasks' results"
                            .to_string();
                        fail_job(&j, TaskErrorKind::Codec { message });
                    }
                    continue;
                }
                let avg = front.batch.avg_nanos();
                // The agent with the most free room.
                let best = (0..self.slots.len())
                    .map(|a| (self.room(a, avg), a))
                    .filter(|&(r, _)| r > 0)
                    .max_by_key(|&(r, a)| (r, std::cmp::Reverse(a)));
                let Some((_, agent)) = best else { break };
                let Some(j) = q.jobs.pop_front() else { break };
                self.put_out(j, agent, &mut picked);
                any = true;
            }
        }
        for (agent, tags) in picked.into_iter().enumerate() {
            if tags.is_empty() {
                continue;
            }
            let jobs: Vec<RemoteJob<'_>> = tags
                .iter()
                .filter_map(|t| {
                    self.out.get(t).map(|o| RemoteJob {
                        tag: *t,
                        batch: o.batch,
                        job: &o.q.job,
                    })
                })
                .collect();
            self.remote.send(agent, &jobs)?;
        }
        Ok(any)
    }

    /// Records job `j` as out at `agent`, to be sent with the others picked for it.
    fn put_out(&mut self, j: Queued, agent: usize, picked: &mut [Vec<u64>]) {
        let tag = self.next_tag;
        self.next_tag += 1;
        let batch = self.batch_id(&j.batch);
        self.held[agent] += 1;
        self.out.insert(tag, Out { q: j, agent, batch });
        picked[agent].push(tag);
    }

    fn batch_id(&mut self, batch: &Arc<BatchInner>) -> u64 {
        let key = Arc::as_ptr(batch) as usize;
        let next = &mut self.next_batch;
        let entry = self.batch_ids.entry(key).or_insert_with(|| {
            *next += 1;
            (*next, 0)
        });
        entry.1 += 1;
        entry.0
    }

    fn release_batch(&mut self, batch: &Arc<BatchInner>) {
        let key = Arc::as_ptr(batch) as usize;
        if let Some(e) = self.batch_ids.get_mut(&key) {
            e.1 -= 1;
            if e.1 == 0 {
                self.batch_ids.remove(&key);
            }
        }
    }

    fn answer(&mut self, a: RemoteDone) {
        let Some(o) = self.out.remove(&a.tag) else {
            return;
        };
        self.held[o.agent] = self.held[o.agent].saturating_sub(1);
        self.release_batch(&o.q.batch);
        if a.nanos > 0 {
            o.q.batch.observe(a.nanos);
            self.avg_nanos = if self.avg_nanos == 0.0 {
                a.nanos as f64
            } else {
                0.9 * self.avg_nanos + 0.1 * a.nanos as f64
            };
        }
        if o.q.batch.is_abandoned() {
            return;
        }
        let mut o = o;
        match &a.outcome {
            // The agent's pool broke: out of dealing, and the job (which it did not
            // run) goes elsewhere.
            Err(e) if matches!(e.kind(), TaskErrorKind::PoolBroken(_)) => {
                if let TaskErrorKind::PoolBroken(pe) = e.kind() {
                    let pe = pe.clone();
                    self.agent_broken(o.agent, &pe);
                }
                self.again.push_back((o.q, None));
                return;
            }
            // A worker died at the agent (whose own pool does not retry): within the
            // retries, the job runs again, on another agent when one has room.
            Err(e)
                if matches!(e.kind(), TaskErrorKind::WorkerDied { .. })
                    && a.partial.is_none()
                    && e.attempts() <= self.shared.config.retries =>
            {
                // The attempts travel with the job (the agent counts from them).
                o.q.attempts = e.attempts().max(o.q.attempts + 1);
                o.q.job.attempts = o.q.attempts;
                self.again.push_back((o.q, Some(o.agent)));
                return;
            }
            _ => {}
        }
        let index = o.q.job.index;
        o.q.batch.deliver([Done {
            index,
            outcome: a.outcome.map_err(|e| e.with_index(index)),
            nanos: a.nanos,
            pid: a.pid,
            partial: a.partial,
        }]);
    }

    /// Ends a cancelled or abandoned batch's jobs: those queued here at once, those out
    /// at agents through them.
    fn cancel(&mut self, batch: &Arc<BatchInner>) -> Result<(), PoolError> {
        let kill = batch.is_cancelled();
        {
            let mut q = self.shared.lock();
            let mut kept = VecDeque::with_capacity(q.jobs.len());
            for j in q.jobs.drain(..) {
                if !Arc::ptr_eq(&j.batch, batch) {
                    kept.push_back(j);
                } else if kill {
                    fail_job(&j, TaskErrorKind::Cancelled);
                }
            }
            q.jobs = kept;
        }
        let again = std::mem::take(&mut self.again);
        for (j, avoid) in again {
            if !Arc::ptr_eq(&j.batch, batch) {
                self.again.push_back((j, avoid));
            } else if kill {
                fail_job(&j, TaskErrorKind::Cancelled);
            }
        }
        let key = Arc::as_ptr(batch) as usize;
        let Some(&(id, _)) = self.batch_ids.get(&key) else {
            return Ok(());
        };
        let mut agents: Vec<usize> = self
            .out
            .values()
            .filter(|o| o.batch == id)
            .map(|o| o.agent)
            .collect();
        agents.sort_unstable();
        agents.dedup();
        for a in agents {
            if self.alive[a] {
                self.remote.cancel(a, id, kill)?;
            }
        }
        Ok(())
    }

    /// The link failed: every job fails with the pool broken, and the pool refuses more.
    fn fail(&mut self, e: PoolError) {
        self.shared.lock().broken = Some(e.clone());
        for (_, o) in self.out.drain() {
            fail_job(&o.q, TaskErrorKind::PoolBroken(e.clone()));
        }
        for (j, _) in self.again.drain(..) {
            fail_job(&j, TaskErrorKind::PoolBroken(e.clone()));
        }
        let jobs: Vec<Queued> = self.shared.lock().jobs.drain(..).collect();
        for j in jobs {
            fail_job(&j, TaskErrorKind::PoolBroken(e.clone()));
        }
        self.finish(true);
    }

    /// Stops the agents; jobs still out or queued end `Terminated`.
    fn finish(&mut self, terminate: bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.remote.stop(terminate);
        let mut q = self.shared.lock();
        q.mode = Mode::Terminate;
        let jobs: Vec<Queued> = q.jobs.drain(..).collect();
        drop(q);
        for (_, o) in self.out.drain() {
            fail_job(&o.q, TaskErrorKind::Terminated);
        }
        for (j, _) in self.again.drain(..) {
            fail_job(&j, TaskErrorKind::Terminated);
        }
        for j in jobs {
            fail_job(&j, TaskErrorKind::Terminated);
        }
        self.shared.stats.set_in_flight(0);
    }
}

impl Drop for Dispatcher {
    /// Runs when the loop returns and also if it panics: no caller waits forever.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.shared.lock();
            if q.broken.is_none() {
                q.broken = Some(PoolError::Io(Arc::new(std::io::Error::other(
                    "the pool's dispatcher thread panicked",
                ))));
            }
        }
        self.finish(true);
    }
}

fn fail_job(q: &Queued, kind: TaskErrorKind) {
    if q.batch.is_abandoned() {
        return;
    }
    q.batch.deliver([Done {
        index: q.job.index,
        outcome: Err(TaskError::new(kind, q.job.index, None, q.attempts)),
        nanos: 0,
        pid: None,
        partial: None,
    }]);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::RecvError;

    /// Agents simulated in memory: jobs held per agent until the test answers them.
    #[derive(Debug, Default)]
    struct Fake {
        held: Vec<Vec<(u64, u64, Vec<u8>)>>,
        answers: Vec<RemoteDone>,
        cancels: Vec<(usize, u64, bool)>,
        stopped: Option<bool>,
        lost: Vec<AgentLost>,
    }

    #[derive(Debug, Clone)]
    struct Link(Arc<Mutex<Fake>>, Vec<usize>);

    impl Remote for Link {
        fn start(&mut self, _: &EngineConfig) -> Result<Vec<usize>, PoolError> {
            self.0.lock().unwrap().held = vec![Vec::new(); self.1.len()];
            Ok(self.1.clone())
        }
        fn send(&mut self, agent: usize, jobs: &[RemoteJob<'_>]) -> Result<(), PoolError> {
            let mut f = self.0.lock().unwrap();
            for j in jobs {
                f.held[agent].push((j.tag, j.batch, j.job.payload.to_vec()));
            }
            Ok(())
        }
        fn cancel(&mut self, agent: usize, batch: u64, kill: bool) -> Result<(), PoolError> {
            let mut f = self.0.lock().unwrap();
            f.cancels.push((agent, batch, kill));
            // The agent answers every job of the batch it holds.
            let (gone, kept): (Vec<_>, Vec<_>) =
                f.held[agent].drain(..).partition(|h| h.1 == batch);
            f.held[agent] = kept;
            for (tag, ..) in gone {
                let e = TaskError::new(TaskErrorKind::Cancelled, tag, Some(9), 1);
                f.answers.push(RemoteDone {
                    tag,
                    outcome: Err(e),
                    nanos: 0,
                    pid: Some(9),
                    partial: None,
                });
            }
            Ok(())
        }
        fn poll(&mut self, out: &mut Vec<RemoteDone>) -> Result<(), PoolError> {
            out.append(&mut self.0.lock().unwrap().answers);
            Ok(())
        }
        fn stop(&mut self, terminate: bool) {
            self.0.lock().unwrap().stopped = Some(terminate);
        }
        fn lost(&mut self, out: &mut Vec<AgentLost>) {
            out.append(&mut self.0.lock().unwrap().lost);
        }
        fn survives_loss(&self) -> Result<(), String> {
            Ok(())
        }
        fn describe(&self, agent: usize) -> String {
            format!("fake agent {agent}")
        }
    }

    fn engine(slots: &[usize]) -> (Engine, Arc<Mutex<Fake>>) {
        engine_with(slots, 0)
    }

    fn engine_with(slots: &[usize], retries: u32) -> (Engine, Arc<Mutex<Fake>>) {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let link = Link(fake.clone(), slots.to_vec());
        let config = EngineConfig {
            retries,
            ..EngineConfig::default()
        };
        let e = Engine::start_remote(config, Box::new(link)).unwrap();
        (e, fake)
    }

    /// Agent `a` is lost: what it held is gone with it.
    fn lose(fake: &Mutex<Fake>, a: usize) {
        let mut f = fake.lock().unwrap();
        f.held[a].clear();
        f.lost.push(AgentLost {
            agent: a,
            why: "its process ended".into(),
        });
    }

    /// Answers every job the agents hold with its payload, until `n` results came.
    fn answer_all(fake: &Mutex<Fake>, b: &crate::Batch, n: usize) -> Vec<Done> {
        let mut got = Vec::new();
        let t = std::time::Instant::now();
        while got.len() < n {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {got:?}");
            let agents = fake.lock().unwrap().held.len();
            for a in 0..agents {
                answer_one(fake, a);
            }
            while let Ok(d) = b.recv_timeout(Duration::from_millis(2)) {
                got.push(d);
            }
        }
        got
    }

    fn job(i: u64) -> Job {
        Job {
            func: Arc::from(&b"f"[..]),
            payload: Arc::new(vec![i as u8]),
            index: i,
            weight: 1,
            timeout: None,
            fds: None,
            attempts: 0,
        }
    }

    /// Answers the oldest job agent `a` holds with its payload; its tag.
    fn answer_one(fake: &Mutex<Fake>, a: usize) -> Option<u64> {
        let mut f = fake.lock().unwrap();
        if f.held[a].is_empty() {
            return None;
        }
        let (tag, _, payload) = f.held[a].remove(0);
        f.answers.push(RemoteDone {
            tag,
            outcome: Ok(payload),
            nanos: 50_000_000,
            pid: Some(100 + a as u32),
            partial: None,
        });
        Some(tag)
    }

    fn held(fake: &Mutex<Fake>) -> Vec<usize> {
        fake.lock().unwrap().held.iter().map(Vec::len).collect()
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !cond() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn deals_only_to_free_slots_and_delivers_answers() {
        let (e, fake) = engine(&[2, 1]);
        assert_eq!(e.config().workers, 3);
        let b = e.batch();
        b.submit((0..6).map(job)).unwrap();
        wait_for("three jobs out", || held(&fake).iter().sum::<usize>() == 3);
        // Jobs of unknown length go only to free slots: the rest wait here.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(held(&fake), [2, 1]);
        assert_eq!(e.stats().queued, 3);
        answer_one(&fake, 1).unwrap();
        let d = b.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(d.outcome.unwrap(), vec![d.index as u8]);
        assert_eq!(d.pid, Some(101));
        // The freed slot gets the next job, and no more.
        wait_for("a job refills agent 1", || held(&fake) == [2, 1]);
        let mut got = 1;
        while got < 6 {
            for a in 0..2 {
                answer_one(&fake, a);
            }
            while let Ok(d) = b.recv_timeout(Duration::from_millis(5)) {
                assert_eq!(d.outcome.unwrap(), vec![d.index as u8]);
                got += 1;
            }
            assert!(held(&fake)[0] <= 2 && held(&fake)[1] <= 1);
        }
        assert!(matches!(
            b.recv_timeout(Duration::ZERO),
            Err(RecvError::Empty)
        ));
        e.join();
        assert_eq!(fake.lock().unwrap().stopped, Some(false));
    }

    #[test]
    fn a_job_with_descriptors_is_refused_never_sent_to_an_agent() {
        let (e, fake) = engine(&[1]);
        let b = e.batch();
        let null: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let mut with = job(1);
        with.fds = Some(Arc::from(vec![null]));
        b.submit([with, job(2)]).unwrap();
        let d = b.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(d.index, 1);
        let e1 = d.outcome.unwrap_err();
        assert!(
            matches!(e1.kind(), TaskErrorKind::Codec { message } if message.contains("other hosts")),
            "{e1}"
        );
        // The refusal comes back before job 2 is dealt: wait for the deal.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let held = loop {
            let held: Vec<u64> = fake.lock().unwrap().held[0]
                .iter()
                .map(|h| h.2[0] as u64)
                .collect();
            if !held.is_empty() || std::time::Instant::now() > until {
                break held;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(held, vec![2], "only the job without descriptors went out");
        drop(e);
    }

    #[test]
    fn cancel_answers_queued_jobs_and_asks_agents_to_kill() {
        let (e, fake) = engine(&[1, 1]);
        let b = e.batch();
        b.submit((0..5).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        b.cancel();
        let mut indices = Vec::new();
        while let Ok(d) = b.recv_timeout(Duration::from_secs(10)) {
            let err = d.outcome.unwrap_err();
            assert_eq!(err.kind(), &TaskErrorKind::Cancelled);
            assert_eq!(err.index(), d.index, "errors carry the caller's index");
            indices.push(d.index);
        }
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2, 3, 4]);
        let mut cancels = fake.lock().unwrap().cancels.clone();
        cancels.sort_unstable();
        assert_eq!(cancels.len(), 2);
        assert!(cancels.iter().all(|c| c.2), "{cancels:?}");
    }

    #[test]
    fn dropping_the_engine_terminates_agents_and_jobs_out() {
        let (e, fake) = engine(&[1]);
        let b = e.batch();
        b.submit((0..3).map(job)).unwrap();
        wait_for("a job out", || held(&fake) == [1]);
        drop(e);
        assert_eq!(fake.lock().unwrap().stopped, Some(true));
        for _ in 0..3 {
            let d = b.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(d.outcome.unwrap_err().kind(), &TaskErrorKind::Terminated);
        }
    }

    #[test]
    fn a_lost_agents_running_job_fails_as_a_death_and_the_rest_run_elsewhere() {
        let (e, fake) = engine(&[1, 1]);
        assert_eq!(e.stats().agents.unwrap().alive, 2);
        let b = e.batch();
        b.submit((0..6).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        let at_0 = fake.lock().unwrap().held[0][0].2[0] as u64;
        lose(&fake, 0);
        let got = answer_all(&fake, &b, 6);
        let mut indices: Vec<u64> = got.iter().map(|d| d.index).collect();
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2, 3, 4, 5], "every job answered once");
        for d in got {
            if d.index == at_0 {
                let err = d.outcome.unwrap_err();
                assert_eq!(
                    err.kind(),
                    &TaskErrorKind::AgentLost {
                        agent: "fake agent 0".into()
                    }
                );
                assert_eq!(err.attempts(), 1);
                assert!(err.to_string().contains("fake agent 0"), "{err}");
            } else {
                assert_eq!(d.outcome.unwrap(), vec![d.index as u8]);
                assert_eq!(d.pid, Some(101), "run by the agent left");
            }
        }
        let s = e.stats();
        let agents = s.agents.unwrap();
        assert_eq!(
            (agents.started, agents.alive, agents.workers_alive),
            (2, 1, 1)
        );
        assert!(agents.lost[0].contains("its process ended"), "{agents:?}");
        // The pool goes on with the agent left.
        let b = e.batch();
        b.submit((10..13).map(job)).unwrap();
        let got = answer_all(&fake, &b, 3);
        assert!(got.iter().all(|d| d.pid == Some(101)));
        e.join();
    }

    #[test]
    fn a_lost_agents_jobs_held_ahead_run_again_at_no_attempt() {
        let (e, fake) = engine(&[1, 1]);
        let b = e.batch();
        b.submit((0..2).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        // Measured at 1 ms each: each agent holds 2 (one running, one ahead).
        for a in 0..2 {
            let mut f = fake.lock().unwrap();
            let (tag, _, p) = f.held[a].remove(0);
            f.answers.push(RemoteDone {
                tag,
                outcome: Ok(p),
                nanos: 1_000_000,
                pid: None,
                partial: None,
            });
        }
        for _ in 0..2 {
            b.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        b.submit((0..4).map(job)).unwrap();
        wait_for("jobs held ahead", || held(&fake) == [2, 2]);
        let oldest = fake.lock().unwrap().held[0][0].2[0] as u64;
        lose(&fake, 0);
        wait_for("agent 1 gets them", || {
            fake.lock().unwrap().held[1].len() > 2 || held(&fake)[1] == 2
        });
        let got = answer_all(&fake, &b, 4);
        // Without retries, only the one that may have run fails; the one held ahead of
        // the agent's worker runs at the other agent.
        for d in &got {
            match &d.outcome {
                Ok(v) => assert_eq!(v, &vec![d.index as u8]),
                Err(e) => {
                    assert_eq!(d.index, oldest, "{e}");
                    assert!(matches!(e.kind(), TaskErrorKind::AgentLost { .. }), "{e}");
                }
            }
        }
        assert_eq!(got.iter().filter(|d| d.outcome.is_err()).count(), 1);
        drop(e);
    }

    #[test]
    fn within_retries_a_lost_agents_running_job_runs_again() {
        let (e, fake) = engine_with(&[1, 1], 1);
        let b = e.batch();
        b.submit((0..4).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        lose(&fake, 0);
        let got = answer_all(&fake, &b, 4);
        assert!(
            got.iter().all(|d| d.outcome.is_ok() && d.pid == Some(101)),
            "{got:?}"
        );
        drop(e);
    }

    #[test]
    fn losing_every_agent_breaks_the_pool_saying_why() {
        let (e, fake) = engine(&[1, 1]);
        let b = e.batch();
        b.submit((0..4).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        lose(&fake, 0);
        lose(&fake, 1);
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let d = b.recv_timeout(Duration::from_secs(10)).unwrap();
            kinds.push(d.outcome.unwrap_err().into_kind());
        }
        assert_eq!(
            kinds
                .iter()
                .filter(|k| matches!(k, TaskErrorKind::AgentLost { .. }))
                .count(),
            2,
            "{kinds:?}"
        );
        let broken = kinds
            .iter()
            .find_map(|k| match k {
                TaskErrorKind::PoolBroken(p) => Some(p.clone()),
                _ => None,
            })
            .expect("the queued jobs fail with the pool broken");
        assert!(
            matches!(&broken, PoolError::AgentsLost { lost } if lost.len() == 2),
            "{broken}"
        );
        assert!(broken.to_string().contains("fake agent 1"), "{broken}");
        assert!(matches!(
            e.batch().submit([job(9)]),
            Err(PoolError::AgentsLost { .. })
        ));
    }

    #[test]
    fn a_retry_after_a_death_goes_to_another_agent() {
        let (e, fake) = engine_with(&[1, 1], 1);
        let b = e.batch();
        b.submit([job(0)]).unwrap();
        wait_for("a job out", || held(&fake) == [1, 0]);
        {
            let mut f = fake.lock().unwrap();
            let (tag, ..) = f.held[0].remove(0);
            let died = TaskErrorKind::WorkerDied {
                death: crate::Death::Signal(9),
            };
            f.answers.push(RemoteDone {
                tag,
                outcome: Err(TaskError::new(died, 0, Some(100), 1)),
                nanos: 1_000,
                pid: Some(100),
                partial: None,
            });
        }
        wait_for("the retry at agent 1", || held(&fake) == [0, 1]);
        let d = answer_all(&fake, &b, 1).remove(0);
        assert_eq!(d.outcome.unwrap(), vec![0]);
        assert_eq!(d.pid, Some(101));
    }

    #[test]
    fn an_agent_whose_pool_broke_is_taken_out_of_dealing() {
        let (e, fake) = engine(&[1, 1]);
        let b = e.batch();
        b.submit((0..6).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        {
            let mut f = fake.lock().unwrap();
            let (tag, ..) = f.held[0].remove(0);
            let broke = TaskErrorKind::PoolBroken(PoolError::Config("no".into()));
            f.answers.push(RemoteDone {
                tag,
                outcome: Err(TaskError::new(broke, 0, None, 0)),
                nanos: 0,
                pid: None,
                partial: None,
            });
        }
        let got = answer_all(&fake, &b, 6);
        assert!(got.iter().all(|d| d.pid == Some(101)), "{got:?}");
        assert!(got.into_iter().all(|d| d.outcome.is_ok()));
        let agents = e.stats().agents.unwrap();
        assert_eq!(agents.alive, 1);
        assert!(agents.lost[0].contains("pool broke"), "{agents:?}");
    }

    #[test]
    fn short_jobs_are_held_ahead_within_bounds() {
        let (e, fake) = engine(&[1, 1]);
        let b = e.batch();
        b.submit((0..2).map(job)).unwrap();
        wait_for("two jobs out", || held(&fake) == [1, 1]);
        // Measured at 1 ms each: each agent may hold 2 ms of them per slot.
        for a in 0..2 {
            let mut f = fake.lock().unwrap();
            let (tag, _, p) = f.held[a].remove(0);
            f.answers.push(RemoteDone {
                tag,
                outcome: Ok(p),
                nanos: 1_000_000,
                pid: None,
                partial: None,
            });
        }
        for _ in 0..2 {
            b.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        b.submit((0..20).map(job)).unwrap();
        wait_for("jobs held ahead", || held(&fake) == [2, 2]);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(held(&fake), [2, 2]);
    }
}
