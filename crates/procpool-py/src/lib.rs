//! `procpool._core`: the Python front of procpool, on the byte-level engine.
//!
//! The engine decides (scheduling, supervision, wire format, shared memory); this crate
//! adapts: it pickles items into job payloads (`frame`), drives the engine's `Feed` and
//! `Reorder` for `Run` and a `Batch` for `Stream`, turns engine errors into the
//! exceptions of `procpool._errors` (`errors`), starts workers from a template process
//! (`launcher`, `procpool/_template.py`), and runs jobs in the worker (`runner`,
//! `procpool/_worker.py`).

mod args;
mod channel;
mod counter;
mod engine;
mod errors;
mod frame;
mod launcher;
#[cfg(feature = "mpi")]
mod mpi;
mod passfd;
mod py;
mod ring;
mod run;
mod runner;
mod stream;
mod sync;

use std::ffi::c_int;
use std::sync::OnceLock;

use pyo3::prelude::*;

unsafe extern "C" {
    fn PyOS_BeforeFork();
    fn PyOS_AfterFork_Parent();
    fn PyOS_AfterFork_Child();
}

/// What a worker's handshake must name: this extension's file (device, inode, size,
/// modification time), so that a worker runs the very code its parent loaded, and the
/// engine's protocol version.
///
/// In the MPI build (`_procpool_mpi`), the identity of `procpool._core`, whose workers it
/// starts (set by its module's start-up).
pub(crate) fn identity() -> u64 {
    *IDENTITY.get_or_init(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        mix(u64::from(procpool_engine::PROTOCOL_VERSION));
        if let Some((dev, ino, size, mtime)) = my_file() {
            mix(dev);
            mix(ino);
            mix(size);
            mix(mtime);
        }
        h
    })
}

/// See [`identity`].
static IDENTITY: OnceLock<u64> = OnceLock::new();

/// `(device, inode, size, mtime ns)` of the shared object holding this code.
fn my_file() -> Option<(u64, u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut info: libc::Dl_info = unsafe {
        // SAFETY: a zeroed Dl_info is a valid out-parameter.
        std::mem::zeroed()
    };
    // SAFETY: dladdr reads the address only and fills `info`.
    let ok = unsafe { libc::dladdr(identity as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr gave a NUL-terminated path that lives as long as the mapping.
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = std::path::Path::new(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
    );
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        (m.mtime() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(m.mtime_nsec() as u64),
    ))
}

/// In the template: forks a worker with `CLONE_PARENT`, so that it is a child of the
/// template's parent (the pool's process). Returns 0 in the worker, its pid in the
/// template. The template must be single-threaded.
#[pyfunction]
fn _fork() -> PyResult<i64> {
    // SAFETY: called with the GIL held, as these functions require; between them the
    // process is cloned. The template runs one thread, so no lock is held by another
    // thread at the clone. A raw clone skips the C library's fork handlers (none are
    // registered in the template) and leaves its cached thread id stale in the child,
    // which only robust and priority-inheritance mutexes would notice.
    unsafe {
        PyOS_BeforeFork();
        let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
        let pid = libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize);
        if pid == 0 {
            PyOS_AfterFork_Child();
            return Ok(0);
        }
        let err = std::io::Error::last_os_error();
        PyOS_AfterFork_Parent();
        if pid < 0 {
            return Err(err.into());
        }
        Ok(pid)
    }
}

/// In the template: dies (SIGKILL) when the thread that started it ends, and exits at
/// once if its parent is already gone.
#[pyfunction]
fn _die_with_parent(parent: u32) {
    // SAFETY: plain prctl and getppid calls.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if parent != 0 && libc::getppid() as u32 != parent {
            libc::_exit(0);
        }
    }
}

/// In a worker forked by the template: runs the worker loop; returns the exit code.
#[pyfunction]
fn _serve_worker(py: Python<'_>) -> c_int {
    runner::serve(py, identity())
}

/// The identity workers of this extension answer with (see [`identity`]).
#[pyfunction]
fn _identity() -> u64 {
    identity()
}

/// procpool's engine for Python (private: use `procpool.Pool` and
/// `procpool.ProcessPoolExecutor`). `Engine` is a pool of worker processes; `Run` one
/// call over many items; `Stream` independent calls.
#[cfg(not(feature = "mpi"))]
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    identity();
    register(m)
}

/// procpool's engine for Python over MPI (private: use `procpool.Pool(mpi=True)`,
/// `procpool.ProcessPoolExecutor(mpi=True)` and `python -m procpool.mpi`): the classes of
/// `procpool._core` built with MPI, and MPI's start-up (see `mpi`).
#[cfg(feature = "mpi")]
#[pymodule]
fn _procpool_mpi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Workers are `procpool._core`'s (the template imports it): a pool started here
    // expects their identity.
    let core: u64 = m
        .py()
        .import("procpool._core")?
        .getattr("_identity")?
        .call0()?
        .extract()?;
    let _ = IDENTITY.set(core);
    register(m)?;
    mpi::register(m)
}

fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_identity, m)?)?;
    m.add_class::<engine::Engine>()?;
    // Most workers one pool may have (the engine refuses more).
    m.add("MAX_WORKERS", procpool_engine::MAX_WORKERS)?;
    m.add("MAX_MESSAGE_SIZE", args::MAX_MESSAGE_SIZE)?;
    // Most descriptors one job may carry.
    m.add("MAX_JOB_FDS", procpool_engine::MAX_JOB_FDS)?;
    m.add_class::<run::Run>()?;
    m.add_class::<stream::Stream>()?;
    m.add_class::<channel::Channel>()?;
    m.add_class::<counter::Counter>()?;
    m.add_class::<ring::Ring>()?;
    m.add_function(wrap_pyfunction!(counter::_pidfd_getfd, m)?)?;
    m.add_function(wrap_pyfunction!(_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_serve_worker, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_launch_process, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_request_spare, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_spare_pid, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_template_pid, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_template_running, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_adopt_template, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::_die_with_parent_group, m)?)?;
    sync::register(m)?;
    Ok(())
}
