//! COCO run-length encoded (RLE) masks, as pycocotools' `maskApi.c` defines them.
//!
//! A mask of `h` x `w` pixels is read column by column (pixel `(x, y)` is number `x * h + y`) and
//! stored as run lengths that alternate between 0s and 1s, starting with 0s (the first run may be
//! empty). The run lengths sum to `h * w`.
use crate::{Error, Result};

/// Upsampling factor of pycocotools' polygon rasterisation.
const SCALE: f64 = 5.0;

/// Polygon coordinates beyond this magnitude are rejected: their upsampled boundary would not fit
/// pycocotools' `int` arithmetic (and would take forever to walk).
const MAX_COORD: f64 = 1e7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub h: u32,
    pub w: u32,
    pub counts: Vec<u32>,
}

fn bad(msg: String) -> Error {
    Error::Arg(msg)
}

/// `h * w` when it is not 0 and fits a run length (pycocotools' `uint`).
fn pixels(h: u64, w: u64) -> Result<u64> {
    match h.checked_mul(w) {
        Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n),
        _ => Err(bad(format!("mask size {h}x{w} is empty or too large"))),
    }
}

impl Rle {
    /// Checks the size and that the runs cover exactly `h * w` pixels.
    pub fn new(h: u64, w: u64, counts: Vec<u32>) -> Result<Rle> {
        let n = pixels(h, w)?;
        let sum: u64 = counts.iter().map(|&c| c as u64).sum();
        if sum != n {
            return Err(bad(format!("RLE counts sum to {sum}, not h*w = {h}*{w} = {n}")));
        }
        Ok(Rle { h: h as u32, w: w as u32, counts })
    }

