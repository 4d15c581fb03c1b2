//! Real images as detector scenes (`train::real`): crop conversion, the train / held-out split, and
//! a 3-step fine-tune that gives finite AP. Uses `.deps/data` from `scripts/setup.sh` (else SKIP).

mod common;
use featjnd_research::data::shapes::Scene;
use featjnd_research::data::{deepforest, stardist};
use featjnd_research::model::checkpoint::{self, Meta};
use featjnd_research::model::detector::{DetConfig, ShapesDetector, ARCH, SPLITS};
use featjnd_research::train::real::{
    finetune_on, flip, target_ceiling, Labels, RealData, RealDataset, RealOptions, CROP, DEEPFOREST_HELD_OUT, MIN_VISIBLE,
};
use featjnd_research::train::SplitMix;
use tch::Device;

fn present(ds: RealDataset) -> bool {
    let (dir, file) = match ds {
        RealDataset::Deepforest => (deepforest::default_dir(), "OSBS_029.xml"),
        RealDataset::Stardist => (stardist::default_dir(), "mask2d.tif"),
    };
    let ok = dir.join(file).exists();
    if !ok {
        common::skip!("SKIP {}: {} absent (run scripts/setup.sh)", ds.name(), dir.display());
    }
    ok
}

/// Boxes inside the crop, masks non-empty and their areas right, image in [0, 1].
fn check_scene(s: &Scene, masks_are_exact: bool) {
    assert_eq!((s.height, s.width), (CROP, CROP));
    assert_eq!(s.image.len(), 3 * CROP * CROP);
    assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
    for (k, o) in s.objects.iter().enumerate() {
        assert_eq!(o.class.id(), 0);
        assert_eq!(o.instance_id as usize, k + 1);
        let [x, y, w, h] = o.bbox;
        assert!(x >= 0.0 && y >= 0.0 && w > 0.0 && h > 0.0, "{:?}", o.bbox);
        assert!(x + w <= CROP as f32 + 1e-4 && y + h <= CROP as f32 + 1e-4, "{:?}", o.bbox);
        let n: usize = o.mask.iter().map(|&v| v as usize).sum();
        assert_eq!(n, o.area);
        assert!(n > 0);
        // Every mask pixel lies in the box (box masks are rounded to whole pixels).
        let slack = if masks_are_exact { 0.0 } else { 0.5 };
        for (q, _) in o.mask.iter().enumerate().filter(|(_, &v)| v != 0) {
            let (px, py) = ((q % CROP) as f32, (q / CROP) as f32);
            assert!(px + 0.5 >= x - slack && px + 0.5 <= x + w + slack && py + 0.5 >= y - slack && py + 0.5 <= y + h + slack);
        }
        if masks_are_exact {
            // The box is the tight box of the mask.
            let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
            for (q, _) in o.mask.iter().enumerate().filter(|(_, &v)| v != 0) {
                let (px, py) = (q % CROP, q / CROP);
                (x0, y0, x1, y1) = (x0.min(px), y0.min(py), x1.max(px), y1.max(py));
            }
            assert_eq!(o.bbox, [x0 as f32, y0 as f32, (x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32]);
        }
    }
}

fn tiny_base(dir: &std::path::Path) -> std::path::PathBuf {
    tch::manual_seed(5);
    let m = ShapesDetector::new(DetConfig::default(), Device::Cpu);
    let meta = Meta::new(ARCH, serde_json::to_value(DetConfig::default()).unwrap(), SPLITS.map(String::from).to_vec());
    let p = dir.join("base.safetensors");
    checkpoint::save(&m.vs, &meta, &p).unwrap();
    p
}

fn tiny_finetune(data: &mut RealData) {
    data.held_out.truncate(2);
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_base(dir.path());
    let opts = RealOptions { steps: 3, batch: 2, quiet: true, ..RealOptions::default() };
    let (_, meta, report) = finetune_on(data, &base, &opts, Device::Cpu).unwrap();
    println!("{}: {}", data.dataset.name(), serde_json::to_string(&report["finetuned"]).unwrap());
    for key in ["zero_shot", "zero_shot_max_heat", "finetuned"] {
        let ap = report[key]["box_ap"].as_f64().unwrap();
        assert!(ap.is_finite() && (-1.0..=1.0).contains(&ap), "{key}: {ap}");
        if data.dataset.has_masks() {
            assert!(report[key]["mask_ap50"].as_f64().unwrap().is_finite());
        } else {
            assert!(report[key].get("mask_ap").is_none());
        }
    }
    assert!(meta.metrics["finetuned_box_ap"].is_finite());
    assert_eq!(report["finetune"]["train_crops"], 6);
    for l in ["heat", "box", "fg", "vote"] {
        assert!(report["finetune"]["final_loss_ema"][l].as_f64().unwrap().is_finite());
    }
}

#[test]
fn stardist_split_crops_and_finetune() {
    let _rng = common::rng_lock();
    if !present(RealDataset::Stardist) {
        return;
    }
    let mut data = RealData::load(RealDataset::Stardist, None).unwrap();
    assert_eq!(data.train.len(), 1);
    let (top, held) = (&data.train[0], &data.held);
    // Rows 0..384 train, 384..512 held out: disjoint, together the whole image.
    assert_eq!((top.rows, held.rows), ((0, 384), (384, 512)));
    assert_eq!(data.held_out.len(), 4);
    for (o, s) in data.held_out_origins.iter().zip(&data.held_out) {
        assert!(o.y >= held.rows.0 && o.y + CROP <= held.rows.1, "{o:?}");
        check_scene(s, true);
        // Grey replicated to three channels.
        let n = CROP * CROP;
        assert!(s.image[..n] == s.image[n..2 * n] && s.image[..n] == s.image[2 * n..]);
    }
    // Every nucleus pixel of the held-out band is in some held-out object, except nuclei cut so
    // that fewer than MIN_VISIBLE pixels show.
    let Labels::Instances { map, areas } = &held.labels else { panic!("stardist has instance labels") };
    let band: usize = map[384 * 512..].iter().filter(|&&l| l != 0).count();
    let got: usize = data.held_out.iter().flat_map(|s| &s.objects).map(|o| o.area).sum();
    assert!(got <= band && got + 3 * MIN_VISIBLE >= band, "{got} of {band}");
    // Nuclei kept when cut have at least MIN_VISIBLE pixels.
    for s in &data.held_out {
        for o in &s.objects {
            assert!(o.area >= MIN_VISIBLE || areas.contains(&o.area));
        }
    }
    // Random training crops (flipped too) stay in the top rows and convert consistently.
    let mut rng = SplitMix(9);
    for i in 0..40 {
        let (s, o) = data.sample(&mut rng, i);
        assert!(o.y + CROP <= 384 && o.x + CROP <= 512, "{o:?}");
        check_scene(&s, true);
    }
    let s = top.crop(100, 200, CROP, 0);
    let f = flip(&flip(&s, true, true), true, true);
    assert_eq!(f, s);
    check_scene(&flip(&s, true, false), true);
    // The targets themselves decode to (nearly) the ground truth: the plumbing is sound.
    let (b, m) = target_ceiling(&data.held_out, 6).unwrap();
    println!("stardist target ceiling: box AP {:.3} AP50 {:.3}, mask AP {:.3} AP50 {:.3}", b.ap, b.ap50, m.ap, m.ap50);
    assert!(b.ap50 > 0.9 && m.ap50 > 0.8, "{} {}", b.ap50, m.ap50);
    tiny_finetune(&mut data);
}

#[test]
fn deepforest_split_crops_and_finetune() {
    let _rng = common::rng_lock();
    if !present(RealDataset::Deepforest) {
        return;
    }
    let mut data = RealData::load(RealDataset::Deepforest, None).unwrap();
    // OSBS_029 held out whole; the others train.
    assert!(data.held.name.starts_with(DEEPFOREST_HELD_OUT));
    assert_eq!(data.train.len(), 3);
    assert!(data.train.iter().all(|s| !s.name.starts_with(DEEPFOREST_HELD_OUT)));
    assert!(data.held_out_origins.iter().all(|o| o.source == data.held.name));
    assert_eq!(data.held_out.len(), 16); // 400 px: tiles at 0, 128, 256, 272
    for s in &data.held_out {
        check_scene(s, false);
    }
    // Boxes of the held-out crops match the loader's own cropping rule.
    let imgs = deepforest::load_dir(&deepforest::default_dir()).unwrap();
    let osbs = imgs.iter().find(|t| t.file_name.starts_with(DEEPFOREST_HELD_OUT)).unwrap();
    let crops = osbs.crops(CROP, CROP).unwrap();
    assert_eq!(crops.len(), data.held_out.len());
    for (c, s) in crops.iter().zip(&data.held_out) {
        let mut a: Vec<[f32; 4]> = c.boxes.iter().map(|b| b.bbox).collect();
        let mut b: Vec<[f32; 4]> = s.objects.iter().map(|o| o.bbox).collect();
        a.sort_by(|p, q| p.partial_cmp(q).unwrap());
        b.sort_by(|p, q| p.partial_cmp(q).unwrap());
        assert_eq!(a, b);
    }
    let mut rng = SplitMix(3);
    for i in 0..20 {
        let (s, o) = data.sample(&mut rng, i);
        assert!(!o.source.starts_with(DEEPFOREST_HELD_OUT));
        check_scene(&s, false);
    }
    let (b, _) = target_ceiling(&data.held_out, 6).unwrap();
    println!("deepforest target ceiling: box AP {:.3} AP50 {:.3}", b.ap, b.ap50);
    assert!(b.ap50 > 0.9, "{}", b.ap50);
    tiny_finetune(&mut data);
}
