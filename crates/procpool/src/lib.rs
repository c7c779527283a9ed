//! Process pools for Rust, modelled on Python's `multiprocessing`.
//!
//! Workers are separate processes, each with its own memory. A [`Pool`] runs a function
//! over many inputs in parallel; arguments and results cross the process boundary
//! serialized (any owned `serde` type; postcard by default, MessagePack on request).
//!
//! # Quick start
//! ```
//! fn compute(n: u64) -> f64 {
//!     (1..=n).map(|i| (i as f64).sqrt()).sum()
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init(); // first line: a worker never returns from here
//!     let pool = procpool::Pool::new()?; // one worker per available core
//!     let sums: Vec<f64> = pool.map(compute, vec![10_000; 8])?;
//!     assert_eq!(sums.len(), 8);
//!     Ok(())
//! }
//! ```
//!
//! # Pools
//! [`Pool::map`] (ordered, stops at the first failure), [`Pool::imap`] (lazy, ordered,
//! bounded memory), [`Pool::imap_unordered`] (as they finish, with indices),
//! [`Pool::apply`] (one blocking call) and [`Pool::spawn`] (a [`TaskHandle`] to join,
//! join with a time limit, or cancel). [`Pool::builder`] sets the worker count, chunk
//! size, time limit, an initializer, recycling and retries. [`spawn`] starts a one-off
//! [`Process`].
//!
//! Functions are `fn(A) -> R`: named functions and closures that capture nothing. They
//! travel as offsets into the executable, which every worker shares with its parent.
//!
//! ## A function that needs more than its item
//! A closure that captures a local (`pool.map(|x: u64| x * factor, items)`) does not
//! compile (E0308, "expected fn pointer, found closure"): a worker has no access to the
//! parent's locals. Send what the function needs instead, one of these ways:
//! - **Explicit captures**: [`capture!`] lists them; each item travels with a clone.
//! - **A tuple argument**: pair each item with the value, `|(factor, x): (u64, u64)|`.
//! - **[`Shared`]**: a large value goes to shared memory once; a handle (a few bytes)
//!   travels with each item (in a tuple or captured), decoded once per worker.
//! - **The initializer**: [`Builder::initializer`] runs once in each worker, to set up
//!   state the tasks read (a `static` `OnceLock`, say).
//!
//! ```
//! # fn main() -> Result<(), procpool::Error> {
//! # procpool::init();
//! # let pool = procpool::Pool::builder().workers(1).build()?;
//! let factor = 3u64;
//! let scale = procpool::capture!([factor] |x: u64| x * factor);
//! assert_eq!(scale.map(&pool, [1, 2])?, [3, 6]);
//! // the same with a tuple argument:
//! let pairs = [1u64, 2].map(|x| (factor, x));
//! assert_eq!(pool.map(|(f, x): (u64, u64)| x * f, pairs)?, [3, 6]);
//! # Ok(()) }
//! ```
//!
//! # Arguments, results and codecs
//! Arguments and results are owned `serde` values ([`Value`]); the items of `map` and the
//! others may be borrowed (`pool.map(f, &items)`), and may be the borrowed forms of the
//! argument type (`&Path` for `PathBuf`, `&str` for `String`, `&[T]` for `Vec<T>`: see
//! [`EncodesAs`]). They travel encoded with postcard,
//! except `Vec<u8>` and plain numbers, which take fast paths of their own. postcard is
//! not self-describing: serde features that need the data to describe itself
//! (`skip_serializing_if`, untagged or internally tagged enums, `flatten`,
//! `deserialize_any`) are refused with a [`Codec`](TaskErrorKind::Codec) error naming
//! the type, never delivered as wrong values; send such types with
//! [`Codec::MessagePack`] ([`Builder::codec`], [`Pool::with_codec`]).
//!
//! Encoding and decoding are part of each task: an item whose argument or result fails
//! to (de)serialize, panics doing so, or is larger than [`Builder::max_message_size`]
//! fails alone, under its own index, like an item whose function panics.
//!
//! # Shared data
//! A large input every task reads goes to shared memory once: [`Shared`] (any value,
//! decoded once per worker), [`SharedSlice`] (plain numbers read in place, no decode) and
//! [`SharedArray`] (numbers tasks write in place, atomically). A handle is part of a
//! task's argument and costs a few bytes and two descriptors; see [`shared`] for how
//! workers cache values and when memory is released. [`Fd`] sends any open descriptor.
//!
//! # Errors and crashes
//! A task that panics, segfaults, aborts or is killed fails alone: its error says how
//! ([`TaskErrorKind`]: the panic's message and location, the signal that killed the
//! worker, a timeout, a codec error), the pool replaces a dead worker, and every other
//! task completes. Errors of the pool itself are [`PoolError`]s.
//!
//! Every fallible call of the crate (pools, one-off processes, channels, shared data)
//! converts into one [`Error`] with `?`, each source under a variant of its own to match
//! on, so a `main -> Result<(), procpool::Error>` can use them all. The `Debug` of every
//! error reads as its `Display`: an error returned from `main` prints a sentence, and a
//! task's panic its message, place and (under `RUST_BACKTRACE=1`) the worker's
//! backtrace as lines.
//!
//! # Timeouts
//! [`Builder::timeout`] and [`Pool::with_timeout`] set a time limit per task. A task past
//! it has its worker killed and replaced — this works for code stuck in a loop or a
//! system call, which a thread could never stop. A worker decoding a [`Shared`] value for
//! the first time does not spend the task's time: that has an allowance of its own
//! ([`Builder::shared_decode_timeout`], 30 s by default), so a task is killed at the
//! latest its limit plus that allowance after it is due.
//!
//! # Processes a task starts
//! Each worker leads a session and process group of its own, without a controlling
//! terminal (a terminal's Ctrl-C and job control never reach it). Whatever procpool kills
//! — at a time limit, on `cancel`, `terminate`, dropping a pool, killing a [`Process`] —
//! it kills with every process the task started (`Command`, `fork`), and what is left of
//! a worker's group when the worker ends dies too; a process that made a session of its
//! own (`setsid`) is left alone. When the parent process dies, even by SIGKILL, every
//! worker and its group die with it.
//!
//! # Channels
//! [`channel`] and [`bounded`] make a [`Sender`] and a [`Receiver`] whose ends can be
//! passed to processes and pool tasks as (part of) their argument, cloned, and sent on
//! inside other channels' messages: a stream between processes, as Python's `Pipe` and
//! `Queue`.
//!
//! - A channel is an `AF_UNIX` `SOCK_SEQPACKET` socketpair; each message is one packet, so
//!   a sender killed in the middle of a send never leaves part of a message, and several
//!   receivers (clones, in threads or processes) each take whole messages, none twice.
//! - Receivers end ([`RecvError::Disconnected`], the end of `for msg in rx`) once every
//!   sender in every process is gone, dropped or dead; a send with no receiver left fails
//!   with [`SendError::Disconnected`], the value inside.
//! - Capacity is in bytes, kept by the kernel (the socket's send buffer): 208 KiB by
//!   default, [`bounded`] to choose. Each message costs its packet plus several hundred
//!   bytes of the kernel's bookkeeping; a message above a quarter of the capacity (at most
//!   64 KiB) travels in a memfd and costs an eighth of the capacity, so about eight wait in
//!   a full queue.
//! - Messages from a peer are untrusted: malformed ones are [`RecvError::Malformed`],
//!   never a panic, and the channel goes on.
//!
//! # Progress, stats and tracing
//! [`Call::on_progress`] reports a call's [`Progress`] to a callback at most once per
//! interval and once at the end; with the `indicatif` feature, `pool.with_progress()`
//! draws a bar. [`Pool::stats`] returns the pool's counters ([`Stats`]), and
//! [`current_worker`] tells a task which worker slot runs it. With the `tracing` feature
//! the pool emits events of its workers' lives (target `procpool`) and a span per `map`,
//! `imap` and `imap_unordered` call.
//!
//! ```
//! # fn main() -> Result<(), procpool::Error> {
//! procpool::init();
//! fn slot(_: u32) -> usize {
//!     procpool::current_worker().map_or(usize::MAX, |w| w.index)
//! }
//! let pool = procpool::Pool::builder().workers(2).build()?;
//! let slots = pool
//!     .on_progress(|p| if p.finished { assert_eq!(p.done, 100) })
//!     .map(slot, 0..100u32)?;
//! assert!(slots.iter().all(|&i| i < 2));
//! assert_eq!(pool.stats().succeeded, 100);
//! # Ok(()) }
//! ```
//!
//! # Across hosts (MPI)
//! With the `mpi` feature, the same [`Pool`] spans the hosts of an MPI job. Start the
//! program with `mpirun -n N ./prog` (or Slurm's `srun`): [`init`] initializes MPI, and
//! every rank but 0 becomes a *node agent* that never returns from it and runs a local
//! pool of worker processes on its host. Rank 0 runs `main`; a pool built with
//! `Builder::mpi` runs its tasks on the agents' workers, with the same `map`, `imap`,
//! `imap_unordered`, `apply`, `spawn`, time limits, retries, cancelling and errors.
//! Outside an MPI job (or in a job of one rank) `mpi()` gives a local pool.
//! Open MPI's `mpirun` wants `--oversubscribe` to start more ranks than the host has
//! cores, and `--allow-run-as-root` to run as root.
//!
//! ```
//! # #[cfg(feature = "mpi")]
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init(); // ranks other than 0 serve here and never return
//!     let pool = procpool::Pool::builder().mpi().build()?; // local when not under mpirun
//!     let squares = pool.map(|x: u64| x * x, 0..100_000)?;
//!     assert_eq!(squares[9], 81);
//!     Ok(())
//! }
//! # #[cfg(not(feature = "mpi"))]
//! # fn main() {}
//! ```
//!
//! - **Model.** In an MPI pool a *dispatcher* thread takes the place of the local
//!   supervisor: it takes jobs from the same queue (so chunking, ordering, handles and
//!   progress are those of a local pool) and deals them to agents by the same
//!   work-conserving rule, counting each agent as as many slots as it has workers: a job
//!   goes only to an agent with a free worker, except that jobs measured short (under 5
//!   ms) may be held ahead, about 2 ms of them per worker, so that no worker waits for a
//!   round trip. Many jobs travel in one MPI message, and so do their answers; a large
//!   one travels while the others are served. The tasks of a call dropped unread run
//!   to their end on the agents, as in a local pool (at most the ~2 ms per worker held
//!   ahead run beyond what was running), and their workers take new work after.
//! - **Workers per agent**: the host's cores, shared among the agents on that host;
//!   [`Builder::workers`] sets it per agent. Rank 0 runs none: to use every host, start
//!   one rank more than hosts (`mpirun -n 5 --map-by node` on four hosts).
//! - **Same binary.** Functions travel as offsets into the executable. At start-up rank
//!   0 compares a fingerprint of the executable's *contents* with every agent's; if one
//!   differs it prints which rank and host, and building an MPI pool fails with
//!   [`PoolError::Handshake`] ([`HandshakeError::BinaryMismatch`]).
//! - **Faults.** A task that panics, segfaults, aborts, is killed or passes its time
//!   limit kills only its worker on the agent, which replaces it; the task's error is
//!   what a local pool gives (its pid is the remote worker's), and so is a pool error
//!   of an agent ([`PoolError::Broken`] when its workers keep failing their
//!   initializer, say). A task's own child processes die with its worker on every
//!   path, an agent lost included. Losing an agent itself
//!   (its host dies, the rank is killed) ends the whole job: that is the MPI library's
//!   default error handling, and `mpirun` prints which rank died, on which node, of which
//!   signal.
//! - **Exit.** Returning from `main`, `std::process::exit` and an error returned from
//!   `main` tell every agent to stop its workers and leave, then finalize MPI (bounded: a
//!   job that does not end within 30 s is ended by the launcher). A panic that leaves
//!   rank 0's `main` unwinds as in any program: its pools are dropped (which kills what
//!   they run on the agents), then the exit tells the agents to leave, and the job ends
//!   with code 101; a panic that `main` catches leaves the job alone.
//!   One MPI pool is open at a time; building a second while one is open fails with
//!   [`PoolError::Config`]. `procpool::mpi_rank()` tells the rank and the job's size.
//!
//! # Testing
//! Workers re-run the executable, so a test binary needs a way in: put
//! `procpool::enable_test_support!();` once in each integration-test crate (and in a unit
//! test module of a library). Doc examples with a `main` that calls [`init`] work as they
//! are.
//!
//! # Platform support
//! Linux (pidfd, memfd, `PR_SET_PDEATHSIG`). Other systems are refused at compile time.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod awaiting;
#[cfg(feature = "indicatif")]
mod bar;
mod capture;
mod channel;
mod codec;
mod encodes_as;
mod error;
mod handle;
mod iter;
mod job;
#[cfg(feature = "mpi")]
mod mpi;
mod passfd;
mod pool;
mod process;
mod progress;
pub mod shared;
mod warm;

