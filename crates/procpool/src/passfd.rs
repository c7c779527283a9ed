//! Descriptors that travel with a task's argument.
//!
//! Some values stand for an open file: a [`Shared`](crate::Shared) value's memory, a
//! channel's socket. Bytes alone cannot carry them to another process; the descriptor must
//! go with the job (`SCM_RIGHTS`, see the engine's `Job::fds`). A value's `Serialize` calls
//! [`attach`], which duplicates the descriptor into the list of the job being encoded and
//! returns its *slot* (its place in that list), and writes the slot into its encoding. In
//! the worker, the value's `Deserialize` reads the slot and calls [`take`] to get the
//! descriptor that arrived there.
//!
//! Both work only inside the front's own encoding of an argument (a thread-local context,
//! set while a job's payload is built, and while a worker decodes it). Anywhere else
//! (serde_json, a task's result, an initializer's argument) they fail with a message saying
//! that such a value only goes to procpool processes as (part of) a task's argument.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use procpool_engine::MAX_JOB_FDS;

thread_local! {
    /// Descriptors attached while a job's payload is encoded on this thread.
    static ENCODING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    /// Slots of descriptors attached under a key (see [`attach_keyed`]) in the current
    /// encoding: `(key, slot)`.
    static KEYED: RefCell<Vec<(u128, u32)>> = const { RefCell::new(Vec::new()) };
    /// Successful calls of `attach` and `attach_keyed` on this thread, ever.
    static REFERENCES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Descriptors of the job whose argument this thread decodes (a slot taken is `None`).
    static DECODING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// What a value holding a descriptor says when serialized outside a procpool argument.
const NOT_HERE: &str = "this value holds an open descriptor and can only be sent to procpool \
    processes, as (part of) the argument of a task (Pool::map, apply, spawn, imap, \
    procpool::spawn); it cannot be a task's result or an initializer's argument, nor be \
    serialized with another serializer";

/// While a task's argument is being encoded for a procpool process: duplicates `fd` to
/// travel with the job and returns its slot number to write into the encoding. Outside
/// such an encoding (e.g. serde_json::to_string of a value holding a channel end) it fails
/// with a message saying that this value can only be sent to procpool processes.
pub(crate) fn attach(fd: BorrowedFd<'_>) -> Result<u32, String> {
    ENCODING.with(|e| {
        let mut e = e.borrow_mut();
        let Some(list) = e.as_mut() else {
            return Err(NOT_HERE.to_string());
        };
        if list.len() >= MAX_JOB_FDS {
            return Err(format!(
                "the job would carry more than {MAX_JOB_FDS} descriptors (values holding \
                 one, such as Shared or channel ends): send fewer per task, or give a smaller \
                 chunk_size"
            ));
        }
        let dup = fd
            .try_clone_to_owned()
            .map_err(|err| format!("cannot duplicate descriptor {}: {err}", fd.as_raw_fd()))?;
        list.push(dup);
        REFERENCES.set(REFERENCES.get() + 1);
        Ok((list.len() - 1) as u32)
    })
}

/// Like [`attach`], for a descriptor that many values of one job may share: the first
/// call with `key` attaches it, later ones in the same job give the same slot. `key` must
/// name one open file for the life of the process (a shared value's id); the receiving
/// side reads such a slot with [`take_dup`].
pub(crate) fn attach_keyed(key: u128, fd: BorrowedFd<'_>) -> Result<u32, String> {
    let known = KEYED.with(|k| {
        let n = attached();
        k.borrow()
            .iter()
            .find(|(key2, slot)| *key2 == key && (*slot as usize) < n)
            .map(|(_, slot)| *slot)
    });
    if let Some(slot) = known {
        REFERENCES.set(REFERENCES.get() + 1);
        return Ok(slot);
    }
    let slot = attach(fd)?;
    KEYED.with(|k| k.borrow_mut().push((key, slot)));
    Ok(slot)
}

/// While a task's argument is being decoded: a duplicate of the descriptor in slot
/// `slot`, which stays there for other values of the job (see [`attach_keyed`]).
pub(crate) fn take_dup(slot: u32) -> Result<OwnedFd, String> {
    DECODING.with(|d| {
        let d = d.borrow();
        let Some(list) = d.as_ref() else {
            return Err(not_receiving(slot));
        };
        match list.get(slot as usize) {
            Some(Some(fd)) => fd
                .try_clone()
                .map_err(|e| format!("cannot duplicate the descriptor of slot {slot}: {e}")),
            Some(None) => Err(format!(
                "descriptor slot {slot} of the job was already taken by another value"
            )),
            None => Err(format!(
                "a value refers to descriptor slot {slot}, but the job carried {} descriptors",
                list.len()
            )),
        }
    })
}

fn not_receiving(slot: u32) -> String {
    format!(
        "a value refers to descriptor slot {slot}, but no descriptors are being received \
         here: such values only arrive as (part of) a task's argument in a procpool process"
    )
}

/// While a task's argument is being decoded in a procpool process: takes the descriptor
/// that travelled in slot `slot` (each slot can be taken once). Fails with a message if
/// there is none.
pub(crate) fn take(slot: u32) -> Result<OwnedFd, String> {
    DECODING.with(|d| {
        let mut d = d.borrow_mut();
        let Some(list) = d.as_mut() else {
            return Err(not_receiving(slot));
        };
        let n = list.len();
        match list.get_mut(slot as usize) {
            Some(s) => s.take().ok_or_else(|| {
                format!("descriptor slot {slot} of the job was already taken by another value")
            }),
            None => Err(format!(
                "a value refers to descriptor slot {slot}, but the job carried {n} descriptors"
            )),
        }
    })
}

/// An open file descriptor sent to a task, as (part of) its argument: the process that
/// runs the task gets its own descriptor for the same open file (as `dup` gives),
/// close-on-exec. The sender keeps its own.
///
/// Only procpool sends it: serializing it anywhere else (with serde_json, say, or as a
/// task's result) is an error that says so.
///
/// # Examples
///
/// ```no_run
/// use std::io::Write;
/// use std::os::fd::OwnedFd;
///
/// fn log_to(fd: procpool::Fd) -> usize {
///     let mut file = std::fs::File::from(OwnedFd::from(fd));
///     file.write(b"written by the task\n").unwrap()
/// }
///
/// procpool::init();
/// let file = std::fs::File::create("/tmp/procpool-fd-example.txt").unwrap();
/// let n = procpool::spawn(log_to, procpool::Fd::from(OwnedFd::from(file)))
///     .unwrap()
///     .join()
///     .unwrap();
/// assert_eq!(n, 20);
/// ```
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// The descriptor, borrowed.
    ///
    /// ```
    /// use std::os::fd::{AsRawFd, OwnedFd};
    ///
    /// let file = std::fs::File::open("/dev/null").unwrap();
    /// let fd = procpool::Fd::from(OwnedFd::from(file));
    /// assert!(fd.as_fd().as_raw_fd() >= 0);
    /// ```
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> Self {
        fd.0
    }
}

