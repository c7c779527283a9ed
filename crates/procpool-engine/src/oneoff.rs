//! A single worker process outside any pool, started for one job and joined like a
//! thread.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{HandshakeError, PoolError, TaskError, TaskErrorKind};
use crate::process::{self, SpawnOptions, WorkerProc};
use crate::ring::RingReader;
use crate::sys::{self, Ready};
use crate::transport::{FrameReader, OutQueue};
use crate::wire::{self, Down, JobFrame, Outcome, ResultFrame, Up};

/// Why joining a one-off process gave no result. Its `Debug` reads as its `Display`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The task failed (panic, death of the process, codec error, ...).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The process could not run the task at all (handshake failure).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The time given to `join_timeout` ran out; the process still runs.
    #[error("the process did not finish in time; it is still running")]
    Timeout,
}

crate::error::debug_as_display!(JoinError);

/// A process started for one job.
///
/// Dropping it kills the process if it still runs and reaps it: no zombie, no orphan.
#[derive(Debug)]
pub struct OneOff {
    proc: WorkerProc,
    reader: FrameReader,
    greeted: bool,
    killed: bool,
    result: Option<Result<Vec<u8>, JoinError>>,
    /// For async callers: who to wake when the process has news.
    watch: Option<Arc<Watch>>,
}

/// An async caller's task waiting on a one-off process, and whether a thread watches the
/// process for it.
#[derive(Debug, Default)]
struct Watch {
    waker: Mutex<Option<Waker>>,
    armed: AtomicBool,
}

impl OneOff {
    /// Starts a worker process and sends it the job.
    ///
    /// # Errors
    /// [`PoolError::Spawn`] when the process cannot be started.
    pub fn spawn(func: &[u8], payload: &[u8], max_message: usize) -> Result<OneOff, PoolError> {
        Self::spawn_with_fds(func, payload, &[], max_message)
    }

    /// Like [`spawn`](Self::spawn), with descriptors that travel with the job (see
    /// [`Job::fds`](crate::Job::fds)); the process gets duplicates, the caller keeps its
    /// own.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn); [`PoolError::Config`] for more than
    /// [`MAX_JOB_FDS`](crate::MAX_JOB_FDS) descriptors.
    pub fn spawn_with_fds(
        func: &[u8],
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        max_message: usize,
    ) -> Result<OneOff, PoolError> {
        if fds.len() > wire::MAX_JOB_FDS {
            return Err(PoolError::Config(format!(
                "{} descriptors given; at most {} may travel with one job",
                fds.len(),
                wire::MAX_JOB_FDS
            )));
        }
        if payload.len() > max_message {
            return Err(PoolError::Config(format!(
                "argument of {} bytes exceeds the limit of {max_message} bytes",
                payload.len()
            )));
        }
        let opts = SpawnOptions {
            executable: None,
            max_message,
            ..SpawnOptions::default()
        };
        let proc = process::spawn(&opts)?;
        let mut out = OutQueue::default();
        if !fds.is_empty() {
            let owned = fds
                .iter()
                .map(|f| f.try_clone_to_owned())
                .collect::<std::io::Result<Vec<OwnedFd>>>()
                .map_err(|e| PoolError::Config(format!("cannot duplicate a descriptor: {e}")))?;
            out.attach_fds(owned.into());
            let count = fds.len() as u32;
            wire::encode_down(out.buf(), &Down::Fds { seq: 1, count });
        }
        let job = JobFrame {
            seq: 1,
            func,
            payload,
        };
        wire::encode_down(out.buf(), &Down::Jobs(vec![job]));
        wire::encode_down(out.buf(), &Down::Shutdown);
        // A worker that refuses the handshake closes its end: the error then comes from
        // reading its refusal, not from this write.
        let _ = out.flush(proc.sock.as_fd());
        sys::set_nonblocking(proc.sock.as_fd(), true)?;
        // Ask the worker to ring when it publishes the result.
        RingReader::new(&proc.ctl).arm();
        Ok(OneOff {
            proc,
            reader: FrameReader::new(max_message.saturating_add(64)),
            greeted: false,
            killed: false,
            result: None,
            watch: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// Sends SIGKILL to the process (no effect once it ended). Joining afterwards gives a
    /// [`WorkerDied`](TaskErrorKind::WorkerDied) error naming SIGKILL, unless the result
    /// had already arrived.
    pub fn kill(&mut self) {
        self.killed = true;
        self.proc.kill();
    }

    /// Whether the result (or the process's end) is in.
    pub fn is_finished(&mut self) -> bool {
        self.pump(Some(Duration::ZERO));
        self.result.is_some()
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// [`JoinError::Task`] when the task failed, [`JoinError::Pool`] when the process
    /// could not run it.
    pub fn join(mut self) -> Result<Vec<u8>, JoinError> {
        while self.result.is_none() {
            self.pump(None);
        }
        self.take_result()
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    /// As [`join`](Self::join), and [`JoinError::Timeout`] when the time ran out; the
    /// process still runs and may be joined again.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, JoinError> {
        // A timeout too long for the clock (`Duration::MAX`) is as good as none.
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 32));
        while self.result.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(JoinError::Timeout);
            }
            self.pump(Some(left));
        }
        self.take_result()
    }

