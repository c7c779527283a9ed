//! A task function with explicit captures: [`capture!`](crate::capture!) and
//! [`Captured`].

use std::fmt;

use crate::codec::Value;
use crate::encodes_as::EncodesAs;
use crate::encodes_as::sealed::Sealed as _;
use crate::error::Error;
use crate::handle::TaskHandle;
use crate::iter::{Imap, ImapUnordered};
use crate::pool::{Call, Pool};
use crate::process::Process;

/// A task function and the values it captured, made by [`capture!`](crate::capture!).
///
/// Each task receives a clone of the captures beside its item: the captures travel with
/// every item, encoded like it. Keep them small, or capture a [`Shared`](crate::Shared)
/// (a handle of a few bytes; the value is decoded once per worker) for large data.
///
/// Its methods mirror the pool's, with the pool (or a [`Call`] with settings such as
/// `pool.with_timeout(..)`) as their first argument.
///
/// ```
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(1).build()?;
///     let (factor, offset) = (3u64, 1u64);
///     let scale = procpool::capture!([factor, offset] |x: u64| x * factor + offset);
///     assert_eq!(scale.map(&pool, [1, 2])?, [4, 7]);
///     assert_eq!(scale.apply(&pool, 10)?, 31);
///     Ok(())
/// }
/// ```
pub struct Captured<C, A, R> {
    captures: C,
    f: fn((C, A)) -> R,
}

impl<C, A, R> fmt::Debug for Captured<C, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Captured")
            .field("captures", &std::any::type_name::<C>())
            .field("argument", &std::any::type_name::<A>())
            .finish_non_exhaustive()
    }
}

impl<C, A, R> Clone for Captured<C, A, R>
where
    C: Clone,
{
    fn clone(&self) -> Self {
        Captured {
            captures: self.captures.clone(),
            f: self.f,
        }
    }
}

impl<C, A, R> Captured<C, A, R>
where
    C: Value + Clone,
    A: Value + Clone,
    R: Value,
{
    /// `f` with its `captures`; what [`capture!`](crate::capture!) expands to.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let add = procpool::Captured::new(5u32, |(n, x): (u32, u32)| x + n);
    /// assert_eq!(add.apply(&pool, 1)?, 6);
    /// # Ok(()) }
    /// ```
    pub fn new(captures: C, f: fn((C, A)) -> R) -> Self {
        Captured { captures, f }
    }

    /// The captured values.
    ///
    /// ```
    /// let limit = 7u32;
    /// let f = procpool::capture!([limit] |x: u32| x.min(limit));
    /// assert_eq!(f.captures(), &(7,));
    /// ```
    pub fn captures(&self) -> &C {
        &self.captures
    }

    /// Each item paired with a clone of the captures.
    fn pairs<I>(&self, items: I) -> impl Iterator<Item = (C, A)> + use<C, A, R, I>
    where
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        let captures = self.captures.clone();
        items
            .into_iter()
            .map(move |item| (captures.clone(), (*item.to_arg()).clone()))
    }

    /// [`Pool::map`] with the captures.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let suffix = String::from(".txt");
    /// let name = procpool::capture!([suffix] |stem: String| stem + &suffix);
    /// assert_eq!(name.map(&pool, ["a", "b"])?, ["a.txt", "b.txt"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn map<'p>(
        &self,
        on: impl Into<Call<'p>>,
        items: impl IntoIterator<Item: EncodesAs<A>>,
    ) -> Result<Vec<R>, Error> {
        on.into().map(self.f, self.pairs(items))
    }

    /// [`Pool::imap`] with the captures.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let step = 2u64;
    /// let f = procpool::capture!([step] |x: u64| x * step);
    /// let first: Vec<u64> = f.imap(&pool, 0..).take(3).collect::<Result<_, _>>()?;
    /// assert_eq!(first, [0, 2, 4]);
    /// # Ok(()) }
    /// ```
    pub fn imap<'p, P, I>(
        &self,
        on: P,
        items: I,
    ) -> Imap<(C, A), R, impl Iterator<Item = (C, A)> + use<C, A, R, P, I>>
    where
        P: Into<Call<'p>>,
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        on.into().imap(self.f, self.pairs(items))
    }

    /// [`Pool::imap_unordered`] with the captures.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(2).build()?;
    /// let base = 10u64;
    /// let f = procpool::capture!([base] |x: u64| base + x);
    /// let mut got: Vec<(usize, u64)> = f
    ///     .imap_unordered(&pool, [1, 2])
    ///     .map(|(i, r)| r.map(|v| (i, v)))
    ///     .collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, [(0, 11), (1, 12)]);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<'p, P, I>(
        &self,
        on: P,
        items: I,
    ) -> ImapUnordered<(C, A), R, impl Iterator<Item = (C, A)> + use<C, A, R, P, I>>
    where
        P: Into<Call<'p>>,
        I: IntoIterator<Item: EncodesAs<A>>,
    {
        on.into().imap_unordered(self.f, self.pairs(items))
    }

    /// [`Pool::apply`] with the captures.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let greeting = String::from("hello");
    /// let greet = procpool::capture!([greeting] |name: String| format!("{greeting}, {name}"));
    /// assert_eq!(greet.apply(&pool, "ann")?, "hello, ann");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Pool::apply`].
    pub fn apply<'p>(&self, on: impl Into<Call<'p>>, arg: impl EncodesAs<A>) -> Result<R, Error> {
        on.into()
            .apply(self.f, (self.captures.clone(), (*arg.to_arg()).clone()))
    }

    /// [`Pool::spawn`] with the captures.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let power = 3u32;
    /// let f = procpool::capture!([power] |x: u64| x.pow(power));
    /// assert_eq!(f.spawn(&pool, 2)?.join()?, 8);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Pool::spawn`].
    pub fn spawn<'p>(
        &self,
        on: impl Into<Call<'p>>,
        arg: impl EncodesAs<A>,
    ) -> Result<TaskHandle<R>, Error> {
        on.into()
            .spawn(self.f, (self.captures.clone(), (*arg.to_arg()).clone()))
    }

    /// [`procpool::spawn`](crate::spawn) with the captures: a one-off process.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let name = String::from("job");
    /// let f = procpool::capture!([name] |n: u32| format!("{name} {n}"));
    /// assert_eq!(f.spawn_process(7)?.join()?, "job 7");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`procpool::spawn`](crate::spawn).
    pub fn spawn_process(&self, arg: impl EncodesAs<A>) -> Result<Process<R>, Error> {
        crate::spawn(self.f, (self.captures.clone(), (*arg.to_arg()).clone()))
    }
}

