//! The messages between the caller's rank and its agents, and their encoding.
//!
//! Every message is one MPI message of bytes; its MPI tag says which kind it is. Numbers
//! are little-endian; byte strings carry their length first. A reader checks every length
//! against what is left and reports a short or malformed message as an error, never a
//! panic.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use procpool_engine::{
    Death, EngineConfig, HandshakeError, Job, Partial, PoolError, RemoteJob, TaskError,
    TaskErrorKind,
};

/// Agent → caller, once at start-up: [`Hello`].
pub(crate) const HELLO: i32 = 1;
/// Caller → agent: start a pool ([`encode_start`]).
pub(crate) const START: i32 = 2;
/// Agent → caller: the pool started (0, its worker count) or why not (1, the error).
pub(crate) const STARTED: i32 = 3;
/// Caller → agent: jobs to run.
pub(crate) const JOBS: i32 = 4;
/// Caller → agent: end a batch's jobs (batch id, kill).
pub(crate) const CANCEL: i32 = 5;
/// Agent → caller: answers to jobs.
pub(crate) const RESULTS: i32 = 6;
/// Caller → agent: stop the pool (terminate or not).
pub(crate) const END: i32 = 7;
/// Agent → caller: the pool stopped.
pub(crate) const ENDED: i32 = 8;
/// Caller → agent: leave, the job is ending.
pub(crate) const EXIT: i32 = 9;
/// Agent → caller: the last message of an agent (everything it sent before was sent).
pub(crate) const BYE: i32 = 10;
/// Caller → agent, once, in answer to its hello: who rank 0 is ([`encode_caller`]), for
/// the agents on its host to watch its process (see `caller`).
pub(crate) const CALLER: i32 = 11;

/// Largest MPI message the backend sends (MPI counts are `int`s); answers and jobs are
/// cut into messages of at most [`PACK_BYTES`] where they can be.
pub(crate) const MAX_MESSAGE: usize = i32::MAX as usize;
/// A message larger than this is received without blocking (see `runtime::Inbox`).
pub(crate) const LARGE: usize = 1 << 20;
/// Target size of one message of many jobs or answers.
pub(crate) const PACK_BYTES: usize = 16 << 20;

/// What an agent tells the caller when it starts.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    pub(crate) fingerprint: u64,
    pub(crate) cores: usize,
    pub(crate) pid: u32,
    pub(crate) host: String,
}

/// Builds a message.
#[derive(Debug, Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).u64(v),
            None => self.u8(0),
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Reads a message.
#[derive(Debug)]
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "the message ends early ({} bytes left, {n} needed)",
                self.0.len()
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| format!("a length of {n} bytes"))?;
        self.take(n)
    }
    pub(crate) fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.u64().map(Some),
            t => Err(format!("an option with tag {t}")),
        }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn encode_hello(h: &Hello) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(h.fingerprint)
        .u64(h.cores as u64)
        .u32(h.pid)
        .str(&h.host);
    w.0
}

pub(crate) fn decode_hello(b: &[u8]) -> Result<Hello, String> {
    let mut r = Reader(b);
    Ok(Hello {
        fingerprint: r.u64()?,
        cores: usize::try_from(r.u64()?).unwrap_or(1),
        pid: r.u32()?,
        host: r.string()?,
    })
}

pub(crate) fn encode_caller(c: &super::caller::Caller) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(&c.boot_id)
        .u64(c.pid_ns.0)
        .u64(c.pid_ns.1)
        .u32(c.pid)
        .u64(c.start);
    w.0
}

pub(crate) fn decode_caller(b: &[u8]) -> Result<super::caller::Caller, String> {
    let mut r = Reader(b);
    Ok(super::caller::Caller {
        boot_id: r.string()?,
        pid_ns: (r.u64()?, r.u64()?),
        pid: r.u32()?,
        start: r.u64()?,
    })
}

