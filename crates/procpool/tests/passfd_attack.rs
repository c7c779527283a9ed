//! Descriptors from a worker are never taken: a result that names a descriptor slot fails
//! to decode (a `Codec` error, no panic), and descriptors a task pushes up its worker's
//! socket (`SCM_RIGHTS` on a valid frame) are dropped by the parent, which keeps none.
//! Alone in its test binary, so that the parent's descriptors can be counted.

procpool::enable_test_support!();

use procpool::{Error, Fd, Pool, TaskErrorKind};
use procpool_engine::wire::{self, Up};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Written by the worker as a bare descriptor slot; read by the parent as an `Fd`.
struct Forged(u32);

impl Serialize for Forged {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("procpool::Fd", &self.0)
    }
}

impl<'de> Deserialize<'de> for Forged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Fd::deserialize(d).map(|_| Forged(0))
    }
}

/// The tests of this file one at a time (one counts the process's descriptors).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn forge(slot: u32) -> Forged {
    Forged(slot)
}

#[test]
fn a_result_naming_a_descriptor_slot_fails_to_decode_without_panic() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pool = Pool::builder().workers(1).build().unwrap();
    for slot in [0, 1, u32::MAX] {
        match pool.apply(forge, slot) {
            Err(Error::Task(t)) => match t.kind() {
                TaskErrorKind::Codec { message } => assert!(
                    message.contains("no descriptors are being received here"),
                    "{message}"
                ),
                other => panic!("unexpected error {other:?}"),
            },
            Ok(_) => panic!("a forged descriptor was accepted"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(pool.apply(|x: u32| x + 1, 1).unwrap(), 2);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The worker's socket to its parent (its one socket).
fn worker_socket() -> i32 {
    let socks: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    assert_eq!(socks.len(), 1, "one socket in the worker: {socks:?}");
    socks[0]
}

/// Sends `n` frames up the worker's socket, each a valid doorbell carrying 16 open
/// descriptors (`SCM_RIGHTS`); returns how many went.
fn push_descriptors(n: u32) -> u32 {
    let sock = worker_socket();
    let mut frame = Vec::new();
    wire::encode_up(&mut frame, &Up::Doorbell);
    let files: Vec<std::fs::File> = (0..16)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    for _ in 0..n {
        let mut control = [0u64; 64];
        let payload = std::mem::size_of_val(&fds[..]);
        // SAFETY: a msghdr over live buffers: the frame, and a control buffer with room
        // for one SCM_RIGHTS message of 16 descriptors, filled through the CMSG helpers.
        let r = unsafe {
            let mut iov = libc::iovec {
                iov_base: frame.as_ptr() as *mut _,
                iov_len: frame.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(payload as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
            libc::sendmsg(sock, &msg, 0)
        };
        if r == frame.len() as isize {
            sent += 1;
        }
    }
    sent
}

#[test]
fn descriptors_a_worker_pushes_up_are_never_kept_by_the_parent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pool = Pool::builder().workers(1).build().unwrap();
    pool.apply(|x: u32| x, 0).unwrap();
    let before = open_fds();
    let sent = pool.apply(push_descriptors, 50).unwrap();
    assert_eq!(sent, 50, "the doorbells with descriptors went up");
    // The worker goes on; the parent read the frames and kept none of the 800
    // descriptors.
    assert_eq!(pool.apply(|x: u32| x * 2, 21).unwrap(), 42);
    assert_eq!(
        open_fds(),
        before,
        "the parent kept descriptors a worker sent"
    );
}
