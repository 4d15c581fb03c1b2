//! The COCO ground-truth and detection readers (JSON with RLE and polygon masks) and, when both
//! parse, the evaluator on them.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/coco.rs`) and the stable harness of the
//! test command (docs/fuzzing.md).
/// One input (the fuzz target's body; also run by the stable harness).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // "<gt json>\0<dt json>": both halves are fuzzed; an input without the separator is a GT file.
    let (gt, dt) = text.split_once('\0').unwrap_or((text, "[]"));
    let Ok(gt) = featjnd_research::coco::parse_gt(gt) else { return };
    let Ok(dt) = featjnd_research::coco::parse_dt(dt) else { return };
    for iou in [featjnd_research::coco::IouType::Bbox, featjnd_research::coco::IouType::Segm] {
        let _ = featjnd_research::coco::evaluate(&gt, &dt, iou);
    }
}
