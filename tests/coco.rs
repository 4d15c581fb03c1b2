//! The COCO bbox evaluator against pycocotools (fixtures of tools/coco_fixtures.py), hand-computed
//! cases, malformed inputs, and the `featjnd eval-coco` command.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use featjnd::coco::{self, IouType, Stats};
use serde_json::Value;

const CASES: [&str; 4] = ["basic", "crowd", "sizes", "many"];

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coco").join(name)
}

/// Equal up to rounding: precision is tp / (tp + fp + eps), so a perfect AP is 1 - 2e-16.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn eval(gt: &str, dt: &str) -> featjnd::Result<Stats> {
    coco::evaluate(&coco::parse_gt(gt)?, &coco::parse_dt(dt)?, IouType::Bbox)
}

#[test]
fn fixtures_match_pycocotools() {
    for case in CASES {
        let exp: Value = serde_json::from_str(&std::fs::read_to_string(data(&format!("{case}.expected.json"))).unwrap()).unwrap();
        let want: Vec<f64> = exp["stats"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = coco::evaluate_files(&data(&format!("{case}.gt.json")), &data(&format!("{case}.dt.json")), IouType::Bbox).unwrap();
        let diff = got.to_array().iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        println!("{case}: max |rust - pycocotools {}| = {diff:.3e}", exp["pycocotools"]);
        assert!(diff < 1e-3, "{case}: got {:?}, pycocotools {want:?}", got.to_array());
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
    assert!(matches!(e, featjnd::Error::Arg(_) | featjnd::Error::Io(_)), "{e:?}");
    e.to_string()
}

const GT: &str = r#"{"images":[{"id":1}],"categories":[{"id":1}],
    "annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,10,10],"area":100,"iscrowd":0}]}"#;

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
    assert!(matches!(e, featjnd::Error::Io(_)) && e.to_string().contains("/nonexistent/gt.json"), "{e}");
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
fn cli_errors_exit_1() {
    let (gt, dt) = (data("basic.gt.json"), data("basic.dt.json"));
    let (gt, dt) = (gt.to_str().unwrap(), dt.to_str().unwrap());
    for (args, msg) in [
        (vec!["eval-coco", "--gt", gt, "--dt", dt, "--iou-type", "segm"], "not implemented yet"),
        (vec!["eval-coco", "--gt", dt, "--dt", dt], "invalid COCO ground truth"),
    ] {
        let o = featjnd(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.starts_with("error: ") && e.contains(msg) && !e.contains("panicked"), "{e}");
    }
}
