//! The batched sync-free C calls (`fj_quantize_batch_async`, `fj_perturb_batch_async`, their
//! `*_stats_slots`) on a CPU context: a batch gives what a loop of the single async calls gives,
//! bit for bit (outputs, statistics slices, decoded results), for every dtype, both widths, mixed
//! sizes and more items than one launch takes (32); a bad element lands in its own item's slice
//! only; every bad argument is refused before anything is written. The CUDA context is in
//! tests/gpu.rs (`c_abi_batch_*`).
//!
//! Every `unsafe` block calls the C entry points with pointers to live Rust buffers of the sizes
//! the call documents (or deliberately bad ones, which the entry points must refuse).
mod common;
use common::{ctx, data, err, numel, CASES};
use featjnd::*;
use featjnd_kernels::__half::{bf16, f16};
use std::ffi::c_void;
use std::mem::size_of;
use std::ptr::{null, null_mut};

/// A host array of `len` elements of `es` bytes, 8-byte aligned (any dtype, symbols, statistics).
#[derive(Clone, PartialEq, Debug)]
struct Arr {
    v: Vec<u64>,
    len: usize,
    es: usize,
}

impl Arr {
    fn filled(len: usize, es: usize, byte: u8) -> Arr {
        Arr { v: vec![u64::from_ne_bytes([byte; 8]); (len * es).div_ceil(8)], len, es }
    }
    /// Values in a feature dtype (`FJ_F32`, `FJ_F16`, `FJ_BF16`), rounded to nearest.
    fn of(vals: &[f32], dtype: u32) -> Arr {
        let bytes: Vec<u8> = match dtype {
            FJ_F32 => vals.iter().flat_map(|v| v.to_ne_bytes()).collect(),
            FJ_F16 => vals.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_ne_bytes()).collect(),
            _ => vals.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_ne_bytes()).collect(),
        };
        let es = if dtype == FJ_F32 { 4 } else { 2 };
        let mut a = Arr::filled(vals.len(), es, 0);
        for (w, c) in a.v.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            *w = u64::from_ne_bytes(b);
        }
        a
    }
    fn ptr(&self) -> *const c_void {
        self.v.as_ptr() as *const c_void
    }
    fn mptr(&mut self) -> *mut c_void {
        self.v.as_mut_ptr() as *mut c_void
    }
}

fn es_of(dtype: u32) -> usize {
    if dtype == FJ_F32 {
        4
    } else {
        2
    }
}

const DTYPES: [u32; 3] = [FJ_F32, FJ_F16, FJ_BF16];

/// One quantization item's inputs and outputs (sentinel-filled, so a skipped write shows).
#[derive(Clone)]
struct QItem {
    f: FjFeature,
    x: Arr,
    patch: u32,
    steps: Vec<f32>,
    sym: Arr,
    rec: Arr,
    sse: Vec<f32>,
}

impl QItem {
    fn new(case: usize, dtype: u32, bits: u32, seed: u64) -> QItem {
        let (layout, dims, patch) = CASES[case];
        let n = numel(layout, dims);
        let x = Arr::of(&data(n, seed).iter().map(|v| v * 3.0).collect::<Vec<_>>(), dtype);
        let f = FjFeature { dtype, layout, dims, data: x.ptr() };
        let mut t = 0u64;
        // SAFETY: a readable feature struct and a writable counter; no data is read.
        assert_eq!(unsafe { fj_token_count(&f, patch, &mut t) }, FJ_OK);
        // Steps from 0.02 to about 1: some tokens clamp at 8 bits, none at 16.
        let steps = data(t as usize, seed + 500).iter().map(|v| v.abs() * 0.3 + 0.02).collect();
        let sym_es = if bits == 16 { 2 } else { 1 };
        QItem {
            f,
            x,
            patch,
            steps,
            sym: Arr::filled(n, sym_es, 0xa5),
            rec: Arr::filled(n, es_of(dtype), 0xa5),
            sse: vec![-1.0; t as usize],
        }
    }
    /// The feature struct pointing at this item's own `x` (valid while `self` does not move).
    fn feat(&self) -> FjFeature {
        FjFeature { data: self.x.ptr(), ..self.f }
    }
    /// The batch item; `f` must be this item's feature struct, alive during the call.
    fn item(&mut self, f: &FjFeature) -> FjQuantizeItem {
        FjQuantizeItem {
            size: size_of::<FjQuantizeItem>() as u32,
            patch: self.patch,
            x: f,
            steps: self.steps.as_ptr(),
            symbols: self.sym.mptr(),
            recon: self.rec.mptr(),
            token_sse: self.sse.as_mut_ptr(),
        }
    }
    /// The same arguments as `fj_quantize_async` options.
    fn opts(&mut self, bits: u32) -> FjQuantizeOptions {
        FjQuantizeOptions {
            size: size_of::<FjQuantizeOptions>() as u32,
            bits,
            patch: self.patch,
            pad0: 0,
            symbols: self.sym.mptr(),
            recon: self.rec.mptr(),
            token_sse: self.sse.as_mut_ptr(),
            histogram: null_mut(),
        }
    }
}

fn quantize_slots(bits: u32) -> usize {
    let mut s = 0u64;
    // SAFETY: a writable counter.
    assert_eq!(unsafe { fj_quantize_stats_slots(bits, &mut s) }, FJ_OK);
    s as usize
}

