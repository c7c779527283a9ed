//! What a call's items (and a single call's argument) may be: the argument type itself,
//! a reference or a smart pointer to it, or a borrowed form whose serde encoding is the
//! same as the argument's (`&Path` for `PathBuf`, `&str` for `String`, `&[T]` for
//! `Vec<T>`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::codec::Value;

/// An item a pool call accepts for an argument of type `A`: an `A`, a reference or
/// smart pointer to one, or a borrowed form that serializes exactly as `A` does.
///
/// | argument `A` | items accepted |
/// |---|---|
/// | any | `A`, `&A`, `&mut A`, `Box<A>`, `Rc<A>`, `Arc<A>`, `Cow<A>` |
/// | `String` | `&str`, `Box<str>`, `Rc<str>`, `Arc<str>`, `Cow<str>` |
/// | `PathBuf` | `&Path`, `Box<Path>`, `Cow<Path>`, `&str`, `String` |
/// | `Vec<T>` | `&[T]`, `Box<[T]>`, `Cow<[T]>` (with `T: Clone`) |
///
/// and a `&` to each of these: the items of a borrowed collection (`pool.map(f, &paths)`
/// with `paths: Vec<&Path>` gives `&&Path` items).
///
/// Each pair makes the same serde calls (a string, or a sequence of the same elements),
/// so the worker reads the item as an `A` whatever the codec (postcard or MessagePack).
/// A borrowed form is copied into an `A` as it is encoded. Checked at compile time: an
/// item of another type does not compile. The trait is sealed.
///
/// ```
/// use std::path::{Path, PathBuf};
///
/// fn name_len(p: PathBuf) -> usize {
///     p.file_name().map_or(0, |n| n.len())
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(1).build()?;
///     let paths: Vec<&Path> = vec![Path::new("/tmp/a.txt"), Path::new("/etc/hosts")];
///     assert_eq!(pool.map(name_len, &paths)?, [5, 5]); // items are &&Path
///     assert_eq!(pool.apply(|s: String| s.len(), "four")?, 4); // &str for a String
///     let words: &[u8] = &[1, 2, 3];
///     assert_eq!(pool.apply(|v: Vec<u8>| v.len(), words)?, 3); // &[u8] for a Vec<u8>
///     Ok(())
/// }
/// ```
///
/// An item that does not encode as the argument is refused by the compiler:
///
/// ```compile_fail,E0277
/// # fn main() -> Result<(), procpool::Error> {
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// // an array is a tuple to serde, a Vec a sequence: not the same bytes
/// pool.apply(|v: Vec<u8>| v.len(), [1u8, 2, 3])?;
/// # Ok(()) }
/// ```
pub trait EncodesAs<A: Value>: sealed::Sealed<A> {}

impl<A: Value, T: sealed::Sealed<A> + ?Sized> EncodesAs<A> for T {}

pub(crate) mod sealed {
    /// The item as its argument type (the seal of [`EncodesAs`](super::EncodesAs)).
    pub trait Sealed<A> {
        /// `self` as an `A`.
        fn to_arg(&self) -> Arg<'_, A>;
    }

    /// An item as its argument type: borrowed when it holds one, else built from it.
    #[derive(Debug)]
    pub enum Arg<'a, A> {
        /// The item holds an `A`.
        Borrowed(&'a A),
        /// An `A` made from the item.
        Owned(A),
    }

    impl<A> std::ops::Deref for Arg<'_, A> {
        type Target = A;

        fn deref(&self) -> &A {
            match self {
                Arg::Borrowed(a) => a,
                Arg::Owned(a) => a,
            }
        }
    }
}

use sealed::{Arg, Sealed};

impl<A: Value> Sealed<A> for A {
    #[inline]
    fn to_arg(&self) -> Arg<'_, A> {
        Arg::Borrowed(self)
    }
}

/// References and smart pointers to an `A`, and references to those (the items of a
/// borrowed collection of them).
macro_rules! pointers {
    ($($p:ty),* $(,)?) => {$(
        impl<A: Value> Sealed<A> for $p {
            #[inline]
            fn to_arg(&self) -> Arg<'_, A> {
                Arg::Borrowed(self)
            }
        }
    )*};
}

pointers!(
    &A,
    &&A,
    &mut A,
    Box<A>,
    &Box<A>,
    Rc<A>,
    &Rc<A>,
    Arc<A>,
    &Arc<A>
);

