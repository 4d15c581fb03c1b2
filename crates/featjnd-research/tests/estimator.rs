//! The FeatJND estimator: shapes and positivity, checkpoint round trip, a few training steps of
//! the log objective that move J the way it says (grow while the constraint is slack; the
//! multiplier rises while it is violated), and a known-answer test of the sensitivity objective on
//! a toy task whose per-element sensitivity is known.

mod common;
use featjnd_research::estimator::train::{train_estimator, train_estimator_with, JndTrain, Objective};
use featjnd_research::estimator::{EstimatorConfig, JndEstimator};
use featjnd_research::model::resnet::{FmnistResNet, ResNetConfig};
use featjnd_research::model::SplitModel;
use featjnd_research::Result;
use tch::{Device, Kind, Tensor};

fn config(channels: Vec<i64>) -> EstimatorConfig {
    EstimatorConfig {
        channels,
        hidden: 8,
        floor: 1e-3,
        init: 0.05,
        model: "test".into(),
        split: "s".into(),
        scale: 1.0,
        objective: "log".into(),
        context: 0,
        sharpen: 1.0,
    }
}

#[test]
fn maps_have_the_feature_shapes_and_are_positive() {
    let _rng = common::rng_lock();
    tch::manual_seed(5);
    let feats = vec![
        Tensor::randn([2, 5, 7, 9], (Kind::Float, Device::Cpu)) * 3.0 + 1.0,
        Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu)).relu(),
    ];
    let mut est = JndEstimator::new(config(vec![5, 3]), Device::Cpu);
    est.calibrate(&feats).unwrap();
    let maps = est.forward(&feats).unwrap();
    for (j, f) in maps.iter().zip(&feats) {
        assert_eq!(j.size(), f.size());
        assert!(j.min().double_value(&[]) > 0.0);
        assert!(j.isfinite().all().int64_value(&[]) == 1);
    }
    // At initialisation J is flat at `init` channel standard deviations (weights start near 0).
    let std0 = feats[0].transpose(0, 1).reshape([5, -1]).std_dim(1, false, false);
    let ratio = (&maps[0] / std0.view([1, 5, 1, 1])).mean(Kind::Float).double_value(&[]);
    assert!((ratio - 0.05).abs() < 0.02, "J/std at init = {ratio}");
    // Wrong level count or channel count: errors.
    assert!(est.forward(&feats[..1]).is_err());
    assert!(est.forward(&[feats[1].shallow_clone(), feats[0].shallow_clone()]).is_err());
}

#[test]
fn estimator_checkpoint_round_trip() {
    let _rng = common::rng_lock();
    tch::manual_seed(6);
    let f = vec![Tensor::randn([1, 4, 6, 6], (Kind::Float, Device::Cpu))];
    let mut est = JndEstimator::new(config(vec![4]), Device::Cpu);
    est.calibrate(&f).unwrap();
    let back = round_trip(&est);
    let d = (&est.forward(&f).unwrap()[0] - &back.forward(&f).unwrap()[0]).abs().max().double_value(&[]);
    assert_eq!(d, 0.0);
}

fn tiny_model() -> FmnistResNet {
    tch::manual_seed(11);
    FmnistResNet::new(ResNetConfig { widths: [4, 8, 8], blocks: [1, 1, 1], classes: 10 }, Device::Cpu)
}

fn batches() -> impl FnMut(usize) -> Result<Tensor> {
    |step| {
        tch::manual_seed(100 + step as i64);
        Ok(Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)))
    }
}

#[test]
fn slack_constraint_lets_j_grow() {
    let _rng = common::rng_lock();
    let m = tiny_model();
    let cfg =
        JndTrain { objective: Objective::Log, steps: 25, eps: 1e9, tau: 0.0, lambda0: 0.0, hidden: 8, quiet: true, ..JndTrain::default() };
    let (_, meta, log) = train_estimator(&m, "stage1", &mut batches(), &cfg).unwrap();
    assert!(log.iter().all(|p| p.hinge == 0.0 && p.lambda == 0.0));
    assert!(log.last().unwrap().log_j > log[0].log_j + 0.1, "log J {} -> {}", log[0].log_j, log.last().unwrap().log_j);
    assert_eq!(meta.metrics["steps"], 25.0);
}

