//! Task metrics: classification numbers here; COCO box/mask AP in [`crate::coco`].

pub mod classify;
pub mod detect;
pub mod nanodet;
