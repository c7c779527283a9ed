//! The byte-level engine of procpool.
//!
//! This crate moves opaque byte payloads between a parent process and worker processes
//! that run the parent's own executable. It knows nothing of serde: its unit of work is a
//! [`Job`] (a function reference and an argument, both bytes) and its answer a [`Done`]
//! (result bytes or a [`TaskError`]). A front (the `procpool` crate) turns typed Rust
//! calls into jobs and implements [`Runner`] to run them in the worker.
//!
//! Parts, one per module: `wire` (the frame format), `transport` (framed I/O over a Unix
//! socket), `ring` (the shared-memory results ring), `process` (starting a worker),
//! `worker` (the loop a worker runs), `supervisor`
//! (the thread that owns the workers and schedules jobs), `claim` (how a worker and the
//! supervisor agree on which jobs the worker started, so that jobs not started can be
//! taken back), `pool` (the [`Engine`] handle), `batch` (a caller's stream of jobs),
//! `chunk` (how many items go into a job), `feed` (a lazy input fed to a pool under
//! bounds, and reordering: what every front's `map`/`imap` runs on), `oneoff` (a single
//! process outside any pool), `sys` (OS calls); and for watching a pool: `stats` (the
//! pool's counters, [`Engine::stats`]), `progress` (a call's [`Progress`] reported to a
//! callback), `events` (what the supervisor tells of workers' lives: counters, and
//! events with the `tracing` feature), `identity` ([`current_worker`]).

mod batch;
mod chunk;
mod claim;
mod error;
mod events;
mod feed;
mod identity;
mod oneoff;
mod pool;
mod process;
mod progress;
mod ring;
mod stats;
mod supervisor;
mod sys;
mod transport;
pub mod wire;
mod worker;

pub use batch::{Batch, Done, Job, RecvError};
pub use error::{Death, HandshakeError, PoolError, TaskError, TaskErrorKind};
pub use feed::{
    Feed, Limits, MAX_PAYLOAD_BYTES, MAX_REORDER_BYTES, Piece, Pulled, Reorder, Source,
};
pub use identity::{WorkerInfo, current_worker};
pub use oneoff::{JoinError, OneOff};
pub use pool::{DEFAULT_MAX_MESSAGE, Engine, EngineConfig};
pub use progress::{DEFAULT_PROGRESS_INTERVAL, Progress, ProgressFn};
pub use stats::{Failures, Recorder, Stats, WorkerStats};
pub use wire::{Failure, PROTOCOL_VERSION};
pub use worker::{
    Runner, is_worker_process, refuse_init_missing, serve_if_worker, take_last_backtrace,
    take_last_panic,
};
