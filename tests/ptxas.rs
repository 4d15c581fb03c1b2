//! Resource checks from the real assembler (tests/ptxas.rs): every NVRTC module's PTX (the modules of
//! `compile::MODULES`, as `compile::compile_all` builds them) goes through `ptxas -v` for sm_80 and
//! sm_90, and the test fails on any register spill, on static shared memory over the 48 KiB a block
//! may declare statically, and on a kernel of the launchers' table that ptxas did not report.
//!
//! `ptxas` comes from the `nvidia-cuda-nvcc` wheel on PyPI; `scripts/setup.sh` puts it at
//! `.deps/nvcc/bin/ptxas`. `FEATJND_PTXAS` names another one. Without one the test prints a SKIP line
//! (and fails under `CI=true`, where setup.sh must have installed it). With
//! `FEATJND_PTXAS_TABLE=FILE` it writes the per-kernel table (the one in BENCHMARKS.md) to FILE.
use std::{collections::BTreeMap, path::PathBuf, process::Command};

use featjnd_kernels::cuda::compile::{self, MODULES};

/// What ptxas reports for one kernel on one architecture.
#[derive(Debug, Default, Clone)]
struct Usage {
    registers: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
    barriers: u32,
}

/// The static shared memory one block may declare (the rest needs a dynamic opt-in).
const STATIC_SMEM_LIMIT: u32 = 48 * 1024;

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FEATJND_PTXAS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/nvcc/bin/ptxas");
    if local.is_file() {
        return Some(local);
    }
    Command::new("ptxas").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from("ptxas"))
}

/// The numbers before `what` in `line` ("48 registers", "4 bytes spill stores", ...).
fn number_before(line: &str, what: &str) -> Option<u32> {
    let i = line.find(what)?;
    line[..i].trim_end().rsplit([' ', ',']).next()?.parse().ok()
}

