//! A job on its way to a worker and back: the function it runs ([`func`]: shipped as
//! offsets into the executable, run by a trampoline in the worker), the layout of its
//! items and their results ([`items`]), and the results decoded in the parent
//! ([`outcome`]).

pub(crate) mod func;
pub(crate) mod items;
pub(crate) mod outcome;
