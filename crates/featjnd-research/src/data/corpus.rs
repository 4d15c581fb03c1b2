//! The real photo corpus (data/photos/README.md): 195 photographs gathered by `scripts/fetch-real.sh` into
//! `.deps/data/photos/` ([`default_dir`]), described by the committed manifest
//! `data/photos/manifest.tsv` (tab-separated, a header row; columns `name`, `source`, `member`,
//! `sha256`, `split`, `kind`, `group`). The split is by photo group (`train` / `heldout`): the
//! estimators train on `train` photos only, the studies evaluate on `heldout` photos only.
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Overrides [`default_dir`].
pub const DIR_ENV: &str = "FEATJND_PHOTOS_DIR";

/// `$FEATJND_PHOTOS_DIR`, else `.deps/data/photos` at the workspace root.
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| crate::paths::repo(".deps/data/photos"))
}

/// The committed manifest, `data/photos/manifest.tsv` at the workspace root.
pub fn default_manifest() -> PathBuf {
    crate::paths::repo("data/photos/manifest.tsv")
}

/// Which side of the split a photo is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CorpusSplit {
    Train,
    HeldOut,
}

/// Share of the `train` photo *groups* carved out as the validation photos (by a hash of the group
/// name, so a group stays on one side): settings such as the sensitivity objective's exponent are
/// chosen on them, never on the held-out photos; estimators train on the rest of `train`.
pub const VALIDATION_FRACTION: f64 = 0.2;

/// Whether the `train` photos of `group` are validation photos ([`VALIDATION_FRACTION`]).
pub fn is_validation_group(group: &str) -> bool {
    crate::study::user::name_hash(group) < VALIDATION_FRACTION
}

/// The three disjoint photo sets of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subset {
    /// `train` photos outside the validation groups: estimator training.
    Fit,
    /// `train` photos of the validation groups ([`is_validation_group`]): model selection.
    Validation,
    /// `heldout` photos: every reported number.
    HeldOut,
}

/// One manifest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name in the corpus directory.
    pub name: String,
    pub source: String,
    pub sha256: String,
    pub split: CorpusSplit,
    pub kind: String,
    /// Photos of one group (frames of one video, crops of one scene) share a split.
    pub group: String,
}

/// Parses the manifest text (see the module docs). Unknown splits and missing columns are errors.
pub fn parse_manifest(text: &str) -> Result<Vec<Entry>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or_else(|| Error::Io("empty photo manifest".into()))?.split('\t').collect();
    let col = |n: &str| header.iter().position(|h| h.trim() == n).ok_or_else(|| Error::Io(format!("photo manifest: no column `{n}`")));
    let (ci, cs, ch, cp, ck, cg) = (col("name")?, col("source")?, col("sha256")?, col("split")?, col("kind")?, col("group")?);
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |c: usize| {
            f.get(c).map(|s| s.trim().to_string()).ok_or_else(|| Error::Io(format!("photo manifest row {}: too few columns", i + 2)))
        };
        let split = match get(cp)?.as_str() {
            "train" => CorpusSplit::Train,
            "heldout" => CorpusSplit::HeldOut,
            s => return Err(Error::Io(format!("photo manifest row {}: unknown split `{s}`", i + 2))),
        };
        out.push(Entry { name: get(ci)?, source: get(cs)?, sha256: get(ch)?, split, kind: get(ck)?, group: get(cg)? });
    }
    Ok(out)
}

/// The corpus: its directory and manifest rows.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
}

impl Corpus {
    /// Reads `manifest` and checks that every listed file is in `dir` (a missing directory or file
    /// says to run `scripts/fetch-real.sh`). Contents are not hashed here (`fetch-real.sh` does).
    pub fn open(dir: &Path, manifest: &Path) -> Result<Corpus> {
        let text = std::fs::read_to_string(manifest).map_err(|e| Error::Io(format!("photo manifest {}: {e}", manifest.display())))?;
        let entries = parse_manifest(&text)?;
        if !dir.is_dir() {
            return Err(Error::Io(format!("photo corpus {} not found (run scripts/fetch-real.sh, or set ${DIR_ENV})", dir.display())));
        }
        if let Some(e) = entries.iter().find(|e| !dir.join(&e.name).is_file()) {
            return Err(Error::Io(format!("photo corpus {}: {} is missing (run scripts/fetch-real.sh)", dir.display(), e.name)));
        }
        Ok(Corpus { dir: dir.to_path_buf(), entries })
    }

    /// [`Corpus::open`] on [`default_dir`] and [`default_manifest`].
    pub fn open_default() -> Result<Corpus> {
        Corpus::open(&default_dir(), &default_manifest())
    }

    /// Paths of the photos of `split`, in manifest order.
    pub fn files(&self, split: CorpusSplit) -> Vec<PathBuf> {
        self.entries.iter().filter(|e| e.split == split).map(|e| self.dir.join(&e.name)).collect()
    }

    /// Paths of the photos of `subset`, in manifest order.
    pub fn subset_files(&self, subset: Subset) -> Vec<PathBuf> {
        let keep = |e: &Entry| match subset {
            Subset::Fit => e.split == CorpusSplit::Train && !is_validation_group(&e.group),
            Subset::Validation => e.split == CorpusSplit::Train && is_validation_group(&e.group),
            Subset::HeldOut => e.split == CorpusSplit::HeldOut,
        };
        self.entries.iter().filter(|e| keep(e)).map(|e| self.dir.join(&e.name)).collect()
    }

    /// Decodes the photos of `subset`.
    pub fn load_subset(&self, subset: Subset) -> Result<Vec<crate::data::photos::Photo>> {
        self.subset_files(subset).iter().map(|p| crate::data::photos::load_photo(p)).collect()
    }

    /// Decodes the photos of `split` (see [`crate::data::photos::load_photo`]).
    pub fn load(&self, split: CorpusSplit) -> Result<Vec<crate::data::photos::Photo>> {
        self.files(split).iter().map(|p| crate::data::photos::load_photo(p)).collect()
    }
}
