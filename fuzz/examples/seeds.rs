//! Writes seed inputs for the fuzz targets, made of valid encoded messages of every kind.
//!
//! Run in `fuzz/`: `cargo run --example seeds [DIR]` (default `corpus`, which is not
//! committed). Writes `DIR/decode_up/*` and `DIR/decode_down/*` (frame bodies),
//! `DIR/decode_result/*` (entries of the results ring) and `DIR/split_frame/*` (whole
//! frames, alone and back to back).

use std::fs;
use std::path::{Path, PathBuf};

use procpool_engine::wire::{
    Down, FRAME_HEADER, Failure, JobFrame, Outcome, Refusal, ResultFrame, SharedJobFrame, Up,
    decode_up, encode_down, encode_up,
};

fn failures() -> Vec<Failure> {
    vec![
        Failure::Panic {
            message: "boom".into(),
            location: Some("src/main.rs:1:2".into()),
        },
        Failure::Panic {
            message: String::new(),
            location: None,
        },
        Failure::Codec {
            message: "bad ü".into(),
        },
        Failure::TooLarge {
            size: 1 << 40,
            limit: 1 << 20,
        },
    ]
}

fn ups() -> Vec<Vec<u8>> {
    let mut msgs = vec![
        Up::Hello {
            version: 1,
            fingerprint: 0x0123_4567_89ab_cdef,
            pid: 4242,
        },
        Up::Refused(Refusal::BinaryMismatch {
            parent: 1,
            worker: 2,
        }),
        Up::Refused(Refusal::Version {
            parent: 1,
            worker: 2,
        }),
        Up::Refused(Refusal::InitMissing),
        Up::Refused(Refusal::Other("no".into())),
        Up::InitDone(Ok(())),
        Up::Results(Vec::new()),
        Up::Doorbell,
    ];
    let mut results = vec![ResultFrame {
        seq: 0,
        nanos: 1_000,
        outcome: Outcome::Ok(b"result"),
    }];
    for (i, f) in failures().into_iter().enumerate() {
        msgs.push(Up::InitDone(Err(f.clone())));
        results.push(ResultFrame {
            seq: i as u64 + 1,
            nanos: 7,
            outcome: Outcome::Err(f),
        });
    }
    msgs.push(Up::Results(results.clone()));
    // Each result alone, to cut ring entries from.
    msgs.extend(results.into_iter().map(|r| Up::Results(vec![r])));
    msgs.iter()
        .map(|m| {
            let mut out = Vec::new();
            encode_up(&mut out, m);
            out
        })
        .collect()
}

fn downs() -> Vec<Vec<u8>> {
    let msgs = [
        Down::Jobs(Vec::new()),
        Down::Jobs(vec![
            JobFrame {
                seq: 1,
                func: b"module::f",
                payload: b"\x01\x02\x03",
            },
            JobFrame {
                seq: 2,
                func: b"",
                payload: b"",
            },
        ]),
        Down::SharedJobs(vec![
            SharedJobFrame {
                seq: 3,
                func: b"module::g",
                offset: 0,
                len: 1 << 16,
            },
            SharedJobFrame {
                seq: 4,
                func: b"",
                offset: 1 << 16,
                len: 0,
            },
        ]),
        Down::Init {
            func: b"init",
            payload: b"arg",
        },
        Down::Shutdown,
    ];
    msgs.iter()
        .map(|m| {
            let mut out = Vec::new();
            encode_down(&mut out, m);
            out
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create corpus directory");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let (ups, downs) = (ups(), downs());
    for (i, frame) in ups.iter().enumerate() {
        // A results frame of one result: the entry follows the tag and the count.
        if let Ok(Up::Results(rs)) = decode_up(&frame[FRAME_HEADER..])
            && rs.len() == 1
        {
            let entry = &frame[FRAME_HEADER + 1 + 4..];
            write(&root.join("decode_result"), &format!("entry-{i}"), entry);
        }
        write(
            &root.join("decode_up"),
            &format!("up-{i}"),
            &frame[FRAME_HEADER..],
        );
        write(&root.join("split_frame"), &format!("up-{i}"), frame);
    }
    for (i, frame) in downs.iter().enumerate() {
        write(
            &root.join("decode_down"),
            &format!("down-{i}"),
            &frame[FRAME_HEADER..],
        );
        write(&root.join("split_frame"), &format!("down-{i}"), frame);
    }
    write(&root.join("split_frame"), "stream-up", &ups.concat());
    write(&root.join("split_frame"), "stream-down", &downs.concat());
    println!("seeds written under {}", root.display());
}