impl std::os::fd::AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl serde::Serialize for Fd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let slot = attach(self.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_newtype_struct("procpool::Fd", &slot)
    }
}

impl<'de> serde::Deserialize<'de> for Fd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename = "procpool::Fd")]
        struct Slot(u32);
        let Slot(slot) = Slot::deserialize(d)?;
        take(slot).map(Fd).map_err(serde::de::Error::custom)
    }
}

/// The context of one job's encoding on this thread: values encoded while it lives attach
/// their descriptors to it. Dropping it without [`finish`](Self::finish) closes them.
#[derive(Debug)]
pub(crate) struct Encoding {
    outer: Option<Vec<OwnedFd>>,
    outer_keys: Vec<(u128, u32)>,
    /// Ended (by `finish`): the drop has nothing to restore.
    ended: bool,
}

impl Encoding {
    /// Opens the context (an enclosing one is set aside until this one ends).
    pub(crate) fn begin() -> Self {
        Self::begin_with(Vec::new())
    }

    /// Opens a context whose first slots hold `fds` (those of an item encoded ahead).
    pub(crate) fn begin_with(fds: Vec<OwnedFd>) -> Self {
        let outer = ENCODING.with(|e| e.borrow_mut().replace(fds));
        let outer_keys = KEYED.with(|k| std::mem::take(&mut *k.borrow_mut()));
        Self {
            outer,
            outer_keys,
            ended: false,
        }
    }

    /// Ends the context: the descriptors attached, if any.
    pub(crate) fn finish(self) -> Option<procpool_engine::JobFds> {
        let fds = self.finish_vec();
        (!fds.is_empty()).then(|| fds.into())
    }

    /// Ends the context: the descriptors attached.
    pub(crate) fn finish_vec(mut self) -> Vec<OwnedFd> {
        self.restore()
    }

    fn restore(&mut self) -> Vec<OwnedFd> {
        if std::mem::replace(&mut self.ended, true) {
            return Vec::new();
        }
        let keys = std::mem::take(&mut self.outer_keys);
        KEYED.with(|k| *k.borrow_mut() = keys);
        let outer = self.outer.take();
        ENCODING
            .with(|e| std::mem::replace(&mut *e.borrow_mut(), outer))
            .unwrap_or_default()
    }
}

impl Drop for Encoding {
    fn drop(&mut self) {
        drop(self.restore());
    }
}

/// How many descriptors the current encoding holds (`0` outside one): a mark to
/// [`rollback`] to.
pub(crate) fn attached() -> usize {
    ENCODING.with(|e| e.borrow().as_ref().map_or(0, Vec::len))
}

/// How many times values referred to descriptors on this thread so far (a value that
/// shares another's slot counts too): an encoding that moved it holds descriptors.
pub(crate) fn references() -> u64 {
    REFERENCES.get()
}