/// A duration in nanoseconds, saturated (a limit past 584 years stays one).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The settings an agent's pool starts with: the caller's, with this agent's worker count.
pub(crate) fn encode_start(c: &EngineConfig, workers: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(workers as u64)
        .opt_u64(c.recycle_after)
        .u32(c.retries)
        .u64(c.max_message as u64)
        .u64(nanos(c.handshake_timeout))
        .u32(c.max_start_failures)
        .opt_u64(c.kill_grace.map(nanos))
        .u64(nanos(c.prepare_allowance));
    match &c.initializer {
        Some((f, arg)) => w.u8(1).bytes(f).bytes(arg),
        None => w.u8(0),
    };
    w.0
}

pub(crate) fn decode_start(b: &[u8]) -> Result<EngineConfig, String> {
    let mut r = Reader(b);
    let mut c = EngineConfig {
        workers: usize::try_from(r.u64()?).map_err(|_| "a worker count too large")?,
        recycle_after: r.opt_u64()?,
        retries: r.u32()?,
        max_message: usize::try_from(r.u64()?).map_err(|_| "a message limit too large")?,
        handshake_timeout: Duration::from_nanos(r.u64()?),
        max_start_failures: r.u32()?,
        kill_grace: r.opt_u64()?.map(Duration::from_nanos),
        prepare_allowance: Duration::from_nanos(r.u64()?),
        ..EngineConfig::default()
    };
    if r.u8()? == 1 {
        let f: Arc<[u8]> = r.bytes()?.into();
        c.initializer = Some((f, r.bytes()?.to_vec()));
    }
    Ok(c)
}

/// Appends one job to a JOBS message.
pub(crate) fn put_job(w: &mut Writer, j: &RemoteJob<'_>) {
    w.u64(j.tag)
        .u64(j.batch)
        .u32(j.job.weight)
        .u32(j.job.attempts)
        .opt_u64(j.job.timeout.map(nanos))
        .bytes(&j.job.func)
        .bytes(&j.job.payload);
}

/// One job of a JOBS message: its batch id, and the job (its index is the caller's tag).
pub(crate) fn get_job(r: &mut Reader<'_>) -> Result<(u64, Job), String> {
    let tag = r.u64()?;
    let batch = r.u64()?;
    let weight = r.u32()?;
    let attempts = r.u32()?;
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
        attempts,
    };
    Ok((batch, job))
}

/// Appends one answer to a RESULTS message.
#[cfg(test)]
pub(crate) fn put_answer(
    w: &mut Writer,
    tag: u64,
    nanos: u64,
    pid: Option<u32>,
    outcome: &Result<Vec<u8>, TaskError>,
) {
    put_answer_partial(w, tag, nanos, pid, outcome, None);
}

/// [`put_answer`], with the finished items of a chunk whose worker died inside it (see
/// [`Partial`]): they cross to rank 0 with the running item's error.
pub(crate) fn put_answer_partial(
    w: &mut Writer,
    tag: u64,
    nanos: u64,
    pid: Option<u32>,
    outcome: &Result<Vec<u8>, TaskError>,
    partial: Option<&Partial>,
) {
    w.u64(tag).u64(nanos).opt_u64(pid.map(u64::from));
    match outcome {
        Ok(b) => {
            w.u8(0).bytes(b);
        }
        Err(e) => {
            let tag = if partial.is_some() { 2 } else { 1 };
            w.u8(tag).u32(e.attempts()).opt_u64(e.pid().map(u64::from));
            put_kind(w, e.kind());
            if let Some(p) = partial {
                w.u32(p.finished).bytes(&p.results);
            }
        }
    }
}

/// One answer of a RESULTS message: tag, run time, worker pid, outcome.
pub(crate) type Answer = (u64, u64, Option<u32>, Result<Vec<u8>, TaskError>);

#[cfg(test)]
pub(crate) fn get_answer(r: &mut Reader<'_>, rank: i32) -> Result<Answer, String> {
    get_answer_partial(r, rank).map(|(a, _)| a)
}

