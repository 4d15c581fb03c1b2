//! Times one training step (forward + backward + SGD) of the Fashion-MNIST ResNet for a few widths
//! and depths, to size the bundled model for a 2-core machine.
use featjnd_research::model::resnet::{FmnistResNet, ResNetConfig};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    println!("torch threads {}", tch::get_num_threads());
    for (widths, blocks) in [([16, 32, 64], [2, 2, 2]), ([16, 32, 64], [1, 1, 1]), ([32, 64, 128], [1, 1, 1])] {
        let m = FmnistResNet::new(ResNetConfig { widths, blocks, classes: 10 }, Device::Cpu);
        let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&m.vs, 0.1).unwrap();
        let x = Tensor::rand([128, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [128], (Kind::Int64, Device::Cpu));
        for _ in 0..2 {
            opt.backward_step(&m.forward_t(&x, true).cross_entropy_for_logits(&y));
        }
        let t = std::time::Instant::now();
        for _ in 0..5 {
            opt.backward_step(&m.forward_t(&x, true).cross_entropy_for_logits(&y));
        }
        let dt = t.elapsed().as_secs_f64() / 5.0;
        let t = std::time::Instant::now();
        tch::no_grad(|| {
            for _ in 0..5 {
                let _ = m.forward_t(&x, false);
            }
        });
        println!(
            "{widths:?} {blocks:?}: train step {:.0} ms, eval fwd {:.0} ms (batch 128)",
            dt * 1e3,
            t.elapsed().as_secs_f64() / 5.0 * 1e3
        );
    }
}