    /// Number of 1 pixels (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| c as u64).sum()
    }

    /// The compressed string (`rleToString`): each run, minus the run two before it from the fourth
    /// run on, as a little-endian series of 5-bit groups, one character (48 + group) each, bit 0x20
    /// set while more groups follow; the last group's bit 0x10 is the sign.
    pub fn to_compressed(&self) -> String {
        let mut s = String::new();
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = c as i64 - if i > 2 { self.counts[i - 2] as i64 } else { 0 };
            loop {
                let group = (x & 0x1f) as u8;
                x >>= 5;
                let more = if group & 0x10 != 0 { x != -1 } else { x != 0 };
                s.push((48 + group + if more { 0x20 } else { 0 }) as char);
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Parses a compressed string (`rleFrString`); malformed text or runs that do not cover `h * w`
    /// pixels are errors.
    pub fn from_compressed(h: u64, w: u64, s: &str) -> Result<Rle> {
        let mut counts: Vec<u32> = Vec::new();
        let mut bytes = s.bytes();
        while let Some(first) = bytes.next() {
            let (mut x, mut k, mut byte) = (0i64, 0u32, first);
            loop {
                if !(48..112).contains(&byte) {
                    return Err(bad(format!("RLE string: character {:?} is not in '0'..='o'", byte as char)));
                }
                if k == 7 {
                    return Err(bad("RLE string: a run takes more than 7 characters".into()));
                }
                let c = (byte - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
                byte = bytes.next().ok_or_else(|| bad("RLE string ends inside a run".into()))?;
            }
            let m = counts.len();
            if m > 2 {
                x += counts[m - 2] as i64;
            }
            let c = u32::try_from(x).map_err(|_| bad(format!("RLE string: run {m} is {x}, outside 0..2^32")))?;
            counts.push(c);
        }
        Rle::new(h, w, counts)
    }

    /// Rasterises one polygon `[x1, y1, x2, y2, ...]` exactly as pycocotools' `rleFrPoly`: the
    /// vertices are scaled by 5 and rounded, the edges walked pixel by pixel in that finer grid, and
    /// wherever the walk crosses the centre line of a pixel column the column is filled from the
    /// crossing down (column-major runs). Needs at least 3 points and finite coordinates.
    pub fn from_polygon(xy: &[f64], h: u64, w: u64) -> Result<Rle> {
        let n = pixels(h, w)?;
        if xy.len() < 6 || !xy.len().is_multiple_of(2) {
            return Err(bad(format!("a polygon needs at least 3 points (an even number >= 6 of coordinates), not {} numbers", xy.len())));
        }
        if let Some(v) = xy.iter().find(|v| !(v.abs() <= MAX_COORD)) {
            return Err(bad(format!("polygon coordinate {v} is not finite or beyond +-{MAX_COORD}")));
        }
        // Vertices in the upsampled grid, C's (int)(v + .5): truncation toward zero.
        let k = xy.len() / 2;
        let pt = |j: usize| ((SCALE * xy[2 * (j % k)] + 0.5) as i64, (SCALE * xy[2 * (j % k) + 1] + 0.5) as i64);

        // Consecutive points (u, v) of the walk along all edges, each edge including both ends.
        let mut boundary: Vec<u64> = Vec::new();
        let mut prev: Option<(i64, i64)> = None;
        let mut visit = |u: i64, v: i64| {
            if let Some((pu, pv)) = prev {
                if u != pu {
                    if let Some((x, y)) = column_crossing(u, pu, v.min(pv), h, w) {
                        boundary.push(x * h + y);
                    }
                }
            }
            prev = Some((u, v));
        };
        for j in 0..k {
            let ((mut xs, mut ys), (mut xe, mut ye)) = (pt(j), pt(j + 1));
            let (dx, dy) = ((xe - xs).abs(), (ye - ys).abs());
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            if dx >= dy {
                // dx = 0 only for a repeated vertex: one point, whose v pycocotools computes from
                // 0/0 but never reads (its neighbours share its u).
                let s = if dx == 0 { 0.0 } else { (ye - ys) as f64 / dx as f64 };
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    visit(t + xs, (ys as f64 + s * t as f64 + 0.5) as i64);
                }
            } else {
                let s = (xe - xs) as f64 / dy as f64;
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    visit((xs as f64 + s * t as f64 + 0.5) as i64, t + ys);
                }
            }
        }

        // Sorted pixel numbers where the mask toggles, as run lengths; empty runs merge their
        // neighbours (a toggle at the same pixel twice cancels).
        boundary.push(n);
        boundary.sort_unstable();
        let mut last = 0;
        let diffs: Vec<u64> = boundary
            .iter()
            .map(|&b| {
                let d = b - last;
                last = b;
                d
            })
            .collect();
        let mut counts = vec![diffs[0] as u32];
        let mut j = 1;
        while j < diffs.len() {
            if diffs[j] > 0 {
                counts.push(diffs[j] as u32);
                j += 1;
            } else {
                j += 1;
                if j < diffs.len() {
                    *counts.last_mut().unwrap() += diffs[j] as u32;
                    j += 1;
                }
            }
        }
        Ok(Rle { h: h as u32, w: w as u32, counts })
    }

    /// The union of masks of one size (`rleMerge` without `intersect`); one mask comes back as is.
    pub fn union(masks: &[Rle]) -> Result<Rle> {
        let (first, rest) = masks.split_first().ok_or_else(|| bad("a mask union needs at least one mask".into()))?;
        let mut out = first.clone();
        for m in rest {
            if (m.h, m.w) != (out.h, out.w) {
                return Err(bad(format!("cannot merge masks of sizes {}x{} and {}x{}", out.h, out.w, m.h, m.w)));
            }
            let mut counts = vec![0u32];
            for (len, a, b) in Overlay::new(&out, m) {
                // counts.len() odd: the open run holds 0s.
                if (a || b) == (counts.len() % 2 == 0) {
                    *counts.last_mut().unwrap() += len;
                } else {
                    counts.push(len);
                }
            }
            out.counts = counts;
        }
        Ok(out)
    }

    /// pycocotools' `rleIou` for one pair: intersection over union, or over the detection's area
    /// for a crowd GT. Masks of different sizes never overlap (pycocotools gives them -1).
    pub fn iou(dt: &Rle, gt: &Rle, crowd: bool) -> f64 {
        if (dt.h, dt.w) != (gt.h, gt.w) {
            return 0.0;
        }
        let inter: u64 = Overlay::new(dt, gt).filter(|&(_, a, b)| a && b).map(|(len, _, _)| len as u64).sum();
        if inter == 0 {
            return 0.0;
        }
        let union = if crowd { dt.area() } else { dt.area() + gt.area() - inter };
        inter as f64 / union as f64
    }
}

