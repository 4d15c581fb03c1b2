//! Task models and checkpoints: split consistency, atomic safetensors checkpoints with metadata,
//! clear errors (and an untouched model) on corrupted or mismatched files, a tiny training run.

mod common;
use featjnd_research::model::checkpoint::{self, Meta};
use featjnd_research::model::detector::{DetConfig, ShapesDetector};
use featjnd_research::model::resnet::{FmnistResNet, ResNetConfig, ARCH};
use featjnd_research::model::SplitModel;
use featjnd_research::Error;
use tch::{Device, Kind, Tensor};

fn model(seed: i64) -> FmnistResNet {
    tch::manual_seed(seed);
    FmnistResNet::new(ResNetConfig::default(), Device::Cpu)
}

fn meta() -> Meta {
    let mut m = Meta::new(ARCH, serde_json::to_value(ResNetConfig::default()).unwrap(), vec!["stage1".into(), "stage2".into()]);
    m.metrics.insert("test_top1".into(), 0.5);
    m.data_seed = 9;
    m
}

fn input() -> Tensor {
    tch::manual_seed(77);
    Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu))
}

#[test]
fn fmnist_splits_compose_to_the_whole_network() {
    let _rng = common::rng_lock();
    let m = model(1);
    let x = input();
    let full = m.forward(&x).unwrap().remove(0);
    assert_eq!(m.split_points(), vec!["stage1", "stage2"]);
    for (s, shape) in [("stage1", [3, 16, 28, 28]), ("stage2", [3, 32, 14, 14])] {
        let f = m.head(&x, s).unwrap();
        assert_eq!(f[0].size(), shape);
        let y = m.tail(&f, s).unwrap().remove(0);
        let d = (&y - &full).abs().max().double_value(&[]);
        assert!(d <= 1e-5, "{s}: {d}");
    }
    assert!(matches!(m.head(&x, "stage9"), Err(Error::Model(_))));
    assert!(m.tail(&[], "stage1").is_err());
}

#[test]
fn checkpoint_round_trip_keeps_weights_and_metadata() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/m.safetensors");
    let a = model(1);
    checkpoint::save(&a.vs, &meta(), &path).unwrap();
    // Nothing but the checkpoint is left in the directory (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.safetensors")]);
    let mut b = model(2);
    let x = input();
    let before = (b.forward_t(&x, false) - a.forward_t(&x, false)).abs().max().double_value(&[]);
    assert!(before > 0.0, "two seeds must differ for this test to mean anything");
    let m = checkpoint::load(&mut b.vs, ARCH, &path).unwrap();
    assert_eq!(m, meta());
    assert_eq!(checkpoint::read_meta(&path).unwrap(), meta());
    let d = (b.forward_t(&x, false) - a.forward_t(&x, false)).abs().max().double_value(&[]);
    assert_eq!(d, 0.0);
}

fn expect_checkpoint_error(r: featjnd_research::Result<Meta>, needle: &str) {
    match r {
        Err(Error::Checkpoint { why, .. }) => assert!(why.contains(needle), "{why:?} should mention {needle:?}"),
        other => panic!("expected a checkpoint error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_checkpoints_are_clear_errors_and_leave_the_model_untouched() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    checkpoint::save(&model(1).vs, &meta(), &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let mut b = model(2);
    let x = input();
    let y0 = b.forward_t(&x, false);

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    expect_checkpoint_error(checkpoint::load(&mut b.vs, ARCH, &truncated), "not a valid safetensors");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a checkpoint").unwrap();
    expect_checkpoint_error(checkpoint::load(&mut b.vs, ARCH, &garbage), "not a valid safetensors");

    expect_checkpoint_error(checkpoint::load(&mut b.vs, "shapes-det", &good), "expected \"shapes-det\"");
    expect_checkpoint_error(checkpoint::load(&mut b.vs, ARCH, &dir.path().join("absent.safetensors")), "cannot read");

    // A checkpoint of a wider network: the mismatched variable is named.
    let wide = dir.path().join("wide.safetensors");
    let w = FmnistResNet::new(ResNetConfig { widths: [8, 32, 64], ..ResNetConfig::default() }, Device::Cpu);
    checkpoint::save(&w.vs, &meta(), &wide).unwrap();
    expect_checkpoint_error(checkpoint::load(&mut b.vs, ARCH, &wide), "the model wants F32");

    // A detector checkpoint labelled as this architecture: missing and unexpected variables.
    let other = dir.path().join("other.safetensors");
    checkpoint::save(&ShapesDetector::new(DetConfig::default(), Device::Cpu).vs, &meta(), &other).unwrap();
    let err = checkpoint::load(&mut b.vs, ARCH, &other).unwrap_err().to_string();
    assert!(err.contains("missing variables") || err.contains("wants F32"), "{err}");

    // Valid safetensors without featjnd metadata.
    let plain = dir.path().join("plain.safetensors");
    let t = Tensor::from_slice(&[1f32, 2.0]);
    Tensor::write_safetensors(&[("x", &t)], &plain).unwrap();
    expect_checkpoint_error(checkpoint::load(&mut b.vs, ARCH, &plain), "no featjnd metadata");

    let d = (b.forward_t(&x, false) - y0).abs().max().double_value(&[]);
    assert_eq!(d, 0.0, "a failed load must not change the model");
}

#[test]
fn saving_into_an_impossible_place_is_an_error() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let r = checkpoint::save(&model(1).vs, &meta(), &blocker.join("m.safetensors"));
    assert!(r.is_err());
}

#[test]
fn a_few_fmnist_steps_train_and_checkpoint() {
    let _rng = common::rng_lock();
    use featjnd_research::train::classify::{train_fmnist, FmnistTrain};
    let Ok(_) = featjnd_research::data::fashion_mnist::FashionMnist::load(featjnd_research::data::fashion_mnist::Split::Test) else {
        common::skip!("SKIP: Fashion-MNIST not installed (scripts/setup.sh installs it)");
        return;
    };
    let cfg = FmnistTrain { max_steps: Some(40), test_limit: Some(300), batch: 32, quiet: true, ..FmnistTrain::default() };
    let (m, meta) = train_fmnist(&cfg, ResNetConfig { widths: [8, 16, 16], blocks: [1, 1, 1], classes: 10 }, Device::Cpu).unwrap();
    let top1 = meta.metrics["test_top1"];
    assert!(top1.is_finite() && (0.0..=1.0).contains(&top1));
    // 40 steps of SGD take a random 10-class network above chance on held-out images.
    assert!(top1 > 0.3, "top-1 after 40 steps: {top1}");
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(&m.vs, &meta, &dir.path().join("m.safetensors")).unwrap();
}
