//! `procpool._core.Counter`: one 64-bit integer in shared memory (a memfd mapped by every
//! process that holds it), changed atomically. A queue's count of waiting messages and a
//! `JoinableQueue`'s count of unfinished tasks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// An integer shared by processes.
#[pyclass(module = "procpool._core")]
#[derive(Debug)]
pub(crate) struct Counter {
    fd: OwnedFd,
    ptr: *mut AtomicI64,
}

// SAFETY: the mapping is valid for the life of the value and accessed only atomically.
unsafe impl Send for Counter {}
// SAFETY: as above.
unsafe impl Sync for Counter {}

impl Drop for Counter {
    fn drop(&mut self) {
        // SAFETY: unmaps the page mapped in `map`, used by nothing else.
        unsafe { libc::munmap(self.ptr.cast(), 4096) };
    }
}

fn map(fd: OwnedFd) -> PyResult<Counter> {
    // SAFETY: maps one page of a file at least that large (checked or set by the caller)
    // shared and read-write; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(Counter { fd, ptr: p.cast() })
}

impl Counter {
    /// Adds one if the value is below `limit`: whether it did (as `add_below`).
    pub(crate) fn add_one_below(&self, limit: i64) -> bool {
        self.cell()
            .fetch_update(SeqCst, SeqCst, |v| (v < limit).then_some(v + 1))
            .is_ok()
    }

    /// Adds `delta` (as `add`).
    pub(crate) fn add_delta(&self, delta: i64) {
        self.cell().fetch_add(delta, SeqCst);
    }

    fn cell(&self) -> &AtomicI64 {
        // SAFETY: `ptr` points at the start of a live shared page, aligned.
        unsafe { &*self.ptr }
    }
}

/// A new memfd of `size` bytes sealed at that size (close-on-exec): a peer holding it can
/// neither shrink it (which would make every process mapping it fault, SIGBUS) nor grow it.
/// Shared by the queue's counters and its ring.
pub(crate) fn sealed_memfd(name: &std::ffi::CStr, size: usize) -> std::io::Result<OwnedFd> {
    // SAFETY: plain system calls on a memfd of our own; the descriptor is owned at once.
    unsafe {
        let raw = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw);
        if libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// A duplicate of descriptor `fd` (held open by the caller for the call), checked to be a
/// memfd of `size` bytes sealed against shrinking and growing, as [`sealed_memfd`] makes;
/// else `ValueError` saying it is not `what`.
pub(crate) fn sealed_dup(fd: i32, size: usize, what: &str) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!("not a descriptor: {fd}")));
    }
    // SAFETY: the caller holds `fd` open for the call; it is duplicated at once.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    let st = rustix::fs::fstat(fd.as_fd()).map_err(std::io::Error::from)?;
    let seals = rustix::fs::fcntl_get_seals(fd.as_fd()).ok();
    let fixed = seals.is_some_and(|s| {
        s.contains(rustix::fs::SealFlags::SHRINK) && s.contains(rustix::fs::SealFlags::GROW)
    });
    if !fixed || usize::try_from(st.st_size).ok() != Some(size) {
        return Err(PyValueError::new_err(format!(
            "the descriptor is not {what} (a memfd sealed at {size} bytes)"
        )));
    }
    Ok(fd)
}

#[pymethods]
impl Counter {
    /// A new counter at 0.
    #[new]
    fn new() -> PyResult<Self> {
        map(sealed_memfd(c"procpool-counter", 4096)?)
    }

    /// The counter held by descriptor `fd` (duplicated), checked to be a counter's memfd.
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        map(sealed_dup(fd, 4096, "a procpool counter")?)
    }

    /// Its descriptor.
    fn fileno(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Adds `delta`; returns the new value.
    fn add(&self, delta: i64) -> i64 {
        self.cell().fetch_add(delta, SeqCst) + delta
    }

    /// The value.
    fn get(&self) -> i64 {
        self.cell().load(SeqCst)
    }

    /// Adds one if the value is below `limit`: whether it did.
    fn add_below(&self, limit: i64) -> bool {
        self.cell()
            .fetch_update(SeqCst, SeqCst, |v| (v < limit).then_some(v + 1))
            .is_ok()
    }

    /// Takes one away if the value is above 0: whether it did.
    fn take_one(&self) -> bool {
        self.cell()
            .fetch_update(SeqCst, SeqCst, |v| (v > 0).then_some(v - 1))
            .is_ok()
    }
}

/// `pidfd_getfd`: a duplicate of descriptor `fd` of the live process `pid` (which this
/// process may trace: same user), close-on-exec.
#[pyfunction]
pub(crate) fn _pidfd_getfd(pid: i32, fd: i32) -> PyResult<i32> {
    // SAFETY: plain system calls on values checked by the kernel; the pidfd is closed.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let r = libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, fd, 0);
        let err = std::io::Error::last_os_error();
        libc::close(pidfd as i32);
        if r < 0 {
            return Err(err.into());
        }
        Ok(r as i32)
    }
}
