//! The parent's side of a worker's data region: a sealed memfd the parent writes large
//! arguments into, mapped only as far as it is used.
//!
//! Mapping every worker's whole region up front would cost the parent its full size in
//! address space per worker (a limit such as `ulimit -v` counts a mapping whether or not
//! its pages are touched), so the mapping starts empty and grows, by `mremap`, to the
//! next power of two (at least [`MIN_WINDOW`]) that covers a write. A worker that is
//! never sent a large argument costs none; a mapping that cannot grow (the address space
//! is exhausted) makes the write fail, and the argument travels through the socket
//! instead.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, MremapFlags, ProtFlags};

use super::sealed_memfd;

/// The smallest mapping made.
pub(crate) const MIN_WINDOW: usize = 1 << 20;

/// A sealed memfd of a fixed size, mapped in this process only as far as it was written.
#[derive(Debug)]
pub(crate) struct GrowingRegion {
    fd: OwnedFd,
    len: usize,
    /// The mapping of the first `.1` bytes, once one was needed.
    map: Option<(NonNull<u8>, usize)>,
}

// SAFETY: the mapping is plain shared memory; the region is written through `&mut self`
// only.
unsafe impl Send for GrowingRegion {}
// SAFETY: as above: `&self` gives no access to the mapping.
unsafe impl Sync for GrowingRegion {}

impl GrowingRegion {
    /// Creates a region of `len` zero bytes, sealed against resizing, with nothing mapped.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        Ok(Self {
            fd: sealed_memfd(name, len)?,
            len,
            map: None,
        })
    }

    /// The descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size of the region in bytes (what the peer maps).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes mapped in this process.
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> usize {
        self.map.map_or(0, |(_, n)| n)
    }

    /// Copies `data` into the region at `offset`, growing the mapping first if needed.
    ///
    /// # Errors
    /// The mapping could not grow (out of address space); nothing was written.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(data.len()).expect("range overflows");
        assert!(end <= self.len, "write outside the shared region");
        let base = self.cover(end)?;
        // SAFETY: `cover` mapped at least `end` bytes of the memfd, whose size is sealed
        // at `len >= end`, so the pages exist. The data-region protocol gives this range
        // to the parent until the worker answers the job.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// The start of a mapping of at least the first `end` bytes.
    fn cover(&mut self, end: usize) -> io::Result<NonNull<u8>> {
        if let Some((p, n)) = self.map
            && n >= end
        {
            return Ok(p);
        }
        let want = end.next_power_of_two().clamp(MIN_WINDOW, self.len.max(1));
        let p = match self.map {
            // SAFETY: grows this region's own mapping (`p`, `n` bytes) in place or
            // elsewhere; no reference into it outlives a `write`, and the new size is
            // within the memfd's sealed size.
            Some((p, n)) => unsafe {
                rustix::mm::mremap(p.as_ptr().cast(), n, want, MremapFlags::MAYMOVE)?
            },
            // SAFETY: a fresh shared mapping of a memfd we hold, within its sealed size.
            None => unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    want,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    &self.fd,
                    0,
                )?
            },
        };
        let p = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        self.map = Some((p, want));
        Ok(p)
    }
}

impl Drop for GrowingRegion {
    fn drop(&mut self) {
        if let Some((p, n)) = self.map {
            // SAFETY: unmapping this region's own mapping; nothing points into it.
            let _ = unsafe { rustix::mm::munmap(p.as_ptr().cast(), n) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SharedRegion;

    #[test]
    fn maps_only_what_is_written_and_keeps_what_was_written_as_it_grows() {
        let mut r = GrowingRegion::create("test", 64 << 20).unwrap();
        assert_eq!(r.mapped(), 0);
        r.write(10, b"hello").unwrap();
        assert_eq!(r.mapped(), MIN_WINDOW);
        r.write(5 << 20, b"world").unwrap();
        assert_eq!(r.mapped(), 8 << 20);
        r.write((64 << 20) - 3, b"end").unwrap();
        assert_eq!(r.mapped(), 64 << 20);
        // The peer maps the whole region and sees every write.
        let fd = r.fd().try_clone_to_owned().unwrap();
        let peer = SharedRegion::open(fd, 64 << 20).unwrap();
        let mut buf = [0u8; 5];
        peer.read(10, &mut buf);
        assert_eq!(&buf, b"hello");
        peer.read(5 << 20, &mut buf);
        assert_eq!(&buf, b"world");
        let mut end = [0u8; 3];
        peer.read((64 << 20) - 3, &mut end);
        assert_eq!(&end, b"end");
    }
}
