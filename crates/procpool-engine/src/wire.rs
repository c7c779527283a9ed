//! The wire format between a parent and its workers.
//!
//! Every message is a frame: a little-endian `u32` body length followed by the body. The
//! body's first byte is a tag naming the message. Integers are little-endian and fixed
//! width; byte strings are a `u32` length followed by the bytes; text is UTF-8 bytes.
//!
//! Messages going down (parent to worker): [`Down`]. Messages going up: [`Up`]. Frames of
//! jobs and of results carry many items, so that many small tasks cost one system call.
//!
//! Everything the parent reads from a worker is untrusted: the decoders never panic, never
//! allocate more than the bytes they were given justify, and say what was wrong.

use std::fmt;

/// Longest message text a worker sends (a panic's message, a codec error); longer ones
/// are cut.
pub const MAX_TEXT: usize = 64 * 1024;

/// Version of this wire format; both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 3;

/// Most descriptors one job may carry.
pub const MAX_JOB_FDS: usize = 1024;

/// Bytes of the frame header (the body length).
pub const FRAME_HEADER: usize = 4;

const TAG_JOBS: u8 = 1;
const TAG_INIT: u8 = 2;
const TAG_SHUTDOWN: u8 = 3;
const TAG_SHARED_JOBS: u8 = 4;
const TAG_REVOKE: u8 = 5;
const TAG_FDS: u8 = 6;
const TAG_HELLO: u8 = 10;
const TAG_REFUSED: u8 = 11;
const TAG_INIT_DONE: u8 = 12;
const TAG_RESULTS: u8 = 13;
const TAG_DOORBELL: u8 = 14;
const TAG_REVOKED: u8 = 15;

/// What went wrong inside a worker while it ran a task (the worker is still alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The task panicked.
    Panic {
        /// The panic's message.
        message: String,
        /// `file:line:column` where it panicked, when known.
        location: Option<String>,
    },
    /// The argument could not be decoded or the result could not be encoded.
    Codec {
        /// The codec's message.
        message: String,
    },
    /// The encoded result was larger than the pool's maximum message size.
    TooLarge {
        /// Size of the encoded result in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Why a worker refused the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The worker runs another executable than its parent.
    BinaryMismatch {
        /// Fingerprint of the parent's executable, as the worker was told.
        parent: u64,
        /// Fingerprint of the worker's executable.
        worker: u64,
    },
    /// The two sides speak different protocol versions.
    Version {
        /// Version the parent speaks.
        parent: u32,
        /// Version the worker speaks.
        worker: u32,
    },
    /// The worker process never called `init()` before creating a pool of its own.
    InitMissing,
    /// Anything else, in words.
    Other(String),
}

/// The result of one job as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The task returned; its encoded result.
    Ok(&'a [u8]),
    /// The task failed inside the worker.
    Err(Failure),
}

/// One job inside a [`Down::Jobs`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFrame<'a> {
    /// The job's sequence number on this worker (strictly increasing).
    pub seq: u64,
    /// Reference of the function to run, opaque to the engine.
    pub func: &'a [u8],
    /// The encoded argument.
    pub payload: &'a [u8],
}

/// One job inside a [`Down::SharedJobs`] frame: its payload waits in the worker's
/// shared-memory data region instead of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedJobFrame<'a> {
    /// The job's sequence number on this worker (strictly increasing).
    pub seq: u64,
    /// Reference of the function to run, opaque to the engine.
    pub func: &'a [u8],
    /// Where the encoded argument starts in the data region.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// One result inside an [`Up::Results`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFrame<'a> {
    /// Sequence number of the job this answers.
    pub seq: u64,
    /// How long the job ran in the worker, in nanoseconds.
    pub nanos: u64,
    /// What it gave.
    pub outcome: Outcome<'a>,
}