/// [`get_answer`], with the finished items that came with it, if any.
pub(crate) fn get_answer_partial(
    r: &mut Reader<'_>,
    rank: i32,
) -> Result<(Answer, Option<Partial>), String> {
    let tag = r.u64()?;
    let nanos = r.u64()?;
    let pid = r.opt_u64()?.map(|p| p as u32);
    let mut partial = None;
    let outcome = match r.u8()? {
        0 => Ok(r.bytes()?.to_vec()),
        t @ (1 | 2) => {
            let attempts = r.u32()?;
            let epid = r.opt_u64()?.map(|p| p as u32);
            let kind = get_kind(r, rank)?;
            if t == 2 {
                let finished = r.u32()?;
                let results = r.bytes()?.to_vec();
                partial = Some(Partial { finished, results });
            }
            Err(TaskError::new(kind, tag, epid, attempts))
        }
        t => return Err(format!("an outcome with tag {t}")),
    };
    Ok(((tag, nanos, pid, outcome), partial))
}

fn put_death(w: &mut Writer, d: &Death) {
    match d {
        Death::Exit(c) => w.u8(0).u32(*c as u32),
        Death::Signal(s) => w.u8(1).u32(*s as u32),
        _ => w.u8(2),
    };
}

fn get_death(r: &mut Reader<'_>) -> Result<Death, String> {
    Ok(match r.u8()? {
        0 => Death::Exit(r.u32()? as i32),
        1 => Death::Signal(r.u32()? as i32),
        _ => Death::Unknown,
    })
}

fn put_opt_str(w: &mut Writer, s: &Option<String>) {
    match s {
        Some(s) => w.u8(1).str(s),
        None => w.u8(0),
    };
}

fn get_opt_str(r: &mut Reader<'_>) -> Result<Option<String>, String> {
    match r.u8()? {
        0 => Ok(None),
        _ => r.string().map(Some),
    }
}

fn put_kind(w: &mut Writer, k: &TaskErrorKind) {
    match k {
        TaskErrorKind::Panic {
            message,
            location,
            backtrace,
        } => {
            w.u8(0).str(message);
            put_opt_str(w, location);
            put_opt_str(w, backtrace);
        }
        TaskErrorKind::WorkerDied { death } => {
            w.u8(1);
            put_death(w, death);
        }
        TaskErrorKind::TimedOut { limit, ran } => {
            w.u8(2).u64(nanos(*limit)).u64(nanos(*ran));
        }
        TaskErrorKind::Cancelled => {
            w.u8(3);
        }
        TaskErrorKind::PreparationTimedOut {
            what,
            allowance,
            spent,
        } => {
            w.u8(11).str(what).u64(nanos(*allowance)).u64(nanos(*spent));
        }
        TaskErrorKind::Codec { message } => {
            w.u8(4).str(message);
        }
        TaskErrorKind::TooLarge { size, limit } => {
            w.u8(5).u64(*size).u64(*limit);
        }
        TaskErrorKind::Protocol { message } => {
            w.u8(6).str(message);
        }
        TaskErrorKind::OutOfMemory { size } => {
            w.u8(7).u64(*size);
        }
        TaskErrorKind::Terminated => {
            w.u8(8);
        }
        TaskErrorKind::PoolBroken(e) => {
            w.u8(10);
            put_pool_error(w, e);
        }
        other => {
            // A kind this backend does not know yet travels as its sentence.
            w.u8(9).str(&other.to_string());
        }
    }
}

/// How deep errors may nest in a message (a pool error inside a task error inside a
/// handshake error...): a deeper one is malformed, not a reason to exhaust the stack.
const MAX_DEPTH: u32 = 8;

fn get_kind(r: &mut Reader<'_>, rank: i32) -> Result<TaskErrorKind, String> {
    get_kind_at(r, rank, 0)
}

