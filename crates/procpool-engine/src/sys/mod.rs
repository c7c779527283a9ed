//! Operating-system calls, one module per OS. Only Linux is supported today; another OS
//! provides the same names in its own module.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod linux_proc;
#[cfg(target_os = "linux")]
pub(crate) mod linux_shm;
#[cfg(target_os = "linux")]
mod linux_window;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(target_os = "linux")]
pub(crate) use linux_proc::*;
#[cfg(target_os = "linux")]
pub(crate) use linux_window::*;

#[cfg(not(target_os = "linux"))]
compile_error!("procpool supports Linux only for now (see the README's platform section)");
