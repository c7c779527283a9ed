//! The typed pool: [`Pool`], its [`Builder`], and [`Call`] for per-call settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procpool_engine::{DEFAULT_PROGRESS_INTERVAL, Engine, EngineConfig, PoolError, Progress};

use crate::codec::Value;
use crate::codec::format::{self, Codec};
use crate::encodes_as::EncodesAs;
use crate::error::Error;
use crate::handle::TaskHandle;
use crate::iter::{Feeder, Imap, ImapUnordered};
use crate::job::func;
use crate::job::items::{self, Layout};
use crate::passfd;
use crate::progress::Watch;

/// A pool of worker processes that run functions on serialized arguments.
///
/// # Examples
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(2).build()?;
///     assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
///     Ok(())
/// }
/// ```
///
/// # Caveats
/// Dropping a pool *terminates* it, as Python's `with Pool()` block does: workers are
/// killed with SIGKILL and reaped at once, and tasks still running or queued (through
/// [`spawn`](Pool::spawn) handles) end with
/// [`Terminated`](crate::TaskErrorKind::Terminated). Dropping never waits for work and
/// leaves no zombie, orphan or descriptor behind. To let queued work finish, call
/// [`join`](Pool::join).
#[derive(Debug)]
pub struct Pool {
    engine: Engine,
    chunk_size: Option<usize>,
    timeout: Option<Duration>,
    layout: Layout,
}

/// Settings of a [`Pool`], made by [`Pool::builder`].
///
/// ```
/// use std::time::Duration;
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder()
///         .workers(2)
///         .timeout(Duration::from_secs(30))
///         .retries(1)
///         .build()?;
///     assert_eq!(pool.workers(), 2);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    config: EngineConfig,
    chunk_size: Option<usize>,
    timeout: Option<Duration>,
    layout: Layout,
    error: Option<String>,
    /// Workers per agent, when set, for pools over MPI.
    #[cfg(feature = "mpi")]
    per_agent: Option<usize>,
    /// Run on the agents of the MPI job ([`Builder::mpi`]).
    #[cfg(feature = "mpi")]
    mpi: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            config: EngineConfig::default(),
            chunk_size: None,
            timeout: None,
            layout: Layout {
                codec: Codec::Postcard,
                limit: procpool_engine::DEFAULT_MAX_MESSAGE,
            },
            error: None,
            #[cfg(feature = "mpi")]
            per_agent: None,
            #[cfg(feature = "mpi")]
            mpi: false,
        }
    }
}

