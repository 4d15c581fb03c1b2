//! Times the pieces of one shapes-detector training step (scene generation, targets, forward,
//! backward) to size the bundled model for a 2-core machine.
use featjnd_research::data::shapes::SceneConfig;
use featjnd_research::model::detector::{DetConfig, ShapesDetector};
use featjnd_research::train::detect::{images, loss, scenes, targets};
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind};

fn main() {
    let cfg = SceneConfig::default();
    let t = Instant::now();
    let batch = scenes(1, 0, 16, &cfg);
    println!("16 scenes: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let tg = targets(&batch, 6);
    println!("targets: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let m = ShapesDetector::new(DetConfig::default(), Device::Cpu);
    let mut opt = nn::Adam::default().build(&m.vs, 1e-3).unwrap();
    let x = images(&batch);
    let out = m.forward_t(&x, true);
    println!("heat logits mean {:.3} std {:.3}", out[0].mean(Kind::Float).double_value(&[]), out[0].std(true).double_value(&[]));
    let (l, parts) = loss(&out, &tg);
    println!("loss {:.3} {parts:?}", l.double_value(&[]));
    for _ in 0..3 {
        let t = Instant::now();
        let out = m.forward_t(&x, true);
        let f = t.elapsed().as_secs_f64();
        let (l, _) = loss(&out, &tg);
        opt.backward_step(&l);
        println!("fwd {:.0} ms, step {:.0} ms", f * 1e3, t.elapsed().as_secs_f64() * 1e3);
    }
}
