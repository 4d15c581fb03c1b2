//! The shapes detector on real images (`featjnd eval-real`): real crops as [`Scene`]s, an honest
//! train / held-out split, zero-shot evaluation, a short fine-tune, evaluation again.
//!
//! Everything is class-agnostic: every real instance is `ShapeClass::from_id(0)`, and detections
//! are mapped to class 0 before scoring (the headline numbers). A second zero-shot variant takes
//! the maximum of the class heat-maps before decoding (one peak per place instead of one per class
//! and place), reported beside it.
//!
//! * **DeepForest** (aerial RGB tree crowns, VOC boxes only): `OSBS_029` is held out whole and
//!   tiled into 128 px crops (edge-flush, so the last row and column overlap their neighbours);
//!   fine-tuning draws random crops from the other three images. A box is kept in a crop when at
//!   least half its area is inside (the rule of [`deepforest::TreeImage::crops`]) and is clipped
//!   to it. There are no masks: the **training targets use the filled (clipped) box as the
//!   instance mask** (smaller boxes painted over larger ones where they overlap), so only box AP
//!   is reported.
//! * **stardist** (one 512×512 fluorescence image, 125 instance masks): the grey image is
//!   replicated to 3 channels; fine-tuning draws crops from rows `0..384` (the top 3/4), the
//!   held-out crops tile rows `384..512`, so no pixel is shared. A nucleus cut by a crop keeps its
//!   visible part when that has at least [`MIN_VISIBLE`] pixels (whole nuclei are always kept);
//!   box and mask AP are reported. The percentile normalisation of the loader uses the whole
//!   image (labels are never shared).
//!
//! Fine-tuning: Adam, cosine learning rate with a short warm-up, batch 8, random crops with
//! horizontal/vertical flips, the loss of [`super::detect::loss`], every parameter trained.

mod data;
mod eval;
mod finetune;

pub use data::*;
pub use eval::*;
pub use finetune::*;