impl Builder {
    /// Number of worker processes. Default: the number of available cores. With
    /// `mpi()` (feature `mpi`), the number of workers of each agent.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// assert_eq!(pool.workers(), 2);
    /// # Ok(()) }
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        #[cfg(feature = "mpi")]
        {
            self.per_agent = Some(n);
        }
        self
    }

    /// Runs the pool's tasks on the node agents of the MPI job this program runs in
    /// (`mpirun -n N ./prog`): every rank but 0, each with a local pool of worker
    /// processes. Outside an MPI job, or in a job of one rank, the pool is local. See
    /// [`crate::mpi`](crate#across-hosts-mpi) for the model, faults and exit.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// procpool::init();
    /// let pool = procpool::Pool::builder().mpi().build()?; // local outside mpirun
    /// assert_eq!(pool.map(|x: u32| x * 2, [1, 2, 3])?, [2, 4, 6]);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "mpi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
    pub fn mpi(mut self) -> Self {
        self.mpi = true;
        self
    }

    /// Items per job for `map`, `imap` and `imap_unordered`. Default: automatic — the
    /// first jobs carry one item, then chunks are sized from the measured run time to
    /// take about a millisecond each (at most 65,536 items), and to leave every worker
    /// work to the end when the input's length is known. With a time limit and no chunk
    /// size, each item is its own job.
    ///
    /// A chunk's results travel together, so a worker that dies (or is killed at the time
    /// limit) fails every item of its chunk. With automatic sizing, the first such death
    /// switches the rest of the call to one item per job. Choose 1 when every task must
    /// be isolated from every other.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(1).chunk_size(1).build()?; // every item alone
    /// assert_eq!(pool.map(|x: u32| x + 1, [1, 2])?, [2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn chunk_size(mut self, n: usize) -> Self {
        if n == 0 {
            self.error = Some(ZERO_CHUNK.into());
        }
        self.chunk_size = Some(n);
        self
    }

    /// Time limit of every task once started (a call can set its own with
    /// [`Pool::with_timeout`]). A task past it has its worker killed and replaced, and
    /// fails with [`TimedOut`](crate::TaskErrorKind::TimedOut). With a chunk size above
    /// 1, the limit applies to the whole chunk: when it passes, the items the worker
    /// finished are delivered, the one it was running fails with `TimedOut`, and the
    /// others go out again as a job of their own (under the same limit). A zero limit is
    /// an invalid setting:
    /// [`build`](Builder::build) fails with [`PoolError::Config`].
    ///
    /// What it counts: the time from the moment the task's job is due on its worker
    /// (handed to an idle worker, or the result of the job before it on that worker came
    /// back), on the parent's own clock; time spent waiting in a queue does not count.
    /// The kill comes within a few milliseconds of the limit (later on a loaded machine).
    ///
    /// What it does not count: a worker decoding a [`Shared`](crate::Shared) value it
    /// receives for the first time (once per worker and value). That has an allowance of
    /// its own, [`shared_decode_timeout`](Self::shared_decode_timeout), kept by the
    /// parent: a task lives at most `limit` + that allowance.
    ///
    /// ```
    /// use std::time::Duration;
    /// use procpool::TaskErrorKind;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder()
    ///     .workers(1)
    ///     .timeout(Duration::from_millis(200))
    ///     .build()?;
    /// let err = pool.apply(nap, 60_000).unwrap_err(); // killed at 200 ms
    /// assert!(matches!(err.as_task().unwrap().kind(), TaskErrorKind::TimedOut { .. }));
    /// assert_eq!(pool.apply(nap, 1)?, 1); // a new worker took its place
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Self {
        if limit.is_zero() {
            self.error = Some(ZERO_TIMEOUT.into());
        }
        self.timeout = Some(limit);
        self
    }

    /// How long a task may spend decoding the [`Shared`](crate::Shared) values of its
    /// argument (in a worker that does not hold them yet), apart from its
    /// [`timeout`](Self::timeout). Default 30 s
    /// ([`DEFAULT_PREPARE_ALLOWANCE`](procpool_engine::DEFAULT_PREPARE_ALLOWANCE)).
    ///
    /// With a time limit, the parent counts a worker's decoding of a shared value apart
    /// from the task's own time, so a large value decoded once per worker does not make
    /// tasks time out. The allowance bounds that: a decode that runs past it kills the
    /// worker, and the task fails with
    /// [`PreparationTimedOut`](crate::TaskErrorKind::PreparationTimedOut), which names the
    /// value's type and size. A task is thus killed at the latest `timeout` + this
    /// allowance after it is due, whatever it does. Without a time limit this does
    /// nothing. A zero allowance counts decoding as the task's time, as any other work;
    /// `Duration::MAX` sets no bound on decoding.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// use std::time::Duration;
    /// let pool = procpool::Pool::builder()
    ///     .workers(1)
    ///     .timeout(Duration::from_millis(100))
    ///     .shared_decode_timeout(Duration::from_secs(5))
    ///     .build()?;
    /// assert_eq!(pool.workers(), 1);
    /// # Ok(()) }
    /// ```
    pub fn shared_decode_timeout(mut self, allowance: Duration) -> Self {
        self.config.prepare_allowance = allowance;
        self
    }

    /// A function run once in each worker, with `arg`, before it takes any task (to open
    /// a connection, load a model, set up logging...). A worker whose initializer panics
    /// is replaced; after several failures in a row the pool reports
    /// [`PoolError::Broken`].
    ///
    /// The argument travels with postcard, whatever the pool's codec.
    ///
    /// ```
    /// use std::sync::OnceLock;
    ///
    /// static GREETING: OnceLock<String> = OnceLock::new();
    ///
    /// fn setup(greeting: String) {
    ///     GREETING.set(greeting).unwrap(); // once per worker
    /// }
    ///
    /// fn greet(name: String) -> String {
    ///     format!("{} {name}", GREETING.get().unwrap())
    /// }
    ///
    /// fn main() -> Result<(), procpool::Error> {
    ///     procpool::init();
    ///     let pool = procpool::Pool::builder()
    ///         .workers(1)
    ///         .initializer(setup, "hello".to_string())
    ///         .build()?;
    ///     assert_eq!(pool.apply(greet, "ann")?, "hello ann");
    ///     Ok(())
    /// }
    /// ```
    pub fn initializer<A: Value>(mut self, f: fn(A), arg: A) -> Self {
        let mut bytes = Vec::new();
        match format::encode(Codec::Postcard, &mut bytes, &arg) {
            Ok(()) => self.config.initializer = Some((func::init_ref(f), bytes)),
            Err(m) => self.error = Some(format!("the initializer's argument: {m}")),
        }
        self
    }

    /// Replace each worker after it ran `n` tasks (Python's `maxtasksperchild`), to bound
    /// leaks in the task code. Default: never.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(1).recycle_after(1).build()?;
    /// let first = pool.apply(|_: ()| std::process::id(), ())?;
    /// let second = pool.apply(|_: ()| std::process::id(), ())?;
    /// assert_ne!(first, second); // a fresh worker for each task
    /// # Ok(()) }
    /// ```
    pub fn recycle_after(mut self, n: u64) -> Self {
        if n == 0 {
            self.error = Some("recycle_after must be at least 1".into());
        }
        self.config.recycle_after = Some(n);
        self
    }

    /// How many times a task whose worker died is started again on another worker before
    /// it fails. Default 0. A task that kills every worker it touches fails after
    /// `n + 1` attempts; the pool survives.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(1).retries(1).build()?;
    /// let err = pool.apply(|_: ()| -> u8 { std::process::abort() }, ()).unwrap_err();
    /// assert_eq!(err.as_task().unwrap().attempts(), 2); // started twice, then failed
    /// # Ok(()) }
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }

    /// Largest encoded argument or result of one item, in bytes. Default 1 GiB. A larger
    /// one fails its item alone with [`TooLarge`](crate::TaskErrorKind::TooLarge).
    ///
    /// The limit is per item, not per chunk: `map` and `imap` cut their chunks so that
    /// a chunk's arguments stay within it, and a chunk's results together may pass it
    /// (the whole message of a chunk is bounded apart: twice the limit, at least 64 MiB,
    /// at most 1.5 GiB unless one item needs more; a worker stops a chunk before its
    /// results could pass that, and the items it did not run are sent again).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(1).max_message_size(4096).build()?;
    /// assert_eq!(pool.map(|x: u64| x * 2, 0..100_000)?.len(), 100_000);
    /// let big = pool.apply(|n: usize| vec![0u8; n], 5000);
    /// assert!(matches!(
    ///     big.unwrap_err().as_task().unwrap().kind(),
    ///     procpool::TaskErrorKind::TooLarge { .. }
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        if bytes == 0 || bytes > items::MAX_ITEM_LIMIT {
            self.error = Some("max_message_size must be between 1 byte and 4 GiB - 2 KiB".into());
        }
        self.layout.limit = bytes;
        self
    }

    /// The codec arguments and results travel in (a call can choose its own with
    /// [`Pool::with_codec`]). Default [`Codec::Postcard`]; see [`Codec`] for the serde
    /// features postcard does not support and [`Codec::MessagePack`] does.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder()
    ///     .workers(1)
    ///     .codec(procpool::Codec::MessagePack)
    ///     .build()?;
    /// assert_eq!(pool.apply(|s: String| s.len(), "abc".to_string())?, 3);
    /// # Ok(()) }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.layout.codec = codec;
        self
    }

    /// Start workers from this executable instead of the running one (Python's
    /// `set_executable`). It must be the same binary: the handshake compares
    /// fingerprints and refuses another.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let me = std::env::current_exe()?; // an io::Error converts into procpool::Error
    /// let pool = procpool::Pool::builder().workers(1).executable(me).build()?;
    /// assert_eq!(pool.apply(|x: u8| x + 1, 1)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.executable = Some(path.into());
        self
    }

    /// On a timeout, send the worker SIGTERM and wait `grace` before SIGKILL, so a task
    /// that handles SIGTERM can clean up. Default: SIGKILL at once. The SIGKILL (like
    /// every kill of a worker) also reaches every process the task started, except one
    /// that left the worker's session (`setsid`).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder()
    ///     .workers(1)
    ///     .timeout(Duration::from_millis(100))
    ///     .kill_grace(Duration::from_millis(50)) // SIGTERM, then SIGKILL 50 ms later
    ///     .build()?;
    /// let r = pool.apply(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 60_000);
    /// assert!(r.is_err());
    /// # Ok(()) }
    /// ```
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.config.kill_grace = Some(grace);
        self
    }

    /// How long a starting worker may take to answer the handshake. Default 20 s; zero
    /// is an invalid setting.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder()
    ///     .workers(1)
    ///     .handshake_timeout(Duration::from_secs(60)) // a slow machine
    ///     .build()?;
    /// assert_eq!(pool.apply(|x: i8| -x, 3)?, -3);
    /// # Ok(()) }
    /// ```
    pub fn handshake_timeout(mut self, limit: Duration) -> Self {
        if limit.is_zero() {
            self.error = Some("handshake_timeout must be above zero".into());
        }
        self.config.handshake_timeout = limit;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// [`PoolError::Config`] for an invalid setting, [`PoolError::Spawn`] when a process
    /// cannot start, [`PoolError::Handshake`] when a worker refuses (another binary, a
    /// `main` without `procpool::init()`).
    ///
    /// # Panics
    /// Never returns in a worker process whose `main` skipped `procpool::init()`: such a
    /// process reports the mistake to its parent and exits.
    ///
    /// ```
    /// use procpool::{Error, PoolError};
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(1).build()?;
    /// assert_eq!(pool.worker_pids().len(), 1);
    /// let bad = procpool::Pool::builder().chunk_size(0).build();
    /// assert!(matches!(bad, Err(Error::Pool(PoolError::Config(_)))));
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<Pool, Error> {
        guard_worker();
        if let Some(e) = self.error {
            return Err(PoolError::Config(e).into());
        }
        let mut config = self.config;
        // The engine bounds whole jobs; the user's limit is per item (see `items`).
        config.max_message = items::transport_bound(self.layout.limit);
        #[cfg(feature = "mpi")]
        let engine = if self.mpi {
            crate::mpi::start(config, self.per_agent)?
        } else {
            Engine::start(config)?
        };
        #[cfg(not(feature = "mpi"))]
        let engine = Engine::start(config)?;
        Ok(Pool {
            engine,
            chunk_size: self.chunk_size,
            timeout: self.timeout,
            layout: self.layout,
        })
    }
}