/// A message from the parent to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down<'a> {
    /// Jobs to run in order.
    Jobs(Vec<JobFrame<'a>>),
    /// Jobs to run in order, whose payloads are in the data region.
    SharedJobs(Vec<SharedJobFrame<'a>>),
    /// The initializer, run once before any job.
    Init {
        /// Reference of the initializer function.
        func: &'a [u8],
        /// Its encoded argument.
        payload: &'a [u8],
    },
    /// Finish and exit.
    Shutdown,
    /// The descriptors of the job `seq`, which comes next: `count` descriptors ride with
    /// this frame (`SCM_RIGHTS`, on its first byte).
    Fds {
        /// Sequence number of the job they belong to.
        seq: u64,
        /// How many.
        count: u32,
    },
    /// The parent took back every job up to `through` that the worker had not claimed
    /// when the parent raised the stop flag (see `claim`): skip them, clear the flag and
    /// answer [`Up::Revoked`].
    Revoke {
        /// The last sequence number sent before the revocation.
        through: u64,
    },
}

/// A message from a worker to the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up<'a> {
    /// First message of a worker that accepts the handshake.
    Hello {
        /// Protocol version the worker speaks.
        version: u32,
        /// Fingerprint of the worker's executable.
        fingerprint: u64,
        /// The worker's process id.
        pid: u32,
    },
    /// First (and last) message of a worker that refuses.
    Refused(Refusal),
    /// Answer to [`Down::Init`].
    InitDone(Result<(), Failure>),
    /// Results of jobs, in the order the jobs were sent.
    Results(Vec<ResultFrame<'a>>),
    /// Results are waiting in the results ring (sent only when the parent asked for it).
    Doorbell,
    /// Answer to [`Down::Revoke`]: the revoked jobs are dropped and the worker takes new
    /// ones.
    Revoked {
        /// The `through` of the revocation answered.
        through: u64,
    },
}

/// A malformed frame. Its `Debug` reads as its `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl Failure {
    /// Cuts the message texts to [`MAX_TEXT`] bytes (on a character boundary).
    pub fn truncated(self) -> Self {
        match self {
            Failure::Panic { message, location } => Failure::Panic {
                message: cut(message),
                location: location.map(cut),
            },
            Failure::Codec { message } => Failure::Codec {
                message: cut(message),
            },
            f @ Failure::TooLarge { .. } => f,
        }
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT - 16;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [truncated]");
    }
    s
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

crate::error::debug_as_display!(WireError);

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

/// Reads fields from a frame body, checking every length against what is left.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(bad(format!(
                "truncated frame: {what} needs {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], WireError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn text(&mut self, what: &str) -> Result<String, WireError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| bad(format!("{what} is not UTF-8")))
    }
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        // Each item takes at least `min_item` bytes: a count larger than the rest of the
        // frame could hold is a lie, and must not size an allocation.
        if n > self.buf.len() / min_item.max(1) {
            return Err(bad(format!(
                "{what} claims {n} items but only {} bytes follow",
                self.buf.len()
            )));
        }
        Ok(n)
    }
    fn end(&self, what: &str) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "{} stray bytes after {what} message",
                self.buf.len()
            )))
        }
    }
}

/// Appends fields to a buffer.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes(&mut self, v: &[u8]);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.put_u32(len32(v.len()));
        self.extend_from_slice(v);
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("wire field longer than 4 GiB; the frame limit forbids it")
}

/// Starts a frame in `out`; returns the position to hand to [`end_frame`].
pub(crate) fn begin_frame(out: &mut Vec<u8>, tag: u8) -> usize {
    let at = out.len();
    out.put_u32(0);
    out.put_u8(tag);
    at
}

