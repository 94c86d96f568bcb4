mod common;
use common::*;
use forkpool::{Error, Pool};
use std::time::Duration;

fn segv(_: ()) -> u32 {
    unsafe { std::ptr::null_mut::<u32>().write_volatile(1) };
    0
}

#[test]
fn smoke_crash() {
    within(Duration::from_secs(30), || {
        let pool = Pool::new(2).unwrap();
        let r = pool.apply(segv, ());
        println!("{r:?}");
        assert!(matches!(r, Err(Error::WorkerDied { .. })));
        assert_eq!(pool.apply(|x: u32| x + 1, 1).unwrap(), 2);
        pool.close();
        pool.join().unwrap();
    });
}