fn get_kind_at(r: &mut Reader<'_>, rank: i32, depth: u32) -> Result<TaskErrorKind, String> {
    if depth > MAX_DEPTH {
        return Err("errors nested too deep".into());
    }
    Ok(match r.u8()? {
        0 => TaskErrorKind::Panic {
            message: r.string()?,
            location: get_opt_str(r)?,
            backtrace: get_opt_str(r)?,
        },
        1 => TaskErrorKind::WorkerDied {
            death: get_death(r)?,
        },
        2 => TaskErrorKind::TimedOut {
            limit: Duration::from_nanos(r.u64()?),
            ran: Duration::from_nanos(r.u64()?),
        },
        3 => TaskErrorKind::Cancelled,
        4 => TaskErrorKind::Codec {
            message: r.string()?,
        },
        5 => TaskErrorKind::TooLarge {
            size: r.u64()?,
            limit: r.u64()?,
        },
        6 => TaskErrorKind::Protocol {
            message: r.string()?,
        },
        7 => TaskErrorKind::OutOfMemory { size: r.u64()? },
        8 => TaskErrorKind::Terminated,
        9 => {
            let m = r.string()?;
            TaskErrorKind::PoolBroken(PoolError::Io(Arc::new(io::Error::other(format!(
                "the pool of MPI rank {rank}: {m}"
            )))))
        }
        10 => TaskErrorKind::PoolBroken(get_pool_error_at(r, rank, depth + 1)?),
        11 => TaskErrorKind::PreparationTimedOut {
            what: r.string()?,
            allowance: Duration::from_nanos(r.u64()?),
            spent: Duration::from_nanos(r.u64()?),
        },
        t => return Err(format!("an error kind with tag {t}")),
    })
}

/// Appends a pool error, its variant kept (so that the caller can match on it as on a
/// local pool's).
pub(crate) fn put_pool_error(w: &mut Writer, e: &PoolError) {
    match e {
        PoolError::Handshake { pid, reason } => {
            w.u8(1).opt_u64(pid.map(u64::from));
            put_handshake(w, reason);
        }
        PoolError::Closed => {
            w.u8(2);
        }
        PoolError::Broken { failures, first } => {
            w.u8(3).u32(*failures);
            put_pool_error(w, first);
        }
        PoolError::NoWorker { waited, last } => {
            w.u8(4).u64(nanos(*waited));
            put_pool_error(w, last);
        }
        PoolError::Config(m) => {
            w.u8(5).str(m);
        }
        PoolError::Spawn(e) => {
            w.u8(6).str(&e.to_string());
        }
        // `Io`, and a variant this backend does not know yet, as its sentence.
        other => {
            w.u8(0).str(&other.to_string());
        }
    }
}

/// Reads a pool error of the agent of `rank`.
pub(crate) fn get_pool_error(r: &mut Reader<'_>, rank: i32) -> Result<PoolError, String> {
    get_pool_error_at(r, rank, 0)
}

fn get_pool_error_at(r: &mut Reader<'_>, rank: i32, depth: u32) -> Result<PoolError, String> {
    if depth > MAX_DEPTH {
        return Err("errors nested too deep".into());
    }
    let on_rank = |m: String| Arc::new(io::Error::other(format!("on MPI rank {rank}: {m}")));
    Ok(match r.u8()? {
        0 => PoolError::Io(on_rank(r.string()?)),
        1 => PoolError::Handshake {
            pid: r.opt_u64()?.map(|p| p as u32),
            reason: get_handshake(r, rank, depth + 1)?,
        },
        2 => PoolError::Closed,
        3 => PoolError::Broken {
            failures: r.u32()?,
            first: Box::new(get_pool_error_at(r, rank, depth + 1)?),
        },
        4 => PoolError::NoWorker {
            waited: Duration::from_nanos(r.u64()?),
            last: Box::new(get_pool_error_at(r, rank, depth + 1)?),
        },
        5 => PoolError::Config(r.string()?),
        6 => PoolError::Spawn(on_rank(r.string()?)),
        t => return Err(format!("a pool error with tag {t}")),
    })
}

fn put_handshake(w: &mut Writer, h: &HandshakeError) {
    match h {
        HandshakeError::BinaryMismatch { parent, worker } => {
            w.u8(0).u64(*parent).u64(*worker);
        }
        HandshakeError::Version { parent, worker } => {
            w.u8(1).u32(*parent).u32(*worker);
        }
        HandshakeError::InitMissing => {
            w.u8(2);
        }
        HandshakeError::Exited(d) => {
            w.u8(3);
            put_death(w, d);
        }
        HandshakeError::TimedOut(d) => {
            w.u8(4).u64(nanos(*d));
        }
        HandshakeError::Initializer(k) => {
            w.u8(5);
            put_kind(w, k);
        }
        HandshakeError::Protocol(m) => {
            w.u8(6).str(m);
        }
        other => {
            w.u8(6).str(&other.to_string());
        }
    }
}

