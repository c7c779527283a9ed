//! A `main` that returns a task's error, as a first program does with `?`: what it prints
//! is the error's sentence (its `Debug` reads as its `Display`), and with
//! `RUST_BACKTRACE=1` the worker's backtrace as lines.
//!
//! ```text
//! cargo run -p procpool --example task_error
//! RUST_BACKTRACE=1 cargo run -p procpool --example task_error
//! ```

fn check(n: u32) -> u32 {
    if n == 2 {
        panic!("item {n} is bad");
    }
    n
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let pool = procpool::Pool::builder().workers(1).build()?;
    let out = pool.map(check, 0..4)?;
    println!("{out:?}");
    Ok(())
}