/// Writes the body length of the frame begun at `at`.
pub(crate) fn end_frame(out: &mut [u8], at: usize) {
    let len = len32(out.len() - at - FRAME_HEADER);
    out[at..at + FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
}

/// Bytes a job adds to a jobs frame besides its payload.
pub(crate) fn job_overhead(func: &[u8]) -> usize {
    8 + 4 + func.len() + 4
}

/// Header of a jobs frame holding `count` jobs whose encoded size is `body` bytes
/// (the sum of [`job_overhead`] and payload lengths).
pub(crate) fn put_jobs_header(out: &mut Vec<u8>, count: u32, body: usize) {
    out.put_u32(len32(1 + 4 + body));
    out.put_u8(TAG_JOBS);
    out.put_u32(count);
}

/// A job's fields up to (but not including) its payload bytes.
pub(crate) fn put_job_head(out: &mut Vec<u8>, seq: u64, func: &[u8], payload_len: usize) {
    out.put_u64(seq);
    out.put_bytes(func);
    out.put_u32(len32(payload_len));
}

/// Appends one job of a shared-jobs frame.
pub(crate) fn put_shared_job(out: &mut Vec<u8>, j: &SharedJobFrame<'_>) {
    out.put_u64(j.seq);
    out.put_bytes(j.func);
    out.put_u64(j.offset);
    out.put_u64(j.len);
}

/// Begins a shared-jobs frame of `count` jobs; finish it with [`end_frame`].
pub(crate) fn begin_shared_jobs(out: &mut Vec<u8>, count: u32) -> usize {
    let at = begin_frame(out, TAG_SHARED_JOBS);
    out.put_u32(count);
    at
}

fn put_failure(out: &mut Vec<u8>, f: &Failure) {
    match f {
        Failure::Panic { message, location } => {
            out.put_u8(0);
            out.put_bytes(message.as_bytes());
            match location {
                Some(l) => {
                    out.put_u8(1);
                    out.put_bytes(l.as_bytes());
                }
                None => out.put_u8(0),
            }
        }
        Failure::Codec { message } => {
            out.put_u8(1);
            out.put_bytes(message.as_bytes());
        }
        Failure::TooLarge { size, limit } => {
            out.put_u8(2);
            out.put_u64(*size);
            out.put_u64(*limit);
        }
    }
}

fn get_failure(r: &mut Reader<'_>) -> Result<Failure, WireError> {
    match r.u8("failure kind")? {
        0 => {
            let message = r.text("panic message")?;
            let location = match r.u8("location flag")? {
                0 => None,
                1 => Some(r.text("panic location")?),
                x => return Err(bad(format!("bad location flag {x}"))),
            };
            Ok(Failure::Panic { message, location })
        }
        1 => Ok(Failure::Codec {
            message: r.text("codec message")?,
        }),
        2 => Ok(Failure::TooLarge {
            size: r.u64("size")?,
            limit: r.u64("limit")?,
        }),
        x => Err(bad(format!("unknown failure kind {x}"))),
    }
}

/// Appends one result to a results frame begun with [`begin_frame`] and a count.
pub(crate) fn put_result(out: &mut Vec<u8>, seq: u64, nanos: u64, outcome: &Outcome<'_>) {
    out.put_u64(seq);
    out.put_u64(nanos);
    match outcome {
        Outcome::Ok(b) => {
            out.put_u8(0);
            out.put_bytes(b);
        }
        Outcome::Err(f) => {
            out.put_u8(1);
            put_failure(out, f);
        }
    }
}

/// Writes what [`put_result`] writes for a successful result of `len` bytes, up to those
/// bytes, which the caller appends next.
pub(crate) fn put_ok_head(out: &mut Vec<u8>, seq: u64, nanos: u64, len: usize) {
    out.put_u64(seq);
    out.put_u64(nanos);
    out.put_u8(0);
    out.put_u32(len32(len));
}

/// Writes a results frame holding one successful result of `len` bytes, up to those
/// bytes, which the caller sends next.
pub(crate) fn put_large_result_head(out: &mut Vec<u8>, seq: u64, nanos: u64, len: usize) {
    out.put_u32(len32(1 + 4 + 8 + 8 + 1 + 4 + len));
    out.put_u8(TAG_RESULTS);
    out.put_u32(1);
    out.put_u64(seq);
    out.put_u64(nanos);
    out.put_u8(0);
    out.put_u32(len32(len));
}

/// Begins a results frame; returns the frame position and the position of its count.
pub(crate) fn begin_results(out: &mut Vec<u8>) -> (usize, usize) {
    let at = begin_frame(out, TAG_RESULTS);
    let count_at = out.len();
    out.put_u32(0);
    (at, count_at)
}

/// Finishes a results frame holding `count` results.
pub(crate) fn end_results(out: &mut [u8], (at, count_at): (usize, usize), count: u32) {
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    end_frame(out, at);
}

/// Encodes a whole message going down, as one frame appended to `out`.
pub fn encode_down(out: &mut Vec<u8>, msg: &Down<'_>) {
    match msg {
        Down::Jobs(jobs) => {
            let body: usize = jobs
                .iter()
                .map(|j| job_overhead(j.func) + j.payload.len())
                .sum();
            put_jobs_header(out, len32(jobs.len()), body);
            for j in jobs {
                put_job_head(out, j.seq, j.func, j.payload.len());
                out.extend_from_slice(j.payload);
            }
        }
        Down::SharedJobs(jobs) => {
            let at = begin_frame(out, TAG_SHARED_JOBS);
            out.put_u32(len32(jobs.len()));
            for j in jobs {
                put_shared_job(out, j);
            }
            end_frame(out, at);
        }
        Down::Init { func, payload } => {
            let at = begin_frame(out, TAG_INIT);
            out.put_bytes(func);
            out.put_bytes(payload);
            end_frame(out, at);
        }
        Down::Shutdown => {
            let at = begin_frame(out, TAG_SHUTDOWN);
            end_frame(out, at);
        }
        Down::Fds { seq, count } => {
            let at = begin_frame(out, TAG_FDS);
            out.put_u64(*seq);
            out.put_u32(*count);
            end_frame(out, at);
        }
        Down::Revoke { through } => {
            let at = begin_frame(out, TAG_REVOKE);
            out.put_u64(*through);
            end_frame(out, at);
        }
    }
}

/// Encodes a whole message going up, as one frame appended to `out`.
pub fn encode_up(out: &mut Vec<u8>, msg: &Up<'_>) {
    match msg {
        Up::Hello {
            version,
            fingerprint,
            pid,
        } => {
            let at = begin_frame(out, TAG_HELLO);
            out.put_u32(*version);
            out.put_u64(*fingerprint);
            out.put_u32(*pid);
            end_frame(out, at);
        }
        Up::Refused(r) => {
            let at = begin_frame(out, TAG_REFUSED);
            match r {
                Refusal::BinaryMismatch { parent, worker } => {
                    out.put_u8(0);
                    out.put_u64(*parent);
                    out.put_u64(*worker);
                }
                Refusal::Version { parent, worker } => {
                    out.put_u8(1);
                    out.put_u32(*parent);
                    out.put_u32(*worker);
                }
                Refusal::InitMissing => out.put_u8(2),
                Refusal::Other(s) => {
                    out.put_u8(3);
                    out.put_bytes(s.as_bytes());
                }
            }
            end_frame(out, at);
        }
        Up::InitDone(r) => {
            let at = begin_frame(out, TAG_INIT_DONE);
            match r {
                Ok(()) => out.put_u8(0),
                Err(f) => {
                    out.put_u8(1);
                    put_failure(out, f);
                }
            }
            end_frame(out, at);
        }
        Up::Results(rs) => {
            let pos = begin_results(out);
            for r in rs {
                put_result(out, r.seq, r.nanos, &r.outcome);
            }
            end_results(out, pos, len32(rs.len()));
        }
        Up::Doorbell => {
            let at = begin_frame(out, TAG_DOORBELL);
            end_frame(out, at);
        }
        Up::Revoked { through } => {
            let at = begin_frame(out, TAG_REVOKED);
            out.put_u64(*through);
            end_frame(out, at);
        }
    }
}

/// The bytes of a successful result's head as `put_result` writes it: sequence number,
/// time, status 0, length of the result's bytes (which follow).
pub(crate) const OK_RESULT_HEAD: usize = 8 + 8 + 1 + 4;

/// The sequence number and time of a successful result whose head is `head` and whose
/// whole entry is `entry_len` bytes (as `decode_result` would read them), or `None` when
/// it is not such a result (a failure, or lengths that disagree).
pub(crate) fn ok_result_head(head: &[u8; OK_RESULT_HEAD], entry_len: usize) -> Option<(u64, u64)> {
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[17..21].try_into().expect("4 bytes")) as usize;
    (head[16] == 0 && OK_RESULT_HEAD.checked_add(len) == Some(entry_len))
        .then(|| (word(0), word(8)))
}