/// Closes the descriptors attached after `mark` (the encoding that attached them was
/// discarded).
pub(crate) fn rollback(mark: usize) {
    let dropped = ENCODING.with(|e| match e.borrow_mut().as_mut() {
        Some(list) if list.len() > mark => list.split_off(mark),
        _ => Vec::new(),
    });
    KEYED.with(|k| k.borrow_mut().retain(|&(_, slot)| (slot as usize) < mark));
    drop(dropped);
}

/// Runs `f` (a decoding) with `slots` as the descriptors of the job being decoded; slots
/// taken by `f` are `None` afterwards.
pub(crate) fn decoding<T>(slots: &mut Vec<Option<OwnedFd>>, f: impl FnOnce() -> T) -> T {
    struct Back<'a> {
        slots: &'a mut Vec<Option<OwnedFd>>,
        outer: Option<Vec<Option<OwnedFd>>>,
    }
    impl Drop for Back<'_> {
        fn drop(&mut self) {
            let outer = self.outer.take();
            let mine = DECODING.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
            *self.slots = mine.unwrap_or_default();
        }
    }
    let outer = DECODING.with(|d| d.borrow_mut().replace(std::mem::take(slots)));
    let _back = Back { slots, outer };
    f()
}

/// The descriptors that came with the job this worker thread runs, as slots.
pub(crate) fn job_slots() -> Vec<Option<OwnedFd>> {
    procpool_engine::take_job_fds()
        .into_iter()
        .map(Some)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn outside_an_encoding_attach_and_take_fail_with_a_message() {
        let f = devnull();
        let e = attach(f.as_fd()).unwrap_err();
        assert!(e.contains("can only be sent to procpool processes"), "{e}");
        let e = take(0).unwrap_err();
        assert!(
            e.contains("only arrive as (part of) a task's argument"),
            "{e}"
        );
    }

    #[test]
    fn slots_count_up_roll_back_and_are_taken_once() {
        let f = devnull();
        let enc = Encoding::begin();
        assert_eq!(attach(f.as_fd()).unwrap(), 0);
        let mark = attached();
        assert_eq!(attach(f.as_fd()).unwrap(), 1);
        rollback(mark);
        assert_eq!(attach(f.as_fd()).unwrap(), 1);
        let fds = enc.finish().unwrap();
        assert_eq!(fds.len(), 2);
        // The context is gone.
        assert!(attach(f.as_fd()).is_err());

        let mut slots: Vec<Option<OwnedFd>> =
            fds.iter().map(|f| Some(f.try_clone().unwrap())).collect();
        decoding(&mut slots, || {
            assert!(take(1).is_ok());
            assert!(take(1).unwrap_err().contains("already taken"));
            assert!(take(7).unwrap_err().contains("carried 2 descriptors"));
        });
        assert!(slots[0].is_some() && slots[1].is_none());
        assert!(take(0).is_err());
    }

    #[test]
    fn a_finished_inner_encoding_leaves_the_outer_one_whole() {
        let f = devnull();
        let outer = Encoding::begin();
        attach(f.as_fd()).unwrap();
        let inner = Encoding::begin();
        attach(f.as_fd()).unwrap();
        assert_eq!(inner.finish_vec().len(), 1);
        assert_eq!(attach(f.as_fd()).unwrap(), 1);
        assert_eq!(outer.finish().unwrap().len(), 2);
    }

    #[test]
    fn keyed_descriptors_share_a_slot_per_job_and_are_read_as_duplicates() {
        let f = devnull();
        let g = devnull();
        let enc = Encoding::begin();
        assert_eq!(attach_keyed(7, f.as_fd()).unwrap(), 0);
        assert_eq!(attach_keyed(8, g.as_fd()).unwrap(), 1);
        assert_eq!(attach_keyed(7, f.as_fd()).unwrap(), 0);
        // Rolled back: the key's slot is gone with it.
        rollback(1);
        assert_eq!(attach_keyed(8, g.as_fd()).unwrap(), 1);
        let fds = enc.finish().unwrap();
        assert_eq!(fds.len(), 2);
        let enc = Encoding::begin();
        assert_eq!(attach_keyed(8, g.as_fd()).unwrap(), 0, "keys are per job");
        drop(enc);
        let mut slots: Vec<Option<OwnedFd>> =
            fds.iter().map(|f| Some(f.try_clone().unwrap())).collect();
        decoding(&mut slots, || {
            assert!(take_dup(0).is_ok());
            assert!(take_dup(0).is_ok());
            assert!(take_dup(2).is_err());
        });
        assert!(slots[0].is_some());
    }

    #[test]
    fn a_dropped_encoding_closes_its_descriptors_and_restores_the_outer_one() {
        let f = devnull();
        let outer = Encoding::begin();
        attach(f.as_fd()).unwrap();
        {
            let inner = Encoding::begin();
            assert_eq!(attach(f.as_fd()).unwrap(), 0);
            drop(inner);
        }
        assert_eq!(attached(), 1);
        assert_eq!(outer.finish().unwrap().len(), 1);
    }
}
