//! The .fjq decoder. Random bytes rarely get past the magic and the CRC-32, so most inputs are
//! made structure-aware: a small valid file is encoded from the input (dims, bits, patch, values),
//! then bytes of it are overwritten from the input and the CRC is fixed up, so the header
//! cross-checks, the frequency table, the steps and the ANS payload all see hostile values.
//! Version 3 files (what `encode` writes) have a header checksum and one CRC per chunk instead of
//! one CRC at the end: modes 4 and 5 fix those up after the mutations (mode 5 every chunk's CRC
//! too), so the coder fields, the chunk index and the rANS chunks see hostile values.
//! Invariant: an error or a decoded feature; never a panic, a hang or a huge allocation.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/fjq.rs`) and the stable harness of the
//! test command (docs/fuzzing.md).
use featjnd_research::{Bits, Layout};
use tch::Tensor;

#[path = "v3_checksums.rs"]
mod v3_checksums;

/// One input (the fuzz target's body; also run by the stable harness).
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 6 {
        // Raw bytes, as read from disk.
        0 => drop(featjnd_research::codec::decode(rest)),
        // Raw bytes with a valid CRC appended.
        1 => {
            let mut b = rest.to_vec();
            b.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
            drop(featjnd_research::codec::decode(&b));
        }
        // A valid file, then mutations with the CRC fixed up.
        _ => {
            if rest.len() < 6 {
                return;
            }
            let (n, c, h, w) = (1 + rest[0] as i64 % 2, 1 + rest[1] as i64 % 5, 1 + rest[2] as i64 % 6, 1 + rest[3] as i64 % 6);
            let bits = if rest[4] % 2 == 0 { Bits::B8 } else { Bits::B16 };
            let patch = if h % 2 == 0 && w % 2 == 0 && rest[5] % 2 == 1 { 2 } else { 1 };
            let numel = (n * c * h * w) as usize;
            let vals: Vec<f32> = (0..numel).map(|i| rest.get(6 + i).map_or(0.5, |&v| v as f32 / 16.0 - 8.0)).collect();
            let x = Tensor::from_slice(&vals).reshape([n, c, h, w]);
            let tokens = (n * (h / patch) * (w / patch)) as usize;
            let steps = Tensor::from_slice(&(0..tokens).map(|t| 0.01 + (t % 7) as f32 * 0.3).collect::<Vec<f32>>());
            let Ok(enc) = featjnd_research::codec::encode(&x, &steps, Layout::Nchw, patch as usize, bits) else { return };
            let mut b = enc.bytes;
            // The bytes after the values: (position, xor) pairs.
            for pair in rest[(6 + numel).min(rest.len())..].chunks_exact(3) {
                let pos = u16::from_le_bytes([pair[0], pair[1]]) as usize % (b.len() - 4);
                b[pos] ^= pair[2];
            }
            if mode % 6 == 3 {
                // Also cut the file somewhere (before the fix-up, so the CRC still holds).
                let cut = rest[5] as usize % (b.len() - 4);
                b.truncate(b.len() - 4 - cut);
                b.extend_from_slice(&[0; 4]);
            }
            if mode % 6 >= 4 {
                v3_checksums::fix_v3(&mut b, mode % 6 == 5, crc32fast::hash);
            } else {
                let body = b.len() - 4;
                let crc = crc32fast::hash(&b[..body]);
                b[body..].copy_from_slice(&crc.to_le_bytes());
            }
            drop(featjnd_research::codec::decode(&b));
        }
    }
}