    /// [`join`](Self::join) for async callers: never blocks. While the process runs it
    /// returns `Pending`, and a short-lived thread waits for the process's next message
    /// or its end (the socket or the process descriptor becoming readable), then wakes
    /// the task of `cx`.
    pub fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>, JoinError>> {
        self.pump(Some(Duration::ZERO));
        if self.result.is_some() {
            return Poll::Ready(self.take_result());
        }
        let watch = self.watch.get_or_insert_with(Arc::default).clone();
        *watch.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if !watch.armed.swap(true, Ordering::SeqCst) {
            // Copies of the descriptors, owned by the thread: the process may be dropped
            // (killed and reaped) while the thread waits, which then sees it end.
            let fds = self
                .proc
                .sock
                .try_clone()
                .and_then(|s| Ok((s, self.proc.pidfd().try_clone_to_owned()?)));
            match fds {
                Ok((sock, pidfd)) => {
                    let w = watch.clone();
                    let spawned = std::thread::Builder::new()
                        .name("procpool-watch".into())
                        .spawn(move || watch_until_news(&sock, &pidfd, &w));
                    if spawned.is_err() {
                        // No thread: ask to be polled again soon instead.
                        watch.armed.store(false, Ordering::SeqCst);
                        cx.waker().wake_by_ref();
                    }
                }
                Err(_) => {
                    watch.armed.store(false, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }

    fn take_result(&mut self) -> Result<Vec<u8>, JoinError> {
        let r = self.result.take().unwrap_or(Err(JoinError::Timeout));
        self.proc.reap();
        r
    }

    /// Waits up to `timeout` for something to happen and handles it.
    fn pump(&mut self, timeout: Option<Duration>) {
        if self.result.is_some() {
            return;
        }
        let read = Ready {
            read: true,
            ..Ready::default()
        };
        let fds = [(self.proc.sock.as_fd(), read), (self.proc.pidfd(), read)];
        let mut ready = Vec::with_capacity(2);
        if sys::poll(&fds, &mut ready, timeout).is_err() {
            return;
        }
        let mut eof = false;
        loop {
            match self.reader.fill(self.proc.sock.as_fd()) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => self.handle_frames(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                    // The result cannot be received: it fails, and the process goes.
                    let size = self.reader.frame_len().unwrap_or(0) as u64;
                    self.proc.kill();
                    let kind = TaskErrorKind::OutOfMemory { size };
                    let e = TaskError::new(kind, 0, Some(self.proc.pid), 1);
                    self.result = Some(Err(JoinError::Task(e)));
                    return;
                }
                Err(_) => break,
            }
            if self.result.is_some() {
                return;
            }
        }
        self.take_from_ring();
        if eof || ready.get(1).is_some_and(|r| r.read) {
            self.handle_frames();
            self.take_from_ring();
            if self.result.is_none() {
                self.died();
            }
        }
    }

    /// Reads the result if the worker published it in the results ring.
    fn take_from_ring(&mut self) {
        if self.result.is_some() || !self.greeted {
            return;
        }
        let mut buf = Vec::new();
        let pid = self.proc.pid;
        self.result = match RingReader::new(&self.proc.ctl).pop(&mut buf) {
            Ok(false) => return,
            Ok(true) => Some(match wire::decode_result(&buf) {
                Ok(r) => outcome(pid, &r),
                Err(e) => Err(protocol(pid, e.to_string())),
            }),
            Err(e) => Some(Err(protocol(pid, e.0))),
        };
    }

    fn handle_frames(&mut self) {
        while self.result.is_none() {
            let (used, r) = match self.reader.frame() {
                Ok(None) => return,
                Ok(Some((body, used))) => (used, handle(&mut self.greeted, self.proc.pid, body)),
                Err(e) => (0, Some(Err(protocol(self.proc.pid, e.to_string())))),
            };
            self.reader.consume(used);
            if let Some(r) = r {
                if r.is_err() {
                    self.proc.kill();
                }
                self.result = Some(r);
            }
        }
    }

    fn died(&mut self) {
        let death = self.proc.reap();
        let pid = self.proc.pid;
        // Killed on purpose, the task died whatever stage it had reached.
        self.result = Some(Err(if self.greeted || self.killed {
            JoinError::Task(TaskError::new(
                TaskErrorKind::WorkerDied { death },
                0,
                Some(pid),
                1,
            ))
        } else {
            JoinError::Pool(PoolError::Handshake {
                pid: Some(pid),
                reason: HandshakeError::Exited(death),
            })
        }));
    }
}

/// Waits until the process's socket or descriptor is readable (a message, or its end),
/// then wakes the task waiting on it.
fn watch_until_news(sock: &OwnedFd, pidfd: &OwnedFd, w: &Watch) {
    let read = Ready {
        read: true,
        ..Ready::default()
    };
    let fds = [(sock.as_fd(), read), (pidfd.as_fd(), read)];
    let mut ready = Vec::with_capacity(2);
    let _ = sys::poll(&fds, &mut ready, None);
    w.armed.store(false, Ordering::SeqCst);
    if let Some(k) = w.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
        k.wake();
    }
}

/// Handles one message; `Some` once the outcome is known.
fn handle(greeted: &mut bool, pid: u32, body: &[u8]) -> Option<Result<Vec<u8>, JoinError>> {
    let msg = match wire::decode_up(body) {
        Ok(m) => m,
        Err(e) => return Some(Err(protocol(pid, e.to_string()))),
    };
    match (*greeted, msg) {
        (false, Up::Hello { .. }) => {
            *greeted = true;
            None
        }
        (false, Up::Refused(r)) => Some(Err(JoinError::Pool(PoolError::Handshake {
            pid: Some(pid),
            reason: r.into(),
        }))),
        (true, Up::Results(rs)) if rs.len() == 1 => Some(outcome(pid, &rs[0])),
        // The result waits in the ring; `pump` reads it.
        (true, Up::Doorbell) => None,
        (_, m) => Some(Err(protocol(pid, format!("unexpected {m:?}")))),
    }
}

fn outcome(pid: u32, r: &ResultFrame<'_>) -> Result<Vec<u8>, JoinError> {
    if r.seq != 1 {
        return Err(protocol(
            pid,
            format!("result for job {} instead of 1", r.seq),
        ));
    }
    match &r.outcome {
        Outcome::Ok(b) => {
            let mut v = Vec::new();
            if v.try_reserve_exact(b.len()).is_err() {
                let kind = TaskErrorKind::OutOfMemory {
                    size: b.len() as u64,
                };
                return Err(JoinError::Task(TaskError::new(kind, 0, Some(pid), 1)));
            }
            v.extend_from_slice(b);
            Ok(v)
        }
        Outcome::Err(f) => Err(JoinError::Task(TaskError::new(
            f.clone().into(),
            0,
            Some(pid),
            1,
        ))),
    }
}

fn protocol(pid: u32, message: String) -> JoinError {
    JoinError::Task(TaskError::new(
        TaskErrorKind::Protocol { message },
        0,
        Some(pid),
        1,
    ))
}