#[test]
fn violated_constraint_raises_lambda_and_shrinks_j() {
    let _rng = common::rng_lock();
    let m = tiny_model();
    // Sharpen the random classifier so that noise changes its output distribution a lot.
    tch::no_grad(|| {
        let mut w = m.vs.variables()["fc.weight"].shallow_clone();
        let _ = w.f_mul_scalar_(200.0).unwrap();
    });
    // ε = 0 and a large initial J: every sample violates; λ must rise and J must shrink.
    let cfg = JndTrain {
        objective: Objective::Log,
        steps: 25,
        eps: 0.0,
        tau: 0.0,
        init: 3.0,
        lambda0: 1.0,
        dual_lr: 50.0,
        hidden: 8,
        quiet: true,
        ..JndTrain::default()
    };
    let (_, _, log) = train_estimator(&m, "stage2", &mut batches(), &cfg).unwrap();
    assert!(log.last().unwrap().lambda > log[0].lambda);
    assert!(log.last().unwrap().log_j < log[0].log_j, "log J {} -> {}", log[0].log_j, log.last().unwrap().log_j);
    let _ = m.split_points();
}

/// A toy task with known per-element sensitivity ([`common::MeanLinear`] on `[B, 4, 5, 5]`
/// inputs) whose classifier weights on channel `k` are scaled by `A[k]`, so the discrepancy's
/// sensitivity to an element of channel `k` grows as `A[k]²`.
const A: [f64; 4] = [4.0, 0.25, 2.0, 1.0];

fn graded() -> common::MeanLinear {
    let base = (Tensor::arange(6 * 4, (Kind::Float, Device::Cpu)).view([6, 4]) * 1.7).sin() * 2.0;
    common::MeanLinear { w: base * Tensor::from_slice(&A).to_kind(Kind::Float).unsqueeze(0) }
}

/// Deterministic inputs (no global RNG): a pattern with a pseudo-random phase per step, from one
/// stationary distribution (the scale is calibrated on some batches and checked on others).
fn graded_batch(step: usize) -> Result<Tensor> {
    let n = 8 * 4 * 5 * 5;
    let phase = ((step * 7919) % 101) as f64 * 0.0622;
    Ok((Tensor::arange(n, (Kind::Float, Device::Cpu)).view([8, 4, 5, 5]) * 0.31 + phase).cos() + 0.5)
}

#[test]
fn sensitivity_objective_ranks_elements_by_true_sensitivity_and_holds_the_constraint() {
    let _rng = common::rng_lock(); // the estimator's initialisation draws from torch's RNG
    let m = graded();
    let disc = |c: &[Tensor], p: &[Tensor]| featjnd_research::estimator::discrepancy::discrepancy(m.task(), c, p);
    let cfg =
        JndTrain { objective: Objective::Sensitivity { power: 1.0 }, steps: 150, lr: 1e-2, hidden: 8, quiet: true, ..JndTrain::default() };
    let (est, meta, log) = train_estimator_with(&m, "s", &mut graded_batch, &cfg, &disc).unwrap();
    // Shape: the learned tolerance ranks the channels in the reverse order of their sensitivity
    // A[k]² on held-out inputs (another pattern than any training step's).
    let x = (Tensor::arange(2 * 4 * 5 * 5, (Kind::Float, Device::Cpu)).view([2, 4, 5, 5]) * 0.77).sin() + 0.3;
    let j = est.forward(&[x]).unwrap().remove(0);
    let per_channel: Vec<f64> = (0..4).map(|k| j.select(1, k).mean(Kind::Float).double_value(&[])).collect();
    let mut by_j: Vec<usize> = (0..4).collect();
    by_j.sort_by(|&a, &b| per_channel[b].partial_cmp(&per_channel[a]).unwrap());
    let mut by_insensitivity: Vec<usize> = (0..4).collect();
    by_insensitivity.sort_by(|&a, &b| A[a].partial_cmp(&A[b]).unwrap());
    assert_eq!(by_j, by_insensitivity, "mean J per channel {per_channel:?}");
    // The shape loss fell, and the scale holds the constraint: the bisection meets τ on its
    // calibration batches, and the hinge measured on other batches is of the same size (the
    // toy's few input patterns make that check noisy; the committed estimators are held to ±10%).
    assert!(meta.metrics["final_shape_loss"] < 0.5 * meta.metrics["first_shape_loss"], "{:?}", meta.metrics);
    let (c, h, tau) = (meta.metrics["calibration_hinge"], meta.metrics["final_hinge"], meta.metrics["tau"]);
    assert!((c - tau).abs() < 0.02 * tau, "calibration hinge {c} vs tau {tau}");
    assert!(h > 0.5 * tau && h < 2.0 * tau, "measured hinge {h} vs tau {tau}");
    assert!(log.iter().all(|p| p.lambda == 0.0 && p.shape_loss > 0.0));
    assert_eq!(est.config.objective, "sensitivity:p=1");
    assert!(est.config.scale != 1.0 && meta.config["scale"].as_f64() == Some(est.config.scale));
}

