//! Chooses the shapes detector's decoder settings (foreground threshold, mask clipped to the
//! predicted box) on **validation** scenes, then reports the held-out AP of the default and of
//! the chosen settings. Held-out scenes never take part in the choice.
//!   cargo run --release --example det_decode_tune [-- CHECKPOINT [N]]
use featjnd_research::eval::detect::DecodeParams;
use featjnd_research::model::checkpoint;
use featjnd_research::model::detector::{DetConfig, ShapesDetector, ARCH};
use featjnd_research::train::detect::{outputs, HELD_OUT_BASE, VALIDATION_BASE};
use tch::Device;

fn main() -> featjnd_research::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(args.get(1).map(String::as_str).unwrap_or("models/shapes-det.safetensors"));
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let (meta, cfg) = checkpoint::read_config::<DetConfig>(&path)?;
    let mut model = ShapesDetector::new(cfg, Device::Cpu);
    checkpoint::load(&mut model.vs, ARCH, &path)?;
    let val = outputs(&model, meta.data_seed, VALIDATION_BASE, n, Device::Cpu)?;
    let mut best = (f64::NEG_INFINITY, DecodeParams::default());
    println!("validation ({n} scenes): fg_logit box_margin group_min -> box AP50, mask AP50, mask AP");
    for fg_logit in [-1.0f32, -0.5, 0.0] {
        for box_margin in [f32::INFINITY, 2.0, 0.0] {
            for group_min in [0.3f32, 0.4, 0.5, 0.6] {
                let p = DecodeParams { fg_logit, box_margin, group_min, ..DecodeParams::default() };
                let (b, m) = val.score(p)?;
                println!("  {fg_logit:5.1} {box_margin:5.1} {group_min:4.1} -> {:.4} {:.4} {:.4}", b.ap50, m.ap50, m.ap);
                // Mask AP@[.5:.95] decides; AP50 alone would favour sloppy masks.
                if m.ap > best.0 {
                    best = (m.ap, p);
                }
            }
        }
    }
    let p = best.1;
    println!("chosen on validation: fg_logit {} box_margin {} group_min {}", p.fg_logit, p.box_margin, p.group_min);
    let held = outputs(&model, meta.data_seed, HELD_OUT_BASE, n, Device::Cpu)?;
    for (name, p) in [("default", DecodeParams::default()), ("chosen", p)] {
        let (b, m) = held.score(p)?;
        println!("held-out ({n} scenes), {name}: box AP50 {:.4} AP {:.4}; mask AP50 {:.4} AP {:.4}", b.ap50, b.ap, m.ap50, m.ap);
    }
    Ok(())
}
