//! The FeatJND estimator: shapes and positivity, checkpoint round trip, and a few training steps
//! that move J the way the objective says (grow while the constraint is slack; the multiplier
//! rises while it is violated).

mod common;
use featjnd_research::estimator::train::{train_estimator, JndTrain};
use featjnd_research::estimator::{EstimatorConfig, JndEstimator};
use featjnd_research::model::resnet::{FmnistResNet, ResNetConfig};
use featjnd_research::model::SplitModel;
use featjnd_research::Result;
use tch::{Device, Kind, Tensor};

fn config(channels: Vec<i64>) -> EstimatorConfig {
    EstimatorConfig { channels, hidden: 8, floor: 1e-3, init: 0.05, model: "test".into(), split: "s".into() }
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
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.safetensors");
    let meta = featjnd_research::model::checkpoint::Meta::new(
        featjnd_research::estimator::ARCH,
        serde_json::to_value(&est.config).unwrap(),
        vec!["s".into()],
    );
    est.save(&meta, &p).unwrap();
    let (back, _) = JndEstimator::load(&p, Device::Cpu).unwrap();
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
    let cfg = JndTrain { steps: 25, eps: 1e9, tau: 0.0, lambda0: 0.0, hidden: 8, quiet: true, ..JndTrain::default() };
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
    let cfg =
        JndTrain { steps: 25, eps: 0.0, tau: 0.0, init: 3.0, lambda0: 1.0, dual_lr: 50.0, hidden: 8, quiet: true, ..JndTrain::default() };
    let (_, _, log) = train_estimator(&m, "stage2", &mut batches(), &cfg).unwrap();
    assert!(log.last().unwrap().lambda > log[0].lambda);
    assert!(log.last().unwrap().log_j < log[0].log_j, "log J {} -> {}", log[0].log_j, log.last().unwrap().log_j);
    let _ = m.split_points();
}
