//! Where the repository's files are: `.deps/` (what `scripts/setup.sh` installs) and `models/`
//! sit at the workspace root, two levels above this crate.
use std::path::{Path, PathBuf};

/// The workspace root (the checkout this crate was built from).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

/// `rel` under the workspace root.
pub fn repo(rel: &str) -> PathBuf {
    repo_root().join(rel)
}