impl<A: Value + Clone> Sealed<A> for Cow<'_, A> {
    #[inline]
    fn to_arg(&self) -> Arg<'_, A> {
        Arg::Borrowed(self)
    }
}

impl<A: Value + Clone> Sealed<A> for &Cow<'_, A> {
    #[inline]
    fn to_arg(&self) -> Arg<'_, A> {
        Arg::Borrowed(self)
    }
}

/// Borrowed forms of `$owned` (each serializes as `$owned` does), each seen as a
/// `&$unsized` and owned by `$own`.
macro_rules! borrowed_forms {
    ($owned:ty, $unsized:ty, $own:path: $($t:ty),* $(,)?) => {$(
        impl Sealed<$owned> for $t {
            #[inline]
            fn to_arg(&self) -> Arg<'_, $owned> {
                Arg::Owned($own(AsRef::<$unsized>::as_ref(self)))
            }
        }
    )*};
}

// `String` and `str` both serialize as a string.
borrowed_forms!(
    String, str, str::to_owned:
    &str, &&str, Box<str>, &Box<str>, Rc<str>, &Rc<str>, Arc<str>, &Arc<str>,
    Cow<'_, str>, &Cow<'_, str>,
);
// `PathBuf` and `Path` serialize as a string (an error if the path is not UTF-8, the
// same for both), and so does a `str`.
borrowed_forms!(
    PathBuf, Path, Path::to_path_buf:
    &Path, &&Path, Box<Path>, &Box<Path>, Cow<'_, Path>, &Cow<'_, Path>,
    &str, &&str, String, &String,
);

/// `[T]` and `Vec<T>` serialize as a sequence of their elements.
macro_rules! slices {
    ($($t:ty),* $(,)?) => {$(
        impl<T: Value + Clone> Sealed<Vec<T>> for $t {
            #[inline]
            fn to_arg(&self) -> Arg<'_, Vec<T>> {
                Arg::Owned(self.to_vec())
            }
        }
    )*};
}

slices!(
    &[T],
    &&[T],
    Box<[T]>,
    &Box<[T]>,
    Cow<'_, [T]>,
    &Cow<'_, [T]>
);

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;

    /// postcard's and MessagePack's bytes of a value.
    fn bytes<T: Serialize + ?Sized>(v: &T) -> (Vec<u8>, Vec<u8>) {
        (
            postcard::to_allocvec(v).unwrap(),
            rmp_serde::to_vec_named(v).unwrap(),
        )
    }

    #[test]
    fn each_borrowed_form_encodes_as_its_argument() {
        let s = String::from("héllo");
        assert_eq!(bytes(&s), bytes("héllo"));
        let p = PathBuf::from("/tmp/a b.txt");
        assert_eq!(bytes(&p), bytes(Path::new("/tmp/a b.txt")));
        assert_eq!(bytes(&p), bytes("/tmp/a b.txt"));
        let v = vec![1u32, 300, 70_000];
        assert_eq!(bytes(&v), bytes(&v[..]));
        let b = vec![0u8, 255, 7];
        assert_eq!(bytes(&b), bytes(&b[..]));
        // An array is a tuple to serde: not the bytes of a Vec, so not accepted.
        assert_ne!(bytes(&v).0, bytes(&[1u32, 300, 70_000]).0);
    }

    #[test]
    fn items_become_their_argument() {
        fn arg<A: Value + Clone, T: Sealed<A> + ?Sized>(t: &T) -> A {
            (*t.to_arg()).clone()
        }
        let p = Path::new("/x/y");
        assert_eq!(arg::<PathBuf, _>(&p), PathBuf::from("/x/y"));
        assert_eq!(arg::<PathBuf, _>(&&p), PathBuf::from("/x/y"));
        assert_eq!(arg::<PathBuf, _>(&"/x/y"), PathBuf::from("/x/y"));
        assert_eq!(arg::<String, _>(&"s"), "s");
        assert_eq!(arg::<String, _>(&Arc::<str>::from("s")), "s");
        assert_eq!(arg::<Vec<u8>, _>(&&[1u8, 2][..]), [1, 2]);
        assert_eq!(arg::<u64, _>(&Box::new(5u64)), 5);
    }
}
