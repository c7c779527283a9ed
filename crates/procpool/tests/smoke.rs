//! The smallest end-to-end check: a pool inside a test binary.

procpool::enable_test_support!();

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn map_in_a_test_binary() {
    let pool = procpool::Pool::builder().workers(2).build().unwrap();
    let v: Vec<u64> = pool.map(double, 0..1000).unwrap();
    assert_eq!(v, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
}
