//! Known answers of the dense task's discrepancy and metrics (`study::dense`, docs/user-models.md).

use featjnd_research::model::torchscript::OutputKind;
use featjnd_research::study::dense::{discrepancy, metrics, per_image};
use tch::{Kind, Tensor};

fn t(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).view(shape)
}

#[test]
fn identical_outputs_agree_fully_and_differ_by_nothing() {
    let kinds = [OutputKind::Softmax, OutputKind::Sigmoid, OutputKind::Identity];
    let outs = vec![
        t(&[1., -1., 0.5, 2., -1., 1., 0.2, -3.], &[1, 2, 2, 2]),
        t(&[0.3, -0.2, 1.0, -4.0], &[1, 1, 2, 2]),
        t(&[1., 2., 3., 4.], &[1, 1, 2, 2]),
    ];
    let d = discrepancy(&kinds, &outs, &outs).unwrap();
    assert!(d.abs().max().double_value(&[]) < 1e-6, "{d:?}");
    let m = per_image(&kinds, &outs, &outs).unwrap();
    assert_eq!(m["agreement"], vec![1.0]);
    assert_eq!(m["iou"], vec![1.0]);
    assert_eq!(m["rel_l2"], vec![0.0]);
    assert_eq!(m["psnr"], vec![100.0]);
}

#[test]
fn softmax_agreement_and_mean_iou_by_hand() {
    // Two classes on a 2×2 image (pixels a b / c d). Clean argmax: class 0 at a, b, c; class 1 at
    // d. Perturbed: class 0 at a, b; class 1 at c, d. Agreement 3/4; IoU class 0 = 2/3, class 1 =
    // 1/2, mean 7/12.
    let clean = t(&[2., 2., 2., -2., 0., 0., 0., 0.], &[1, 2, 2, 2]);
    let pert = t(&[2., 2., -2., -2., 0., 0., 0., 0.], &[1, 2, 2, 2]);
    let m = per_image(&[OutputKind::Softmax], &[pert.shallow_clone()], &[clean.shallow_clone()]).unwrap();
    assert!((m["agreement"][0] - 0.75).abs() < 1e-12);
    assert!((m["iou"][0] - 7.0 / 12.0).abs() < 1e-12, "{:?}", m["iou"]);
    // KL per pixel, mean over the four pixels: only pixel c differs, where the clean softmax is
    // (σ(2), σ(−2)) and the perturbed (σ(−2), σ(2)): KL = (p − q)·(2 − (−2)) with p = σ(2).
    let d = discrepancy(&[OutputKind::Softmax], &[clean], &[pert]).unwrap().double_value(&[0]);
    let p = 1.0 / (1.0 + (-2.0f64).exp());
    let kl = p * (p / (1.0 - p)).ln() + (1.0 - p) * ((1.0 - p) / p).ln();
    assert!((d - kl / 4.0).abs() < 1e-5, "{d} vs {}", kl / 4.0);
}

#[test]
fn sigmoid_and_identity_by_hand() {
    // Sigmoid: clean positive at 2 of 4 elements, perturbed at 3 (one more): agreement 3/4, IoU 2/3.
    let c = t(&[1., 1., -1., -1.], &[1, 1, 2, 2]);
    let p = t(&[1., 1., 1., -1.], &[1, 1, 2, 2]);
    let m = per_image(&[OutputKind::Sigmoid], &[p], &[c]).unwrap();
    assert!((m["agreement"][0] - 0.75).abs() < 1e-12);
    assert!((m["iou"][0] - 2.0 / 3.0).abs() < 1e-12);
    // Identity: clean all 1 (RMS 1), perturbed 1, 1, 1.05, 3: three within 10% of the RMS;
    // relative squared error (0.05² + 2²) / 4; rel_l2 its square root; PSNR with peak 1.
    let c = t(&[1., 1., 1., 1.], &[1, 1, 2, 2]);
    let p = t(&[1., 1., 1.05, 3.], &[1, 1, 2, 2]);
    let m = per_image(&[OutputKind::Identity], &[p.shallow_clone()], &[c.shallow_clone()]).unwrap();
    assert!((m["agreement"][0] - 0.75).abs() < 1e-12);
    let sq = (0.05f64 * 0.05 + 4.0) / 4.0;
    assert!((m["rel_l2"][0] - sq.sqrt()).abs() < 1e-6, "{:?}", m["rel_l2"]);
    assert!((m["psnr"][0] - 10.0 * (1.0 / sq).log10()).abs() < 1e-5, "{:?}", m["psnr"]);
    let d = discrepancy(&[OutputKind::Identity], &[c], &[p]).unwrap().double_value(&[0]);
    assert!((d - sq).abs() < 1e-5, "{d} vs {sq}");
}