/// Decodes one result as written by `put_result` (an entry of the results ring).
pub fn decode_result(body: &[u8]) -> Result<ResultFrame<'_>, WireError> {
    let mut r = Reader { buf: body };
    let res = get_result(&mut r)?;
    r.end("ring entry")?;
    Ok(res)
}

fn get_result<'a>(r: &mut Reader<'a>) -> Result<ResultFrame<'a>, WireError> {
    let seq = r.u64("result seq")?;
    let nanos = r.u64("result time")?;
    let outcome = match r.u8("result status")? {
        0 => Outcome::Ok(r.bytes("result bytes")?),
        1 => Outcome::Err(get_failure(r)?),
        x => return Err(bad(format!("bad result status {x}"))),
    };
    Ok(ResultFrame {
        seq,
        nanos,
        outcome,
    })
}

/// Splits the first complete frame off `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, `Ok(Some((body, used)))` once it is
/// whole, and an error when the announced length exceeds `max_body` (checked before any
/// allocation, so a bogus length of 2^31 costs nothing).
pub fn split_frame(buf: &[u8], max_body: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(head) = buf.get(..FRAME_HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > max_body {
        return Err(bad(format!(
            "frame of {len} bytes exceeds the limit of {max_body} bytes"
        )));
    }
    if len == 0 {
        return Err(bad("empty frame"));
    }
    match buf.get(FRAME_HEADER..FRAME_HEADER + len) {
        Some(body) => Ok(Some((body, FRAME_HEADER + len))),
        None => Ok(None),
    }
}

/// Largest body of a worker's frame other than results (hello, refusal, initializer
/// outcome): these are small (workers cut long messages to [`MAX_TEXT`]), so a larger
/// length is a lie, whether the frame arrives whole or in pieces.
pub const MAX_SMALL_UP: usize = 1 << 20;

/// Checks the start of an incomplete frame from a worker, so that garbage with a plausible
/// length is refused at once instead of waited for. `in_flight` is how many jobs the
/// worker holds and `due` the sequence number of the first of them (their numbers follow
/// on); a result must be for one of them.
///
/// # Errors
/// A [`WireError`] when the bytes so far cannot begin a valid frame.
pub fn check_up_prefix(prefix: &[u8], in_flight: usize, due: Option<u64>) -> Result<(), WireError> {
    let Some(len) = prefix.get(..FRAME_HEADER) else {
        return Ok(());
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(&tag) = prefix.get(FRAME_HEADER) else {
        return Ok(());
    };
    match tag {
        TAG_HELLO | TAG_REFUSED | TAG_INIT_DONE | TAG_DOORBELL | TAG_REVOKED
            if len > MAX_SMALL_UP =>
        {
            Err(bad(format!(
                "a {len}-byte frame of kind {tag}, which is never larger than {MAX_SMALL_UP}"
            )))
        }
        TAG_HELLO | TAG_REFUSED | TAG_INIT_DONE | TAG_DOORBELL | TAG_REVOKED => Ok(()),
        TAG_RESULTS => {
            let mut r = Reader {
                buf: &prefix[FRAME_HEADER + 1..],
            };
            let Ok(count) = r.u32("count") else {
                return Ok(());
            };
            if count == 0 || count as usize > in_flight {
                return Err(bad(format!(
                    "results frame of {count} results from a worker holding {in_flight} jobs"
                )));
            }
            match (r.u64("seq"), due) {
                (Ok(seq), Some(due)) if seq < due || seq - due >= in_flight as u64 => {
                    Err(bad(format!(
                        "result for job {seq} while the worker holds {in_flight} jobs from {due}"
                    )))
                }
                _ => Ok(()),
            }
        }
        t => Err(bad(format!("unknown message tag {t} from worker"))),
    }
}

/// Decodes a frame body sent by the parent.
pub fn decode_down(body: &[u8]) -> Result<Down<'_>, WireError> {
    let mut r = Reader { buf: body };
    let msg = match r.u8("tag")? {
        TAG_JOBS => {
            let n = r.count(16, "jobs frame")?;
            let mut jobs = Vec::with_capacity(n);
            for _ in 0..n {
                let seq = r.u64("job seq")?;
                let func = r.bytes("job function")?;
                let payload = r.bytes("job payload")?;
                jobs.push(JobFrame { seq, func, payload });
            }
            Down::Jobs(jobs)
        }
        TAG_SHARED_JOBS => {
            let n = r.count(28, "shared jobs frame")?;
            let mut jobs = Vec::with_capacity(n);
            for _ in 0..n {
                jobs.push(SharedJobFrame {
                    seq: r.u64("job seq")?,
                    func: r.bytes("job function")?,
                    offset: r.u64("payload offset")?,
                    len: r.u64("payload length")?,
                });
            }
            Down::SharedJobs(jobs)
        }
        TAG_INIT => Down::Init {
            func: r.bytes("init function")?,
            payload: r.bytes("init payload")?,
        },
        TAG_SHUTDOWN => Down::Shutdown,
        TAG_REVOKE => Down::Revoke {
            through: r.u64("revoked through")?,
        },
        TAG_FDS => Down::Fds {
            seq: r.u64("descriptors' job")?,
            count: r.u32("descriptor count")?,
        },
        t => return Err(bad(format!("unknown message tag {t} from parent"))),
    };
    r.end("parent")?;
    Ok(msg)
}

/// Decodes a frame body sent by a worker.
pub fn decode_up(body: &[u8]) -> Result<Up<'_>, WireError> {
    let mut r = Reader { buf: body };
    let tag = r.u8("tag")?;
    if tag != TAG_RESULTS && body.len() > MAX_SMALL_UP {
        return Err(bad(format!(
            "a {}-byte frame of kind {tag}, which is never larger than {MAX_SMALL_UP}",
            body.len()
        )));
    }
    let msg = match tag {
        TAG_HELLO => Up::Hello {
            version: r.u32("version")?,
            fingerprint: r.u64("fingerprint")?,
            pid: r.u32("pid")?,
        },
        TAG_REFUSED => Up::Refused(match r.u8("refusal kind")? {
            0 => Refusal::BinaryMismatch {
                parent: r.u64("parent fingerprint")?,
                worker: r.u64("worker fingerprint")?,
            },
            1 => Refusal::Version {
                parent: r.u32("parent version")?,
                worker: r.u32("worker version")?,
            },
            2 => Refusal::InitMissing,
            3 => Refusal::Other(r.text("refusal")?),
            x => return Err(bad(format!("unknown refusal kind {x}"))),
        }),
        TAG_INIT_DONE => Up::InitDone(match r.u8("init status")? {
            0 => Ok(()),
            1 => Err(get_failure(&mut r)?),
            x => return Err(bad(format!("bad init status {x}"))),
        }),
        TAG_RESULTS => {
            let n = r.count(21, "results frame")?;
            let mut rs = Vec::with_capacity(n);
            for _ in 0..n {
                rs.push(get_result(&mut r)?);
            }
            Up::Results(rs)
        }
        TAG_DOORBELL => Up::Doorbell,
        TAG_REVOKED => Up::Revoked {
            through: r.u64("revoked through")?,
        },
        t => return Err(bad(format!("unknown message tag {t} from worker"))),
    };
    r.end("worker")?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_frame(buf: &[u8]) -> &[u8] {
        let (body, used) = split_frame(buf, 1 << 20).unwrap().unwrap();
        assert_eq!(used, buf.len());
        body
    }

    #[test]
    fn an_ok_head_then_its_bytes_is_the_result_put_whole() {
        for body in [&b""[..], b"x", &[7u8; 300]] {
            let mut whole = Vec::new();
            put_result(&mut whole, 42, 1_000_000_007, &Outcome::Ok(body));
            let mut parts = Vec::new();
            put_ok_head(&mut parts, 42, 1_000_000_007, body.len());
            parts.extend_from_slice(body);
            assert_eq!(parts, whole);
        }
    }

    #[test]
    fn jobs_round_trip() {
        let msg = Down::Jobs(vec![
            JobFrame {
                seq: 1,
                func: b"f",
                payload: b"abc",
            },
            JobFrame {
                seq: 2,
                func: b"",
                payload: b"",
            },
        ]);
        let mut out = Vec::new();
        encode_down(&mut out, &msg);
        assert_eq!(decode_down(one_frame(&out)).unwrap(), msg);
    }

    #[test]
    fn shared_jobs_round_trip() {
        let msg = Down::SharedJobs(vec![SharedJobFrame {
            seq: 9,
            func: b"fn",
            offset: 4096,
            len: 1 << 30,
        }]);
        let mut out = Vec::new();
        encode_down(&mut out, &msg);
        assert_eq!(decode_down(one_frame(&out)).unwrap(), msg);
    }

    #[test]
    fn descriptor_announcements_round_trip() {
        let msg = Down::Fds {
            seq: 77,
            count: MAX_JOB_FDS as u32,
        };
        let mut out = Vec::new();
        encode_down(&mut out, &msg);
        assert_eq!(decode_down(one_frame(&out)).unwrap(), msg);
        assert!(decode_down(&out[FRAME_HEADER..out.len() - 1]).is_err());
    }

    #[test]
    fn a_bad_frame_start_is_refused_before_its_body_arrives() {
        // Unknown tag with a plausible length.
        assert!(check_up_prefix(&[0x0f, 0x1e, 0x85, 0x0e, 153], 1, Some(1)).is_err());
        // Too few bytes to judge.
        assert!(check_up_prefix(&[0x0f, 0x1e], 1, Some(1)).is_ok());
        // A hello claiming megabytes.
        assert!(check_up_prefix(&[0, 0, 0, 0x10, TAG_HELLO], 0, None).is_err());
        // Results: more than held, or not the job due.
        let mut out = Vec::new();
        encode_up(
            &mut out,
            &Up::Results(vec![ResultFrame {
                seq: 7,
                nanos: 1,
                outcome: Outcome::Ok(&[0; 64]),
            }]),
        );
        let head = &out[..30];
        assert!(check_up_prefix(head, 1, Some(7)).is_ok());
        assert!(check_up_prefix(head, 0, None).is_err());
        assert!(
            check_up_prefix(head, 1, Some(6)).is_err(),
            "holds only job 6"
        );
        assert!(
            check_up_prefix(head, 2, Some(6)).is_ok(),
            "holds jobs 6 and 7"
        );
        assert!(check_up_prefix(head, 2, Some(8)).is_err());
    }

    #[test]
    fn long_texts_are_cut_and_small_frames_stay_small() {
        let f = Failure::Panic {
            message: "é".repeat(MAX_TEXT),
            location: None,
        }
        .truncated();
        let Failure::Panic { message, .. } = &f else {
            unreachable!()
        };
        assert!(message.len() <= MAX_TEXT && message.ends_with("[truncated]"));
        let mut out = Vec::new();
        encode_up(&mut out, &Up::InitDone(Err(f)));
        assert!(decode_up(one_frame(&out)).is_ok());
        let big = Up::InitDone(Err(Failure::Codec {
            message: "x".repeat(MAX_SMALL_UP),
        }));
        let mut out = Vec::new();
        encode_up(&mut out, &big);
        assert!(
            decode_up(&out[FRAME_HEADER..]).is_err(),
            "whole or in pieces: refused"
        );
        assert!(check_up_prefix(&out[..FRAME_HEADER + 1], 0, None).is_err());
    }

    #[test]
    fn huge_length_is_refused_before_allocation() {
        let mut buf = vec![0xff, 0xff, 0xff, 0x7f];
        buf.push(TAG_RESULTS);
        assert!(split_frame(&buf, 1 << 20).is_err());
    }

    #[test]
    fn lying_count_is_refused() {
        let mut out = Vec::new();
        let at = begin_frame(&mut out, TAG_RESULTS);
        out.put_u32(u32::MAX);
        end_frame(&mut out, at);
        let err = decode_up(one_frame(&out)).unwrap_err();
        assert!(err.0.contains("claims"), "{err}");
    }

    #[test]
    fn truncated_and_stray_bytes_are_errors() {
        let mut out = Vec::new();
        encode_up(
            &mut out,
            &Up::Hello {
                version: 1,
                fingerprint: 2,
                pid: 3,
            },
        );
        let body = one_frame(&out);
        assert!(decode_up(&body[..body.len() - 1]).is_err());
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(decode_up(&longer).is_err());
    }
}
