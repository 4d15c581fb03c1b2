//! Run after the tier (`scripts/test.sh` does): with `FEATJND_EMU_COUNTS` naming the file the
//! tier's launches were recorded in, every kernel entry point the launchers use
//! (`raw::kernel_names`, all 11 modules) must have been launched, and the cases per entry point
//! are printed. Without the variable it prints a SKIP line.
use std::collections::BTreeMap;

use featjnd_kernels::cuda::compile::MODULES;

#[test]
fn the_tier_launched_every_kernel_entry_point() {
    let Some(path) = std::env::var_os("FEATJND_EMU_COUNTS").filter(|p| !p.is_empty()) else {
        eprintln!(
            "\nSKIP the_tier_launched_every_kernel_entry_point (FEATJND_EMU_COUNTS not set: run the tier first, as scripts/test.sh does)"
        );
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()));
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in text.lines() {
        let (m, k) = line.split_once('\t').unwrap_or_else(|| panic!("bad line {line:?}"));
        *counts.entry((m.to_string(), k.to_string())).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut table = String::new();
    for k in featjnd_kernels::cuda::raw::kernel_names() {
        let label = MODULES[k.module].label();
        let n = counts.get(&(label.clone(), k.name.to_string())).copied().unwrap_or(0);
        table += &format!("{n:6}  {label}  {}\n", k.name);
        if n == 0 {
            missing.push(format!("{label} {}", k.name));
        }
    }
    let mutants: usize = counts.iter().filter(|((m, _), _)| !MODULES.iter().any(|x| x.label() == *m)).map(|(_, n)| n).sum();
    eprintln!("launches per kernel entry point (emulation tier):\n{table}plus {mutants} launches of broken kernels");
    assert!(missing.is_empty(), "{} kernel entry point(s) never launched by the tier:\n{}", missing.len(), missing.join("\n"));
}
