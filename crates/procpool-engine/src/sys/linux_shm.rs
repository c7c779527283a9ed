//! Shared memory for values given to many processes: sealed memfds, their mappings, and
//! leases (a pipe whose write end the owner holds: its read end reports hang-up once the
//! owner let go).

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::pipe::PipeFlags;

/// A memfd holding `data`, sealed for good: nobody can write, resize or unseal it.
/// `name` shows in `/proc/<pid>/fd` as `/memfd:<name>`. Nothing appears in a file
/// system; the memory goes when the last descriptor and mapping are gone.
///
/// # Errors
/// The system's error (no memory, too many open files).
pub fn sealed_file(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// A memfd of `len` zero bytes whose size is sealed (it can be written, never resized:
/// a mapping of it never faults).
///
/// # Errors
/// The system's error.
pub fn fixed_size_file(name: &str, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Identity of the file behind a descriptor: `(device, inode)`.
///
/// # Errors
/// The system's error.
pub fn file_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// A mapping of a whole memfd, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory; `Mapping` hands out no `&mut` and its users access
// writable mappings through atomics only.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps, read-only, a memfd made by [`sealed_file`] of `len` bytes, after checking
    /// that it is sealed against writes and resizing and has that size.
    ///
    /// # Errors
    /// When the descriptor is not such a file, or the system's error.
    pub fn read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        check(
            fd,
            len,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW,
        )?;
        Self::map(fd, len, ProtFlags::READ)
    }

    /// Maps, readable and writable, a memfd made by [`fixed_size_file`] of `len` bytes,
    /// after checking that its size is sealed and is `len`.
    ///
    /// # Errors
    /// When the descriptor is not such a file, or the system's error.
    pub fn read_write(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        check(fd, len, SealFlags::SHRINK | SealFlags::GROW)?;
        Self::map(fd, len, ProtFlags::READ | ProtFlags::WRITE)
    }

    fn map(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a fresh shared mapping of a whole memfd whose size is sealed at `len`
        // (checked by the caller), so no access within it faults.
        let p =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The first byte (page-aligned; dangling when the mapping is empty).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `map`; whoever borrowed from it borrowed from
            // `self`, which is going.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

fn check(fd: BorrowedFd<'_>, len: usize, seals: SealFlags) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if st.st_size as u64 != len as u64 {
        return Err(io::Error::other(format!(
            "shared memory of {} bytes where {len} were announced",
            st.st_size
        )));
    }
    let have = rustix::fs::fcntl_get_seals(fd)
        .map_err(|e| io::Error::other(format!("not a sealed memory file: {e}")))?;
    if !have.contains(seals) {
        return Err(io::Error::other(
            "shared memory is not sealed as it must be (against resizing, and for read-only \
             values against writing)",
        ));
    }
    Ok(())
}

/// A new lease: `(holder, watcher)`. The owner keeps the holder; the watcher (which may
/// be sent to other processes) reports [`released`] once every holder is closed.
///
/// # Errors
/// The system's error.
pub fn lease() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    Ok((w, r))
}

/// For each watcher, whether its lease was released (its holders are all closed).
/// Never blocks.
///
/// # Errors
/// The system's error.
pub fn released(watchers: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut fds: Vec<PollFd<'_>> = watchers
        .iter()
        .map(|w| PollFd::new(w, PollFlags::IN))
        .collect();
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fds
        .iter()
        .map(|f| {
            f.revents()
                .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
        })
        .collect())
}

/// A descriptor's duplicate (close-on-exec).
///
/// # Errors
/// The system's error.
pub fn duplicate(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_maps_read_only_and_refuses_writes() {
        let fd = sealed_file("t", b"abc").unwrap();
        let m = Mapping::read_only(fd.as_fd(), 3).unwrap();
        // SAFETY: 3 readable bytes.
        let got = unsafe { std::slice::from_raw_parts(m.as_ptr(), 3) };
        assert_eq!(got, b"abc");
        assert!(Mapping::read_write(fd.as_fd(), 3).is_err());
        assert!(Mapping::read_only(fd.as_fd(), 4).is_err());
        let mut f = std::fs::File::from(fd);
        assert!(f.write_all(b"x").is_err());
    }

    #[test]
    fn a_lease_is_released_when_its_holder_closes() {
        let (holder, watcher) = lease().unwrap();
        assert_eq!(released(&[watcher.as_fd()]).unwrap(), vec![false]);
        drop(holder);
        assert_eq!(released(&[watcher.as_fd()]).unwrap(), vec![true]);
    }

    #[test]
    fn a_fixed_size_file_is_shared_writable() {
        let fd = fixed_size_file("t", 4096).unwrap();
        let a = Mapping::read_write(fd.as_fd(), 4096).unwrap();
        let b = Mapping::read_write(fd.as_fd(), 4096).unwrap();
        // SAFETY: both map the same 4096 bytes; single-threaded test.
        unsafe {
            *a.as_ptr().add(7) = 9;
            assert_eq!(*b.as_ptr().add(7), 9);
        }
        assert!(Mapping::read_only(fd.as_fd(), 4096).is_err());
        assert!(rustix::fs::ftruncate(&fd, 8192).is_err());
    }
}