#[test]
fn objective_names_parse_and_bad_ones_are_errors() {
    assert_eq!(Objective::parse("log", 2.0).unwrap(), Objective::Log);
    assert_eq!(Objective::parse("sensitivity", 2.0).unwrap(), Objective::Sensitivity { power: 2.0 });
    assert_eq!(Objective::parse("sensitivity:1.5", 2.0).unwrap(), Objective::Sensitivity { power: 1.5 });
    assert_eq!(Objective::parse("sensitivity:p=3", 2.0).unwrap(), Objective::Sensitivity { power: 3.0 });
    for bad in ["", "Log", "sensitivity:", "sensitivity:0", "sensitivity:-1", "sensitivity:nan", "pow:2"] {
        assert!(Objective::parse(bad, 2.0).is_err(), "{bad}");
    }
    let name = Objective::Sensitivity { power: 1.5 }.name();
    assert_eq!(Objective::parse(&name, 2.0).unwrap(), Objective::Sensitivity { power: 1.5 });
}

#[test]
fn sensitivity_objective_refuses_a_zero_tau() {
    let _rng = common::rng_lock();
    let m = graded();
    let disc = |c: &[Tensor], p: &[Tensor]| featjnd_research::estimator::discrepancy::discrepancy(m.task(), c, p);
    let cfg = JndTrain { tau: 0.0, steps: 2, quiet: true, ..JndTrain::default() };
    assert!(train_estimator_with(&m, "s", &mut graded_batch, &cfg, &disc).is_err());
}

/// Issue 22's context branch: a config written before the field existed (here the committed
/// NanoDet `stage2` estimator's) reads as `context = 0`, and a config with 0 is written without
/// the field, so old checkpoints and configs are unchanged.
#[test]
fn context_old_config_deserialises_to_zero() {
    let old = r#"{"channels":[128],"floor":0.001,"hidden":32,"init":0.05,"model":"nanodet","objective":"sensitivity:p=2","scale":7.117065447538218,"split":"stage2"}"#;
    let c: EstimatorConfig = serde_json::from_str(old).unwrap();
    assert_eq!(c.context, 0);
    let back = serde_json::to_value(&c).unwrap();
    assert!(back.get("context").is_none(), "context 0 is not written: {back}");
    assert_eq!(back, serde_json::from_str::<serde_json::Value>(old).unwrap());
    let with = serde_json::to_value(EstimatorConfig { context: 4, ..c }).unwrap();
    assert_eq!(with["context"], 4);
}

