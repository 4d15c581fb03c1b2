//! Time NVRTC per module and dump the PTX into target/ptx (inspection aid; no GPU needed).
use featjnd_kernels::cuda::compile;
fn main() {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "compute_90".into());
    std::fs::create_dir_all("target/ptx").unwrap();
    for (i, m) in compile::MODULES.iter().enumerate() {
        let t = std::time::Instant::now();
        let c = compile::compile_module(m, &arch).unwrap_or_else(|e| panic!("{}: {e}", m.label()));
        println!(
            "{:2} {:45} {:.2} s, {:5} KB ptx, {:2} entries",
            i,
            m.label(),
            t.elapsed().as_secs_f64(),
            c.ptx.len() / 1024,
            c.ptx.matches(".entry").count()
        );
        std::fs::write(format!("target/ptx/{i:02}-{}.ptx", m.label().replace(['[', ']', ','], "_")), &c.ptx).unwrap();
    }
}