/// What an invalid chunk size says.
const ZERO_CHUNK: &str = "chunk_size must be at least 1";
/// What an invalid time limit says.
const ZERO_TIMEOUT: &str = "a task's time limit (timeout) must be above zero";

/// A process started as a worker must serve, not make pools of its own.
pub(crate) fn guard_worker() {
    if procpool_engine::is_worker_process() {
        procpool_engine::refuse_init_missing();
    }
}

/// Per-call settings over a pool: `pool.with_timeout(d).map(f, items)`.
///
/// An invalid setting (a chunk size of 0, a zero time limit) makes every call through
/// it fail with [`PoolError::Config`]; `imap` and `imap_unordered`, which return
/// iterators, yield that error as their first and only item.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// use procpool::{Error, PoolError};
/// let pool = procpool::Pool::builder().workers(1).build()?;
/// let r = pool.with_chunk_size(0).map(|x: u32| x, [1, 2]);
/// assert!(matches!(r, Err(Error::Pool(PoolError::Config(_)))));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Call<'p> {
    pool: &'p Pool,
    chunk_size: Option<usize>,
    timeout: Option<Duration>,
    invalid: Option<&'static str>,
    layout: Layout,
    pub(crate) progress: Option<Watch>,
}

impl Pool {
    /// A pool with one worker per available core.
    ///
    /// # Errors
    /// As [`Builder::build`].
    ///
    /// ```
    /// fn main() -> Result<(), procpool::Error> {
    ///     procpool::init();
    ///     let pool = procpool::Pool::new()?;
    ///     assert!(pool.workers() >= 1); // one per available core
    ///     Ok(())
    /// }
    /// ```
    pub fn new() -> Result<Pool, Error> {
        Builder::default().build()
    }