pub use awaiting::{AsCompleted, as_completed, block_on, wait_any};
#[cfg(feature = "futures")]
pub use awaiting::{ImapStream, ImapUnorderedStream};
pub use capture::Captured;
#[doc(hidden)]
pub use channel::fuzzing as channel_fuzzing;
pub use channel::{
    BytesAndFds, IntoIter, Iter, Payload, Receiver, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, Sender, TryIter, TryRecvError, TrySendError, bounded, channel,
};
pub use codec::Value;
pub use codec::format::Codec;
pub use encodes_as::EncodesAs;
pub use error::{Death, Error, HandshakeError, PoolError, TaskError, TaskErrorKind, WaitError};
pub use handle::TaskHandle;
pub use iter::{Imap, ImapUnordered};
#[cfg(feature = "mpi")]
#[doc(hidden)]
pub use mpi::front as mpi_front;
#[cfg(feature = "mpi")]
pub use mpi::mpi_rank;
pub use passfd::Fd;
pub use pool::{Builder, Call, Pool};
pub use process::{Process, spawn};
pub use procpool_engine::{
    AgentStats, Failures, Progress, Stats, WorkerInfo, WorkerStats, current_worker,
};
pub use shared::{Element, Shared, SharedArray, SharedError, SharedSlice};

/// The README's Rust blocks, compiled and run as doc tests (`tests/readme.rs` checks
/// that none is left out).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// Makes this process a worker if it was started as one; returns at once otherwise.
///
/// Call it as the first line of `main`. In a worker process it runs the worker loop and
/// exits without returning. Forgetting it is caught: a worker process whose `main` goes on
/// to create a pool reports the mistake to its parent (which returns a
/// [`HandshakeError::InitMissing`] error) instead of starting workers of its own.
///
/// With the `mpi` feature, in a process started by an MPI launcher (`mpirun`), it also
/// initializes MPI; on ranks other than 0 it then serves as a node agent and exits
/// without returning (see [Across hosts](crate#across-hosts-mpi)).
///
/// ```
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(); // first line: a worker serves here and never returns
///     println!("printed by the parent only");
///     let pool = procpool::Pool::builder().workers(1).build()?;
///     assert_eq!(pool.apply(|x: u8| x + 1, 1)?, 2);
///     Ok(())
/// }
/// ```
pub fn init() {
    procpool_engine::serve_if_worker(job::func::FnRunner::default);
    #[cfg(feature = "mpi")]
    mpi::init();
}

/// Lets pools run inside a test binary: put it once at the top level of each
/// integration-test crate (`tests/*.rs`).
///
/// Test binaries have a `main` of their own that never calls [`init`]; this registers a
/// start-up hook (an `.init_array` entry, run before `main`) that calls it, so a worker
/// started from the test binary serves instead of running the tests.
///
/// (`no_run`: a doc test does not run `#[test]` functions; `tests/pool.rs` and the
/// other integration tests are this in use.)
///
/// ```no_run
/// procpool::enable_test_support!();
///
/// #[test]
/// fn doubles() {
///     let pool = procpool::Pool::builder().workers(2).build().unwrap();
///     assert_eq!(pool.map(|x: u32| x * 2, [1, 2]).unwrap(), [2, 4]);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! enable_test_support {
    () => {
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __PROCPOOL_TEST_SUPPORT: extern "C" fn() = {
            extern "C" fn __procpool_test_support_init() {
                $crate::init();
            }
            __procpool_test_support_init
        };
    };
}
