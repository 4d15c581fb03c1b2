//! The study machinery: every noise shape lands on the requested per-sample NRMSE (measured on the
//! produced perturbations), rank correlation, and a quick `featjnd run` that writes a complete
//! report (files exist, JSON parses, numbers finite).

mod common;
use featjnd_research::study::attrib::spearman;
use featjnd_research::study::perturb::{perturb_levels, NoiseShape, Point, SplitCurves};
use featjnd_research::study::run::{goal, versus_others};
use featjnd_research::study::stats::{interval95, resamples};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

#[test]
fn every_shape_matches_the_requested_nrmse_per_sample_and_level() {
    let _rng = common::rng_lock();
    tch::manual_seed(21);
    // Odd sizes, a ReLU level with exact zeros, and a level of a very different scale.
    let feats = vec![
        Tensor::randn([3, 7, 5, 3], (Kind::Float, Device::Cpu)).relu(),
        Tensor::randn([3, 2, 17, 1], (Kind::Float, Device::Cpu)) * 1e3,
    ];
    let jnd: Vec<Tensor> = feats.iter().map(|f| f.rand_like() + 0.01).collect();
    for shape in NoiseShape::ALL {
        for r in [0.05, 0.3, 1.0] {
            let p = perturb_levels(&feats, &jnd, shape, r, 4, 0).unwrap();
            for (f, q) in feats.iter().zip(&p) {
                let num = (q - f).flatten(1, -1).square().sum_dim_intlist(1, false, Kind::Double);
                let den = f.flatten(1, -1).square().sum_dim_intlist(1, false, Kind::Double);
                let nr = Vec::<f64>::try_from((num / den).sqrt()).unwrap();
                for v in nr {
                    assert!((v - r).abs() < 1e-4 * r.max(1.0), "{shape:?} r={r}: measured {v}");
                }
            }
        }
    }
    // Different shapes really are different perturbations.
    let a = perturb_levels(&feats, &jnd, NoiseShape::FeatJnd, 0.3, 4, 0).unwrap();
    let b = perturb_levels(&feats, &jnd, NoiseShape::Gaussian, 0.3, 4, 0).unwrap();
    assert!((&a[0] - &b[0]).abs().max().double_value(&[]) > 0.0);
    // The magnitude shape leaves exact zeros (almost) untouched.
    let m = perturb_levels(&feats, &jnd, NoiseShape::Magnitude, 0.3, 4, 0).unwrap();
    let zeros = feats[0].eq(0.0);
    let moved = m[0].masked_select(&zeros).abs().max().double_value(&[]);
    let scale = feats[0].abs().max().double_value(&[]);
    assert!(moved < 1e-4 * scale, "zeros moved by {moved}");
}

#[test]
fn spearman_known_answers() {
    let _rng = common::rng_lock();
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    // Monotone but non-linear: still 1.
    assert!((spearman(&[1.0, 2.0, 3.0], &[1.0, 8.0, 27.0]) - 1.0).abs() < 1e-12);
    // Ties get average ranks: x = [1, 2, 2, 3], y = [1, 2, 3, 4] -> rho = 0.9486833.
    assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.9486832980505138).abs() < 1e-9);
    assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
}

