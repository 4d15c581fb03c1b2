//! An rpath to the pinned libtorch (`$LIBTORCH/lib`, which `.cargo/config.toml` points at
//! `.deps/torch`), so the `featjnd` binary, tests and examples run without LD_LIBRARY_PATH. This
//! crate links libtorch through tch; the kernel library's lean build and the C ABI do not.
//!
//! It also compiles `csrc/torchvision_ops.cpp` (CPU implementations of `torchvision::nms`,
//! `torchvision::roi_align` and `torchvision::_roi_align_backward`, registered at run time by
//! `featjnd_register_torchvision_ops`, see `src/model/torchscript.rs` and docs/torchvision-ops.md)
//! against the pinned libtorch's headers, into a static library linked into this crate. The C++
//! ABI follows torch-sys: `LIBTORCH_CXX11_ABI` (default 1; the pinned libtorch 2.11 uses the
//! C++11 ABI).
use std::{env, path::PathBuf};

const OPS_SRC: &str = "csrc/torchvision_ops.cpp";

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed={OPS_SRC}");
    let libtorch = env::var("LIBTORCH").map(PathBuf::from).unwrap_or_else(|_| {
        panic!("LIBTORCH is not set: featjnd-research compiles {OPS_SRC} against libtorch's headers (.cargo/config.toml sets it to .deps/torch; run scripts/setup.sh)")
    });
    let lib = libtorch.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

    let include = libtorch.join("include");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file(OPS_SRC)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        // Optimised and without debug info even in dev builds: the RoIAlign loops are hot and the
        // libtorch headers make debug info large and slow to produce.
        .opt_level(2)
        .debug(false)
        // libtorch's headers warn a lot under -Wall/-Wextra; nothing of ours to see there.
        .warnings(false)
        .extra_warnings(false)
        .flag_if_supported("-w")
        .compile("featjnd_torchvision_ops");
}
