//! Diagnoses the shapes detector: held-out AP with classes, and class-agnostic (every detection and
//! every object mapped to one class), to separate localisation from classification errors.
use featjnd_research::data::shapes::SceneConfig;
use featjnd_research::eval::detect::{decode, ground_truth, score, to_coco, DecodeParams};
use featjnd_research::model::checkpoint;
use featjnd_research::model::detector::{DetConfig, ShapesDetector, ARCH};
use featjnd_research::train::detect::{images, scenes, HELD_OUT_BASE};
use tch::Device;

fn main() {
    let path = std::env::args().nth(1).unwrap_or("models/shapes-det.safetensors".into());
    let (meta, cfg): (_, DetConfig) = checkpoint::read_config(path.as_ref()).unwrap();
    let mut m = ShapesDetector::new(cfg, Device::Cpu);
    checkpoint::load(&mut m.vs, ARCH, path.as_ref()).unwrap();
    let mut held = scenes(meta.data_seed, HELD_OUT_BASE, 100, &SceneConfig::default());
    let mut dets = Vec::new();
    tch::no_grad(|| {
        for c in held.chunks(25) {
            dets.extend(decode(&m.forward_t(&images(c), false), 128, 128, DecodeParams::default()).unwrap());
        }
    });
    let (b, s) = score(&ground_truth(&held).unwrap(), &to_coco(&dets, 128, 128)).unwrap();
    println!("with classes:   box AP {:.3} AP50 {:.3}  mask AP {:.3} AP50 {:.3}", b.ap, b.ap50, s.ap, s.ap50);
    let c0 = featjnd_research::data::shapes::ShapeClass::from_id(0).unwrap();
    for sc in &mut held {
        for o in &mut sc.objects {
            o.class = c0;
        }
    }
    for d in dets.iter_mut().flatten() {
        d.class = 0;
    }
    let (b, s) = score(&ground_truth(&held).unwrap(), &to_coco(&dets, 128, 128)).unwrap();
    println!("class-agnostic: box AP {:.3} AP50 {:.3}  mask AP {:.3} AP50 {:.3}", b.ap, b.ap50, s.ap, s.ap50);
}