impl<'p> From<&'p Pool> for Call<'p> {
    fn from(pool: &'p Pool) -> Self {
        pool.call()
    }
}

/// A task function that captures values, listed explicitly: `capture!([a, b] |x: T| body)`.
///
/// Task functions are `fn(A) -> R`, so a closure that captures a local does not compile
/// (E0308, "expected fn pointer, found closure"). This macro makes the closure take the
/// captures as part of its argument instead: it expands to a [`Captured`] holding a
/// clone of each listed value, whose `map`, `imap`, `imap_unordered`, `apply`, `spawn`
/// and `spawn_process` send that clone with every item. Captures must be owned
/// [`Value`](crate::Value)s and `Clone`; the item type is written after the argument's
/// name. A local used in the body but not listed is still refused by the compiler.
///
/// ```
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(2).build()?;
///     let threshold = 10u64;
///     let label = String::from("big");
///     let tag = procpool::capture!([threshold, label] |x: u64| {
///         if x > threshold { format!("{x} {label}") } else { x.to_string() }
///     });
///     assert_eq!(tag.map(&pool, [5, 50])?, ["5", "50 big"]);
///     assert_eq!(threshold, 10); // the originals stay usable
///     Ok(())
/// }
/// ```
///
/// A return type may be written, as in a closure:
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// let words = vec!["a".to_string(), "b".to_string()];
/// let pick = procpool::capture!([words] |i: usize| -> Option<String> { words.get(i).cloned() });
/// assert_eq!(pick.map(&pool, [1, 5])?, [Some("b".to_string()), None]);
/// # Ok(()) }
/// ```
///
/// A plain capturing closure is refused:
///
/// ```compile_fail,E0308
/// # fn main() -> Result<(), procpool::Error> {
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// let factor = 3u64;
/// pool.map(|x: u64| x * factor, [1, 2])?; // expected fn pointer, found closure
/// # Ok(()) }
/// ```
///
/// and so is a local the macro was not told of:
///
/// ```compile_fail,E0308
/// let (factor, offset) = (3u64, 1u64);
/// let f = procpool::capture!([factor] |x: u64| x * factor + offset);
/// ```
#[macro_export]
macro_rules! capture {
    ([$($cap:ident),* $(,)?] |$arg:ident : $aty:ty| -> $rty:ty $body:block) => {
        $crate::Captured::new(
            ($(::std::clone::Clone::clone(&$cap),)*),
            |(($($cap,)*), $arg): (_, $aty)| -> $rty { $body },
        )
    };
    ([$($cap:ident),* $(,)?] |$arg:ident : $aty:ty| $body:expr) => {
        $crate::Captured::new(
            ($(::std::clone::Clone::clone(&$cap),)*),
            |(($($cap,)*), $arg): (_, $aty)| $body,
        )
    };
}
