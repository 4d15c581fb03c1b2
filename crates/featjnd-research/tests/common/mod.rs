//! Shared by the pipeline tests: a lock around torch's global RNG.
#![allow(dead_code)]
use std::sync::{Mutex, MutexGuard};

/// Serialises the tests of one test binary that use torch's global RNG (`tch::manual_seed`,
/// `randn`, weight initialisation, training). The test harness runs tests on parallel threads
/// and torch has one RNG per process: without the lock one test's draws shift another's, and a
/// test that passes alone can fail in the suite. Hold the guard for the whole test.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints a `SKIP ...` line straight to the process's stderr, past the test harness's output
/// capture, so that `scripts/test.sh` can count the tests that could not run here.
#[allow(unused_macros)]
macro_rules! skip {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // A leading newline: the harness may be half-way through a "test name ... " line.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err);
        let _ = writeln!(err, $($arg)*);
    }};
}
#[allow(unused_imports)]
pub(crate) use skip;
