//! Times the CPU noise generator alone (a quick probe behind the perturbation benchmark).
use featjnd_kernels::{philox, NoiseKind};
fn main() {
    let mut v = vec![0.0f32; 1 << 22];
    for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
        philox::fill(&mut v, 0, 1, 0, kind);
        let t = std::time::Instant::now();
        for r in 0..5 {
            philox::fill(&mut v, r, 1, 0, kind);
        }
        let ns = t.elapsed().as_nanos() as f64 / (5.0 * v.len() as f64);
        println!("{kind:?}: {ns:.2} ns/element (one thread)");
    }
}