/// Parses `ptxas -v` output: kernel name -> usage.
fn parse(log: &str) -> BTreeMap<String, Usage> {
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.insert(name.clone(), Usage::default());
            cur = Some(name);
            continue;
        }
        let Some(u) = cur.as_ref().and_then(|n| out.get_mut(n)) else { continue };
        if line.contains("bytes stack frame") {
            u.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            u.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            u.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains("registers") {
            u.registers = number_before(line, "registers").unwrap_or(0);
            u.barriers = number_before(line, "barriers").unwrap_or(0);
            u.smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[test]
fn no_kernel_spills_or_overflows_shared_memory_on_sm80_and_sm90() {
    let Some(ptxas) = ptxas() else {
        let line = "SKIP no_kernel_spills_or_overflows_shared_memory_on_sm80_and_sm90 (no ptxas): scripts/setup.sh \
                    installs it from the nvidia-cuda-nvcc wheel into .deps/nvcc/bin; FEATJND_PTXAS names another";
        assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "{line} (CI must have it)");
        eprintln!("\n{line}");
        return;
    };
    assert!(compile::nvrtc_present(), "libnvrtc not found: run scripts/setup.sh (CI installs it)");
    let version = Command::new(&ptxas).arg("--version").output().expect("running ptxas --version");
    let version = String::from_utf8_lossy(&version.stdout).lines().last().unwrap_or_default().to_string();
    let dir = std::env::temp_dir().join(format!("featjnd-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let launched = featjnd_kernels::cuda::raw::kernel_names();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for arch in ["80", "90"] {
        let all = compile::compile_all(&format!("compute_{arch}")).unwrap_or_else(|e| panic!("compute_{arch}: {e}"));
        for (slot, (m, c)) in MODULES.iter().zip(&all).enumerate() {
            let ptx = dir.join(format!("module{slot}-sm{arch}.ptx"));
            std::fs::write(&ptx, &c.ptx).unwrap();
            let o = Command::new(&ptxas)
                .args([&format!("-arch=sm_{arch}"), "-v", "-warn-spills", "-warn-lmem-usage", "-o", "/dev/null"])
                .arg(&ptx)
                .output()
                .expect("running ptxas");
            let log = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "ptxas failed on {} for sm_{arch}:\n{log}", m.label());
            let usage = parse(&log);
            for k in launched.iter().filter(|k| k.module == slot) {
                assert!(usage.contains_key(k.name), "ptxas reported no kernel {} in {} for sm_{arch}:\n{log}", k.name, m.label());
            }
            for (name, u) in usage {
                if u.spill_stores > 0 || u.spill_loads > 0 {
                    failures.push(format!(
                        "sm_{arch} {} {name}: {} registers, {} B spill stores, {} B spill loads",
                        m.label(),
                        u.registers,
                        u.spill_stores,
                        u.spill_loads
                    ));
                }
                if u.smem > STATIC_SMEM_LIMIT {
                    failures.push(format!("sm_{arch} {} {name}: {} B static shared memory > {STATIC_SMEM_LIMIT}", m.label(), u.smem));
                }
                rows.push((arch, m.label(), name, u));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut table = format!(
        "ptxas: {version}\n\n| arch | module | kernel | registers | stack B | spill st/ld B | smem B | barriers |\n|---|---|---|---|---|---|---|---|\n"
    );
    for (arch, module, name, u) in &rows {
        table += &format!(
            "| sm_{arch} | {module} | {name} | {} | {} | {}/{} | {} | {} |\n",
            u.registers, u.stack, u.spill_stores, u.spill_loads, u.smem, u.barriers
        );
    }
    if let Some(path) = std::env::var_os("FEATJND_PTXAS_TABLE").filter(|p| !p.is_empty()) {
        std::fs::write(path, &table).unwrap();
    }
    let max = rows.iter().max_by_key(|r| r.3.registers).unwrap();
    eprintln!(
        "ptxas ({version}): {} kernel entries over sm_80 and sm_90; most registers {} ({} sm_{})",
        rows.len(),
        max.3.registers,
        max.2,
        max.0
    );
    assert!(failures.is_empty(), "{} kernel(s) over the limits:\n{}", failures.len(), failures.join("\n"));
}

/// The gate can fail: the same parse of a module's PTX, its launch bounds raised to 8 blocks of 256
/// threads per SM (at most 32 registers, which the quantizer cannot fit), reports the spills.
#[test]
fn the_gate_sees_a_forced_spill() {
    let Some(ptxas) = ptxas() else {
        eprintln!("\nSKIP the_gate_sees_a_forced_spill (no ptxas): see no_kernel_spills_or_overflows_shared_memory_on_sm80_and_sm90");
        return;
    };
    assert!(compile::nvrtc_present(), "libnvrtc not found: run scripts/setup.sh (CI installs it)");
    let slot = compile::M_QUANTIZE + 1; // 8 bits with the histogram
    let c = compile::compile_module(&MODULES[slot], "compute_90").unwrap();
    let bounds = ".minnctapersm 4";
    assert!(c.ptx.contains(bounds), "the quantizer's PTX has no `{bounds}` (FJ_QUANTIZE_MIN_BLOCKS changed? update this test)");
    let ptx = std::env::temp_dir().join(format!("featjnd-ptxas-forced-{}.ptx", std::process::id()));
    std::fs::write(&ptx, c.ptx.replace(bounds, ".minnctapersm 8")).unwrap();
    let o = Command::new(&ptxas).args(["-arch=sm_90", "-v", "-o", "/dev/null"]).arg(&ptx).output().expect("running ptxas");
    let _ = std::fs::remove_file(&ptx);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    let usage = parse(&log);
    let u = usage.get("fj_quantize_nchw_f32").unwrap_or_else(|| panic!("no fj_quantize_nchw_f32 in:\n{log}"));
    assert!(u.registers <= 32 && u.spill_stores > 0 && u.spill_loads > 0, "no spill seen at 32 registers: {u:?}\n{log}");
}
