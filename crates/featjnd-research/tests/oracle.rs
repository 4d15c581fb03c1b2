//! The oracle control of the perturbation study and the real-ground-truth parsers.
//!
//! The oracle is checked on a model whose answer is known: a linear classifier that reads only
//! the first half of the feature channels. The task's gradients are zero on the other half, so the
//! oracle must put its noise there (`J` at the floor's ceiling `1/c`), and at equal NRMSE its
//! noise must change the output far less than Gaussian noise does.

mod common;
use featjnd_research::study::oracle;
use featjnd_research::study::perturb::{perturb_levels, NoiseShape};
use featjnd_research::study::real_gt::{parse_coco, parse_voc};
use featjnd_research::study::tasks::{Scorer, Task, TaskId};
use tch::{Device, Kind, Tensor};

const C: i64 = 8;

fn task() -> Task {
    // Deterministic weights: 5 classes, reading channels 0..C/2 only.
    let w = Tensor::arange(5 * C, (Kind::Float, Device::Cpu)).view([5, C]).sin() * 3.0;
    let mask = Tensor::cat(&[Tensor::ones([C / 2], (Kind::Float, Device::Cpu)), Tensor::zeros([C / 2], (Kind::Float, Device::Cpu))], 0);
    let w = w * mask.unsqueeze(0);
    let x = (Tensor::arange(2 * C * 5 * 3, (Kind::Float, Device::Cpu)).view([2, C, 5, 3]) * 0.37).cos() + 0.2;
    Task {
        id: TaskId::Fmnist,
        // `tail(f) = W · mean_hw(f)` with `W` zero on channels `C/2..C`.
        model: Box::new(common::MeanLinear { w }),
        eval: vec![x],
        scorer: Scorer::Unlabelled,
        samples: Vec::new(),
        train: Box::new(|_| Ok(Tensor::zeros([1], (Kind::Float, Device::Cpu)))),
    }
}

#[test]
fn oracle_puts_its_noise_where_the_task_is_blind() {
    let _rng = common::rng_lock();
    let t = task();
    let f = t.model.head(&t.eval[0], "s").unwrap();
    let clean = t.model.tail(&f, "s").unwrap();
    let j = oracle::maps(&t, "s", &f, &clean, 0).unwrap();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].size(), f[0].size());
    assert!(bool::try_from(j[0].isfinite().all()).unwrap() && j[0].min().double_value(&[]) > 0.0);
    // Per sample: mean J over the blind channels ≫ over the read ones (there g = 0, J = 1/c^p).
    for b in 0..2 {
        let jb = j[0].get(b);
        let read = jb.narrow(0, 0, C / 2).mean(Kind::Float).double_value(&[]);
        let blind = jb.narrow(0, C / 2, C / 2).mean(Kind::Float).double_value(&[]);
        assert!(blind > 5.0 * read, "sample {b}: J read {read:e}, blind {blind:e}");
    }
    // At equal NRMSE the oracle's noise moves the logits far less than Gaussian noise.
    let moved = |shape| {
        let p = perturb_levels(&f, &j, shape, 0.5, 3, 0).unwrap();
        let out = t.model.tail(&p, "s").unwrap();
        (&out[0] - &clean[0]).square().sum(Kind::Double).double_value(&[])
    };
    let (o, g) = (moved(NoiseShape::Oracle), moved(NoiseShape::Gaussian));
    assert!(o < 0.1 * g, "oracle {o:e} vs Gaussian {g:e}");
}

#[test]
fn voc_and_coco_annotations_parse_to_corner_boxes() {
    let voc = "<annotation><size><height>338</height><width>500</width><depth>3</depth></size>\
        <object><name>person</name><bndbox><xmin>191.0</xmin><ymin>107.5</ymin><xmax>313</xmax><ymax>329</ymax></bndbox></object>\
        <object><name>motorbike</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>";
    let (h, w, b) = parse_voc(voc).unwrap();
    assert_eq!((h, w), (338, 500));
    assert_eq!(b, vec![(0, [191.0, 107.5, 313.0, 329.0]), (3, [1.0, 2.0, 3.0, 4.0])]);
    let coco = r#"{"images":[{"height":682,"width":1024,"id":1}],"categories":[{"id":7,"name":"car"}],
        "annotations":[{"image_id":1,"category_id":7,"bbox":[218.0,448.0,222.0,161.0]}]}"#;
    let (h, w, b) = parse_coco(coco).unwrap();
    assert_eq!((h, w), (682, 1024));
    assert_eq!(b, vec![(2, [218.0, 448.0, 440.0, 609.0])]);
    // Bad input is an error, not a panic.
    assert!(parse_voc("<annotation></annotation>").is_err());
    assert!(parse_voc("<size><height>1</height><width>1</width></size><object><name>unicorn</name></object>").is_err());
    assert!(parse_coco("{}").is_err());
}

#[test]
fn oracle_exponents_are_powers_of_one_sensitivity_and_the_diagnostic_set_is_checked() {
    let _rng = common::rng_lock();
    let t = task();
    let f = t.model.head(&t.eval[0], "s").unwrap();
    let clean = t.model.tail(&f, "s").unwrap();
    let disc = oracle::task_disc(&t, 2);
    let j1 = oracle::maps_with_power(t.model.as_ref(), &disc, "s", &f, &clean, 0, 1.0).unwrap().remove(0);
    let j2 = oracle::maps_with_power(t.model.as_ref(), &disc, "s", &f, &clean, 0, 2.0).unwrap().remove(0);
    // The same probes (seeded): J_2 = J_1², and the control is the p = 2 one.
    assert!(j2.allclose(&j1.square(), 1e-5, 0.0, false));
    assert!(oracle::maps(&t, "s", &f, &clean, 0).unwrap()[0].allclose(&j2, 1e-6, 0.0, false));
    assert_eq!(NoiseShape::oracle_power(0.5).unwrap().name(), "oracle-p0.5");
    assert_eq!(NoiseShape::oracle_power(3.0).unwrap().name(), "oracle-p3");
    for bad in [0.0, 0.7, 2.5, -1.0, 100.0, f64::NAN] {
        assert!(NoiseShape::oracle_power(bad).is_err(), "{bad}");
    }
}
