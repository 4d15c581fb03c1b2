//! The real photo corpus's manifest and split (`data/photos/manifest.tsv`), and the `nanodet`
//! study task built on it: held-out photos only for evaluation, train photos only for the
//! estimator, and the pseudo-ground-truth scorer (the clean outputs score AP = AP50 = 1).
//!
//! Tests that need `.deps/data/photos` or `.deps/data/nanodet` (scripts/fetch-real.sh) print a
//! SKIP line and pass when those are absent; the manifest parser and the scorer always run.
mod common;
use std::collections::BTreeSet;

use featjnd_research::data::corpus::{self, Corpus, CorpusSplit, Subset};
use featjnd_research::model::nanodet::{self, NUM_CLASSES};
use featjnd_research::study::tasks::{build, build_with, load_folder, EvalPhotos, Scorer, Sizes, TaskId, PSEUDO_GT_SCORE};
use tch::{Device, Kind, Tensor};

#[test]
fn manifest_parses_and_rejects_unknown_splits() {
    let ok = "name\tsource\tmember\tsha256\tsplit\tkind\tgroup\na.png\ts\tm\th\ttrain\tpeople\tg1\nb.png\ts\tm\th\theldout\tcity\tg2\n";
    let e = corpus::parse_manifest(ok).unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!((e[0].split, e[1].split), (CorpusSplit::Train, CorpusSplit::HeldOut));
    assert_eq!(e[1].group, "g2");
    assert!(corpus::parse_manifest(&ok.replace("heldout", "test")).is_err());
    assert!(corpus::parse_manifest("name\tsplit\na.png\ttrain\n").is_err(), "missing columns");
}

#[test]
fn committed_manifest_splits_by_group() {
    let text = std::fs::read_to_string(corpus::default_manifest()).unwrap();
    let e = corpus::parse_manifest(&text).unwrap();
    let groups = |s| e.iter().filter(|x| x.split == s).map(|x| x.group.clone()).collect::<BTreeSet<_>>();
    let (tr, ho) = (groups(CorpusSplit::Train), groups(CorpusSplit::HeldOut));
    assert!(tr.is_disjoint(&ho), "a photo group on both sides: {:?}", tr.intersection(&ho).collect::<Vec<_>>());
    let names: BTreeSet<_> = e.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names.len(), e.len(), "duplicate names");
    assert!(e.len() >= 150 && e.iter().filter(|x| x.split == CorpusSplit::HeldOut).count() >= 50);
}

#[test]
fn pseudo_scorer_gives_one_on_clean_outputs() {
    // Two images, three confident detections and some low-scored clutter.
    let n = nanodet::num_points(416, 416);
    let cls = Tensor::full([2, n, NUM_CLASSES], -8.0, (Kind::Float, Device::Cpu));
    for (b, p, c, v) in [(0, 100, 0, 3.0), (0, 2000, 2, 1.0), (1, 3000, 15, 2.0), (1, 500, 5, -2.0)] {
        let _ = cls.get(b).get(p).get(c).fill_(v);
    }
    let reg = Tensor::zeros([2, n, 44], (Kind::Float, Device::Cpu));
    let out = vec![vec![cls, reg]];
    let s = Scorer::Pseudo { h: 416, w: 416, min_score: PSEUDO_GT_SCORE };
    let m = s.score(&out, &out).unwrap();
    assert_eq!(m["pseudo_gt_boxes"], 3.0);
    assert!((m["ap50"] - 1.0).abs() < 1e-9 && (m["ap"] - 1.0).abs() < 1e-9, "{m:?}");
}

