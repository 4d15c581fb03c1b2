//! The shapes detector's targets, decoder and split: targets fed back as "perfect outputs" must
//! decode to the ground truth (so a trained model's AP measures the model, not the plumbing).

mod common;
use featjnd_research::data::shapes::SceneConfig;
use featjnd_research::eval::detect::{decode, ground_truth, score, to_coco, DecodeParams};
use featjnd_research::model::detector::{DetConfig, ShapesDetector};
use featjnd_research::model::SplitModel;
use featjnd_research::train::detect::{images, loss, scenes, targets, Targets};
use tch::{Device, Kind, Tensor};

/// Logits that decode to the targets: peaks at +∞-ish, background far below, exact boxes/votes.
fn oracle(t: &Targets) -> Vec<Tensor> {
    let heat = (t.heat.clamp(1e-6, 1.0 - 1e-6).logit(None)) * 1.0;
    let fg = (&t.fg - 0.5) * 20.0;
    vec![heat, t.bx.shallow_clone(), Tensor::cat(&[fg, t.vote.shallow_clone()], 1)]
}

#[test]
fn targets_decode_to_the_ground_truth() {
    let _rng = common::rng_lock();
    let cfg = SceneConfig::default();
    let sc = scenes(11, 0, 24, &cfg);
    let t = targets(&sc, 6);
    let dets = decode(&oracle(&t), 128, 128, DecodeParams::default()).unwrap();
    let (bbox, segm) = score(&ground_truth(&sc).unwrap(), &to_coco(&dets, 128, 128)).unwrap();
    eprintln!("oracle box AP {:.3} AP50 {:.3}; mask AP {:.3} AP50 {:.3}", bbox.ap, bbox.ap50, segm.ap, segm.ap50);
    assert!(bbox.ap50 > 0.97, "box AP50 of the targets themselves: {}", bbox.ap50);
    assert!(bbox.ap > 0.9, "box AP of the targets themselves: {}", bbox.ap);
    assert!(segm.ap50 > 0.9, "mask AP50 of the targets themselves: {}", segm.ap50);
}

#[test]
fn split_points_compose_to_the_whole_network() {
    let _rng = common::rng_lock();
    tch::manual_seed(3);
    let m = ShapesDetector::new(DetConfig::default(), Device::Cpu);
    let x = images(&scenes(5, 0, 2, &SceneConfig::default()));
    let full = m.forward(&x).unwrap();
    for s in m.split_points() {
        let f = m.head(&x, &s).unwrap();
        let out = m.tail(&f, &s).unwrap();
        for (a, b) in out.iter().zip(&full) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d <= 1e-5, "split {s}: |tail(head(x)) - forward(x)| = {d}");
        }
    }
    assert_eq!(m.head(&x, "fpn").unwrap().len(), 3);
    assert!(m.head(&x, "nope").is_err());
    assert!(m.tail(&m.head(&x, "stem").unwrap(), "fpn").is_err(), "wrong number of feature tensors");
}

#[test]
fn a_few_steps_lower_the_loss() {
    let _rng = common::rng_lock();
    use tch::nn::OptimizerConfig;
    tch::manual_seed(1);
    let m = ShapesDetector::new(DetConfig::default(), Device::Cpu);
    let mut opt = tch::nn::Adam::default().build(&m.vs, 2e-3).unwrap();
    let sc = scenes(2, 0, 4, &SceneConfig::default());
    let (x, t) = (images(&sc), targets(&sc, 6));
    let first = loss(&m.forward_t(&x, true), &t).0.double_value(&[]);
    for _ in 0..8 {
        let (l, _) = loss(&m.forward_t(&x, true), &t);
        opt.backward_step(&l);
    }
    let last = loss(&m.forward_t(&x, true), &t).0.double_value(&[]);
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    assert!(last.is_finite() && t.heat.max().double_value(&[]) == 1.0);
    let _ = Kind::Float;
}

#[test]
fn masks_stay_inside_their_boxes_when_clipped() {
    let _rng = common::rng_lock();
    // Oracle outputs with the boxes shrunk by a third: with box_margin 0 every mask pixel must lie
    // inside its (shrunk) box; without the clip, the masks spill out of them.
    let sc = scenes(12, 0, 6, &SceneConfig::default());
    let t = targets(&sc, 6);
    let mut out = oracle(&t);
    out[1] = Tensor::cat(&[out[1].narrow(1, 0, 2) + (2.0f64 / 3.0).ln(), out[1].narrow(1, 2, 2)], 1);
    let outside = |p: DecodeParams| -> usize {
        let dets = decode(&out, 128, 128, p).unwrap();
        let mut n = 0;
        for d in dets.iter().flatten() {
            let [x0, y0, w, h] = d.bbox;
            for (q, &m) in d.mask.iter().enumerate() {
                let (x, y) = ((q % 128) as f32 + 0.5, (q / 128) as f32 + 0.5);
                n += (m == 1 && !(x >= x0 && x <= x0 + w && y >= y0 && y <= y0 + h)) as usize;
            }
        }
        n
    };
    assert_eq!(outside(DecodeParams { box_margin: 0.0, ..DecodeParams::default() }), 0);
    assert!(outside(DecodeParams { box_margin: f32::INFINITY, ..DecodeParams::default() }) > 0);
}

#[test]
fn a_time_limit_ends_training_early_and_is_recorded() {
    let _rng = common::rng_lock();
    use featjnd_research::train::detect::{train_shapes, DetTrain};
    let cfg = DetTrain { steps: 100_000, batch: 2, eval_scenes: 4, time_limit: Some(1.0), quiet: true, ..DetTrain::default() };
    let (_, meta) = train_shapes(&cfg, DetConfig::default(), Device::Cpu).unwrap();
    let steps = meta.metrics["train_steps"];
    assert!((1.0..100_000.0).contains(&steps), "train_steps {steps}");
    assert_eq!(meta.metrics["batch"], 2.0);
}