    /// Settings for a new pool.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// use std::time::Duration;
    /// let pool = procpool::Pool::builder()
    ///     .workers(2)
    ///     .timeout(Duration::from_secs(5))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn call(&self) -> Call<'_> {
        Call {
            pool: self,
            chunk_size: self.chunk_size,
            timeout: self.timeout,
            invalid: None,
            layout: self.layout,
            progress: None,
        }
    }

    /// Calls with another codec (instead of the pool's): for types that need serde
    /// features the default codec lacks (see [`Codec`]).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// use procpool::Codec;
    /// let n = pool.with_codec(Codec::MessagePack).apply(|v: Vec<String>| v.len(), vec![])?;
    /// assert_eq!(n, 0);
    /// # Ok(()) }
    /// ```
    pub fn with_codec(&self, codec: Codec) -> Call<'_> {
        self.call().codec(codec)
    }

    /// Calls with a time limit per task (instead of the pool's). A zero limit makes the
    /// calls fail with [`PoolError::Config`] (see [`Call`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let quick = pool.with_timeout(Duration::from_millis(200));
    /// assert!(quick.apply(nap, 60_000).is_err()); // this call's tasks have 200 ms
    /// assert_eq!(pool.apply(nap, 300)?, 300); // the pool's own calls have no limit
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, limit: Duration) -> Call<'_> {
        self.call().timeout(limit)
    }

    /// Calls with a fixed chunk size (instead of the pool's). A chunk size of 0 makes the
    /// calls fail with [`PoolError::Config`] (see [`Call`]).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let out = pool.with_chunk_size(25).map(|x: u32| x * 2, 0..100)?; // four jobs
    /// assert_eq!(out[99], 198);
    /// # Ok(()) }
    /// ```
    pub fn with_chunk_size(&self, n: usize) -> Call<'_> {
        self.call().chunk_size(n)
    }

    /// Applies `f` to every item, in parallel; results in input order.
    ///
    /// Stops at the first failed task: nothing more is sent, and the error names the
    /// task's index and cause. Items may be the arguments or borrow as them
    /// (`pool.map(f, &vec)`); see [`Value`] for why arguments are owned values.
    ///
    /// Results are decoded into the returned vector as their chunks come back in order.
    /// When the input's length is known and the results take 16 MiB or more, a helper
    /// thread (`procpool-warm`) maps the vector's memory ahead of them for the length of
    /// the call, so that the calling thread, which encodes and decodes every chunk, does
    /// not also take a page fault every 4 KiB.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(2).build()?;
    /// let lens = pool.map(|s: String| s.len(), ["a".to_string(), "bcd".to_string()])?;
    /// assert_eq!(lens, vec![1, 3]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Task`] for the first failed task, [`Error::Pool`] if the pool is closed
    /// or broken.
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item: EncodesAs<A>>,
    ) -> Result<Vec<R>, Error>
    where
        A: Value,
        R: Value,
    {
        self.call().map(f, items)
    }

    /// Lazy, ordered `map`: input is pulled only as workers free up, and results come in
    /// input order, each `Ok` or the error of that item. Memory stays bounded whatever
    /// the input's length.
    ///
    /// The call holds a few chunks per worker: a chunk carries about 128 KiB of argument
    /// and result (or one item, when an item is larger), at most four jobs per worker are
    /// in flight, and finished results waiting for an earlier one stop the input at two
    /// chunks per worker. With `N` workers and items of `s` bytes (argument and result),
    /// expect the calling process to hold at most about `(6N + 4) × max(s, 128 KiB)`
    /// beyond its own, plus about 0.6 MiB per worker of the rings results come through
    /// (results over 1 MiB come through a socket instead). Two workers and 1 KiB items:
    /// about 3 MiB; two workers and 1 MiB items: about 16 MiB. See the README's
    /// *Memory in flight*.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(2).build()?;
    /// let first: Vec<u64> = pool
    ///     .imap(|x: u64| x + 1, 0..) // endless input
    ///     .take(3)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(first, vec![1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<A, R, I::IntoIter>
    where
        A: Value,
        R: Value,
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        self.call().imap(f, items)
    }

    /// Like [`imap`](Pool::imap), but results come as they finish, each with its input
    /// index.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(2).build()?;
    /// let mut got: Vec<(usize, u64)> = pool
    ///     .imap_unordered(|x: u64| x * 10, vec![1, 2, 3])
    ///     .map(|(i, r)| r.map(|v| (i, v)))
    ///     .collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, vec![(0, 10), (1, 20), (2, 30)]);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> ImapUnordered<A, R, I::IntoIter>
    where
        A: Value,
        R: Value,
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        self.call().imap_unordered(f, items)
    }

    /// Runs `f(arg)` in a worker and waits for the result.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// assert_eq!(pool.apply(|x: i32| x - 1, 10)?, 9);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Task`] when the task failed, [`Error::Pool`] when the pool refused it.
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: impl EncodesAs<A>) -> Result<R, Error>
    where
        A: Value,
        R: Value,
    {
        self.call().apply(f, arg)
    }

    /// Starts `f(arg)` in a worker and returns a handle to join later, with a time limit,
    /// or to cancel.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let h = pool.spawn(|x: u64| x * 3, 7)?;
    /// assert_eq!(h.join()?, 21);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Pool`] when the pool is closed or broken; [`Error::Task`] with a codec
    /// error when `arg` cannot be serialized.
    pub fn spawn<A, R>(&self, f: fn(A) -> R, arg: impl EncodesAs<A>) -> Result<TaskHandle<R>, Error>
    where
        A: Value,
        R: Value,
    {
        self.call().spawn(f, arg)
    }

    /// Number of worker processes.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// assert_eq!(pool.workers(), 1);
    /// # Ok(()) }
    /// ```
    pub fn workers(&self) -> usize {
        self.engine.config().workers
    }

    /// Process ids of the live workers (they change as workers are replaced).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let pids = pool.worker_pids();
    /// assert_eq!(pids.len(), 1);
    /// assert_eq!(pool.apply(|_: ()| std::process::id(), ())?, pids[0]);
    /// # Ok(()) }
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        self.engine.worker_pids()
    }

    /// A snapshot of the pool's counters (see [`Stats`](crate::Stats)): per worker slot
    /// (pid, tasks, busy time, restarts) and for the pool (tasks succeeded and failed by
    /// kind, workers started, replaced and recycled, jobs queued and in flight). Cheap
    /// enough to call often.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// pool.map(|x: u32| x + 1, 0..10u32)?;
    /// let s = pool.stats();
    /// assert_eq!(s.succeeded, 10);
    /// assert_eq!(s.workers.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> crate::Stats {
        self.engine.stats()
    }

    /// Stops accepting work: later calls fail with [`PoolError::Closed`]. Queued tasks
    /// still run, and calls already under way (a `map`, `imap` or `imap_unordered` still
    /// feeding its input, from another thread say) finish.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let mut it = pool.imap(|x: u64| x + 1, 0..100);
    /// assert_eq!(it.next().unwrap()?, 1);
    /// pool.close();
    /// assert!(pool.apply(|x: u64| x, 1).is_err()); // a new call is refused
    /// assert_eq!(it.count(), 99); // the call under way finishes
    /// # Ok(()) }
    /// ```
    pub fn close(&self) {
        self.engine.close();
    }

    /// Closes the pool, waits until queued tasks finish (detached ones included) and
    /// `map` calls under way in other threads have fed all their input, then stops and
    /// reaps the workers. A worker still running its initializer finishes it first (it
    /// is killed only past a grace of a few seconds).
    ///
    /// An `imap` or `imap_unordered` iterator is not waited for (its holder may never
    /// drain it): once the work queued is done the workers stop, and the iterator's
    /// items not yet sent fail with [`PoolError::Closed`].
    ///
    /// ```
    /// fn report((tx, x): (procpool::Sender<u32>, u32)) {
    ///     tx.send(x * 2).unwrap();
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let (tx, rx) = procpool::channel()?;
    /// drop(pool.spawn(report, (tx, 21))?); // a dropped handle: the task still runs
    /// pool.join(); // waits for it
    /// assert_eq!(rx.recv()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn join(self) {
        self.engine.join();
    }

    /// Kills the workers now; unfinished tasks fail with
    /// [`Terminated`](crate::TaskErrorKind::Terminated).
    ///
    /// ```
    /// use std::time::Duration;
    /// use procpool::TaskErrorKind;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let h = pool.spawn(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 60_000)?;
    /// pool.terminate(); // kills the worker now
    /// let err = h.join().unwrap_err();
    /// assert_eq!(err.as_task().unwrap().kind(), &TaskErrorKind::Terminated);
    /// # Ok(()) }
    /// ```
    pub fn terminate(self) {
        self.engine.terminate();
    }
}