/// Decodes one item's statistics: the status, the message, the result and the histogram.
fn qdecode(c: *const FjContext, f: &FjFeature, patch: u32, bits: u32, stats: &[i64]) -> (i32, String, [u64; 5], Vec<u64>) {
    let mut r = FjQuantizeResult::default();
    let mut h = vec![0u64; if bits == 16 { 512 } else { 255 }];
    // SAFETY: live buffers of the documented sizes.
    let rc =
        unsafe { fj_quantize_decode(c, f, null(), patch, bits, stats.as_ptr(), stats.len() as u64, null_mut(), &mut r, h.as_mut_ptr()) };
    let bits_of = [r.clamped, r.total_sse.to_bits(), r.mse.to_bits(), r.entropy_bits.to_bits(), r.bits_per_element.to_bits()];
    (rc, err(), bits_of, h)
}

/// Runs `items` through `fj_quantize_async` one by one: each item's statistics.
fn quantize_singles(c: *const FjContext, items: &mut [QItem], bits: u32) -> Vec<Vec<i64>> {
    let per = quantize_slots(bits);
    items
        .iter_mut()
        .map(|it| {
            let f = it.feat();
            let o = it.opts(bits);
            let mut s = vec![-7i64; per];
            // SAFETY: live buffers of the documented sizes.
            let rc = unsafe { fj_quantize_async(c, &f, it.steps.as_ptr(), &o, s.as_mut_ptr(), per as u64, null_mut()) };
            assert_eq!(rc, FJ_OK, "{}", err());
            s
        })
        .collect()
}

/// Runs `items` through one `fj_quantize_batch_async`: its status and statistics.
fn quantize_batch(c: *const FjContext, items: &mut [QItem], bits: u32) -> (i32, Vec<i64>) {
    let feats: Vec<FjFeature> = items.iter().map(QItem::feat).collect();
    let list: Vec<FjQuantizeItem> = items.iter_mut().zip(&feats).map(|(it, f)| it.item(f)).collect();
    let mut total = 0u64;
    // SAFETY: a writable counter.
    assert_eq!(unsafe { fj_quantize_batch_stats_slots(bits, list.len() as u32, &mut total) }, FJ_OK);
    assert_eq!(total as usize, list.len() * quantize_slots(bits));
    let mut stats = vec![-7i64; total as usize];
    // SAFETY: live buffers of the documented sizes.
    let rc = unsafe { fj_quantize_batch_async(c, list.as_ptr(), list.len() as u32, bits, stats.as_mut_ptr(), total, null_mut()) };
    (rc, stats)
}

/// Batch vs the loop of single calls: outputs, statistics slices and decoded results, bit for bit.
fn same_quantized(c: *const FjContext, batch: &[QItem], bstats: &[i64], single: &[QItem], sstats: &[Vec<i64>], bits: u32, what: &str) {
    let per = quantize_slots(bits);
    for (i, ((b, s), ss)) in batch.iter().zip(single).zip(sstats).enumerate() {
        let what = format!("{what} item {i} of {}", batch.len());
        assert_eq!(b.sym, s.sym, "{what}: symbols");
        assert_eq!(b.rec, s.rec, "{what}: recon");
        assert!(b.sse.iter().zip(&s.sse).all(|(p, q)| p.to_bits() == q.to_bits()), "{what}: token_sse");
        let slice = &bstats[i * per..(i + 1) * per];
        assert_eq!(slice, &ss[..], "{what}: statistics slice");
        let (db, ds) = (qdecode(c, &b.feat(), b.patch, bits, slice), qdecode(c, &s.feat(), s.patch, bits, ss));
        assert_eq!(db, ds, "{what}: decoded");
    }
}