/// Where a step of the polygon walk from column `pu` to `u` (upsampled) enters a pixel column:
/// `(x, y)` with the column filled from row `y` down, or None if the step does not cross a pixel
/// centre line inside the image. `v` is the smaller upsampled row of the step.
fn column_crossing(u: i64, pu: i64, v: i64, h: u64, w: u64) -> Option<(u64, u64)> {
    let xd = (if u < pu { u } else { u - 1 }) as f64;
    let xd = (xd + 0.5) / SCALE - 0.5;
    if xd.floor() != xd || xd < 0.0 || xd > (w as f64 - 1.0) {
        return None;
    }
    let yd = (v as f64 + 0.5) / SCALE - 0.5;
    let yd = yd.clamp(0.0, h as f64).ceil();
    Some((xd as u64, yd as u64))
}

/// Walks two masks of one size together: `(length, bit of a, bit of b)` for each stretch where
/// neither changes. Empty runs anywhere are handled.
struct Overlay<'a> {
    runs: [(&'a [u32], usize, u32); 2],
}

impl<'a> Overlay<'a> {
    fn new(a: &'a Rle, b: &'a Rle) -> Self {
        Overlay { runs: [(&a.counts, 0, 0), (&b.counts, 0, 0)] }
    }
}

impl Iterator for Overlay<'_> {
    type Item = (u32, bool, bool);
    fn next(&mut self) -> Option<Self::Item> {
        // (counts, index of the current run, pixels of it already used); skip spent runs.
        for (c, i, used) in self.runs.iter_mut() {
            while *i < c.len() && *used == c[*i] {
                *i += 1;
                *used = 0;
            }
        }
        let left = |&(c, i, used): &(&[u32], usize, u32)| c.get(i).map(|&n| n - used);
        let len = left(&self.runs[0])?.min(left(&self.runs[1])?);
        let bits = [self.runs[0].1 % 2 == 1, self.runs[1].1 % 2 == 1];
        for r in self.runs.iter_mut() {
            r.2 += len;
        }
        Some((len, bits[0], bits[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_round_trip() {
        let r = Rle::new(4, 5, vec![0, 3, 1, 7, 2, 7]).unwrap();
        let s = r.to_compressed();
        assert_eq!(Rle::from_compressed(4, 5, &s).unwrap(), r);
        assert!(Rle::from_compressed(4, 5, "0").is_err());
        assert!(Rle::from_compressed(4, 5, "\u{7f}").is_err());
        assert!(Rle::from_compressed(4, 5, "P").is_err(), "ends inside a run");
    }

    #[test]
    fn overlay_and_iou() {
        let a = Rle::new(1, 10, vec![2, 4, 4]).unwrap(); // pixels 2..6
        let b = Rle::new(1, 10, vec![0, 0, 4, 4, 2]).unwrap(); // pixels 4..8, with an empty run
        assert_eq!(Rle::iou(&a, &b, false), 2.0 / 6.0);
        assert_eq!(Rle::iou(&a, &b, true), 2.0 / 4.0);
        let u = Rle::union(&[a.clone(), b]).unwrap();
        assert_eq!(u.counts, [2, 6, 2]);
        assert_eq!(Rle::iou(&a, &Rle::new(1, 10, vec![10]).unwrap(), false), 0.0);
        assert_eq!(Rle::iou(&a, &Rle::new(2, 5, vec![10]).unwrap(), false), 0.0);
    }

    #[test]
    fn square_polygon() {
        // The square [1,3]x[1,3] covers rows 1..3 of columns 1..3 (as pycocotools: see rle_primitives.json).
        let r = Rle::from_polygon(&[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0], 5, 5).unwrap();
        assert_eq!(r.counts, [6, 2, 3, 2, 12]);
        assert_eq!(r.area(), 4);
        assert!(Rle::from_polygon(&[1.0, 1.0, 3.0, 1.0], 5, 5).is_err());
        assert!(Rle::from_polygon(&[1.0, 1.0, 3.0, 1.0, f64::NAN, 2.0], 5, 5).is_err());
    }
}
