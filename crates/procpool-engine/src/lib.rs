//! The byte-level engine of procpool.
//!
//! This crate moves opaque byte payloads between a parent process and worker processes
//! that run the parent's own executable. It knows nothing of serde: its unit of work is a
//! [`Job`] (a function reference and an argument, both bytes) and its answer a [`Done`]
//! (result bytes or a [`TaskError`]). A front (the `procpool` crate) turns typed Rust
//! calls into jobs and implements [`Runner`] to run them in the worker.
//!
//! Parts, one per module: `wire` (the frame format), `transport` (framed I/O over a Unix
//! socket), `ring` (the shared-memory results ring), `process` (starting a worker: the
//! running executable again, or, for a front whose workers are something else, such as
//! Python interpreters forked from a template, through its [`Launcher`], with the
//! handshake checking [`EngineConfig::identity`] instead of the executable's fingerprint),
//! `worker` (the loop a worker runs), `supervisor`
//! (the thread that owns the workers and schedules jobs), `direct` (a single job sent by
//! the caller straight to an idle worker the supervisor lent out, its result waking the
//! caller through a futex word), `claim` (how a worker and the
//! supervisor agree on which jobs the worker started, so that jobs not started can be
//! taken back), `items` (a chunk's finished items recorded as they finish, so that a
//! worker's death inside it costs one item), `config` ([`EngineConfig`]), `job` ([`Job`],
//! [`Done`], and what the supervisor holds of a batch), `shared` (the queue and state
//! callers and the supervisor share, below both), `pool` (the [`Engine`] handle), `batch`
//! (a caller's stream of jobs), `bufs` (result buffers used again while calls run),
//! `chunk` (how many items go into a job), `feed` (a lazy input fed to a pool under
//! bounds, and reordering: what every front's `map`/`imap` runs on), `oneoff` (a single
//! process outside any pool), `remote` (a pool served by agents over a link, such as
//! MPI ranks, instead of local workers), `sys` (OS calls); and for watching a pool: `stats` (the
//! pool's counters, [`Engine::stats`]), `progress` (a call's [`Progress`] reported to a
//! callback), `events` (what the supervisor tells of workers' lives: counters, and
//! events with the `tracing` feature), `identity` ([`current_worker`]).

mod batch;
mod bufs;
mod chunk;
mod claim;
mod config;
mod direct;
mod error;
mod events;
mod feed;
mod identity;
mod items;
mod job;
mod oneoff;
mod pool;
mod prepare;
mod process;
mod progress;
mod remote;
mod ring;
mod shared;
mod stats;
mod supervisor;
mod sys;
mod transport;
pub mod wire;
mod worker;

pub use batch::{Batch, RecvError};
pub use bufs::recycle_result;
pub use config::{DEFAULT_MAX_MESSAGE, DEFAULT_PREPARE_ALLOWANCE, EngineConfig};
pub use error::{Death, HandshakeError, PoolError, TaskError, TaskErrorKind};
pub use feed::{
    Feed, LAZY_CHUNK_BYTES, Limits, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES_AHEAD, MAX_REORDER_BYTES,
    Piece, Pulled, Reorder, Source,
};
pub use identity::{WorkerInfo, current_worker};
pub use items::{ItemLog, Partial, items_finished};
pub use job::{Done, Job, JobFds};
pub use oneoff::{JoinError, OneOff};
pub use pool::{BOOTSTRAPPING, Engine, MAX_WORKERS, Stopper};
pub use prepare::{Preparing, preparing};
pub use process::{Launcher, on_spawner_thread};
pub use progress::{DEFAULT_PROGRESS_INTERVAL, Progress, ProgressFn};
pub use remote::{AgentLost, PREFETCH_BELOW, PREFETCH_WORK, Remote, RemoteDone, RemoteJob};
pub use stats::{AgentStats, Failures, Recorder, Stats, WorkerStats};
pub use wire::{Failure, MAX_JOB_FDS, PROTOCOL_VERSION};
pub use worker::{
    Runner, is_worker_process, refuse_init_missing, serve_if_worker, serve_launched, take_job_fds,
    take_last_backtrace, take_last_panic,
};

/// In a process started for a front (through a [`Launcher`]) that does not run the
/// worker loop: when the parent process dies, this process and its whole process group
/// are killed (as a worker's are; see `sys::linux_proc`). The process must lead its own
/// process group.
///
/// ```no_run
/// // In a child that called setsid():
/// procpool_engine::die_with_parent_group().unwrap();
/// ```
///
/// # Errors
/// When the system refuses the signal handler or `PR_SET_PDEATHSIG`.
pub fn die_with_parent_group() -> std::io::Result<()> {
    sys::kill_my_group_with_parent()
}

/// Shared memory for values given to many processes (sealed memfds, mappings, leases),
/// for fronts that build shared values on it.
pub mod shm {
    pub use crate::sys::linux_shm::{
        Mapping, duplicate, file_id, fixed_size_file, lease, released, sealed_file,
    };
}

/// Entry points for the fuzz targets (`fuzz/`): the parent's readers of the shared memory
/// a worker writes. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::atomic::Ordering::SeqCst;

    use crate::process::{
        CONTROL_LEN, CTL_CLAIM, CTL_RING_READ, CTL_RING_WRITE, RING_LEN, RING_OFFSET,
    };
    use crate::ring::RingReader;
    use crate::sys::SharedRegion;

    thread_local! {
        static CTL: SharedRegion = SharedRegion::create("fuzz", CONTROL_LEN)
            .expect("a control block to fuzz");
    }

    /// Reads a results ring whose first bytes are `ring` and whose read and write
    /// positions are `read` and `write`, as a worker could leave them: the entries read
    /// (at most 64), or the error that kills the worker.
    ///
    /// # Errors
    /// The reader's refusal of what it found.
    pub fn read_ring(read: u64, write: u64, ring: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        CTL.with(|ctl| {
            let n = ring.len().min(RING_LEN);
            ctl.write(RING_OFFSET, &ring[..n]);
            ctl.word(CTL_RING_READ).store(read, SeqCst);
            ctl.word(CTL_RING_WRITE).store(write, SeqCst);
            let r = RingReader::new(ctl);
            let mut out = Vec::new();
            let mut buf = Vec::new();
            while out.len() < 64 && r.pop(&mut buf).map_err(|e| e.0)? {
                out.push(buf.clone());
            }
            Ok(out)
        })
    }

    /// The supervisor's check of a claim word a worker left, when it takes jobs back.
    ///
    /// # Errors
    /// The refusal that kills the worker.
    pub fn check_claim(word: u64, floor: u64, last_sent: u64) -> Result<u64, String> {
        CTL.with(|ctl| {
            ctl.word(CTL_CLAIM).store(word, SeqCst);
            crate::claim::stop(ctl, floor, last_sent)
        })
    }
}