#[test]
fn quantize_batch_equals_a_loop_of_async_calls_bit_for_bit() {
    let c = ctx();
    for dtype in DTYPES {
        for bits in [8u32, 16] {
            // Mixed sizes, more than one launch's 32 items; then a batch of one of each case.
            for count in [40usize, 1] {
                for first in 0..if count == 1 { CASES.len() } else { 1 } {
                    let mut single: Vec<QItem> = (0..count).map(|k| QItem::new((first + k) % 5, dtype, bits, 31 * k as u64 + 3)).collect();
                    let mut batch = single.clone();
                    let sstats = quantize_singles(c, &mut single, bits);
                    let (rc, bstats) = quantize_batch(c, &mut batch, bits);
                    assert_eq!(rc, FJ_OK, "{}", err());
                    let what = format!("dtype {dtype} bits {bits} first case {first}");
                    same_quantized(c, &batch, &bstats, &single, &sstats, bits, &what);
                    // Something was written: the symbols left their sentinel somewhere.
                    let written = |it: &QItem| it.sym.len < 2 || it.sym != Arr::filled(it.sym.len, it.sym.es, 0xa5);
                    assert!(batch.iter().all(written), "{what}");
                }
            }
        }
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn quantize_batch_items_are_read_with_the_callers_stride() {
    // A newer caller's item (a field appended) and an older one (no token_sse): the array's
    // stride is items[0].size, and the missing field reads as null.
    #[repr(C)]
    struct Newer {
        item: FjQuantizeItem,
        future: u64,
    }
    #[repr(C)]
    struct Older {
        size: u32,
        patch: u32,
        x: *const FjFeature,
        steps: *const f32,
        symbols: *mut c_void,
        recon: *mut c_void,
    }
    let c = ctx();
    let bits = 8;
    let per = quantize_slots(bits);
    let mut single: Vec<QItem> = (0..5).map(|k| QItem::new(k, FJ_F16, bits, 70 + k as u64)).collect();
    let mut newer = single.clone();
    let sstats = quantize_singles(c, &mut single, bits);
    let feats: Vec<FjFeature> = newer.iter().map(QItem::feat).collect();
    let list: Vec<Newer> = newer
        .iter_mut()
        .zip(&feats)
        .map(|(it, f)| Newer { item: FjQuantizeItem { size: size_of::<Newer>() as u32, ..it.item(f) }, future: u64::MAX })
        .collect();
    let mut stats = vec![0i64; 5 * per];
    // SAFETY: live buffers of the documented sizes; each item is readable for its declared size.
    let rc = unsafe {
        fj_quantize_batch_async(c, list.as_ptr() as *const FjQuantizeItem, 5, bits, stats.as_mut_ptr(), stats.len() as u64, null_mut())
    };
    assert_eq!(rc, FJ_OK, "{}", err());
    same_quantized(c, &newer, &stats, &single, &sstats, bits, "newer items");

    let mut older: Vec<QItem> = (0..5).map(|k| QItem::new(k, FJ_F16, bits, 70 + k as u64)).collect();
    let feats: Vec<FjFeature> = older.iter().map(QItem::feat).collect();
    let list: Vec<Older> = older
        .iter_mut()
        .zip(&feats)
        .map(|(it, f)| {
            let i = it.item(f);
            Older { size: size_of::<Older>() as u32, patch: i.patch, x: i.x, steps: i.steps, symbols: i.symbols, recon: i.recon }
        })
        .collect();
    // SAFETY: as above.
    let rc = unsafe {
        fj_quantize_batch_async(c, list.as_ptr() as *const FjQuantizeItem, 5, bits, stats.as_mut_ptr(), stats.len() as u64, null_mut())
    };
    assert_eq!(rc, FJ_OK, "{}", err());
    for (o, s) in older.iter().zip(&single) {
        assert_eq!((&o.sym, &o.rec), (&s.sym, &s.rec));
        assert!(o.sse.iter().all(|&v| v == -1.0), "token_sse was not asked for");
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

/// One perturbation item's inputs and output.
#[derive(Clone)]
struct PItem {
    f: FjFeature,
    x: Arr,
    j: Option<Arr>,
    out: Arr,
    nrmse: f64,
    noise: u32,
    seed: u64,
    subsequence: u32,
}

impl PItem {
    fn new(case: usize, dtype: u32, seed: u64, with_j: bool, noise: u32) -> PItem {
        let (layout, dims, _) = CASES[case];
        let n = numel(layout, dims);
        let mut xv = data(n, seed);
        if dims[0] >= 2 {
            xv[..n / dims[0] as usize].fill(0.0); // sample 0 is zero: reported, returned unchanged
        }
        let j = with_j.then(|| Arr::of(&data(n, seed + 1).iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>(), dtype));
        let x = Arr::of(&xv, dtype);
        let f = FjFeature { dtype, layout, dims, data: x.ptr() };
        PItem {
            f,
            x,
            j,
            out: Arr::filled(n, es_of(dtype), 0x5a),
            nrmse: 0.05 + 0.01 * (seed % 20) as f64,
            noise,
            seed,
            subsequence: (seed % 4) as u32,
        }
    }
    fn feats(&self) -> (FjFeature, Option<FjFeature>) {
        let fx = FjFeature { data: self.x.ptr(), ..self.f };
        (fx, self.j.as_ref().map(|j| FjFeature { data: j.ptr(), ..self.f }))
    }
    fn item(&mut self, fx: &FjFeature, fj: Option<&FjFeature>) -> FjPerturbItem {
        FjPerturbItem {
            size: size_of::<FjPerturbItem>() as u32,
            noise: self.noise,
            seed: self.seed,
            subsequence: self.subsequence,
            pad0: 0,
            nrmse: self.nrmse,
            x: fx,
            jnd: fj.map_or(null(), |j| j as *const FjFeature),
            out: self.out.mptr(),
        }
    }
}

fn perturb_slots(f: &FjFeature) -> usize {
    let mut s = 0u64;
    // SAFETY: a readable feature struct and a writable counter.
    assert_eq!(unsafe { fj_perturb_stats_slots(f, &mut s) }, FJ_OK);
    s as usize
}

/// Decodes one perturbation's statistics: the status, the message and the scales' bits.
fn pdecode(c: *const FjContext, it: &PItem, stats: &[i64]) -> (i32, String, Vec<u32>) {
    let (fx, fj) = it.feats();
    let mut scales = vec![0f32; it.f.dims[0] as usize];
    let jp = fj.as_ref().map_or(null(), |j| j as *const FjFeature);
    // SAFETY: live buffers of the documented sizes.
    let rc = unsafe { fj_perturb_decode(c, &fx, jp, it.nrmse, stats.as_ptr(), stats.len() as u64, null_mut(), scales.as_mut_ptr()) };
    (rc, err(), scales.iter().map(|s| s.to_bits()).collect())
}

fn perturb_singles(c: *const FjContext, items: &mut [PItem]) -> Vec<Vec<i64>> {
    items
        .iter_mut()
        .map(|it| {
            let (fx, fj) = it.feats();
            let mut s = vec![-7i64; perturb_slots(&fx)];
            let o = FjPerturbOptions {
                size: size_of::<FjPerturbOptions>() as u32,
                noise: it.noise,
                seed: it.seed,
                subsequence: it.subsequence,
                pad0: 0,
                scales: null_mut(),
            };
            let jp = fj.as_ref().map_or(null(), |j| j as *const FjFeature);
            // SAFETY: live buffers of the documented sizes.
            let rc = unsafe { fj_perturb_async(c, &fx, jp, it.nrmse, &o, it.out.mptr(), s.as_mut_ptr(), s.len() as u64, null_mut()) };
            assert_eq!(rc, FJ_OK, "{}", err());
            s
        })
        .collect()
}

/// One `fj_perturb_batch_async`: its status, statistics and the items' offsets in them.
fn perturb_batch(c: *const FjContext, items: &mut [PItem]) -> (i32, Vec<i64>, Vec<u64>) {
    let feats: Vec<_> = items.iter().map(PItem::feats).collect();
    let list: Vec<FjPerturbItem> = items.iter_mut().zip(&feats).map(|(it, (fx, fj))| it.item(fx, fj.as_ref())).collect();
    let (mut total, mut offsets) = (0u64, vec![0u64; list.len()]);
    // SAFETY: live buffers of the documented sizes.
    assert_eq!(unsafe { fj_perturb_batch_stats_slots(list.as_ptr(), list.len() as u32, &mut total, offsets.as_mut_ptr()) }, FJ_OK);
    let mut stats = vec![-7i64; total as usize];
    // SAFETY: live buffers of the documented sizes.
    let rc = unsafe { fj_perturb_batch_async(c, list.as_ptr(), list.len() as u32, stats.as_mut_ptr(), total, null_mut()) };
    (rc, stats, offsets)
}

/// The slots of item `i` of a perturbation batch.
fn slice_of<'a>(stats: &'a [i64], offsets: &[u64], i: usize) -> &'a [i64] {
    let end = offsets.get(i + 1).map_or(stats.len(), |&e| e as usize);
    &stats[offsets[i] as usize..end]
}

#[test]
fn perturb_batch_equals_a_loop_of_async_calls_bit_for_bit() {
    let c = ctx();
    for dtype in DTYPES {
        for count in [40usize, 1, 7] {
            // Gaussian and uniform noise, with and without J, mixed sizes, per-item strength.
            let make =
                |k: usize| PItem::new((k * 3) % 5, dtype, 11 * k as u64 + 1, !k.is_multiple_of(3), [FJ_GAUSSIAN, FJ_UNIFORM_NOISE][k % 2]);
            let mut single: Vec<PItem> = (0..count).map(make).collect();
            let mut batch = single.clone();
            let sstats = perturb_singles(c, &mut single);
            let (rc, bstats, offsets) = perturb_batch(c, &mut batch);
            assert_eq!(rc, FJ_OK, "{}", err());
            // The offsets are the prefix sums of the single calls' slot counts.
            let prefix: Vec<u64> = sstats.iter().scan(0u64, |a, s| Some(std::mem::replace(a, *a + s.len() as u64))).collect();
            assert_eq!(offsets, prefix);
            assert_eq!(bstats.len(), sstats.iter().map(Vec::len).sum::<usize>());
            for (i, ((b, s), ss)) in batch.iter().zip(&single).zip(&sstats).enumerate() {
                let what = format!("dtype {dtype} item {i} of {count}");
                assert_eq!(b.out, s.out, "{what}: output");
                let slice = slice_of(&bstats, &offsets, i);
                assert_eq!(slice, &ss[..], "{what}: statistics slice");
                let (db, ds) = (pdecode(c, b, slice), pdecode(c, s, ss));
                assert_eq!(db, ds, "{what}: decoded");
                assert_eq!(db.0, FJ_OK, "{what}: {}", db.1);
                if b.f.dims[0] >= 2 {
                    assert_eq!(db.2[0], 0, "{what}: the zero sample has scale 0");
                }
            }
        }
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

/// Writes `v` at element `i` of a feature array of `dtype`.
fn set(a: &mut Arr, dtype: u32, i: usize, v: f32) {
    let one = Arr::of(&[v], dtype);
    let es = a.es;
    let mut bytes: Vec<u8> = a.v.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes[i * es..(i + 1) * es].copy_from_slice(&one.v[0].to_ne_bytes()[..es]);
    a.v = bytes.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
}

#[test]
fn a_bad_element_is_reported_by_its_own_item_only() {
    let c = ctx();
    for dtype in DTYPES {
        // Quantization: a NaN in item 2's x, an infinity in item 4's.
        let bits = 8;
        let mut single: Vec<QItem> = (0..5).map(|k| QItem::new(k, dtype, bits, 200 + k as u64)).collect();
        set(&mut single[2].x, dtype, 7, f32::NAN);
        set(&mut single[4].x, dtype, 5000, f32::INFINITY);
        let mut batch = single.clone();
        let sstats = quantize_singles(c, &mut single, bits);
        let (rc, bstats) = quantize_batch(c, &mut batch, bits);
        assert_eq!(rc, FJ_OK, "the call itself succeeds: {}", err());
        let per = quantize_slots(bits);
        for (i, (b, s)) in batch.iter().zip(&single).enumerate() {
            let slice = &bstats[i * per..(i + 1) * per];
            assert_eq!(slice, &sstats[i][..], "item {i}");
            let (db, ds) = (qdecode(c, &b.feat(), b.patch, bits, slice), qdecode(c, &s.feat(), s.patch, bits, &sstats[i]));
            assert_eq!(db, ds, "item {i}");
            match i {
                2 => assert!(db.0 == FJ_ERR_NONFINITE && db.1.contains('7') && db.1.contains("NaN"), "{db:?}"),
                4 => assert!(db.0 == FJ_ERR_NONFINITE && db.1.contains("5000"), "{db:?}"),
                _ => {
                    assert_eq!(db.0, FJ_OK, "item {i}: {}", db.1);
                    assert_eq!((&b.sym, &b.rec), (&s.sym, &s.rec), "item {i}");
                }
            }
        }
        // Perturbation: a NaN in item 1's x, a zero J in item 3's.
        let mut single: Vec<PItem> = (0..5).map(|k| PItem::new(k, dtype, 300 + k as u64, true, FJ_GAUSSIAN)).collect();
        set(&mut single[1].x, dtype, 100, f32::NAN);
        set(single[3].j.as_mut().unwrap(), dtype, 9, 0.0);
        let mut batch = single.clone();
        let sstats = perturb_singles(c, &mut single);
        let (rc, bstats, offsets) = perturb_batch(c, &mut batch);
        assert_eq!(rc, FJ_OK, "the call itself succeeds: {}", err());
        for (i, (b, s)) in batch.iter().zip(&single).enumerate() {
            let slice = slice_of(&bstats, &offsets, i);
            assert_eq!(slice, &sstats[i][..], "item {i}");
            let db = pdecode(c, b, slice);
            assert_eq!(db, pdecode(c, s, &sstats[i]), "item {i}");
            match i {
                1 => assert!(db.0 == FJ_ERR_NONFINITE && db.1.contains("100"), "{db:?}"),
                3 => assert!(db.0 == FJ_ERR_JND && db.1.contains('9'), "{db:?}"),
                _ => {
                    assert_eq!(db.0, FJ_OK, "item {i}: {}", db.1);
                    assert_eq!(b.out, s.out, "item {i}");
                }
            }
        }
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

/// Calls `fj_quantize_batch_async` on `list` with a fresh statistics array of `len` slots and
/// checks the status; on a refusal, that neither the statistics nor any output were written.
fn quantize_status(c: *const FjContext, items: &[QItem], list: &[FjQuantizeItem], bits: u32, len: usize, want: i32, msg: &str) {
    let mut stats = vec![-3i64; len];
    // SAFETY: live buffers of the documented sizes, or deliberately bad ones.
    let rc = unsafe { fj_quantize_batch_async(c, list.as_ptr(), list.len() as u32, bits, stats.as_mut_ptr(), len as u64, null_mut()) };
    let e = err();
    assert_eq!(rc, want, "{msg}: {e}");
    assert!(e.contains(msg), "wanted {msg:?} in {e:?}");
    if want != FJ_OK {
        assert!(stats.iter().all(|&s| s == -3), "{msg}: the statistics were written");
        for it in items {
            assert!(
                it.sym == Arr::filled(it.sym.len, it.sym.es, 0xa5) && it.sse.iter().all(|&v| v == -1.0),
                "{msg}: an output was written"
            );
        }
    }
}

#[test]
fn bad_quantize_batches_are_refused_before_anything_is_written() {
    let c = ctx();
    let bits = 8;
    let per = quantize_slots(bits);
    let mut items: Vec<QItem> = (0..3).map(|k| QItem::new(k, FJ_F32, bits, 400 + k as u64)).collect();
    let feats: Vec<FjFeature> = items.iter().map(QItem::feat).collect();
    let good: Vec<FjQuantizeItem> = items.iter_mut().zip(&feats).map(|(it, f)| it.item(f)).collect();
    let mut stats = vec![-3i64; 3 * per];
    let sp = stats.as_mut_ptr();
    // SAFETY: live buffers of the documented sizes, or deliberately bad ones (see the module doc).
    unsafe {
        // Count 0 is a no-op: nothing is read (null items and stats are fine) or written.
        assert_eq!(fj_quantize_batch_async(c, null(), 0, bits, null_mut(), 0, null_mut()), FJ_OK);
        assert_eq!(fj_quantize_batch_async(c, good.as_ptr(), 0, bits, sp, 3 * per as u64, null_mut()), FJ_OK);
        assert!(stats.iter().all(|&s| s == -3));
        let mut n = 9u64;
        assert_eq!(fj_quantize_batch_stats_slots(bits, 0, &mut n), FJ_OK);
        assert_eq!(n, 0);
        // Null items, a null context, a stream on a CPU context, bad bits, null counters.
        assert_eq!(fj_quantize_batch_async(c, null(), 3, bits, sp, 3 * per as u64, null_mut()), FJ_ERR_NULL);
        assert!(err().contains("items is null"), "{}", err());
        assert_eq!(fj_quantize_batch_async(null(), good.as_ptr(), 3, bits, sp, 3 * per as u64, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_quantize_batch_async(c, good.as_ptr(), 3, bits, sp, 3 * per as u64, 8 as *mut c_void), FJ_ERR_ARG);
        assert_eq!(fj_quantize_batch_async(c, good.as_ptr(), 3, 12, sp, 3 * per as u64, null_mut()), FJ_ERR_ARG);
        assert_eq!(fj_quantize_batch_stats_slots(12, 3, &mut n), FJ_ERR_ARG);
        assert_eq!(fj_quantize_batch_stats_slots(8, 3, null_mut()), FJ_ERR_NULL);
        // Statistics: null, misaligned, one item's slots short.
        assert_eq!(fj_quantize_batch_async(c, good.as_ptr(), 3, bits, null_mut(), 3 * per as u64, null_mut()), FJ_ERR_NULL);
        let mis = (sp as *mut u8).add(4) as *mut i64;
        assert_eq!(fj_quantize_batch_async(c, good.as_ptr(), 3, bits, mis, per as u64, null_mut()), FJ_ERR_ALIGN);
    }
    quantize_status(c, &items, &good, bits, 3 * per - 1, FJ_ERR_SHAPE, "stats_len is");
    // A 16-bit batch needs more slots than an 8-bit one.
    quantize_status(c, &items, &good, 16, 3 * per, FJ_ERR_SHAPE, "stats_len is");
    // Per item, the single call's checks, the message naming the item.
    let with = |k: usize, f: &dyn Fn(&mut FjQuantizeItem)| {
        let mut l = good.clone();
        f(&mut l[k]);
        l
    };
    quantize_status(c, &items, &with(1, &|i| i.x = null()), bits, 3 * per, FJ_ERR_NULL, "items[1]: x is null");
    quantize_status(c, &items, &with(2, &|i| i.steps = null()), bits, 3 * per, FJ_ERR_NULL, "items[2]: steps is null");
    quantize_status(c, &items, &with(1, &|i| i.size = 8), bits, 3 * per, FJ_ERR_ARG, "items[1].size is 8");
    quantize_status(c, &items, &with(0, &|i| i.size = 0), bits, 3 * per, FJ_ERR_ARG, "items[0].size must be");
    // A size that ends inside a pointer is no sizeof: refused, not read as half an address.
    quantize_status(c, &items, &with(0, &|i| i.size = 12), bits, 3 * per, FJ_ERR_ARG, "items[0].size must be");
    quantize_status(c, &items, &with(2, &|i| i.patch = 4), bits, 3 * per, FJ_ERR_SHAPE, "items[2]");
    let mis_rec = (items[1].rec.mptr() as *mut u8).wrapping_add(2) as *mut c_void;
    quantize_status(c, &items, &with(1, &|i| i.recon = mis_rec), bits, 3 * per, FJ_ERR_ALIGN, "items[1]: opts->recon");
    // One dtype per batch.
    let half = QItem::new(2, FJ_F16, bits, 9);
    let fh = half.feat();
    quantize_status(c, &items, &with(2, &|i| i.x = &fh), bits, 3 * per, FJ_ERR_DTYPE, "items[2] is f16, items[0] f32");
    // Overlaps across items: the same symbols twice, an output on another item's input or steps.
    let sym0 = good[0].symbols;
    quantize_status(c, &items, &with(1, &|i| i.symbols = sym0), bits, 3 * per, FJ_ERR_ARG, "overlaps");
    let x2 = items[2].x.ptr() as *mut c_void;
    quantize_status(c, &items, &with(0, &|i| i.recon = x2), bits, 3 * per, FJ_ERR_ARG, "items[0].recon overlaps items[2].x->data");
    let st1 = good[1].steps as *mut f32;
    quantize_status(c, &items, &with(0, &|i| i.token_sse = st1), bits, 3 * per, FJ_ERR_ARG, "items[0].token_sse overlaps items[1].steps");
    // An output inside the statistics.
    let mut big = vec![-3i64; 4 * per + items[2].rec.v.len()];
    let into_stats = big.as_mut_ptr() as *mut c_void;
    let list = with(0, &|i| i.symbols = into_stats);
    // SAFETY: live buffers; the overlap must be refused unwritten.
    let rc = unsafe { fj_quantize_batch_async(c, list.as_ptr(), 3, bits, big.as_mut_ptr(), big.len() as u64, null_mut()) };
    assert_eq!(rc, FJ_ERR_ARG, "{}", err());
    assert!(err().contains("items[0]: invalid argument: stats overlaps opts->symbols"), "{}", err());
    assert!(big.iter().all(|&s| s == -3));
    // Inputs may be shared (two items quantizing one feature), outputs not.
    let f0 = feats[0];
    let shared = with(2, &|i| {
        i.x = &f0;
        i.patch = good[0].patch;
        i.steps = good[0].steps;
        i.symbols = null_mut();
        i.recon = null_mut();
        i.token_sse = null_mut();
    });
    quantize_status(c, &[], &shared, bits, 3 * per, FJ_OK, "");
    // In place: an item's recon may be its own x (as fj_quantize_async allows), but then no other
    // item may read that x.
    let mut ip: Vec<QItem> = (0..3).map(|k| QItem::new(k, FJ_F32, bits, 500 + k as u64)).collect();
    let mut ip_single = ip.clone();
    let ipf: Vec<FjFeature> = ip.iter().map(QItem::feat).collect();
    let mut l: Vec<FjQuantizeItem> = ip.iter_mut().zip(&ipf).map(|(it, f)| it.item(f)).collect();
    l[1].recon = ip[1].x.mptr();
    let reads_it = {
        let mut r = l.clone();
        r[2].x = &ipf[1];
        r[2].patch = l[1].patch;
        r[2].steps = l[1].steps;
        r
    };
    quantize_status(c, &[], &reads_it, bits, 3 * per, FJ_ERR_ARG, "items[1].x->data overlaps items[2].x->data");
    quantize_status(c, &[], &l, bits, 3 * per, FJ_OK, "");
    let f1 = ip_single[1].feat();
    let mut o = ip_single[1].opts(bits);
    o.recon = ip_single[1].x.mptr();
    let mut s = vec![0i64; per];
    // SAFETY: live buffers of the documented sizes (in place: recon is x).
    assert_eq!(unsafe { fj_quantize_async(c, &f1, ip_single[1].steps.as_ptr(), &o, s.as_mut_ptr(), per as u64, null_mut()) }, FJ_OK);
    assert_eq!((&ip[1].x, &ip[1].sym), (&ip_single[1].x, &ip_single[1].sym), "in place");
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn bad_perturb_batches_are_refused_before_anything_is_written() {
    let c = ctx();
    let mut items: Vec<PItem> = (0..3).map(|k| PItem::new(k + 1, FJ_F32, 600 + k as u64, k != 1, FJ_GAUSSIAN)).collect();
    let feats: Vec<_> = items.iter().map(PItem::feats).collect();
    let good: Vec<FjPerturbItem> = items.iter_mut().zip(&feats).map(|(it, (fx, fj))| it.item(fx, fj.as_ref())).collect();
    let total: usize = feats.iter().map(|(fx, _)| perturb_slots(fx)).sum();
    let sentinel = items.iter().map(|it| it.out.clone()).collect::<Vec<_>>();
    let check = |list: &[FjPerturbItem], len: usize, want: i32, msg: &str| {
        let mut stats = vec![-3i64; len];
        // SAFETY: live buffers of the documented sizes, or deliberately bad ones.
        let rc = unsafe { fj_perturb_batch_async(c, list.as_ptr(), list.len() as u32, stats.as_mut_ptr(), len as u64, null_mut()) };
        let e = err();
        assert_eq!(rc, want, "{msg}: {e}");
        assert!(e.contains(msg), "wanted {msg:?} in {e:?}");
        if want != FJ_OK {
            assert!(stats.iter().all(|&s| s == -3), "{msg}: the statistics were written");
            for (it, s) in items.iter().zip(&sentinel) {
                assert_eq!(&it.out, s, "{msg}: an output was written");
            }
        }
    };
    let with = |k: usize, f: &dyn Fn(&mut FjPerturbItem)| {
        let mut l = good.clone();
        f(&mut l[k]);
        l
    };
    // SAFETY: live buffers of the documented sizes, or deliberately bad ones (see the module doc).
    unsafe {
        assert_eq!(fj_perturb_batch_async(c, null(), 0, null_mut(), 0, null_mut()), FJ_OK);
        let (mut n, mut offs) = (9u64, [9u64; 3]);
        assert_eq!(fj_perturb_batch_stats_slots(null(), 0, &mut n, null_mut()), FJ_OK);
        assert_eq!(n, 0);
        assert_eq!(fj_perturb_batch_stats_slots(null(), 3, &mut n, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_perturb_batch_stats_slots(good.as_ptr(), 3, null_mut(), null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_perturb_batch_stats_slots(good.as_ptr(), 3, &mut n, offs.as_mut_ptr()), FJ_OK);
        assert_eq!((n as usize, offs[0]), (total, 0));
        let bad_x = with(2, &|i| i.x = null());
        assert_eq!(fj_perturb_batch_stats_slots(bad_x.as_ptr(), 3, &mut n, null_mut()), FJ_ERR_NULL);
        assert!(err().contains("items[2]: x is null"), "{}", err());
        let mut stats = vec![0i64; total];
        assert_eq!(fj_perturb_batch_async(c, null(), 3, stats.as_mut_ptr(), total as u64, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_perturb_batch_async(c, good.as_ptr(), 3, stats.as_mut_ptr(), total as u64, 8 as *mut c_void), FJ_ERR_ARG);
        assert_eq!(fj_perturb_batch_async(c, good.as_ptr(), 3, null_mut(), total as u64, null_mut()), FJ_ERR_NULL);
    }
    check(&good, total - 1, FJ_ERR_SHAPE, "stats_len is");
    check(&with(1, &|i| i.x = null()), total, FJ_ERR_NULL, "items[1]: x is null");
    check(&with(0, &|i| i.out = null_mut()), total, FJ_ERR_NULL, "items[0]: out is null");
    check(&with(2, &|i| i.nrmse = -0.5), total, FJ_ERR_BUDGET, "items[2]");
    check(&with(2, &|i| i.nrmse = f64::NAN), total, FJ_ERR_BUDGET, "items[2]");
    check(&with(0, &|i| i.noise = 7), total, FJ_ERR_ARG, "items[0]: noise 7");
    check(&with(1, &|i| i.size = 16), total, FJ_ERR_ARG, "items[1].size is 16");
    // J of another shape than x (item 0's J given to item 2).
    let j0 = good[0].jnd;
    check(&with(2, &|i| i.jnd = j0), total, FJ_ERR_SHAPE, "items[2]: jnd must have");
    let half = PItem::new(1, FJ_BF16, 1, false, FJ_GAUSSIAN);
    let (fh, _) = half.feats();
    check(&with(1, &|i| i.x = &fh), total, FJ_ERR_DTYPE, "items[1] is bf16, items[0] f32");
    // Overlaps across items: one output twice, an output on another item's x or J.
    let out0 = good[0].out;
    check(&with(1, &|i| i.out = out0), total, FJ_ERR_ARG, "overlaps");
    let j2 = items[2].j.as_ref().unwrap().ptr() as *mut c_void;
    check(&with(0, &|i| i.out = j2), total, FJ_ERR_ARG, "items[0].out overlaps items[2].jnd->data");
    // In place is allowed (as fj_perturb_async allows it); another item then may not read that x.
    let x1 = items[1].x.ptr() as *mut c_void;
    let in_place = with(1, &|i| i.out = x1);
    let mut shared = in_place.clone();
    shared[2].x = &feats[1].0;
    shared[2].jnd = null();
    check(&shared, total + 64, FJ_ERR_ARG, "items[1].x->data");
    check(&in_place, total, FJ_OK, "");
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

/// `fj_quantize_batch_decode` / `fj_perturb_batch_decode` give, item by item, what the single
/// decoders give on each slice (status, result, histogram, scales), from one read of the array;
/// bad arguments are refused without writing anything.
#[test]
fn batch_decodes_equal_the_per_item_decodes() {
    let c = ctx();
    for (dtype, bits) in [(FJ_F32, 8u32), (FJ_F16, 16), (FJ_BF16, 8)] {
        let mut items: Vec<QItem> = (0..7).map(|k| QItem::new(k % 5, dtype, bits, 700 + k as u64)).collect();
        set(&mut items[3].x, dtype, 11, f32::NAN);
        let (rc, stats) = quantize_batch(c, &mut items, bits);
        assert_eq!(rc, FJ_OK, "{}", err());
        let feats: Vec<FjFeature> = items.iter().map(QItem::feat).collect();
        let list: Vec<FjQuantizeItem> = items.iter_mut().zip(&feats).map(|(it, f)| it.item(f)).collect();
        let (n, bins) = (list.len(), if bits == 16 { 512 } else { 255 });
        let mut statuses = vec![-99i32; n];
        let mut results: Vec<FjQuantizeResult> = (0..n).map(|_| FjQuantizeResult::default()).collect();
        let mut hists = vec![u64::MAX; n * bins];
        // SAFETY: live buffers of the documented sizes.
        let rc = unsafe {
            fj_quantize_batch_decode(
                c,
                list.as_ptr(),
                n as u32,
                bits,
                stats.as_ptr(),
                stats.len() as u64,
                null_mut(),
                statuses.as_mut_ptr(),
                results.as_mut_ptr(),
                hists.as_mut_ptr(),
            )
        };
        assert_eq!(rc, FJ_OK, "{}", err());
        let per = quantize_slots(bits);
        for (i, it) in items.iter().enumerate() {
            let (code, msg, r, h) = qdecode(c, &it.feat(), it.patch, bits, &stats[i * per..(i + 1) * per]);
            assert_eq!(statuses[i], code, "item {i}: {msg}");
            if code == FJ_OK {
                let got = &results[i];
                let got =
                    [got.clamped, got.total_sse.to_bits(), got.mse.to_bits(), got.entropy_bits.to_bits(), got.bits_per_element.to_bits()];
                assert_eq!(got, r, "item {i}");
                assert_eq!(&hists[i * bins..(i + 1) * bins], &h[..], "item {i}");
            } else {
                assert_eq!((i, code), (3, FJ_ERR_NONFINITE));
                assert!(hists[i * bins..(i + 1) * bins].iter().all(|&v| v == u64::MAX), "a failed item's histogram was written");
            }
        }
        // Bad arguments: nothing written.
        let mut st = vec![-99i32; n + 1];
        let call = |statuses: *mut i32, len: usize| {
            // SAFETY: live buffers; `statuses` deliberately null or misaligned where refused.
            unsafe {
                fj_quantize_batch_decode(
                    c,
                    list.as_ptr(),
                    n as u32,
                    bits,
                    stats.as_ptr(),
                    len as u64,
                    null_mut(),
                    statuses,
                    null_mut(),
                    null_mut(),
                )
            }
        };
        assert_eq!(call(null_mut(), stats.len()), FJ_ERR_NULL);
        let odd = (st.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut i32;
        assert_ne!(call(odd, stats.len()), FJ_OK);
        assert_eq!(call(st.as_mut_ptr(), stats.len() - 1), FJ_ERR_SHAPE, "{}", err());
        assert!(st.iter().all(|&v| v == -99), "a refused decode wrote statuses");
        // SAFETY: count 0 reads nothing.
        let rc = unsafe { fj_quantize_batch_decode(c, null(), 0, bits, null(), 0, null_mut(), null_mut(), null_mut(), null_mut()) };
        assert_eq!(rc, FJ_OK);
    }
    for dtype in DTYPES {
        let mut items: Vec<PItem> =
            (0..6).map(|k| PItem::new(k % 5, dtype, 900 + k as u64, k % 2 == 0, [FJ_GAUSSIAN, FJ_UNIFORM_NOISE][k % 2])).collect();
        set(items[4].j.as_mut().unwrap(), dtype, 2, -1.0);
        let (rc, stats, offsets) = perturb_batch(c, &mut items);
        assert_eq!(rc, FJ_OK, "{}", err());
        let feats: Vec<_> = items.iter().map(PItem::feats).collect();
        let list: Vec<FjPerturbItem> = items.iter_mut().zip(&feats).map(|(it, (fx, fj))| it.item(fx, fj.as_ref())).collect();
        let n = list.len();
        let samples: Vec<usize> = items.iter().map(|it| it.f.dims[0] as usize).collect();
        let mut statuses = vec![-99i32; n];
        let mut scales = vec![f32::NAN; samples.iter().sum()];
        // SAFETY: live buffers of the documented sizes.
        let rc = unsafe {
            fj_perturb_batch_decode(
                c,
                list.as_ptr(),
                n as u32,
                stats.as_ptr(),
                stats.len() as u64,
                null_mut(),
                statuses.as_mut_ptr(),
                scales.as_mut_ptr(),
            )
        };
        assert_eq!(rc, FJ_OK, "{}", err());
        let mut at = 0;
        for (i, it) in items.iter().enumerate() {
            let (code, msg, sc) = pdecode(c, it, slice_of(&stats, &offsets, i));
            assert_eq!(statuses[i], code, "item {i}: {msg}");
            let got: Vec<u32> = scales[at..at + samples[i]].iter().map(|s| s.to_bits()).collect();
            if code == FJ_OK {
                assert_eq!(got, sc, "item {i}");
            } else {
                assert_eq!((i, code), (4, FJ_ERR_JND));
                assert!(scales[at..at + samples[i]].iter().all(|s| s.is_nan()), "a failed item's scales were written");
            }
            at += samples[i];
        }
        // SAFETY: live buffers; statistics one slot short.
        let rc = unsafe {
            fj_perturb_batch_decode(
                c,
                list.as_ptr(),
                n as u32,
                stats.as_ptr(),
                stats.len() as u64 - 1,
                null_mut(),
                statuses.as_mut_ptr(),
                null_mut(),
            )
        };
        assert_eq!(rc, FJ_ERR_SHAPE, "{}", err());
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}