fn get_handshake(r: &mut Reader<'_>, rank: i32, depth: u32) -> Result<HandshakeError, String> {
    Ok(match r.u8()? {
        0 => HandshakeError::BinaryMismatch {
            parent: r.u64()?,
            worker: r.u64()?,
        },
        1 => HandshakeError::Version {
            parent: r.u32()?,
            worker: r.u32()?,
        },
        2 => HandshakeError::InitMissing,
        3 => HandshakeError::Exited(get_death(r)?),
        4 => HandshakeError::TimedOut(Duration::from_nanos(r.u64()?)),
        5 => HandshakeError::Initializer(Box::new(get_kind_at(r, rank, depth + 1)?)),
        6 => HandshakeError::Protocol(r.string()?),
        t => return Err(format!("a handshake error with tag {t}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let kinds = [
            TaskErrorKind::Panic {
                message: "boom".into(),
                location: Some("a.rs:1:2".into()),
                backtrace: None,
            },
            TaskErrorKind::WorkerDied {
                death: Death::Signal(11),
            },
            TaskErrorKind::TimedOut {
                limit: Duration::from_millis(5),
                ran: Duration::from_millis(7),
            },
            TaskErrorKind::PreparationTimedOut {
                what: "decoding".into(),
                allowance: Duration::from_millis(30),
                spent: Duration::from_millis(31),
            },
            TaskErrorKind::Cancelled,
            TaskErrorKind::TooLarge { size: 9, limit: 3 },
            TaskErrorKind::Terminated,
        ];
        let mut w = Writer::default();
        put_answer(&mut w, 7, 100, Some(42), &Ok(vec![1, 2, 3]));
        for (i, k) in kinds.iter().enumerate() {
            let e = TaskError::new(k.clone(), i as u64, Some(5), 2);
            put_answer(&mut w, i as u64, 0, None, &Err(e));
        }
        let mut r = Reader(&w.0);
        let (tag, nanos, pid, out) = get_answer(&mut r, 1).unwrap();
        assert_eq!(
            (tag, nanos, pid, out.unwrap()),
            (7, 100, Some(42), vec![1, 2, 3])
        );
        for k in kinds {
            let (_, _, _, out) = get_answer(&mut r, 1).unwrap();
            let e = out.unwrap_err();
            assert_eq!(e.kind(), &k);
            assert_eq!((e.pid(), e.attempts()), (Some(5), 2));
        }
        assert!(r.is_empty());
    }

    #[test]
    fn short_messages_are_errors() {
        let mut w = Writer::default();
        put_answer(&mut w, 1, 2, None, &Ok(vec![0; 10]));
        for cut in 0..w.len() {
            assert!(get_answer(&mut Reader(&w.0[..cut]), 1).is_err());
        }
    }

    #[test]
    fn pool_errors_keep_their_variant() {
        let init = TaskErrorKind::Panic {
            message: "no".into(),
            location: None,
            backtrace: None,
        };
        let errors = [
            PoolError::Broken {
                failures: 3,
                first: Box::new(PoolError::Handshake {
                    pid: Some(4),
                    reason: HandshakeError::Initializer(Box::new(init)),
                }),
            },
            PoolError::Handshake {
                pid: None,
                reason: HandshakeError::TimedOut(Duration::from_millis(3)),
            },
            PoolError::Handshake {
                pid: Some(1),
                reason: HandshakeError::BinaryMismatch {
                    parent: 1,
                    worker: 2,
                },
            },
            PoolError::Config("bad".into()),
            PoolError::Closed,
        ];
        for e in errors {
            let mut w = Writer::default();
            put_pool_error(&mut w, &e);
            let mut r = Reader(&w.0);
            assert_eq!(get_pool_error(&mut r, 1).unwrap(), e);
            assert!(r.is_empty());
            // As a task's error too.
            let mut w = Writer::default();
            let t = TaskError::new(TaskErrorKind::PoolBroken(e.clone()), 0, None, 1);
            put_answer(&mut w, 0, 0, None, &Err(t));
            let (.., out) = get_answer(&mut Reader(&w.0), 1).unwrap();
            assert_eq!(out.unwrap_err().kind(), &TaskErrorKind::PoolBroken(e));
        }
    }

    #[test]
    fn deeply_nested_errors_are_refused_not_recursed() {
        // Broken { Broken { ... } } a million deep: a hostile rank's message.
        let mut bytes = Vec::new();
        for _ in 0..1_000_000 {
            bytes.push(3);
            bytes.extend_from_slice(&1u32.to_le_bytes());
        }
        bytes.push(2);
        let e = get_pool_error(&mut Reader(&bytes), 1).unwrap_err();
        assert!(e.contains("nested too deep"), "{e}");
    }

    /// Valid messages of every kind, to mutate.
    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut w = Writer::default();
        put_answer(&mut w, 1, 2, Some(3), &Ok(vec![1; 20]));
        let k = TaskErrorKind::PoolBroken(PoolError::Broken {
            failures: 2,
            first: Box::new(PoolError::Handshake {
                pid: Some(4),
                reason: HandshakeError::Initializer(Box::new(TaskErrorKind::Cancelled)),
            }),
        });
        put_answer(&mut w, 5, 6, None, &Err(TaskError::new(k, 5, Some(7), 1)));
        out.push(std::mem::take(&mut w.0));
        let job = Job {
            func: Arc::from(&b"func"[..]),
            payload: Arc::new(vec![9; 30]),
            index: 3,
            weight: 1,
            timeout: Some(Duration::from_millis(5)),
            fds: None,
            attempts: 0,
        };
        put_job(
            &mut w,
            &RemoteJob {
                tag: 3,
                batch: 4,
                job: &job,
            },
        );
        out.push(std::mem::take(&mut w.0));
        let c = EngineConfig {
            initializer: Some((Arc::from(&b"i"[..]), vec![1, 2])),
            ..EngineConfig::default()
        };
        out.push(encode_start(&c, 2));
        out.push(encode_hello(&Hello {
            fingerprint: 1,
            cores: 2,
            pid: 3,
            host: "h".into(),
        }));
        out
    }

    /// Every decoder of what another rank sends, on random and mutated bytes: an error
    /// or a value, never a panic (nor a huge allocation or a deep recursion).
    #[test]
    fn decoders_survive_garbage() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = seeds();
        for round in 0..30_000 {
            let mut b = if round % 4 == 0 {
                (0..rand() % 64).map(|_| rand() as u8).collect()
            } else {
                seeds[round % seeds.len()].clone()
            };
            for _ in 0..1 + rand() % 4 {
                if b.is_empty() {
                    break;
                }
                let i = (rand() as usize) % b.len();
                match rand() % 4 {
                    0 => b[i] = rand() as u8,
                    1 => b.truncate(i),
                    2 => b[i] = 0xff,
                    _ => b.insert(i, rand() as u8),
                }
            }
            let _ = decode_start(&b);
            let _ = decode_hello(&b);
            let _ = get_pool_error(&mut Reader(&b), 1);
            let mut r = Reader(&b);
            while !r.is_empty() && get_answer(&mut r, 1).is_ok() {}
            let mut r = Reader(&b);
            while !r.is_empty() && get_job(&mut r).is_ok() {}
        }
    }

    #[test]
    fn start_round_trips() {
        let c = EngineConfig {
            workers: 3,
            recycle_after: Some(10),
            retries: 2,
            initializer: Some((Arc::from(&b"f"[..]), vec![9])),
            kill_grace: Some(Duration::from_millis(3)),
            ..EngineConfig::default()
        };
        let d = decode_start(&encode_start(&c, 5)).unwrap();
        assert_eq!(d.workers, 5);
        assert_eq!(d.recycle_after, Some(10));
        assert_eq!(d.retries, 2);
        assert_eq!(d.kill_grace, c.kill_grace);
        assert_eq!(d.initializer.unwrap().1, vec![9]);
    }
}
