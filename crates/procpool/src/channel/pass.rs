//! Channel ends as (part of) a task's argument: their `Serialize` attaches the end's
//! descriptor to the job being encoded and writes its slot; their `Deserialize`, in the
//! process that runs the task, takes the descriptor of that slot (see
//! [`passfd`](crate::passfd)). Anywhere else both fail with a message saying so.

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