impl<'p> Call<'p> {
    /// Sets the time limit per task; a zero limit is an invalid setting.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_chunk_size(1).timeout(Duration::from_secs(30));
    /// assert_eq!(call.map(|x: u32| x + 1, [1, 2])?, [2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Self {
        if limit.is_zero() {
            self.invalid = Some(ZERO_TIMEOUT);
        }
        self.timeout = Some(limit);
        self
    }

    /// Sets the chunk size; 0 is an invalid setting.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30)).chunk_size(10);
    /// assert_eq!(call.map(|x: u32| x % 7, 0..50)?.len(), 50);
    /// # Ok(()) }
    /// ```
    pub fn chunk_size(mut self, n: usize) -> Self {
        if n == 0 {
            self.invalid = Some(ZERO_CHUNK);
        }
        self.chunk_size = Some(n.max(1));
        self
    }

    /// The error of an invalid setting, if one was made.
    fn check(&self) -> Result<(), Error> {
        match self.invalid {
            Some(m) => Err(PoolError::Config(m.into()).into()),
            None => Ok(()),
        }
    }

    /// Sets the codec.
    ///
    /// ```
    /// use std::time::Duration;
    /// use procpool::Codec;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30)).codec(Codec::MessagePack);
    /// assert_eq!(call.apply(|s: String| s.len(), "four")?, 4);
    /// # Ok(()) }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.layout.codec = codec;
        self
    }

    fn feeder<A, R, I>(&self, name: &'static str, f: fn(A) -> R, items: I) -> Feeder<A, R, I>
    where
        A: Value,
        R: Value,
        I: Iterator<Item: EncodesAs<A>>,
    {
        let mut feeder = Feeder::new(
            &self.pool.engine,
            items,
            func::chunk_ref(f),
            self.layout,
            self.chunk_size,
            self.timeout,
        );
        feeder.observe(self.progress.as_ref(), name);
        if let Some(m) = self.invalid {
            // The iterator's first item says so, and it ends there.
            feeder.refuse(PoolError::Config(m.into()));
        }
        feeder
    }

    /// [`Pool::map`] with these settings.
    ///
    /// # Errors
    /// As [`Pool::map`].
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30));
    /// assert_eq!(call.map(|x: u64| x * x, [2, 3])?, [4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item: EncodesAs<A>>,
    ) -> Result<Vec<R>, Error>
    where
        A: Value,
        R: Value,
    {
        self.check()?;
        let mut it = Imap::new(self.feeder("map", f, items.into_iter()), true);
        let (lo, hi) = it.size_hint();
        let mut out = Vec::with_capacity(lo);
        // A large vector of known length is faulted in ahead of the values, off this
        // thread (see `warm`).
        let warm = if hi == Some(lo) {
            crate::warm::Warmer::start(&mut out)
        } else {
            None
        };
        let r = it.collect_all_into(&mut out, |out| {
            if let Some(w) = &warm {
                w.watch(out);
            }
        });
        drop(warm);
        r?;
        Ok(out)
    }

    /// [`Pool::imap`] with these settings.
    ///
    /// # Panics
    /// On an invalid setting (a chunk size of 0, a zero time limit).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30));
    /// let squares: Vec<u64> = call.imap(|x: u64| x * x, 1..).take(3).collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<A, R, I::IntoIter>
    where
        A: Value,
        R: Value,
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        Imap::new(self.feeder("imap", f, items.into_iter()), false)
    }

    /// [`Pool::imap_unordered`] with these settings.
    ///
    /// # Panics
    /// On an invalid setting (a chunk size of 0, a zero time limit).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30));
    /// let mut got: Vec<u64> = call
    ///     .imap_unordered(|x: u64| x * x, [3, 1])
    ///     .map(|(_, r)| r)
    ///     .collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, [1, 9]);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> ImapUnordered<A, R, I::IntoIter>
    where
        A: Value,
        R: Value,
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        ImapUnordered::new(self.feeder("imap_unordered", f, items.into_iter()))
    }

    /// [`Pool::apply`] with these settings.
    ///
    /// # Errors
    /// As [`Pool::apply`].
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30));
    /// assert_eq!(call.apply(|x: i32| x.abs(), -4)?, 4);
    /// # Ok(()) }
    /// ```
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: impl EncodesAs<A>) -> Result<R, Error>
    where
        A: Value,
        R: Value,
    {
        self.spawn(f, arg)?.join()
    }

    /// [`Pool::spawn`] with these settings.
    ///
    /// # Errors
    /// As [`Pool::spawn`].
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let call = pool.with_timeout(Duration::from_secs(30));
    /// let h = call.spawn(|x: i32| x * 10, 4)?;
    /// assert_eq!(h.join()?, 40);
    /// # Ok(()) }
    /// ```
    pub fn spawn<A, R>(&self, f: fn(A) -> R, arg: impl EncodesAs<A>) -> Result<TaskHandle<R>, Error>
    where
        A: Value,
        R: Value,
    {
        self.check()?;
        let (payload, fds) = single_payload(&arg, self.layout)?;
        let batch = self.pool.engine.batch().allow_direct();
        batch.submit([procpool_engine::Job {
            func: func::chunk_ref(f),
            payload: Arc::new(payload),
            index: 0,
            weight: 1,
            timeout: self.timeout,
            fds,
            attempts: 0,
        }])?;
        Ok(TaskHandle::new(batch, self.layout.codec))
    }
}