/// With `context = 0` the estimator is the original network, bit for bit: its maps equal the
/// chain 1×1 conv, ReLU, 3×3 conv, ReLU, 1×1 conv written out from its own variables, and it has
/// no other variables.
#[test]
fn context_zero_is_the_original_network() {
    let _rng = common::rng_lock();
    tch::manual_seed(21);
    let f = vec![Tensor::randn([2, 6, 9, 7], (Kind::Float, Device::Cpu)) * 2.0 + 0.5];
    let mut est = JndEstimator::new(EstimatorConfig { scale: 1.7, ..config(vec![6]) }, Device::Cpu);
    est.calibrate(&f).unwrap();
    let v = est.vs.variables();
    let mut names: Vec<&String> = v.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "level.0.c1.bias",
            "level.0.c1.weight",
            "level.0.c2.bias",
            "level.0.c2.weight",
            "level.0.mean",
            "level.0.out.bias",
            "level.0.out.weight",
            "level.0.std"
        ]
    );
    // Give the weights some structure (they start near zero).
    randomize(&est);
    let v = est.vs.variables();
    let conv = |x: &Tensor, n: &str, pad: i64| {
        x.conv2d(&v[&format!("level.0.{n}.weight")], Some(&v[&format!("level.0.{n}.bias")]), [1, 1], [pad, pad], [1, 1], 1)
    };
    let (m, s) = (v["level.0.mean"].view([1, -1, 1, 1]), v["level.0.std"].view([1, -1, 1, 1]));
    let z = conv(&conv(&conv(&((&f[0] - &m) / &s), "c1", 0).relu(), "c2", 1).relu(), "out", 0);
    let want = (z.softplus() + 1e-3) * 1.7 * &s;
    let got = est.forward(&f).unwrap().remove(0);
    assert_eq!((&got - &want).abs().max().double_value(&[]), 0.0);
}

/// With `context > 0` the maps keep the input's shape for odd and tiny grids (ceil-mode pooling,
/// upsampling to exactly H×W), are positive and finite, the branch starts at zero (same maps as
/// without it, same seed), trains (gradients reach both of its convs) and survives a checkpoint
/// round trip with its config.
#[test]
fn context_branch_keeps_odd_shapes() {
    let _rng = common::rng_lock();
    for k in [2, 4, 8] {
        for (h, w) in [(1, 1), (7, 5), (17, 13), (4, 9)] {
            tch::manual_seed(31);
            let f = vec![Tensor::randn([2, 5, h, w], (Kind::Float, Device::Cpu)) * 3.0 + 1.0];
            tch::manual_seed(32);
            let mut plain = JndEstimator::new(config(vec![5]), Device::Cpu);
            tch::manual_seed(32);
            let mut est = JndEstimator::new(EstimatorConfig { context: k, ..config(vec![5]) }, Device::Cpu);
            plain.calibrate(&f).unwrap();
            est.calibrate(&f).unwrap();
            let j = est.forward(&f).unwrap().remove(0);
            assert_eq!(j.size(), f[0].size(), "context {k}, {h}×{w}");
            let d = (&j - &plain.forward(&f).unwrap()[0]).abs().max().double_value(&[]);
            assert_eq!(d, 0.0, "a fresh branch adds nothing (context {k}, {h}×{w})");
            // A non-zero branch (only its weights change): still the input's shape, positive, finite.
            tch::no_grad(|| {
                for (n, t) in est.vs.variables() {
                    if n.contains("ctx") {
                        let mut t = t;
                        let _ = t.normal_(0.0, 0.3);
                    }
                }
            });
            let (j, lj) = est.forward_log(&f).unwrap().remove(0);
            assert_eq!(j.size(), f[0].size());
            assert!(j.min().double_value(&[]) > 0.0 && j.isfinite().all().int64_value(&[]) == 1);
            assert!((&j - &plain.forward(&f).unwrap()[0]).abs().max().double_value(&[]) > 0.0, "the branch changes J");
            lj.mean(Kind::Float).backward();
            let v = est.vs.variables();
            for n in ["level.0.ctx1.weight", "level.0.ctx2.weight"] {
                let g = v[n].grad();
                assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{n} gets a gradient");
            }
            if (h, w) == (7, 5) {
                let back = round_trip(&est);
                assert_eq!(back.config.context, k);
                let d = (&est.forward(&f).unwrap()[0] - &back.forward(&f).unwrap()[0]).abs().max().double_value(&[]);
                assert_eq!(d, 0.0);
            }
        }
    }
}

