//! Shared by the `.fjq` and C ABI fuzz bodies (`fjq.rs`, `capi.rs`): making a damaged version 3
//! file's checksums right again, so the fields behind them see hostile values. Each body passes
//! its own CRC-32 (the C ABI's test build has no `crc32fast`).

/// Version 3: recomputes the header checksum (and, with `chunks`, every chunk's CRC) from the
/// file's own fields with `crc` (CRC-32, IEEE); leaves the file alone where they point outside it.
pub fn fix_v3(b: &mut [u8], chunks: bool, crc: fn(&[u8]) -> u32) {
    let u32_at = |b: &[u8], o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
    let (Some(nd), Some(steps)) = (b.get(9).map(|&d| d as usize), b.get(40..48)) else { return };
    let steps = u64::from_le_bytes([steps[0], steps[1], steps[2], steps[3], steps[4], steps[5], steps[6], steps[7]]);
    let coder = 52 + 8 * nd;
    let (Some(table), Some(m)) = (u32_at(b, 48), u32_at(b, coder + 8)) else { return };
    let Some(index) = usize::try_from(steps).ok().and_then(|s| (coder + 12 + table).checked_add(s)) else { return };
    let Some(hcrc) = m.checked_mul(8).and_then(|i| i.checked_add(index)).filter(|&h| h <= b.len().saturating_sub(4)) else { return };
    if chunks {
        let mut off = hcrc + 4;
        for c in 0..m {
            let len = u32_at(b, index + 8 * c).unwrap_or(0);
            let Some(end) = off.checked_add(len).filter(|&e| e <= b.len()) else { break };
            let sum = crc(&b[off..end]);
            b[index + 8 * c + 4..index + 8 * c + 8].copy_from_slice(&sum.to_le_bytes());
            off = end;
        }
    }
    let sum = crc(&b[..hcrc]);
    b[hcrc..hcrc + 4].copy_from_slice(&sum.to_le_bytes());
}