#[test]
fn nanodet_task_keeps_held_out_photos_apart() {
    let c = match Corpus::open_default() {
        Ok(c) => c,
        Err(e) => return common::skip!("SKIP nanodet_task_keeps_held_out_photos_apart: {e}"),
    };
    let tr: BTreeSet<_> = c.files(CorpusSplit::Train).into_iter().collect();
    let ho: BTreeSet<_> = c.files(CorpusSplit::HeldOut).into_iter().collect();
    assert!(tr.is_disjoint(&ho) && !ho.is_empty());
    if !nanodet::default_dir().join("nanodet.json").is_file() {
        return common::skip!("SKIP nanodet_task_keeps_held_out_photos_apart (task part): no .deps/data/nanodet");
    }
    let _g = common::rng_lock();
    let mut t = build(TaskId::Nanodet, std::path::Path::new("models"), Sizes::QUICK, Device::Cpu).unwrap();
    assert_eq!(t.eval.iter().map(|x| x.size()[0]).sum::<i64>(), 8);
    assert_eq!(t.eval[0].size()[1..], [3, 416, 416]);
    let x = (t.train)(5).unwrap();
    assert_eq!(x.size(), [4, 3, 416, 416]);
    assert!(x.min().double_value(&[]) >= 0.0 && x.max().double_value(&[]) <= 1.0);
    assert_eq!(TaskId::Nanodet.study_splits(), Some(&["stage2", "neck"][..]));
}

#[test]
fn mobilenet_task_evaluates_on_held_out_photos_only() {
    let c = match Corpus::open_default() {
        Ok(c) => c,
        Err(e) => return common::skip!("SKIP mobilenet_task_evaluates_on_held_out_photos_only: {e}"),
    };
    if !featjnd_research::model::mobilenet_v2::default_weights().is_file() {
        return common::skip!("SKIP mobilenet_task_evaluates_on_held_out_photos_only: no MobileNetV2 weights (run scripts/setup.sh)");
    }
    let _g = common::rng_lock();
    let mut t = build(TaskId::Mobilenet, std::path::Path::new("models"), Sizes::QUICK, Device::Cpu).unwrap();
    // QUICK: the first 8 held-out photos, one 224×224 view each.
    assert_eq!(t.eval.iter().map(|x| x.size()[0]).sum::<i64>(), 8);
    assert_eq!(t.eval[0].size()[1..], [3, 224, 224]);
    let held = c.load(CorpusSplit::HeldOut).unwrap();
    let first = featjnd_research::data::photos::eval_tensor(&held[0].image).unwrap();
    assert!(t.eval[0].get(0).allclose(&first, 0.0, 0.0, false), "the first held-out view is the first held-out photo's centre crop");
    // Samples for the attribution panels are held-out photos.
    let ho: BTreeSet<String> = held.iter().map(|p| p.name.clone()).collect();
    assert!(t.samples.iter().all(|(n, _)| ho.contains(n)), "{:?}", t.samples.iter().map(|s| &s.0).collect::<Vec<_>>());
    // Training crops: deterministic per step, in [0, 1].
    let (a, b) = ((t.train)(3).unwrap(), (t.train)(3).unwrap());
    assert_eq!(a.size(), [8, 3, 224, 224]);
    assert!(a.equal(&b));
    assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 1.0);
}

#[test]
fn validation_photos_are_whole_train_groups_apart_from_the_fit_photos() {
    let text = std::fs::read_to_string(corpus::default_manifest()).unwrap();
    let c = Corpus { dir: std::path::PathBuf::from("/nowhere"), entries: corpus::parse_manifest(&text).unwrap() };
    let (fit, val, held) = (c.subset_files(Subset::Fit), c.subset_files(Subset::Validation), c.subset_files(Subset::HeldOut));
    let train: BTreeSet<_> = c.files(CorpusSplit::Train).into_iter().collect();
    let (f, v): (BTreeSet<_>, BTreeSet<_>) = (fit.iter().cloned().collect(), val.iter().cloned().collect());
    assert!(f.is_disjoint(&v));
    assert_eq!(f.union(&v).cloned().collect::<BTreeSet<_>>(), train, "fit + validation = train");
    assert_eq!(held, c.files(CorpusSplit::HeldOut));
    // About VALIDATION_FRACTION of the train photos, by group: no group on both sides.
    assert!((20..=45).contains(&val.len()), "{} validation photos", val.len());
    let group_of = |n: &std::path::PathBuf| c.entries.iter().find(|e| c.dir.join(&e.name) == *n).unwrap().group.clone();
    let (gf, gv): (BTreeSet<_>, BTreeSet<_>) = (fit.iter().map(group_of).collect(), val.iter().map(group_of).collect());
    assert!(gf.is_disjoint(&gv));
    assert!(gv.iter().all(|g| corpus::is_validation_group(g)) && !gf.iter().any(|g| corpus::is_validation_group(g)));
}

