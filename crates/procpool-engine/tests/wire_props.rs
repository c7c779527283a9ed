//! Property tests of the wire format (`procpool_engine::wire`).
//!
//! Everything a parent reads from a worker is untrusted, so besides round trips these
//! tests feed the decoders arbitrary, truncated and lying input and check that they answer
//! with an error (never a panic) and that they allocate no more than the input justifies.
//! Allocations are measured by a counting global allocator, armed only around the call
//! under test and only on the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;

use procpool_engine::wire::{
    Down, FRAME_HEADER, Failure, JobFrame, MAX_SMALL_UP, Outcome, Refusal, ResultFrame,
    SharedJobFrame, Up, WireError, check_up_prefix, decode_down, decode_result, decode_up,
    encode_down, encode_up, split_frame,
};

// ---------------------------------------------------------------------------------------
// Allocation accounting.

/// The system allocator, noting the sizes asked for while the current thread is armed.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator may be called while thread-locals are torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(size)));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping only touches `Cell`s of this thread and never
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's guarantees about `layout` are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's guarantees about `layout` are passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`;
        // the caller's guarantees about `new_size` are passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What one measured call allocated.
#[derive(Debug, Clone, Copy)]
struct Allocated {
    /// The largest single allocation (or reallocation target), in bytes.
    largest: usize,
    /// The sum of all allocation sizes, in bytes (frees are not subtracted).
    total: usize,
}

/// Disarms the counter even when the measured call panics.
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        ARMED.with(|a| a.set(false));
    }
}

/// Runs `f`, counting the allocations it makes on this thread.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocated) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    ARMED.with(|a| a.set(true));
    let guard = Disarm;
    let r = f();
    drop(guard);
    let allocated = Allocated {
        largest: LARGEST.with(Cell::get),
        total: TOTAL.with(Cell::get),
    };
    (r, allocated)
}

/// Room for an error message (and the growth of the `String` it is formatted into).
const ERROR_SLACK: usize = 1024;

/// How many bytes a decoder may allocate in all per byte of input. A decoded item takes
/// at least 16 bytes of input and at most a few words of memory; text is copied once.
const BYTES_PER_INPUT_BYTE: usize = 8;

fn check_decoder_allocation(input_len: usize, a: Allocated) -> Result<(), TestCaseError> {
    let bound = input_len * BYTES_PER_INPUT_BYTE + ERROR_SLACK;
    prop_assert!(
        a.total <= bound,
        "decoding {input_len} bytes allocated {} bytes in all (largest {}), bound {bound}",
        a.total,
        a.largest
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Owned messages: the wire types borrow their byte strings, so strategies build these and
// the tests borrow wire messages from them.

#[derive(Debug, Clone)]
enum OwnedDown {
    Jobs(Vec<(u64, Vec<u8>, Vec<u8>)>),
    SharedJobs(Vec<(u64, Vec<u8>, u64, u64)>),
    Init { func: Vec<u8>, payload: Vec<u8> },
    Shutdown,
    Revoke(u64),
}

impl OwnedDown {
    fn msg(&self) -> Down<'_> {
        match self {
            OwnedDown::Jobs(jobs) => Down::Jobs(
                jobs.iter()
                    .map(|(seq, func, payload)| JobFrame {
                        seq: *seq,
                        func,
                        payload,
                    })
                    .collect(),
            ),
            OwnedDown::SharedJobs(jobs) => Down::SharedJobs(
                jobs.iter()
                    .map(|(seq, func, offset, len)| SharedJobFrame {
                        seq: *seq,
                        func,
                        offset: *offset,
                        len: *len,
                    })
                    .collect(),
            ),
            OwnedDown::Init { func, payload } => Down::Init { func, payload },
            OwnedDown::Shutdown => Down::Shutdown,
            OwnedDown::Revoke(through) => Down::Revoke { through: *through },
        }
    }
}

#[derive(Debug, Clone)]
enum OwnedOutcome {
    Ok(Vec<u8>),
    Err(Failure),
}

#[derive(Debug, Clone)]
enum OwnedUp {
    /// The kinds that borrow nothing.
    Plain(Up<'static>),
    Results(Vec<(u64, u64, OwnedOutcome)>),
}

impl OwnedUp {
    fn msg(&self) -> Up<'_> {
        match self {
            OwnedUp::Plain(up) => up.clone(),
            OwnedUp::Results(rs) => Up::Results(
                rs.iter()
                    .map(|(seq, nanos, outcome)| ResultFrame {
                        seq: *seq,
                        nanos: *nanos,
                        outcome: match outcome {
                            OwnedOutcome::Ok(b) => Outcome::Ok(b),
                            OwnedOutcome::Err(f) => Outcome::Err(f.clone()),
                        },
                    })
                    .collect(),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(u64::MAX), any::<u64>()]
}

fn any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), any::<u32>()]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..48)
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, so multi-byte characters cross the wire too.
    prop::collection::vec(any::<char>(), 0..12).prop_map(|cs| cs.into_iter().collect())
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        (text(), prop::option::of(text()))
            .prop_map(|(message, location)| Failure::Panic { message, location }),
        text().prop_map(|message| Failure::Codec { message }),
        (any_u64(), any_u64()).prop_map(|(size, limit)| Failure::TooLarge { size, limit }),
    ]
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        (any_u64(), any_u64())
            .prop_map(|(parent, worker)| Refusal::BinaryMismatch { parent, worker }),
        (any_u32(), any_u32()).prop_map(|(parent, worker)| Refusal::Version { parent, worker }),
        Just(Refusal::InitMissing),
        text().prop_map(Refusal::Other),
    ]
}

fn outcome() -> impl Strategy<Value = OwnedOutcome> {
    prop_oneof![
        bytes().prop_map(OwnedOutcome::Ok),
        failure().prop_map(OwnedOutcome::Err),
    ]
}

fn down() -> impl Strategy<Value = OwnedDown> {
    prop_oneof![
        prop::collection::vec((any_u64(), bytes(), bytes()), 0..6).prop_map(OwnedDown::Jobs),
        prop::collection::vec((any_u64(), bytes(), any_u64(), any_u64()), 0..6)
            .prop_map(OwnedDown::SharedJobs),
        (bytes(), bytes()).prop_map(|(func, payload)| OwnedDown::Init { func, payload }),
        Just(OwnedDown::Shutdown),
        any_u64().prop_map(OwnedDown::Revoke),
    ]
}

fn up() -> impl Strategy<Value = OwnedUp> {
    prop_oneof![
        (any_u32(), any_u64(), any_u32()).prop_map(|(version, fingerprint, pid)| {
            OwnedUp::Plain(Up::Hello {
                version,
                fingerprint,
                pid,
            })
        }),
        refusal().prop_map(|r| OwnedUp::Plain(Up::Refused(r))),
        prop::option::of(failure()).prop_map(|f| OwnedUp::Plain(Up::InitDone(match f {
            None => Ok(()),
            Some(f) => Err(f),
        }))),
        prop::collection::vec((any_u64(), any_u64(), outcome()), 0..6).prop_map(OwnedUp::Results),
        Just(OwnedUp::Plain(Up::Doorbell)),
        any_u64().prop_map(|through| OwnedUp::Plain(Up::Revoked { through })),
    ]
}

/// Either kind of message, encoded as one frame.
#[derive(Debug, Clone)]
enum Either {
    Down(OwnedDown),
    Up(OwnedUp),
}

impl Either {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Either::Down(d) => encode_down(out, &d.msg()),
            Either::Up(u) => encode_up(out, &u.msg()),
        }
    }

    /// Decodes `body` with the decoder for this message's direction.
    fn decode_err(&self, body: &[u8]) -> Option<WireError> {
        match self {
            Either::Down(_) => decode_down(body).err(),
            Either::Up(_) => decode_up(body).err(),
        }
    }
}

fn either() -> impl Strategy<Value = Either> {
    prop_oneof![down().prop_map(Either::Down), up().prop_map(Either::Up)]
}

/// The tag of every kind of message going down, learnt from the encoder.
fn down_tags() -> Vec<u8> {
    let downs = [
        Down::Jobs(Vec::new()),
        Down::SharedJobs(Vec::new()),
        Down::Init {
            func: b"",
            payload: b"",
        },
        Down::Shutdown,
        Down::Revoke { through: 7 },
    ];
    downs.iter().map(|m| body_of_down(m)[0]).collect()
}

/// The tag of every kind of message going up, learnt from the encoder.
fn up_tags() -> Vec<u8> {
    let ups = [
        Up::Hello {
            version: 0,
            fingerprint: 0,
            pid: 0,
        },
        Up::Refused(Refusal::InitMissing),
        Up::InitDone(Ok(())),
        Up::Results(Vec::new()),
        Up::Doorbell,
        Up::Revoked { through: 7 },
    ];
    ups.iter().map(|m| body_of_up(m)[0]).collect()
}

/// The tag of every kind of message.
fn tags() -> Vec<u8> {
    down_tags().into_iter().chain(up_tags()).collect()
}

/// Arbitrary bytes, sometimes starting with a valid tag so the decoders get past it.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop::sample::select(tags());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (tag, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(t, mut rest)| {
            rest.insert(0, t);
            rest
        }),
    ]
}

/// A byte, often a small one: tags, kinds and flags are small numbers.
fn small_or_any() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..4, any::<u8>()]
}

/// Starts of frames: a header then arbitrary bytes, sometimes a known tag first.
fn junk_frame() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![any::<u32>(), 0u32..64, Just(u32::MAX)];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..32),
        (
            len,
            junk().prop_map(|mut j| {
                j.truncate(32);
                j
            })
        )
            .prop_map(|(len, rest)| {
                let mut v = len.to_le_bytes().to_vec();
                v.extend_from_slice(&rest);
                v
            }),
    ]
}

/// A few edits of a byte string: (kind, where, byte), the kind being overwrite, remove or
/// insert.
fn edits() -> impl Strategy<Value = Vec<(u8, Index, u8)>> {
    prop::collection::vec((0u8..3, any::<Index>(), small_or_any()), 1..4)
}

/// Applies `edits` to `bytes`.
fn apply(edits: &[(u8, Index, u8)], bytes: &mut Vec<u8>) {
    for &(kind, at, byte) in edits {
        match kind {
            0 if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            1 if !bytes.is_empty() => {
                bytes.remove(at.index(bytes.len()));
            }
            _ => bytes.insert(at.index(bytes.len() + 1), byte),
        }
    }
}

/// Limits for `split_frame`: tiny, realistic and extreme.
fn max_body() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..64,
        Just(1usize << 20),
        Just(u32::MAX as usize),
        Just(usize::MAX),
        any::<usize>(),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers.

const LIMIT: usize = 1 << 20;

/// Splits the single frame `frame` and checks that it spans all of `frame`.
fn whole_body(frame: &[u8]) -> Result<&[u8], TestCaseError> {
    let split = split_frame(frame, LIMIT);
    let Ok(Some((body, used))) = split else {
        return Err(TestCaseError::fail(format!(
            "split_frame on a whole encoded frame gave {split:?}"
        )));
    };
    prop_assert_eq!(used, frame.len(), "frame not used whole");
    prop_assert_eq!(body, &frame[FRAME_HEADER..]);
    let announced = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    prop_assert_eq!(announced, body.len());
    Ok(body)
}

/// Body of an encoded message, e.g. to learn a tag without naming private constants.
fn body_of_up(msg: &Up<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_up(&mut out, msg);
    out[FRAME_HEADER..].to_vec()
}

/// A result as an entry of the results ring: as it stands inside a results frame (after
/// the frame's tag and count).
fn ring_entry(r: &ResultFrame<'_>) -> Vec<u8> {
    body_of_up(&Up::Results(vec![r.clone()]))[1 + 4..].to_vec()
}

fn body_of_down(msg: &Down<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_down(&mut out, msg);
    out[FRAME_HEADER..].to_vec()
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// encode_down → split_frame → decode_down gives the message back, uses every byte,
    /// appends after whatever the buffer held, and re-encodes to the same bytes.
    #[test]
    fn down_round_trip(owned in down(), prefix in bytes()) {
        let msg = owned.msg();
        let mut out = prefix.clone();
        encode_down(&mut out, &msg);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..], "encoder touched earlier bytes");
        let frame = &out[prefix.len()..];
        let body = whole_body(frame)?;
        let (decoded, allocated) = measure(|| decode_down(body));
        let decoded = decoded.map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(&decoded, &msg);
        check_decoder_allocation(body.len(), allocated)?;
        let mut again = Vec::new();
        encode_down(&mut again, &decoded);
        prop_assert_eq!(&again[..], frame);
    }

    /// encode_up → split_frame → decode_up gives the message back, uses every byte,
    /// appends after whatever the buffer held, and re-encodes to the same bytes.
    #[test]
    fn up_round_trip(owned in up(), prefix in bytes()) {
        let msg = owned.msg();
        let mut out = prefix.clone();
        encode_up(&mut out, &msg);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..], "encoder touched earlier bytes");
        let frame = &out[prefix.len()..];
        let body = whole_body(frame)?;
        let (decoded, allocated) = measure(|| decode_up(body));
        let decoded = decoded.map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(&decoded, &msg);
        check_decoder_allocation(body.len(), allocated)?;
        let mut again = Vec::new();
        encode_up(&mut again, &decoded);
        prop_assert_eq!(&again[..], frame);
    }

    /// A reader splitting frames off a stream that arrives in arbitrary pieces gets every
    /// message, in order, and nothing else.
    #[test]
    fn stream_of_frames(
        msgs in prop::collection::vec(up(), 0..6),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            encode_up(&mut stream, &m.msg());
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut received = 0; // bytes of `stream` the reader has been given
        let mut buf: Vec<u8> = Vec::new();
        let mut decoded = Vec::new();
        for cut in cuts {
            buf.extend_from_slice(&stream[received..cut]);
            received = cut;
            while let Some((body, used)) = split_frame(&buf, LIMIT)
                .map_err(|e| TestCaseError::fail(format!("{e}")))?
            {
                let msg = decode_up(body).map_err(|e| TestCaseError::fail(format!("{e}")))?;
                let mut re = Vec::new();
                encode_up(&mut re, &msg);
                decoded.push(re);
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        prop_assert_eq!(decoded.len(), msgs.len());
        prop_assert_eq!(decoded.concat(), stream);
    }

    /// Cutting a valid body short anywhere is an error, and so is a stray byte after it;
    /// cutting a valid frame short anywhere leaves split_frame waiting for more.
    #[test]
    fn truncation_is_an_error(msg in either(), cut in any::<Index>(), stray in any::<u8>()) {
        let mut frame = Vec::new();
        msg.encode(&mut frame);
        let body = whole_body(&frame)?;

        let at = cut.index(body.len());
        let (err, allocated) = measure(|| msg.decode_err(&body[..at]));
        prop_assert!(err.is_some(), "body cut to {at} of {} bytes decoded", body.len());
        check_decoder_allocation(at, allocated)?;

        let mut longer = body.to_vec();
        longer.push(stray);
        prop_assert!(msg.decode_err(&longer).is_some(), "stray byte accepted");

        let at = cut.index(frame.len());
        prop_assert_eq!(split_frame(&frame[..at], LIMIT), Ok(None));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// A valid body with a few bytes overwritten, removed or inserted never makes a
    /// decoder panic or over-allocate, and whatever it accepts re-encodes to exactly the
    /// bytes it was given (no two encodings of one message, no ignored bytes).
    #[test]
    fn mutated_frames(
        msg in either(),
        edits in edits(),
    ) {
        let mut frame = Vec::new();
        msg.encode(&mut frame);
        let mut body = frame[FRAME_HEADER..].to_vec();
        apply(&edits, &mut body);
        let ((up, down), allocated) = measure(|| (decode_up(&body), decode_down(&body)));
        check_decoder_allocation(2 * body.len(), allocated)?;
        if let Ok(m) = up {
            prop_assert_eq!(body_of_up(&m), &body[..]);
        }
        if let Ok(m) = down {
            prop_assert_eq!(body_of_down(&m), &body[..]);
        }
    }

    /// decode_up never panics on arbitrary bytes, allocates in proportion to them, and
    /// whatever it accepts re-encodes to exactly those bytes.
    #[test]
    fn decode_up_arbitrary(body in junk()) {
        let (decoded, allocated) = measure(|| decode_up(&body));
        check_decoder_allocation(body.len(), allocated)?;
        if let Ok(msg) = decoded {
            prop_assert_eq!(body_of_up(&msg), body);
        }
    }

    /// decode_down never panics on arbitrary bytes, allocates in proportion to them, and
    /// whatever it accepts re-encodes to exactly those bytes.
    #[test]
    fn decode_down_arbitrary(body in junk()) {
        let (decoded, allocated) = measure(|| decode_down(&body));
        check_decoder_allocation(body.len(), allocated)?;
        if let Ok(msg) = decoded {
            prop_assert_eq!(body_of_down(&msg), body);
        }
    }

    /// split_frame never panics, whatever the bytes and the limit, never allocates unless
    /// to word an error, and what it returns is consistent with the header.
    #[test]
    fn split_frame_arbitrary(buf in prop::collection::vec(any::<u8>(), 0..64), max in max_body()) {
        let (split, allocated) = measure(|| split_frame(&buf, max));
        match split {
            Ok(None) => {
                prop_assert_eq!(allocated.total, 0);
                if buf.len() >= FRAME_HEADER {
                    let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                    prop_assert!(len <= max && len > 0);
                    prop_assert!(buf.len() < FRAME_HEADER + len, "whole frame not split");
                }
            }
            Ok(Some((body, used))) => {
                prop_assert_eq!(allocated.total, 0);
                let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                prop_assert_eq!(body.len(), len);
                prop_assert!(len <= max && len > 0);
                prop_assert_eq!(used, FRAME_HEADER + len);
                prop_assert_eq!(body, &buf[FRAME_HEADER..used]);
            }
            Err(_) => {
                prop_assert!(allocated.largest <= ERROR_SLACK);
                prop_assert!(buf.len() >= FRAME_HEADER, "error before a whole header");
            }
        }
    }

    /// A header announcing more than the limit is refused as soon as the header is there,
    /// before any of the body (and whatever bytes follow), without sizing an allocation.
    #[test]
    fn oversized_frame_is_refused_from_its_header(
        max in 0usize..(u32::MAX as usize),
        excess in 1u64..=u64::from(u32::MAX),
        after in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let len = (max as u64 + excess).min(u64::from(u32::MAX));
        prop_assume!(len as usize > max);
        let mut buf = (len as u32).to_le_bytes().to_vec();
        let (split, allocated) = measure(|| split_frame(&buf, max));
        prop_assert!(split.is_err(), "header alone: {split:?}");
        prop_assert!(allocated.largest <= ERROR_SLACK);
        buf.extend_from_slice(&after);
        prop_assert!(split_frame(&buf, max).is_err());
    }

    /// A count of results or jobs larger than the bytes after it could hold is refused
    /// before the decoder allocates for it.
    #[test]
    fn lying_count_is_refused(
        count in prop_oneof![Just(u32::MAX), any::<u32>(), 1u32..64],
        tail in prop::collection::vec(any::<u8>(), 0..64),
        kind in 0u8..3,
    ) {
        // Tags taken from the encoder, with the count of an empty list after them; the
        // smallest item of each kind (all byte strings empty).
        let up_dir = kind == 0;
        let (mut body, min_item) = match kind {
            0 => (body_of_up(&Up::Results(Vec::new())), 21),
            1 => (body_of_down(&Down::Jobs(Vec::new())), 16),
            _ => (body_of_down(&Down::SharedJobs(Vec::new())), 28),
        };
        prop_assert_eq!(body.len(), 5);
        // Larger than the bytes that follow, in items of the smallest possible size.
        prop_assume!(count as usize > tail.len() / min_item);
        body.truncate(1);
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&tail);
        let (err, allocated) = measure(|| {
            if up_dir { decode_up(&body).err() } else { decode_down(&body).err() }
        });
        prop_assert!(err.is_some(), "count {count} with {} bytes accepted", tail.len());
        prop_assert!(
            allocated.largest <= ERROR_SLACK,
            "count {count} with {} bytes allocated {} bytes",
            tail.len(),
            allocated.largest
        );
    }
}

/// Ring entries: arbitrary bytes, or a valid entry with a few bytes overwritten, removed
/// or inserted.
fn ring_junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120),
        (any_u64(), any_u64(), outcome(), edits()).prop_map(|(seq, nanos, outcome, edits)| {
            let owned = OwnedUp::Results(vec![(seq, nanos, outcome)]);
            let msg = owned.msg();
            let Up::Results(rs) = &msg else {
                unreachable!()
            };
            let mut entry = ring_entry(&rs[0]);
            apply(&edits, &mut entry);
            entry
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// A result written as a ring entry decodes back with decode_result, using every byte;
    /// every shorter entry and a stray byte after it are errors.
    #[test]
    fn ring_entry_round_trip(
        (seq, nanos, outcome) in (any_u64(), any_u64(), outcome()),
        stray in any::<u8>(),
    ) {
        let owned = OwnedUp::Results(vec![(seq, nanos, outcome)]);
        let msg = owned.msg();
        let Up::Results(rs) = &msg else { unreachable!() };
        let entry = ring_entry(&rs[0]);
        let (decoded, allocated) = measure(|| decode_result(&entry));
        prop_assert_eq!(decoded.as_ref(), Ok(&rs[0]));
        check_decoder_allocation(entry.len(), allocated)?;
        for at in 0..entry.len() {
            prop_assert!(decode_result(&entry[..at]).is_err(), "entry cut to {} bytes", at);
        }
        let mut longer = entry.clone();
        longer.push(stray);
        prop_assert!(decode_result(&longer).is_err(), "stray byte accepted");
    }

    /// decode_result (the results ring is memory the worker writes, as untrusted as its
    /// socket) never panics on arbitrary bytes, allocates in proportion to them, and
    /// whatever it accepts re-encodes to exactly those bytes.
    #[test]
    fn decode_result_arbitrary(entry in ring_junk()) {
        let (decoded, allocated) = measure(|| decode_result(&entry));
        check_decoder_allocation(entry.len(), allocated)?;
        if let Ok(r) = decoded {
            prop_assert_eq!(ring_entry(&r), entry);
        }
    }
}

/// Arguments of `check_up_prefix` as the parent passes them: how many jobs a worker holds
/// and the sequence number of the first (none when it holds none). The jobs' numbers
/// `due..due + in_flight` all exist, so `due + in_flight - 1` fits in a `u64`; the last
/// possible jobs are included.
fn held_jobs() -> impl Strategy<Value = (usize, Option<u64>)> {
    fn held(n: usize, due: u64) -> (usize, Option<u64>) {
        let n = n.max(1);
        (n, Some(due.min(u64::MAX - (n as u64 - 1))))
    }
    prop_oneof![
        Just((0, None)),
        (1usize..8, any_u64()).prop_map(|(n, d)| held(n, d)),
        (1usize..8).prop_map(|n| held(n, u64::MAX)),
        (any::<usize>(), any_u64()).prop_map(|(n, d)| held(n, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// check_up_prefix never panics on arbitrary bytes, allocates nothing in proportion
    /// to them, and judges nothing before a tag has arrived.
    #[test]
    fn check_up_prefix_arbitrary(
        prefix in junk_frame(),
        (in_flight, due) in held_jobs(),
    ) {
        let (r, allocated) = measure(|| check_up_prefix(&prefix, in_flight, due));
        // Words of an error at most (even on success, it words the error of a field not
        // there yet, and drops it).
        prop_assert!(allocated.largest <= ERROR_SLACK);
        if r.is_err() {
            prop_assert!(prefix.len() > FRAME_HEADER, "refused before the tag");
        }
    }

    /// check_up_prefix never panics on the start of a results frame with a small count,
    /// whatever the sequence number, and with the jobs held at their extremes.
    #[test]
    fn check_up_prefix_on_results_starts(
        len in any::<u32>(),
        count in 0u32..8,
        seq in any_u64(),
        cut in any::<Index>(),
        (in_flight, due) in held_jobs(),
    ) {
        let tag = body_of_up(&Up::Results(Vec::new()))[0];
        let mut prefix = len.to_le_bytes().to_vec();
        prefix.push(tag);
        prefix.extend_from_slice(&count.to_le_bytes());
        prefix.extend_from_slice(&seq.to_le_bytes());
        let at = FRAME_HEADER + 1 + cut.index(prefix.len() - FRAME_HEADER);
        let _ = check_up_prefix(&prefix[..at], in_flight, due);
    }

    /// No start of a valid frame from a worker is refused, given the jobs it holds: the
    /// check refuses only what cannot become a valid frame. (An empty results frame is
    /// left out: the check refuses it on purpose, as workers never send one.)
    #[test]
    fn valid_frames_pass_the_prefix_check(
        owned in up(),
        extra in 0usize..3,
        other_due in prop::option::of(any_u64()),
    ) {
        let msg = owned.msg();
        let (in_flight, due) = match &msg {
            Up::Results(rs) if rs.is_empty() => return Ok(()),
            Up::Results(rs) => (rs.len() + extra, Some(rs[0].seq)),
            _ => (extra, other_due),
        };
        let mut frame = Vec::new();
        encode_up(&mut frame, &msg);
        for at in 0..frame.len() {
            let r = check_up_prefix(&frame[..at], in_flight, due);
            prop_assert!(r.is_ok(), "{} of {} bytes of {msg:?}: {r:?}", at, frame.len());
        }
    }

    /// A frame from a worker of a kind workers never send is refused as soon as its tag
    /// arrives, whatever length it announces. (A new kind of message with a body must be
    /// added to `up_tags`.)
    #[test]
    fn unknown_tag_is_refused_from_its_first_byte(
        len in any::<u32>(),
        tag in any::<u8>(),
        rest in prop::collection::vec(any::<u8>(), 0..16),
        (in_flight, due) in held_jobs(),
    ) {
        // Kinds named in `up_tags`, and kinds without a body (a tag alone decodes).
        prop_assume!(!up_tags().contains(&tag) && decode_up(&[tag]).is_err());
        let mut prefix = len.to_le_bytes().to_vec();
        prefix.push(tag);
        prefix.extend_from_slice(&rest);
        for at in FRAME_HEADER + 1..=prefix.len() {
            prop_assert!(check_up_prefix(&prefix[..at], in_flight, due).is_err());
        }
    }

    /// A results frame is accepted when its count fits the jobs the worker holds and it
    /// starts with the job due, and refused before its body arrives when it counts more
    /// results than jobs held or starts with a job the worker does not hold.
    #[test]
    fn unexpected_results_are_refused_early(
        rs in prop::collection::vec((any_u64(), any_u64(), outcome()), 1..4),
        in_flight in 0usize..6,
        due_before in -3i64..4,
    ) {
        let owned = OwnedUp::Results(rs);
        let msg = owned.msg();
        let Up::Results(results) = &msg else { unreachable!() };
        let (count, first) = (results.len(), results[0].seq);
        // The job due, a little before or after the first result's (wrapping around), or
        // none when the worker holds none; all the jobs held have numbers.
        let due = (in_flight > 0).then(|| first.wrapping_sub(due_before as u64));
        prop_assume!(due.is_none_or(|d| d.checked_add(in_flight as u64 - 1).is_some()));
        let mut frame = Vec::new();
        encode_up(&mut frame, &msg);
        // Tag, count and the first sequence number.
        let head = &frame[..FRAME_HEADER + 1 + 4 + 8];
        let ok = check_up_prefix(head, in_flight, due).is_ok();
        if count <= in_flight && due.is_none_or(|d| d == first) {
            prop_assert!(ok, "{count} results from job {first}, {in_flight} held from {due:?}");
        }
        let held = due.is_none_or(|d| first >= d && first - d < in_flight as u64);
        if count > in_flight || !held {
            prop_assert!(!ok, "{count} results from job {first}, {in_flight} held from {due:?}");
        }
    }
}

proptest! {
    // Each case decodes its message many times over: fewer cases.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every single-byte change of a valid body, to a few telling values, is decoded
    /// without a panic, and whatever is accepted re-encodes to exactly the changed bytes
    /// (so an unknown kind or flag is never taken for a known one).
    #[test]
    fn every_byte_changed(msg in either()) {
        let mut frame = Vec::new();
        msg.encode(&mut frame);
        let body = frame[FRAME_HEADER..].to_vec();
        let mut changed = body.clone();
        for i in 0..body.len() {
            let b = body[i];
            let near = [b ^ 1, b ^ 0x80, b.wrapping_add(1), b.wrapping_sub(1)];
            for v in [0, 1, 2, 3, 4, 0x7f, 0xff].into_iter().chain(near) {
                if v == b {
                    continue;
                }
                changed[i] = v;
                if let Ok(m) = decode_up(&changed) {
                    prop_assert_eq!(body_of_up(&m), &changed[..], "byte {} set to {}", i, v);
                }
                if let Ok(m) = decode_down(&changed) {
                    prop_assert_eq!(body_of_down(&m), &changed[..], "byte {} set to {}", i, v);
                }
            }
            changed[i] = b;
        }
    }

    /// Every prefix of a body, not just a random one, is refused.
    #[test]
    fn every_prefix_is_an_error(msg in either()) {
        let mut frame = Vec::new();
        msg.encode(&mut frame);
        let body = whole_body(&frame)?;
        for at in 0..body.len() {
            prop_assert!(msg.decode_err(&body[..at]).is_some(), "prefix of {at} bytes decoded");
        }
    }
}

/// The smallest items are exactly as small as the count check assumes: a count equal to
/// what the bytes can hold is not refused as a lie.
#[test]
fn count_check_is_not_too_strict() {
    // 3 empty jobs: 16 bytes each.
    let jobs: Vec<JobFrame<'_>> = (0..3)
        .map(|seq| JobFrame {
            seq,
            func: b"",
            payload: b"",
        })
        .collect();
    let body = body_of_down(&Down::Jobs(jobs.clone()));
    assert_eq!(body.len(), 1 + 4 + 3 * 16);
    assert_eq!(decode_down(&body), Ok(Down::Jobs(jobs)));

    // 3 shared jobs with an empty function: 28 bytes each.
    let shared: Vec<SharedJobFrame<'_>> = (0..3)
        .map(|seq| SharedJobFrame {
            seq,
            func: b"",
            offset: 4096 * seq,
            len: 10,
        })
        .collect();
    let body = body_of_down(&Down::SharedJobs(shared.clone()));
    assert_eq!(body.len(), 1 + 4 + 3 * 28);
    assert_eq!(decode_down(&body), Ok(Down::SharedJobs(shared)));

    // 3 empty successful results: 21 bytes each.
    let rs: Vec<ResultFrame<'_>> = (0..3)
        .map(|seq| ResultFrame {
            seq,
            nanos: 7,
            outcome: Outcome::Ok(b""),
        })
        .collect();
    let body = body_of_up(&Up::Results(rs.clone()));
    assert_eq!(body.len(), 1 + 4 + 3 * 21);
    assert_eq!(decode_up(&body), Ok(Up::Results(rs)));
}

/// The counter sees allocations made inside `measure`, and only those.
#[test]
fn allocation_counter_counts() {
    let (v, a) = measure(|| vec![0u8; 1000]);
    assert!(a.largest >= 1000 && a.total >= 1000, "{a:?}");
    let (_, a) = measure(|| v.len());
    assert_eq!(a.total, 0);
    drop(v);
}

/// A frame from a worker gets the same verdict whether it arrives whole (`decode_up`) or in
/// pieces (`check_up_prefix` on its start): otherwise how the socket cuts the bytes decides
/// whether a worker is reported or killed. Probed at `MAX_SMALL_UP`, the size beyond which
/// the prefix check refuses a frame that is not results. (Regression: `decode_up` used to
/// accept such frames whole, so a worker whose initializer failed with a long message was
/// reported or killed depending on how its frame was read.)
#[test]
fn same_verdict_whole_or_in_pieces() {
    for text_len in [MAX_SMALL_UP - 64, MAX_SMALL_UP] {
        let text = "x".repeat(text_len);
        let msgs = [
            Up::InitDone(Err(Failure::Panic {
                message: text.clone(),
                location: None,
            })),
            Up::InitDone(Err(Failure::Codec {
                message: text.clone(),
            })),
            Up::Refused(Refusal::Other(text.clone())),
        ];
        for msg in msgs {
            let mut frame = Vec::new();
            encode_up(&mut frame, &msg);
            let whole = decode_up(&frame[FRAME_HEADER..]);
            let head = check_up_prefix(&frame[..FRAME_HEADER + 1], 0, None);
            assert_eq!(
                whole.is_ok(),
                head.is_ok(),
                "{} bytes: whole {:?}, in pieces {head:?}",
                frame.len() - FRAME_HEADER,
                whole.map(|_| ()),
            );
        }
    }
}

/// The extreme announced length, on a 64-bit and on a 32-bit limit.
#[test]
fn maximal_length_field() {
    let buf = u32::MAX.to_le_bytes();
    assert_eq!(split_frame(&buf, usize::MAX), Ok(None));
    assert_eq!(split_frame(&buf, u32::MAX as usize), Ok(None));
    assert!(split_frame(&buf, u32::MAX as usize - 1).is_err());
    let zero = 0u32.to_le_bytes();
    assert!(split_frame(&zero, LIMIT).is_err(), "empty frame accepted");
}