/// Every number in `v` is finite (NaN/inf would be serialised as null by serde_json: none allowed
/// except where a metric is legitimately undefined, which the report never produces).
fn assert_finite(v: &serde_json::Value, path: &str) {
    match v {
        serde_json::Value::Number(n) => assert!(n.as_f64().is_some_and(f64::is_finite), "{path}: {n}"),
        serde_json::Value::Null => panic!("{path}: null (a NaN or infinity?)"),
        serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| assert_finite(x, &format!("{path}[{i}]"))),
        serde_json::Value::Object(o) => o.iter().filter(|(k, _)| *k != "seed").for_each(|(k, x)| assert_finite(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

/// The main job's smoke test: `featjnd run --quick` on the committed models writes a complete report.
#[test]
fn featjnd_run_quick_writes_a_complete_report() {
    let _rng = common::rng_lock();
    let root = featjnd_research::paths::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_featjnd"))
        .current_dir(root)
        .args(["run", "--quick", "--quiet", "--tasks", "fmnist,shapes,mobilenet", "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "featjnd run --quick failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for task in ["fmnist", "shapes"] {
        let t = &summary["tasks"][task];
        assert!(t.is_object() && t.get("skipped").is_none(), "{task} missing or skipped: {t}");
        assert!(report.contains(&format!("## Task `{task}`")));
    }
    let fm = &summary["tasks"]["fmnist"]["stage1"];
    for shape in ["featjnd", "gaussian", "uniform", "magnitude"] {
        let pts = fm["curves"][shape].as_array().unwrap();
        assert_eq!(pts.len(), 2);
        // The measured NRMSE of the produced perturbations is the requested one.
        for p in pts {
            let (r, m) = (p["nrmse"].as_f64().unwrap(), p["measured_nrmse"].as_f64().unwrap());
            assert!((r - m).abs() < 1e-4 * r.max(1.0), "{shape}: requested {r}, measured {m}");
        }
    }
    assert!(!fm["quant"]["points"].as_array().unwrap().is_empty());
    for t in summary["tasks"].as_object().unwrap().values() {
        if t.get("skipped").is_none() {
            assert_finite(t, "tasks");
        }
    }
    // Every image the report embeds exists and is a PNG.
    let mut n = 0;
    for line in report.lines().filter(|l| l.starts_with("![")) {
        let file = &line[line.find("](").unwrap() + 2..line.len() - 1];
        let bytes = std::fs::read(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{file}");
        n += 1;
    }
    assert!(n >= 10, "only {n} images in the report");
}

/// A curve point of per-image agreement `v` (its mean and bootstrap interval from `reps`).
fn point(r: f64, v: &[f64], reps: &[Vec<usize>]) -> Point {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let boot: Vec<f64> = reps.iter().map(|i| i.iter().map(|&k| v[k]).sum::<f64>() / i.len() as f64).collect();
    let one = |x: f64| BTreeMap::from([("agreement".to_string(), x)]);
    Point {
        nrmse: r,
        measured_nrmse: r,
        mean: one(m),
        min: one(m),
        max: one(m),
        ci95: BTreeMap::from([("agreement".to_string(), interval95(&boot).unwrap())]),
        per_image: BTreeMap::from([("agreement".to_string(), v.to_vec())]),
        replicates: BTreeMap::new(),
    }
}

/// The goal row's drops, their bootstrap intervals and the "win" rule (intervals separate), on
/// hand-made per-image values: deterministic, no model.
#[test]
fn goal_rows_carry_bootstrap_intervals_and_count_wins_only_when_they_separate() {
    let n = 60;
    let reps = resamples(n, 200, 12);
    // Gaussian: 3 of 60 images flip at r = 0.1, 30 at r = 0.5; FeatJND: 0 and 1; uniform: 0 and 29.
    let hits = |wrong: usize| (0..n).map(|i| if i < wrong { 0.0 } else { 1.0 }).collect::<Vec<f64>>();
    let curve = |a: usize, b: usize| vec![point(0.1, &hits(a), &reps), point(0.5, &hits(b), &reps)];
    let curves = BTreeMap::from([
        ("featjnd".to_string(), curve(0, 1)),
        ("gaussian".to_string(), curve(3, 30)),
        ("uniform".to_string(), curve(0, 29)),
    ]);
    let c = SplitCurves {
        clean: BTreeMap::from([("agreement".to_string(), 1.0)]),
        curves,
        clean_per_image: BTreeMap::from([("agreement".to_string(), vec![1.0; n])]),
        clean_replicates: BTreeMap::new(),
        resamples: reps.clone(),
    };
    let g = goal(&c, "agreement", 0.10).unwrap();
    assert_eq!(g.nrmse, 0.5);
    assert!((g.gaussian - 0.5).abs() < 1e-12 && (g.featjnd - 1.0 / 60.0).abs() < 1e-12, "{g:?}");
    let (glo, ghi) = g.gaussian_ci.unwrap();
    let (jlo, jhi) = g.featjnd_ci.unwrap();
    assert!(glo < 0.5 && 0.5 < ghi && jlo <= 1.0 / 60.0 && 1.0 / 60.0 <= jhi, "{g:?}");
    // The drop interval of an agreement is 1 − the metric's interval.
    let m = c.curves["gaussian"][1].ci95["agreement"];
    assert!((glo - (1.0 - m.1)).abs() < 1e-12 && (ghi - (1.0 - m.0)).abs() < 1e-12);
    assert_eq!(g.separated(), Some(true));
    // Paired: FeatJND's drop minus Gaussian's on the same resamples, entirely below 0.
    let (plo, phi) = g.paired_ci.unwrap();
    assert!(plo < g.featjnd - g.gaussian && g.featjnd - g.gaussian < phi && phi < 0.0, "{g:?}");
    assert_eq!(goal(&c, "agreement", 0.10), goal(&c, "agreement", 0.10), "seeded: the same intervals every time");
    // Gaussian at r = 0.1 loses 5 points: FeatJND (0 lost) separates from neither shape there
    // (3 of 60 is within the resampling noise of 0), beats both at 0.5.
    assert_eq!(versus_others(&c, "agreement"), (2, 2, 0));
    // Without per-image values (detection AP) there is no interval and no win.
    let mut d = c.clone();
    d.clean_per_image.clear();
    let g = goal(&d, "agreement", 0.10).unwrap();
    assert_eq!((g.gaussian_ci, g.featjnd_ci, g.paired_ci, g.separated()), (None, None, None, None));
    // A metric scored again per replicate (detection AP) carries the same intervals as per-image
    // means do when each replicate's value is that mean.
    let mean_on = |v: &[f64]| reps.iter().map(|i| i.iter().map(|&k| v[k]).sum::<f64>() / i.len() as f64).collect::<Vec<f64>>();
    let mut e = d.clone();
    e.clean_replicates.insert("agreement".into(), mean_on(&vec![1.0; n]));
    for pts in e.curves.values_mut() {
        for p in pts.iter_mut() {
            let v = p.per_image.remove("agreement").unwrap();
            p.replicates.insert("agreement".into(), mean_on(&v));
        }
    }
    let (a, b) = (goal(&c, "agreement", 0.10).unwrap(), goal(&e, "agreement", 0.10).unwrap());
    // Equal up to rounding: mean(c) − mean(p) here, mean(c − p) there.
    for (x, y) in [(a.gaussian_ci, b.gaussian_ci), (a.featjnd_ci, b.featjnd_ci), (a.paired_ci, b.paired_ci)] {
        let ((x0, x1), (y0, y1)) = (x.unwrap(), y.unwrap());
        assert!((x0 - y0).abs() < 1e-12 && (x1 - y1).abs() < 1e-12, "{x:?} vs {y:?}");
    }
    assert_eq!(b.separated(), Some(true));
}
