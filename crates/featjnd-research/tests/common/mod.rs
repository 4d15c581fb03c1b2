//! Shared by the pipeline tests: a lock around torch's global RNG, the Python of the PyTorch
//! reference tests.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The Python the PyTorch reference tests run: `$FEATJND_TORCH_PYTHON`, else `/usr/bin/python3`
/// (Debian's python3-torch and python3-torchvision, scripts/setup.sh).
pub fn torch_python() -> PathBuf {
    std::env::var_os("FEATJND_TORCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// The last non-empty line of a process's output.
pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// [`torch_python`] when it imports `modules` (e.g. `"torch, torchvision"`); else why not.
pub fn torch_python_with(modules: &str) -> Result<PathBuf, String> {
    let py = torch_python();
    match Command::new(&py).args(["-c", &format!("import {modules}")]).output() {
        Ok(o) if o.status.success() => Ok(py),
        Ok(o) => Err(format!("{} cannot import {modules}: {}", py.display(), last_line(&o.stderr))),
        Err(e) => Err(format!("{}: {e}", py.display())),
    }
}

/// A toy split model whose per-element sensitivity is known: the head is the identity, the tail a
/// linear classifier `W · mean_hw(f)`, so the discrepancy's sensitivity to an element of channel
/// `k` follows column `k` of `W` (the estimator's and the oracle's known-answer tests).
pub struct MeanLinear {
    pub w: tch::Tensor,
}

impl featjnd_research::model::SplitModel for MeanLinear {
    fn arch(&self) -> &str {
        "mean-linear"
    }
    fn task(&self) -> featjnd_research::model::TaskKind {
        featjnd_research::model::TaskKind::Classification
    }
    fn split_points(&self) -> Vec<String> {
        vec!["s".into()]
    }
    fn head(&self, x: &tch::Tensor, _split: &str) -> featjnd_research::Result<Vec<tch::Tensor>> {
        Ok(vec![x.shallow_clone()])
    }
    fn tail(&self, feats: &[tch::Tensor], _split: &str) -> featjnd_research::Result<Vec<tch::Tensor>> {
        Ok(vec![feats[0].mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float).matmul(&self.w.tr())])
    }
}

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
