//! `featjnd eval-coco`: COCO detections against COCO ground truth (the 12 pycocotools numbers).
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::{coco, Error, Result};

#[derive(Clone, Copy, ValueEnum)]
pub enum IouTypeArg {
    Bbox,
    /// Mask IoU (polygon or RLE segmentations).
    Segm,
}

#[derive(Args)]
pub struct EvalCocoArgs {
    /// Ground truth: a COCO instances JSON (images, categories, annotations).
    #[arg(long)]
    gt: PathBuf,
    /// Detections: a JSON list of {image_id, category_id, bbox, score} (segm: with a segmentation,
    /// an RLE or polygons; if the first has a bbox, areas come from the boxes, as in pycocotools).
    #[arg(long)]
    dt: PathBuf,
    #[arg(long, value_enum, default_value_t = IouTypeArg::Bbox)]
    iou_type: IouTypeArg,
    /// Print the 12 numbers as JSON instead of the pycocotools table.
    #[arg(long)]
    json: bool,
}

/// Prints the table (or JSON with `--json`).
pub fn run(a: &EvalCocoArgs) -> Result<()> {
    let iou_type = match a.iou_type {
        IouTypeArg::Bbox => coco::IouType::Bbox,
        IouTypeArg::Segm => coco::IouType::Segm,
    };
    let stats = coco::evaluate_files(&a.gt, &a.dt, iou_type)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats).map_err(|e| Error::Io(e.to_string()))?);
    } else {
        print!("{}", stats.summary());
    }
    Ok(())
}