#[test]
fn metrics_average_over_images_and_outputs_and_shapes_are_checked() {
    // Two images, two outputs: image 0 identical, image 1 fully flipped on the softmax output.
    let c = Tensor::cat(&[t(&[2., 2., 2., 2., 0., 0., 0., 0.], &[1, 2, 2, 2]), t(&[2., 2., 2., 2., 0., 0., 0., 0.], &[1, 2, 2, 2])], 0);
    let p = Tensor::cat(&[t(&[2., 2., 2., 2., 0., 0., 0., 0.], &[1, 2, 2, 2]), t(&[-2., -2., -2., -2., 0., 0., 0., 0.], &[1, 2, 2, 2])], 0);
    let id = Tensor::ones([2, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
    let kinds = [OutputKind::Softmax, OutputKind::Identity];
    let m = metrics(&kinds, &[vec![p.shallow_clone(), id.shallow_clone()]], &[vec![c.shallow_clone(), id.shallow_clone()]]).unwrap();
    // Softmax agreement 1 and 0, identity 1 and 1: per image (1 + 1)/2 and (0 + 1)/2, mean 0.75.
    assert!((m["agreement"] - 0.75).abs() < 1e-12, "{m:?}");
    // A 3-D output, a one-channel softmax and a wrong output count are errors, not panics.
    assert!(per_image(
        &[OutputKind::Sigmoid],
        &[Tensor::zeros([1, 2, 2], (Kind::Float, tch::Device::Cpu))],
        &[Tensor::zeros([1, 2, 2], (Kind::Float, tch::Device::Cpu))]
    )
    .is_err());
    assert!(per_image(&[OutputKind::Softmax], std::slice::from_ref(&id), std::slice::from_ref(&id)).is_err());
    assert!(discrepancy(&kinds, &[c.shallow_clone()], &[c]).is_err());
}

#[test]
fn peak_f1_by_hand() {
    // One channel, 8×8. Clean peaks (logit 3 on a background of −3) at (1, 1) and (6, 6); the
    // perturbed map keeps the first one moved by one pixel to (2, 1) (found: within 2 pixels),
    // loses the second and adds one at (1, 6) (no clean peak near): precision 1/2, recall 1/2,
    // F1 1/2. The maps agree at 60 of 64 elements (thresholded at 0.5).
    let map = |pts: &[(i64, i64)]| {
        let t = Tensor::full([1, 1, 8, 8], -3.0, (Kind::Float, tch::Device::Cpu));
        for &(y, x) in pts {
            let _ = t.get(0).get(0).get(y).get(x).fill_(3.0);
        }
        t
    };
    let (c, p) = (map(&[(1, 1), (6, 6)]), map(&[(2, 1), (1, 6)]));
    let m = per_image(&[OutputKind::Sigmoid], &[p], &[c.shallow_clone()]).unwrap();
    assert!((m["peak_f1"][0] - 0.5).abs() < 1e-12, "{:?}", m["peak_f1"]);
    assert!((m["agreement"][0] - 60.0 / 64.0).abs() < 1e-12);
    // Against itself: 1; no peaks on either side: 1; only on one side: 0.
    assert_eq!(per_image(&[OutputKind::Sigmoid], std::slice::from_ref(&c), std::slice::from_ref(&c)).unwrap()["peak_f1"], vec![1.0]);
    let empty = map(&[]);
    assert_eq!(
        per_image(&[OutputKind::Sigmoid], std::slice::from_ref(&empty), std::slice::from_ref(&empty)).unwrap()["peak_f1"],
        vec![1.0]
    );
    assert_eq!(per_image(&[OutputKind::Sigmoid], std::slice::from_ref(&empty), std::slice::from_ref(&c)).unwrap()["peak_f1"], vec![0.0]);
    // Softmax-only tasks have no peak_f1.
    let two = Tensor::zeros([1, 2, 2, 2], (Kind::Float, tch::Device::Cpu));
    assert!(!per_image(&[OutputKind::Softmax], std::slice::from_ref(&two), std::slice::from_ref(&two)).unwrap().contains_key("peak_f1"));
}
