//! A user's model that does not fit, through the commands (docs/user-models.md): every case stops before any
//! work with a non-zero exit, a one-line `error: …` on stderr, and no output written; and a
//! dense-output model declared as such goes through every command. The pairs
//! are tiny TorchScript modules written by `tests/data/user/bad_pairs.py` with Debian's
//! python3-torch (`$FEATJND_TORCH_PYTHON`, else `/usr/bin/python3`); without it the tests print a
//! SKIP line and pass.
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The folder holding the pairs of `bad_pairs.py` (`good`, `dense`, `det`, `raises`, `nan_head`,
/// `typo`, `no_tail`, `dense_softmax`, `dense_two`, `dense_wrong`, `dense_no_outputs`)
/// and the photo folders (`photos`: four 40×48 RGB photos; `tiny`: those and a 1×1 one; `grey`:
/// two grey-scale ones), or why not.
fn fixtures() -> &'static Result<PathBuf, String> {
    static F: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    F.get_or_init(|| {
        let py = common::torch_python_with("torch")?;
        // Kept for the whole test process (the OnceLock never drops it).
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/user/bad_pairs.py");
        let o = Command::new(&py).arg(&script).arg(&dir).output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            panic!("bad_pairs.py failed:\n{}", String::from_utf8_lossy(&o.stderr));
        }
        for sub in ["photos", "tiny", "grey"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for i in 0..4u32 {
            let img = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5 + i * 40) as u8, (y * 6) as u8, ((x + y) * 3) as u8]));
            img.save(dir.join("photos").join(format!("p{i}.png"))).unwrap();
            img.save(dir.join("tiny").join(format!("p{i}.png"))).unwrap();
        }
        image::RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9])).save(dir.join("tiny").join("dot.png")).unwrap();
        for i in 0..2u32 {
            image::GrayImage::from_fn(48, 40, |x, y| image::Luma([(x * 4 + y + i * 30) as u8]))
                .save(dir.join("grey").join(format!("g{i}.png")))
                .unwrap();
        }
        Ok(dir)
    })
}

fn fixtures_or_skip(test: &str) -> Option<PathBuf> {
    match fixtures() {
        Ok(d) => Some(d.clone()),
        Err(why) => {
            common::skip!("SKIP {test}: {why}");
            None
        }
    }
}

fn featjnd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_featjnd")).args(args).output().expect("running featjnd")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `args` (with `OUT` replaced by a fresh path) and checks the failure: non-zero exit, one
/// line on stderr starting `error:` and containing every needle, nothing on stdout, `OUT` not
/// created. Returns the message.
fn fails_cleanly(args: &[&str], needles: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args: Vec<&str> = args.iter().map(|&a| if a == "OUT" { s(&out) } else { a }).collect();
    let o = featjnd(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "featjnd {args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "featjnd {args:?}: one line expected, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "featjnd {args:?}: {n:?} not in {err}");
    }
    assert!(o.stdout.is_empty(), "featjnd {args:?} printed {}", String::from_utf8_lossy(&o.stdout));
    assert!(!out.exists(), "featjnd {args:?} wrote {}", out.display());
    lines[0].to_string()
}

#[test]
fn a_model_that_does_not_fit_stops_before_any_work() {
    let Some(d) = fixtures_or_skip("a_model_that_does_not_fit_stops_before_any_work") else { return };
    let photos = d.join("photos");
    let m = |name: &str| d.join(name);
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        // A dense tail under the default `classification`: the shapes and the field to set.
        (m("dense"), vec!["[1, 2, 112, 112]", "not [B, classes] logits", "`task`", "split.json", "`dense`"]),
        (m("det"), vec!["[1, 10]", "detection-segmentation", "`task`"]),
        (m("raises"), vec!["tail.pt", "this tail always fails"]),
        (m("nan_head"), vec!["head.pt", "not finite"]),
        (m("typo"), vec!["split.json", "unknown field `taks`"]),
        (m("no_tail"), vec!["tail.pt", "file not found"]),
        // A dense task whose `outputs` do not match what the tail returns, or are missing.
        (m("dense_wrong"), vec!["[1, 3, 112, 112], [1, 1, 112, 112]", "`outputs`", "sigmoid"]),
        (m("dense_no_outputs"), vec!["split.json", "task `dense` needs `outputs`"]),
    ];
    for (model, needles) in &cases {
        let (model, photos) = (s(model), s(&photos));
        fails_cleanly(&["run", "--model", model, "--images", photos, "--quick", "--quiet", "--out", "OUT"], needles);
        fails_cleanly(&["train-jnd", "--model", model, "--images", photos, "--steps", "1", "--quiet", "--out", "OUT"], needles);
        fails_cleanly(&["encode", "--model", model, "--out", "OUT", &format!("{photos}/p0.png")], needles);
    }
}