impl Pool {
    /// Calls that report their progress to `f` (see [`Call::on_progress`]).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// let last = Arc::new(AtomicU64::new(0));
    /// let seen = last.clone();
    /// let v = pool
    ///     .on_progress(move |p| seen.store(p.done, Ordering::Relaxed))
    ///     .map(|x: u64| x + 1, 0..1000u64)?;
    /// assert_eq!(v.len(), 1000);
    /// assert_eq!(last.load(Ordering::Relaxed), 1000);
    /// # Ok(()) }
    /// ```
    pub fn on_progress(&self, f: impl Fn(Progress) + Send + Sync + 'static) -> Call<'_> {
        self.call().on_progress(f)
    }

    /// Calls that show a progress bar on standard error: items done of the total (when
    /// the input's length is known), rate and time left (see [`Call::with_progress`]).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// let v = pool.with_progress().map(|x: u64| x * 2, 0..100u64)?;
    /// assert_eq!(v[99], 198);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn with_progress(&self) -> Call<'_> {
        self.call().with_progress()
    }
}

impl Call<'_> {
    /// Reports the progress of `map`, `imap` and `imap_unordered` calls to `f`: items
    /// done, the total when the input's length is known, failures and time elapsed.
    ///
    /// `f` runs on the calling thread (from inside the call, or the iterator's `next`),
    /// at most once per [`progress_interval`](Self::progress_interval) (50 ms by default)
    /// while items finish, and once more at the end with
    /// [`finished`](Progress::finished) set: when the input is done, and also when the
    /// call stops on an error or its iterator is dropped. `apply` and `spawn` do not
    /// report. Keep it short: it delays the call while it runs.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// pool.with_chunk_size(10)
    ///     .on_progress(|p| {
    ///         if p.finished {
    ///             eprintln!("{} of {:?} done in {:?}", p.done, p.total, p.elapsed);
    ///         }
    ///     })
    ///     .map(|x: u32| x, 0..100u32)?;
    /// # Ok(()) }
    /// ```
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        let interval = self
            .progress
            .as_ref()
            .map_or(DEFAULT_PROGRESS_INTERVAL, |w| w.interval);
        self.progress = Some(Watch {
            callback: Arc::new(f),
            interval,
        });
        self
    }

    /// The shortest time between two progress reports (see
    /// [`on_progress`](Self::on_progress)); 50 ms by default.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// use std::time::Duration;
    /// pool.on_progress(|p| println!("{}", p.done))
    ///     .progress_interval(Duration::from_secs(1))
    ///     .map(|x: u8| x, [1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        if let Some(w) = &mut self.progress {
            w.interval = interval;
        }
        self
    }

    /// Shows a progress bar on standard error for `map`, `imap` and `imap_unordered`:
    /// items done of the total (a spinner when the input's length is unknown), rate and
    /// time left. The bar is drawn at most 20 times a second from the progress callback
    /// (so it costs nothing per item), hides itself when standard error is not a
    /// terminal, and is left in place, with the count of failures, when the call stops
    /// on an error.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let v: Vec<u32> = pool.with_timeout(std::time::Duration::from_secs(5))
    ///     .with_progress()
    ///     .map(|x: u32| x, 0..10u32)?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn with_progress(self) -> Self {
        let bar = crate::bar::Bar::default();
        self.on_progress(move |p| bar.show(p))
    }
}

/// The payload of a chunk of one argument, and the descriptors its encoding attached.
pub(crate) fn single_payload<A: Value>(
    arg: &impl EncodesAs<A>,
    layout: Layout,
) -> Result<(Vec<u8>, Option<procpool_engine::JobFds>), Error> {
    let mut payload = Vec::new();
    let enc = passfd::Encoding::begin();
    items::begin_chunk::<A>(&mut payload, layout);
    crate::encodes_as::push_arg(&mut payload, layout, arg)
        .map_err(|kind| Error::Task(procpool_engine::TaskError::new(kind, 0, None, 0)))?;
    items::end_chunk(&mut payload, 1);
    Ok((payload, enc.finish()))
}
