//! Channel ends that come from elsewhere. As (part of) a task's argument or a message:
//! their `Serialize` attaches the end's descriptor to the job being encoded and writes its
//! slot; their `Deserialize`, in the process that runs the task, takes the descriptor of
//! that slot (see [`passfd`](crate::passfd)); anywhere else both fail with a message
//! saying so. As a bare descriptor: `TryFrom<OwnedFd>`. Either way the descriptor is
//! checked to be that end of a procpool channel first.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::end::End;
use super::ends::{Receiver, Sender};
use super::sys::{self, Role};
use crate::passfd;

impl<T> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let slot = passfd::attach(self.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_newtype_struct("procpool::Sender", &slot)
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let slot = passfd::attach(self.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_newtype_struct("procpool::Receiver", &slot)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "procpool::Sender")]
        struct Slot(u32);
        let Slot(slot) = Slot::deserialize(d)?;
        let fd = take_socket(slot, Role::Sending).map_err(serde::de::Error::custom)?;
        let capacity = sys::send_buffer(fd.as_fd()).map_err(serde::de::Error::custom)?;
        Ok(Sender::from_end(End::new(fd), capacity))
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "procpool::Receiver")]
        struct Slot(u32);
        let Slot(slot) = Slot::deserialize(d)?;
        let fd = take_socket(slot, Role::Receiving).map_err(serde::de::Error::custom)?;
        Ok(Receiver::from_end(End::new(fd)))
    }
}

/// The descriptor of `slot`, checked to be the `role` end of a channel before it is taken
/// (a refused descriptor stays in its slot, so a second look at the same bytes, as error
/// reporting makes, gives the same answer).
fn take_socket(slot: u32, role: Role) -> Result<OwnedFd, String> {
    let peek = passfd::take_dup(slot)?;
    sys::check_end(peek.as_fd(), role).map_err(|m| format!("descriptor slot {slot}: {m}"))?;
    drop(peek);
    passfd::take(slot)
}

impl<T> TryFrom<OwnedFd> for Sender<T> {
    type Error = io::Error;

    /// Makes a sender of a descriptor of a channel's sending end that came by other means
    /// (a process started with [`std::process::Command`] that inherited it, say).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use std::os::fd::{AsFd, OwnedFd};
    /// let (tx, rx) = procpool::channel::<u8>()?;
    /// let fd: OwnedFd = tx.as_fd().try_clone_to_owned()?;
    /// let again = procpool::Sender::<u8>::try_from(fd)?;
    /// again.send(4).unwrap();
    /// assert_eq!(rx.recv().unwrap(), 4);
    /// // The receiving end is not a sending end.
    /// let e = procpool::Sender::<u8>::try_from(rx.as_fd().try_clone_to_owned()?).unwrap_err();
    /// assert!(e.to_string().contains("got its receiving end"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `fd` is not the sending end of a procpool
    /// channel; the message says what it is instead.
    fn try_from(fd: OwnedFd) -> io::Result<Self> {
        sys::check_end(fd.as_fd(), Role::Sending).map_err(not_a_channel)?;
        let capacity = sys::send_buffer(fd.as_fd())?;
        Ok(Self::from_end(End::new(fd), capacity))
    }
}

impl<T> TryFrom<OwnedFd> for Receiver<T> {
    type Error = io::Error;

    /// Makes a receiver of a descriptor of a channel's receiving end that came by other
    /// means.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use std::os::fd::{AsFd, OwnedFd};
    /// let (tx, _rx) = procpool::channel::<u8>()?;
    /// let e = procpool::Receiver::<u8>::try_from(tx.as_fd().try_clone_to_owned()?).unwrap_err();
    /// assert_eq!(
    ///     e.to_string(),
    ///     "expected the receiving end of a procpool channel, got its sending end"
    /// );
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `fd` is not the receiving end of a procpool
    /// channel (a pipe, another socket, the channel's sending end); the message says what
    /// it is instead.
    fn try_from(fd: OwnedFd) -> io::Result<Self> {
        sys::check_end(fd.as_fd(), Role::Receiving).map_err(not_a_channel)?;
        Ok(Self::from_end(End::new(fd)))
    }
}

#[cold]
fn not_a_channel(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