#[test]
fn a_photo_too_small_is_an_error_and_grey_photos_are_converted() {
    let Some(d) = fixtures_or_skip("a_photo_too_small_is_an_error_and_grey_photos_are_converted") else { return };
    let good = d.join("good");
    let tiny = d.join("tiny");
    fails_cleanly(&["run", "--model", s(&good), "--images", s(&tiny), "--quick", "--quiet", "--out", "OUT"], &["dot.png", "1x1"]);
    fails_cleanly(&["encode", "--model", s(&good), "--out", "OUT", s(&tiny.join("dot.png"))], &["dot.png", "1x1"]);
    // Grey-scale PNGs are photos like any other (converted to RGB, as `run --images` does for
    // the bundled tasks): a one-step estimator trains on them.
    let tmp = tempfile::tempdir().unwrap();
    let est = tmp.path().join("e.safetensors");
    let o = featjnd(&["train-jnd", "--model", s(&good), "--images", s(&d.join("grey")), "--steps", "1", "--quiet", "--out", s(&est)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(est.is_file());
}

#[test]
fn a_dense_model_goes_through_every_command() {
    let Some(d) = fixtures_or_skip("a_dense_model_goes_through_every_command") else { return };
    let (photos, tmp) = (d.join("photos"), tempfile::tempdir().unwrap());
    for name in ["dense_softmax", "dense_two"] {
        let model = d.join(name);
        let est = tmp.path().join(format!("{name}.safetensors"));
        let ok = |args: &[&str]| -> serde_json::Value {
            let o = featjnd(args);
            assert!(o.status.success(), "featjnd {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice(&o.stdout).unwrap()
        };
        ok(&["train-jnd", "--model", s(&model), "--images", s(&photos), "--steps", "3", "--quiet", "--out", s(&est)]);
        assert!(est.is_file());
        let out = tmp.path().join(format!("{name}-run"));
        ok(&["run", "--model", s(&model), "--images", s(&photos), "--jnd", s(&est), "--quick", "--quiet", "--out", s(&out)]);
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["user"]["task"], "dense");
        let split = &summary["tasks"]["user-dense"]["split"];
        for metric in ["agreement", "iou", "psnr", "rel_l2"] {
            let clean = split["clean"][metric].as_f64().unwrap_or(f64::NAN);
            assert!(clean.is_finite(), "{name}: clean {metric} = {clean}");
        }
        // Against itself the clean output agrees fully; the Gaussian curve is a real measurement.
        assert_eq!(split["clean"]["agreement"], 1.0);
        for p in split["curves"]["gaussian"].as_array().unwrap() {
            let a = p["mean"]["agreement"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{name}: agreement {a}");
        }
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(report.contains("Dense outputs"), "{report}");
        // Attribution pictures exist for a dense tail too (target: every pixel's largest logit).
        assert!(report.contains("![attribution"), "{report}");
        let enc = tmp.path().join(format!("{name}-fjq"));
        let e = ok(&["encode", "--model", s(&model), "--jnd", s(&est), "--out", s(&enc), s(&photos.join("p0.png"))]);
        let f = &e["files"][0];
        assert_eq!(f["strategy"], "jnd-g0.25");
        assert!((f["relative_mse"].as_f64().unwrap() - 0.03).abs() < 0.003, "{f}");
    }
}