/// Normal(0, 0.3) weights and biases (a fresh estimator's start near zero), from torch's RNG
/// (the caller holds `common::rng_lock`).
fn randomize(est: &JndEstimator) {
    tch::no_grad(|| {
        for (n, t) in est.vs.variables() {
            if n.ends_with("weight") || n.ends_with("bias") {
                let mut t = t;
                let _ = t.normal_(0.0, 0.3);
            }
        }
    });
}

/// The estimator saved to a checkpoint and loaded back.
fn round_trip(est: &JndEstimator) -> JndEstimator {
    reload(est).unwrap()
}

/// The estimator saved to a checkpoint and loaded back, or the load's error.
fn reload(est: &JndEstimator) -> featjnd_research::Result<JndEstimator> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.safetensors");
    let meta = featjnd_research::model::checkpoint::Meta::new(
        featjnd_research::estimator::ARCH,
        serde_json::to_value(&est.config).unwrap(),
        vec!["s".into()],
    );
    est.save(&meta, &p).unwrap();
    Ok(JndEstimator::load(&p, Device::Cpu)?.0)
}

/// The sharpening exponent (docs/real-backbones.md §1): `J = s·std·u^a`, known answer against the
/// same estimator at `a = 1`; configs written before it existed read as 1 and are written back
/// unchanged; it survives a checkpoint round trip; a checkpoint with a bad exponent is refused.
#[test]
fn sharpen_is_a_power_of_the_unit_map() {
    let old = r#"{"channels":[128],"floor":0.001,"hidden":32,"init":0.05,"model":"nanodet","objective":"sensitivity:p=2","scale":7.117065447538218,"split":"stage2"}"#;
    let c: EstimatorConfig = serde_json::from_str(old).unwrap();
    assert_eq!(c.sharpen, 1.0);
    assert_eq!(serde_json::to_value(&c).unwrap(), serde_json::from_str::<serde_json::Value>(old).unwrap());

    let _rng = common::rng_lock();
    tch::manual_seed(41);
    let f = vec![Tensor::randn([2, 6, 9, 7], (Kind::Float, Device::Cpu)) * 2.0 + 0.5];
    let mut est = JndEstimator::new(EstimatorConfig { scale: 1.7, ..config(vec![6]) }, Device::Cpu);
    est.calibrate(&f).unwrap();
    randomize(&est);
    let std = est.vs.variables()["level.0.std"].view([1, -1, 1, 1]);
    let j1 = est.forward(&f).unwrap().remove(0);
    let unit = &j1 / (&std * 1.7);
    for a in [0.5, 2.0, 3.0] {
        est.config.sharpen = a;
        let got = est.forward(&f).unwrap().remove(0);
        let want = unit.pow_tensor_scalar(a) * 1.7 * &std;
        let rel = ((&got - &want).abs() / &want).max().double_value(&[]);
        assert!(rel < 1e-5, "a = {a}: relative error {rel}");
        // The quantization rules' maps keep the trained shape at the same scale.
        assert_eq!((est.forward_for_steps(&f).unwrap().remove(0) - &j1).abs().max().double_value(&[]), 0.0);
        let (mut both, mut steps) = est.forward_and_steps(&f).unwrap();
        assert_eq!((both.remove(0) - &got).abs().max().double_value(&[]), 0.0);
        assert_eq!((steps.remove(0) - &j1).abs().max().double_value(&[]), 0.0);
        let back = round_trip(&est);
        assert_eq!(back.config.sharpen, a);
        assert_eq!((back.forward(&f).unwrap().remove(0) - &got).abs().max().double_value(&[]), 0.0);
    }
    for bad in [0.0, -1.0] {
        est.config.sharpen = bad;
        let e = reload(&est).err().expect("refused");
        assert!(e.to_string().contains("sharpen"), "{e}");
    }
}
