//! A pipeline of processes connected by channels:
//!
//! ```text
//!  reader ──lines──▶ parser ×2 ──records──▶ main (totals)
//!  (process)         (processes sharing     (this process)
//!                     one receiver)
//! ```
//!
//! The reader makes CSV-like lines (as a file reader would), two parser processes share
//! the queue of lines and send typed records on, and `main` totals them. Each stage ends
//! when the stage before it is gone: the parsers' loops end when the reader's sender is
//! dropped, and `main`'s when both parsers' are.
//!
//! ```text
//! cargo run --release -p procpool --example pipeline [LINES]
//! ```

use std::collections::BTreeMap;

use procpool::{Receiver, Sender};
use serde::{Deserialize, Serialize};

/// One parsed line.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    city: String,
    amount_cents: u64,
}

/// Stage 1: makes `n` lines (a real program would read a file) and sends them in batches.
fn read((out, n): (Sender<Vec<String>>, u64)) -> u64 {
    const CITIES: [&str; 4] = ["Lyon", "Oslo", "Quito", "Perth"];
    let mut batch = Vec::with_capacity(256);
    for i in 0..n {
        let city = CITIES[(i % 4) as usize];
        batch.push(format!("{i},{city},{}.{:02}", i % 100, i % 7));
        if batch.len() == 256 {
            out.send(std::mem::take(&mut batch))
                .expect("the parsers are gone");
        }
    }
    if !batch.is_empty() {
        out.send(batch).expect("the parsers are gone");
    }
    n
}

/// Stage 2 (two processes): parses the lines it takes from the shared queue.
fn parse((lines, out): (Receiver<Vec<String>>, Sender<Vec<Record>>)) -> u64 {
    let mut parsed = 0;
    for batch in lines {
        let records: Vec<Record> = batch
            .iter()
            .map(|line| {
                let mut f = line.split(',');
                let _id = f.next();
                let city = f.next().unwrap_or("?").to_string();
                let (units, cents) = f.next().unwrap_or("0.0").split_once('.').unwrap();
                let amount_cents =
                    units.parse::<u64>().unwrap() * 100 + cents.parse::<u64>().unwrap();
                Record { city, amount_cents }
            })
            .collect();
        parsed += records.len() as u64;
        out.send(records).expect("main is gone");
    }
    parsed
}

fn main() {
    procpool::init();
    let n: u64 = match std::env::args().nth(1) {
        None => 100_000,
        Some(a) => match a.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("usage: pipeline [LINES]  (LINES is a number of lines, not {a})");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = run(n) {
        eprintln!("pipeline: {e}");
        std::process::exit(1);
    }
}

fn run(n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (lines_tx, lines_rx) = procpool::channel::<Vec<String>>()?;
    let (records_tx, records_rx) = procpool::channel::<Vec<Record>>()?;

    let reader = procpool::spawn(read, (lines_tx, n))?;
    let parsers = [
        procpool::spawn(parse, (lines_rx.clone(), records_tx.clone()))?,
        procpool::spawn(parse, (lines_rx, records_tx))?,
    ];
    // `main` kept no sender of either channel (they moved into `spawn`), so the loop
    // below ends once both parsers are done.

    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = 0u64;
    for batch in records_rx {
        for r in batch {
            *totals.entry(r.city).or_default() += r.amount_cents;
            count += 1;
        }
    }
    let sent = reader.join()?;
    let mut parsed = Vec::new();
    for p in parsers {
        parsed.push(p.join()?);
    }
    println!("{sent} lines read, parsed {parsed:?} by the two parsers, {count} records totalled");
    for (city, cents) in &totals {
        println!("{city:>6}: {}.{:02}", cents / 100, cents % 100);
    }
    if count != n || parsed.iter().sum::<u64>() != n {
        return Err(format!("{n} lines went in, {count} records came out").into());
    }
    Ok(())
}
