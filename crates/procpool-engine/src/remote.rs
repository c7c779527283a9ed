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
///             self.0.push(RemoteDone { tag: j.tag, outcome, nanos: 1000, pid: None });
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
/// batch.submit([Job {
///     func: Arc::from(&b"f"[..]),
///     payload: Arc::new(vec![7]),
///     index: 0,
///     weight: 1,
///     timeout: None,
///     fds: None,
/// }])?;
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
    fn stop(&mut self, terminate: bool);
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
        Self {
            shared,
            held: vec![0; slots.len()],
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
        }
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
            self.shared.stats.set_in_flight(self.out.len());
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
        Ok(())
    }

    fn idle(&self) -> bool {
        let q = self.shared.lock();
        q.jobs.is_empty() && q.feeding == 0 && self.out.is_empty()
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
                        let message = "the argument holds open descriptors (Shared, \
                            SharedSlice, SharedArray, Fd or a channel end), which cannot \
                            travel to a pool on other hosts: use a local pool for it"
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
                let tag = self.next_tag;
                self.next_tag += 1;
                let batch = self.batch_id(&j.batch);
                self.held[agent] += 1;
                self.out.insert(tag, Out { q: j, agent, batch });
                picked[agent].push(tag);
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
        let index = o.q.job.index;
        o.q.batch.deliver([Done {
            index,
            outcome: a.outcome.map_err(|e| e.with_index(index)),
            nanos: a.nanos,
            pid: a.pid,
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
            self.remote.cancel(a, id, kill)?;
        }
        Ok(())
    }

    /// The link failed: every job fails with the pool broken, and the pool refuses more.
    fn fail(&mut self, e: PoolError) {
        self.shared.lock().broken = Some(e.clone());
        for (_, o) in self.out.drain() {
            fail_job(&o.q, TaskErrorKind::PoolBroken(e.clone()));
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
    }

    fn engine(slots: &[usize]) -> (Engine, Arc<Mutex<Fake>>) {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let link = Link(fake.clone(), slots.to_vec());
        let e = Engine::start_remote(EngineConfig::default(), Box::new(link)).unwrap();
        (e, fake)
    }

    fn job(i: u64) -> Job {
        Job {
            func: Arc::from(&b"f"[..]),
            payload: Arc::new(vec![i as u8]),
            index: i,
            weight: 1,
            timeout: None,
            fds: None,
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
