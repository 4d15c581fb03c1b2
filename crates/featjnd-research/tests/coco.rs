//! The COCO bbox and segm evaluator against pycocotools (fixtures of tools/coco_fixtures.py), the
//! mask primitives against maskUtils, hand-computed cases, malformed inputs, and the
//! `featjnd eval-coco` command.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use featjnd_research::coco::{self, IouType, Rle, Stats};
use serde_json::Value;

const CASES: [&str; 4] = ["basic", "crowd", "sizes", "many"];
const SEGM_CASES: [&str; 2] = ["masks", "maskboxes"];

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coco").join(name)
}

/// Equal up to rounding: precision is tp / (tp + fp + eps), so a perfect AP is 1 - 2e-16.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn eval(gt: &str, dt: &str) -> featjnd_research::Result<Stats> {
    coco::evaluate(&coco::parse_gt(gt)?, &coco::parse_dt(dt)?, IouType::Bbox)
}

#[test]
fn fixtures_match_pycocotools() {
    let cases = CASES.iter().map(|c| (c, IouType::Bbox, "expected")).chain(SEGM_CASES.iter().map(|c| (c, IouType::Segm, "segm.expected")));
    for (case, iou_type, suffix) in cases {
        let exp = json(&format!("{case}.{suffix}.json"));
        let want: Vec<f64> = exp["stats"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = coco::evaluate_files(&data(&format!("{case}.gt.json")), &data(&format!("{case}.dt.json")), iou_type).unwrap();
        let diff = got.to_array().iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        println!("{case} ({iou_type:?}): max |rust - pycocotools {}| = {diff:.3e}", exp["pycocotools"]);
        assert!(diff < 1e-3, "{case}: got {:?}, pycocotools {want:?}", got.to_array());
    }
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    u64s(v).into_iter().map(|c| c as u32).collect()
}

/// Polygon rasterisation, compressed strings, areas and mask IoUs equal maskUtils' exactly.
#[test]
fn mask_primitives_match_pycocotools() {
    let p = json("rle_primitives.json");
    for case in p["polygons"].as_array().unwrap() {
        let (h, w) = (case["h"].as_u64().unwrap(), case["w"].as_u64().unwrap());
        let parts: Vec<Rle> = case["polygons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|xy| Rle::from_polygon(&xy.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(), h, w).unwrap())
            .collect();
        let rle = Rle::union(&parts).unwrap();
        let s = case["string"].as_str().unwrap();
        assert_eq!(rle.counts, u32s(&case["counts"]), "{case}");
        assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "{case}");
        assert_eq!(rle.to_compressed(), s, "{case}");
        assert_eq!(Rle::from_compressed(h, w, s).unwrap(), rle, "{case}");
    }
    for case in p["uncompressed"].as_array().unwrap() {
        let (h, w) = (case["h"].as_u64().unwrap(), case["w"].as_u64().unwrap());
        let rle = Rle::new(h, w, u32s(&case["counts"])).unwrap();
        let s = case["string"].as_str().unwrap();
        assert_eq!(rle.to_compressed(), s, "{case}");
        assert_eq!(Rle::from_compressed(h, w, s).unwrap(), rle, "{case}");
        assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "{case}");
    }
    let iou = &p["iou"];
    let (h, w) = (iou["h"].as_u64().unwrap(), iou["w"].as_u64().unwrap());
    let seg = Value::from(iou["shapes"].as_array().unwrap().clone());
    let image =
        coco::parse_gt(&format!(r#"{{"images":[{{"id":1,"height":{h},"width":{w}}}],"categories":[]}}"#)).unwrap().images[0].clone();
    let masks: Vec<Rle> = seg.as_array().unwrap().iter().map(|s| coco::decode_segmentation(s, &image).unwrap()).collect();
    for m in iou["dt_by_gt"].as_array().unwrap() {
        let crowd = m["crowd"].as_u64().unwrap() == 1;
        for (d, row) in m["iou"].as_array().unwrap().iter().enumerate() {
            for (g, want) in row.as_array().unwrap().iter().enumerate() {
                assert_eq!(Rle::iou(&masks[d], &masks[g], crowd), want.as_f64().unwrap(), "dt {d} gt {g} crowd {crowd}");
            }
        }
    }
}

/// One image 1 of 100x100 (large by its area), category 1, with the given detections.
fn one_box(dets: &str) -> Stats {
    let gt = r#"{"images":[{"id":1}],"categories":[{"id":1}],
        "annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,100,100],"area":10000,"iscrowd":0}]}"#;
    eval(gt, dets).unwrap()
}

#[test]
fn perfect_detection_scores_one() {
    let s = one_box(r#"[{"image_id":1,"category_id":1,"bbox":[0,0,100,100],"score":0.9}]"#);
    for v in [s.ap, s.ap50, s.ap75, s.ap_large, s.ar1, s.ar10, s.ar100, s.ar_large] {
        assert!(close(v, 1.0), "{s:?}");
    }
    // No GT is small or medium.
    for v in [s.ap_small, s.ap_medium, s.ar_small, s.ar_medium] {
        assert_eq!(v, -1.0, "{s:?}");
    }
}

#[test]
fn no_detections_score_zero() {
    let s = one_box("[]");
    assert_eq!((s.ap, s.ap50, s.ar100, s.ap_small), (0.0, 0.0, 0.0, -1.0));
}

#[test]
fn iou_at_one_half_is_a_match() {
    // A 100 x h box inside the GT has IoU h / 100; pycocotools matches at IoU >= threshold.
    let ap50 = |h: f64| one_box(&format!(r#"[{{"image_id":1,"category_id":1,"bbox":[0,0,100,{h}],"score":0.5}}]"#)).ap50;
    assert_eq!(ap50(49.99), 0.0);
    assert!(close(ap50(50.0), 1.0));
    assert!(close(ap50(50.01), 1.0));
}

#[test]
fn false_positive_rank_matters() {
    // A duplicate scored below the true positive comes after full recall: AP stays 1.
    let s = one_box(
        r#"[{"image_id":1,"category_id":1,"bbox":[0,0,100,100],"score":0.5},
            {"image_id":1,"category_id":1,"bbox":[0,0,100,100],"score":0.9}]"#,
    );
    assert!(close(s.ap, 1.0), "{s:?}");
    // A false positive scored above it: precision 1/2 at every recall point, and AR1 = 0.
    let s = one_box(
        r#"[{"image_id":1,"category_id":1,"bbox":[300,300,10,10],"score":0.9},
            {"image_id":1,"category_id":1,"bbox":[0,0,100,100],"score":0.5}]"#,
    );
    assert!(close(s.ap, 0.5), "{s:?}");
    assert_eq!(s.ar1, 0.0);
    assert_eq!(s.ar10, 1.0);
}

fn err(gt: &str, dt: &str) -> String {
    let e = eval(gt, dt).unwrap_err();
    assert!(matches!(e, featjnd_research::Error::Arg(_) | featjnd_research::Error::Io(_)), "{e:?}");
    e.to_string()
}

const GT: &str = r#"{"images":[{"id":1}],"categories":[{"id":1}],
    "annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,10,10],"area":100,"iscrowd":0}]}"#;

/// One 10x10 image with one polygon GT; `seg` replaces the detection's segmentation.
fn segm_err(gt_seg: &str, dt_seg: &str) -> String {
    let gt = format!(
        r#"{{"images":[{{"id":1,"height":10,"width":10}}],"categories":[{{"id":1}}],
        "annotations":[{{"id":1,"image_id":1,"category_id":1,"area":20,"iscrowd":0,"segmentation":{gt_seg}}}]}}"#
    );
    let dt = format!(r#"[{{"image_id":1,"category_id":1,"score":1,"segmentation":{dt_seg}}}]"#);
    let e = coco::evaluate(&coco::parse_gt(&gt).unwrap(), &coco::parse_dt(&dt).unwrap(), IouType::Segm).unwrap_err();
    assert!(matches!(e, featjnd_research::Error::Arg(_)), "{e:?}");
    e.to_string()
}

#[test]
fn malformed_segmentations_are_errors() {
    let poly = "[[1,1,5,1,5,5]]";
    let rle = r#"{"size":[10,10],"counts":[10,20,70]}"#;
    // The valid pair evaluates.
    let gt = format!(
        r#"{{"images":[{{"id":1,"height":10,"width":10}}],"categories":[{{"id":1}}],
        "annotations":[{{"id":1,"image_id":1,"category_id":1,"area":20,"iscrowd":0,"segmentation":{poly}}}]}}"#
    );
    let dt = format!(r#"[{{"image_id":1,"category_id":1,"score":1,"segmentation":{rle}}}]"#);
    assert!(coco::evaluate(&coco::parse_gt(&gt).unwrap(), &coco::parse_dt(&dt).unwrap(), IouType::Segm).is_ok());
    for (g, d, msg) in [
        (poly, "null", "detection #0: no segmentation"),
        (poly, "[[1,1,5,1]]", "at least 3 points"),
        (poly, "[[1,1,5,1,5]]", "even number"),
        (poly, "[]", "at least one mask"),
        (poly, r#"[[1,1,5,1,"x",5]]"#, "not a number"),
        (poly, "[[1,1,5,1,1e300,5]]", "not finite"),
        (poly, "[1,1,5,1,5,5]", "not a list of numbers"),
        (poly, "7", "a list of polygons or an RLE"),
        (poly, r#"{"counts":[100]}"#, "size"),
        (poly, r#"{"size":[10],"counts":[100]}"#, "size"),
        (poly, r#"{"size":[10,10]}"#, "counts"),
        (poly, r#"{"size":[10,10],"counts":[10,20]}"#, "sum to 30"),
        (poly, r#"{"size":[10,10],"counts":[10,-20,110]}"#, "not in 0..2^32"),
        (poly, r#"{"size":[0,10],"counts":[]}"#, "empty or too large"),
        (poly, r#"{"size":[100000,100000],"counts":"0"}"#, "too large"),
        (poly, r#"{"size":[10,10],"counts":"1~"}"#, "not in '0'..='o'"),
        (poly, r#"{"size":[10,10],"counts":"0P"}"#, "ends inside a run"),
        (poly, r#"{"size":[10,10],"counts":"ooooooo0"}"#, "more than 7"),
        (poly, r#"{"size":[10,10],"counts":"@"}"#, "outside 0..2^32"),
        (poly, r#"{"size":[10,10],"counts":"52"}"#, "sum to 7"),
        ("null", rle, "ground-truth annotation id 1: no segmentation"),
        (r#"{"size":[10,10],"counts":"zz"}"#, rle, "ground-truth annotation id 1"),
    ] {
        let e = segm_err(g, d);
        assert!(e.contains(msg), "{g} / {d}: {e}");
    }
    // Polygons need the image size; an RLE does not.
    let gt = r#"{"images":[{"id":1}],"categories":[{"id":1}],
        "annotations":[{"id":1,"image_id":1,"category_id":1,"area":20,"iscrowd":0,"segmentation":[[1,1,5,1,5,5]]}]}"#;
    let dt = r#"[{"image_id":1,"category_id":1,"score":1,"segmentation":{"size":[10,10],"counts":[100]}}]"#;
    let e = coco::evaluate(&coco::parse_gt(gt).unwrap(), &coco::parse_dt(dt).unwrap(), IouType::Segm).unwrap_err();
    assert!(e.to_string().contains("height and width of image 1"), "{e}");
    // The first detection has a box, so all need one (COCO.loadRes reads every area from its box).
    let dt = r#"[{"image_id":1,"category_id":1,"score":1,"bbox":[0,0,2,2]},{"image_id":1,"category_id":1,"score":1,"segmentation":[[1,1,5,1,5,5]]}]"#;
    let e = coco::evaluate(
        &coco::parse_gt(&gt.replace(r#""id":1}"#, r#""id":1,"height":10,"width":10}"#)).unwrap(),
        &coco::parse_dt(dt).unwrap(),
        IouType::Segm,
    )
    .unwrap_err();
    assert!(e.to_string().contains("detection #1: no bbox"), "{e}");
}

#[test]
fn segm_perfect_and_crowd() {
    // A 4x4 square GT (pixels 2..6) and a 10x10 crowd region (columns and rows 10..20); a
    // detection equal to the square, and a 3x3 one inside the crowd region: both perfect.
    let gt = r#"{"images":[{"id":1,"height":20,"width":20}],"categories":[{"id":1}],"annotations":[
        {"id":1,"image_id":1,"category_id":1,"area":16,"iscrowd":0,"segmentation":[[2,2,6,2,6,6,2,6]]},
        {"id":2,"image_id":1,"category_id":1,"area":100,"iscrowd":1,"segmentation":{"size":[20,20],"counts":[210,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10,10]}}]}"#;
    let dt = r#"[{"image_id":1,"category_id":1,"score":0.9,"segmentation":[[2,2,6,2,6,6,2,6]]},
        {"image_id":1,"category_id":1,"score":0.8,"segmentation":{"size":[20,20],"counts":[231,3,17,3,17,3,126]}}]"#;
    let s = coco::evaluate(&coco::parse_gt(gt).unwrap(), &coco::parse_dt(dt).unwrap(), IouType::Segm).unwrap();
    assert!(close(s.ap, 1.0) && close(s.ar100, 1.0) && s.ap_small > 0.99, "{s:?}");
    // The same files evaluate as bbox only with boxes.
    assert!(coco::evaluate(&coco::parse_gt(gt).unwrap(), &coco::parse_dt(dt).unwrap(), IouType::Bbox)
        .unwrap_err()
        .to_string()
        .contains("no bbox"));
}

#[test]
fn malformed_inputs_are_errors() {
    let dt = r#"[{"image_id":1,"category_id":1,"bbox":[0,0,10,10],"score":1}]"#;
    assert!(err(&GT[..40], dt).contains("invalid COCO ground truth"));
    assert!(err(GT, "{}").contains("invalid COCO detections"));
    assert!(err(GT, r#"[{"image_id":1,"category_id":1,"bbox":[0,0,10],"score":1}]"#).contains("invalid COCO detections"));
    assert!(err(GT, r#"[{"image_id":1,"category_id":1,"bbox":[0,0,10,10]}]"#).contains("score"));
    assert!(err(GT, r#"[{"image_id":7,"category_id":1,"bbox":[0,0,10,10],"score":1}]"#).contains("image_id 7"));
    assert!(err(GT, r#"[{"image_id":1,"category_id":1,"bbox":[0,0,-1,10],"score":1}]"#).contains("width and height"));
    assert!(err(&GT.replace("[0,0,10,10]", "[0,0,10,-2]"), dt).contains("width and height"));
    assert!(err(&GT.replace(r#""area":100"#, r#""area":-1"#), dt).contains("area"));
    assert!(err(&GT.replace(r#""image_id":1"#, r#""image_id":3"#), dt).contains("not in `images`"));
    assert!(err(&GT.replace(r#""iscrowd":0"#, r#""iscrowd":"no""#), dt).contains("invalid COCO ground truth"));
    let e = coco::evaluate_files(Path::new("/nonexistent/gt.json"), &data("basic.dt.json"), IouType::Bbox).unwrap_err();
    assert!(matches!(e, featjnd_research::Error::Io(_)) && e.to_string().contains("/nonexistent/gt.json"), "{e}");
}

// ---------- the command ----------

fn featjnd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_featjnd")).args(args).output().expect("running featjnd")
}

#[test]
fn cli_prints_table_and_json() {
    let (gt, dt) = (data("basic.gt.json"), data("basic.dt.json"));
    let (gt, dt) = (gt.to_str().unwrap(), dt.to_str().unwrap());
    let want = coco::evaluate_files(Path::new(gt), Path::new(dt), IouType::Bbox).unwrap();

    let o = featjnd(&["eval-coco", "--gt", gt, "--dt", dt]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), want.summary());

    let o = featjnd(&["eval-coco", "--gt", gt, "--dt", dt, "--iou-type", "bbox", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];
    for (name, w) in names.iter().zip(want.to_array()) {
        assert!(close(v[name].as_f64().unwrap(), w), "{name}: {v}");
    }
}

#[test]
fn cli_segm() {
    let (gt, dt) = (data("masks.gt.json"), data("masks.dt.json"));
    let (gt, dt) = (gt.to_str().unwrap(), dt.to_str().unwrap());
    let want = coco::evaluate_files(Path::new(gt), Path::new(dt), IouType::Segm).unwrap();
    let o = featjnd(&["eval-coco", "--gt", gt, "--dt", dt, "--iou-type", "segm"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), want.summary());
}

#[test]
fn cli_errors_exit_1() {
    let (gt, dt) = (data("basic.gt.json"), data("basic.dt.json"));
    let (gt, dt) = (gt.to_str().unwrap(), dt.to_str().unwrap());
    for (args, msg) in [
        (vec!["eval-coco", "--gt", gt, "--dt", dt, "--iou-type", "segm"], "no segmentation"),
        (vec!["eval-coco", "--gt", dt, "--dt", dt], "invalid COCO ground truth"),
    ] {
        let o = featjnd(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.starts_with("error: ") && e.contains(msg) && !e.contains("panicked"), "{e}");
    }
}
