//! Awaiting pool tasks and a one-off process from async code, on a tokio runtime.
//!
//! ```sh
//! cargo run --release -p procpool --example async_tokio
//! ```
//!
//! Handles are futures on any executor: the pool's supervisor wakes the awaiting task
//! when a result arrives, so no thread blocks per awaited task.

use std::time::{Duration, Instant};

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    x * x
}

fn crash(_: ()) -> u64 {
    std::process::abort()
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let pool = procpool::Pool::builder().workers(4).build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let t = Instant::now();
    rt.block_on(async {
        // Eight 200 ms tasks on four workers, awaited together: about 400 ms.
        let handles: Vec<_> = (0..8u64)
            .map(|i| pool.spawn(slow_square, i))
            .collect::<Result<_, _>>()?;
        let squares = futures::future::join_all(handles).await;
        let squares: Vec<u64> = squares.into_iter().collect::<Result<_, _>>()?;
        println!("squares {squares:?} in {:?}", t.elapsed());

        // A crash is an error for that await alone.
        match pool.spawn(crash, ())?.await {
            Err(procpool::Error::Task(e)) => println!("as expected: {e}"),
            other => println!("unexpected: {other:?}"),
        }

        // A one-off process, with a time-out from the runtime.
        let p = procpool::spawn(slow_square, 12)?;
        match tokio::time::timeout(Duration::from_secs(5), p).await {
            Ok(r) => println!("one-off process: {}", r?),
            Err(_) => println!("the one-off process took too long (dropping it killed it)"),
        }
        Ok::<_, procpool::Error>(())
    })?;
    pool.join();
    Ok(())
}