#[test]
fn a_photo_folder_loads_grey_and_16_bit_photos_and_bad_folders_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Missing folder, a file instead of a folder, an empty folder.
    let e = load_folder(&dir.join("nope")).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("not a folder"), "{e}");
    std::fs::write(dir.join("file.png"), b"x").unwrap();
    assert!(load_folder(&dir.join("file.png")).unwrap_err().to_string().contains("not a folder"));
    std::fs::create_dir(dir.join("empty")).unwrap();
    let e = load_folder(&dir.join("empty")).unwrap_err().to_string();
    assert!(e.contains("no png/jpg photos"), "{e}");
    // Grey 8-bit and grey 16-bit PNGs and an RGB JPEG decode to RGB in [0, 1].
    let ok = dir.join("ok");
    std::fs::create_dir(&ok).unwrap();
    image::GrayImage::from_fn(40, 30, |x, _| image::Luma([(x * 6) as u8])).save(ok.join("a-grey8.png")).unwrap();
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(40, 30, |_, y| image::Luma([y as u16 * 2000]))
        .save(ok.join("b-grey16.png"))
        .unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 200])).save(ok.join("c-rgb.jpg")).unwrap();
    let photos = load_folder(&ok).unwrap();
    assert_eq!(photos.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a-grey8", "b-grey16", "c-rgb"]);
    for p in &photos {
        assert_eq!((p.image.width(), p.image.height()), (40, 30));
        assert!(p.image.as_raw().iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // Grey replicated to three equal channels; 16-bit scaled by 1/65535 (row 29: 58000/65535).
    let g16 = &photos[1].image;
    let px = g16.get_pixel(0, 29).0;
    assert!(px[0] == px[1] && px[1] == px[2] && (px[0] - 58000.0 / 65535.0).abs() < 1e-4, "{px:?}");
    // A file that is not a photo, and a photo that does not decode: named in the error.
    std::fs::write(ok.join("notes.txt"), b"hello").unwrap();
    let e = load_folder(&ok).unwrap_err().to_string();
    assert!(e.contains("notes.txt") && e.contains("not png/jpg"), "{e}");
    std::fs::remove_file(ok.join("notes.txt")).unwrap();
    std::fs::write(ok.join("d-broken.png"), b"\x89PNG not really").unwrap();
    let e = load_folder(&ok).unwrap_err().to_string();
    assert!(e.contains("d-broken.png"), "{e}");
}

#[test]
fn mobilenet_task_evaluates_on_a_photo_folder() {
    if Corpus::open_default().is_err() || !featjnd_research::model::mobilenet_v2::default_weights().is_file() {
        return common::skip!("SKIP mobilenet_task_evaluates_on_a_photo_folder: no corpus or MobileNetV2 weights (run scripts/setup.sh)");
    }
    let d = tempfile::tempdir().unwrap();
    for (i, name) in ["x.png", "y.jpg", "z.png"].iter().enumerate() {
        image::RgbImage::from_fn(300, 260, |x, y| image::Rgb([(x + 40 * i as u32) as u8, y as u8, 90])).save(d.path().join(name)).unwrap();
    }
    let _g = common::rng_lock();
    let photos = EvalPhotos::Folder(d.path().to_path_buf());
    let t = build_with(TaskId::Mobilenet, std::path::Path::new("models"), Sizes::DEFAULT, Device::Cpu, &photos).unwrap();
    assert_eq!(t.eval.iter().map(|x| x.size()[0]).sum::<i64>(), 3, "every photo of the folder, none of the corpus");
    let first = featjnd_research::data::photos::eval_tensor(&load_folder(d.path()).unwrap()[0].image).unwrap();
    assert!(t.eval[0].get(0).allclose(&first, 0.0, 0.0, false));
    assert_eq!(t.samples.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["x", "y", "z"]);
}
