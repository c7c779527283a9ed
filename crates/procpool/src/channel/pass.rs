//! Channel ends as (part of) a task's argument: their `Serialize` attaches the end's
//! descriptor to the job being encoded and writes its slot; their `Deserialize`, in the
//! process that runs the task, takes the descriptor of that slot (see
//! [`passfd`](crate::passfd)). Anywhere else both fail with a message saying so.

use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::end::End;
use super::ends::{Receiver, Sender, not_a_channel};
use super::sys;
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
        let fd = take_socket(slot).map_err(serde::de::Error::custom)?;
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
        let fd = take_socket(slot).map_err(serde::de::Error::custom)?;
        Ok(Receiver::from_end(End::new(fd)))
    }
}

/// The descriptor of `slot`, checked to be a channel's socket.
fn take_socket(slot: u32) -> Result<OwnedFd, String> {
    let fd = passfd::take(slot)?;
    if !sys::is_seqpacket(fd.as_fd()) {
        return Err(format!(
            "descriptor slot {slot} of the job: {}",
            not_a_channel()
        ));
    }
    Ok(fd)
}
