//! The C ABI's batched sync-free calls (contract §8): many independent features in one call, and
//! their decoding with one copy of the statistics. Split from `lib.rs`, whose helpers (argument
//! reading, validation, the CPU paths, the statistics encoders) they share.
use std::ffi::c_void;
use std::mem::size_of;

use featjnd_kernels::cuda::raw;
use featjnd_kernels::error::Error;
use featjnd_kernels::Dtype;

use super::*;

// ---- batches (contract §8): many independent features in one call ----
//
// A batch call checks every item as its single async call would, then the aliasing rule across
// the batch (no written array may overlap any other array of the batch or the statistics), all
// before anything is written or enqueued. On a CUDA context it zeroes the whole statistics array
// (one memset node) and enqueues one launch per 32 items (two for the perturbation) through the
// kernel library's batch launchers; on a CPU context it runs the items in order, synchronously.
// Each item's statistics slice decodes with the single call's decoder.

/// Reads item `i` of a caller's array of versioned structs. The array's stride is the `size` its
/// first item declares (the caller's `sizeof`), and every item must declare the same.
///
/// # Safety
/// `items` is non-null and readable for `count` items of its declared size each; `i < count`;
/// `T` as for [`read_opts`].
unsafe fn read_item<T: Default>(items: *const T, i: usize, stride: usize) -> R<T> {
    // Address arithmetic only (no access yet): item `i` lies inside the caller's array (contract).
    let p = (items as *const u8).wrapping_add(i * stride) as *const T;
    // SAFETY: item `i` is readable for `stride` bytes (contract, `stride` being the caller's size).
    let v = unsafe { read_opts(p, "item") }.map_err(|f| f.in_item(i))?;
    // SAFETY: as above; the leading `u32` was just read through `read_opts`.
    let declared = unsafe { std::ptr::read_unaligned(p as *const u32) } as usize;
    if declared != stride {
        return fail(FJ_ERR_ARG, format!("items[{i}].size is {declared}, items[0].size {stride}: every item declares the same size"));
    }
    Ok(v)
}

/// The stride of a caller's item array (its first item's `size`), checked against `count`. A size
/// that is not a multiple of the struct's alignment is no `sizeof` of it and could end inside a
/// pointer (which would then read as half an address): refused.
///
/// # Safety
/// `items` is null or readable for its first item's leading `u32`.
unsafe fn item_stride<T>(items: *const T, count: u32) -> R<usize> {
    nonnull(items, "items")?;
    // SAFETY: non-null (checked) and readable for the leading `u32` (contract; unaligned allowed).
    let stride = unsafe { std::ptr::read_unaligned(items as *const u32) } as usize;
    let fits = stride.checked_mul(count as usize).is_some_and(|b| b <= isize::MAX as usize);
    if stride == 0 || !stride.is_multiple_of(std::mem::align_of::<T>()) || !fits {
        return fail(FJ_ERR_ARG, format!("items[0].size must be sizeof the item struct, got {stride}"));
    }
    Ok(stride)
}

/// One array of a batch for the cross-item aliasing rule: its item (`None`: the statistics), the
/// array, and whether the call writes it.
#[derive(Clone, Copy)]
struct BatchSpan {
    item: Option<usize>,
    span: Buf,
    write: bool,
}

impl BatchSpan {
    fn name(&self) -> String {
        match self.item {
            Some(i) => format!("items[{i}].{}", self.span.name),
            None => self.span.name.to_string(),
        }
    }
    fn end(&self) -> u128 {
        self.span.addr() as u128 + self.span.bytes() as u128
    }
}

/// The aliasing rule across a batch: no written array may overlap any other array of the batch
/// (reads may share memory). Each item's own arrays passed its single call's rule, which allows an
/// output to be exactly its input (in place): such an item lists that array once, as written. One
/// sort and a sweep, so a batch of many items costs no quadratic number of checks.
fn no_overlap_across(spans: &mut Vec<BatchSpan>) -> R<()> {
    spans.retain(|s| s.span.addr() != 0 && s.span.bytes() > 0);
    spans.sort_unstable_by_key(|s| (s.span.addr(), s.span.bytes(), s.write));
    // The read and the written array reaching furthest among those starting at or before this one.
    let (mut read, mut written): (Option<BatchSpan>, Option<BatchSpan>) = (None, None);
    for s in spans.iter() {
        let lo = s.span.addr() as u128;
        let hit = written.filter(|w| w.end() > lo).or(read.filter(|r| s.write && r.end() > lo));
        if let Some(o) = hit {
            let (a, b) = if s.write { (s, &o) } else { (&o, s) };
            return fail(
                FJ_ERR_ARG,
                format!(
                    "{} overlaps {} in memory: an output of a batch may overlap no other array of the batch (only an item's \
                     output may be its own input, for in-place work)",
                    a.name(),
                    b.name()
                ),
            );
        }
        let furthest = if s.write { &mut written } else { &mut read };
        if furthest.is_none_or(|f| f.end() < s.end()) {
            *furthest = Some(*s);
        }
    }
    Ok(())
}

/// The arrays of a validated quantization for [`no_overlap_across`] (in place: `x` once, written).
fn quant_spans(i: usize, q: &QuantCall, out: &mut Vec<BatchSpan>) {
    let (a, in_place) = (q.call.args(), q.call.in_place());
    // An item's fields are named as in `FjQuantizeItem` (`items[i].recon`, not `opts->recon`).
    let mut arrays = vec![(a.x, in_place), (a.steps, false)];
    let outs = [(a.symbols, "symbols"), (if in_place { None } else { a.recon }, "recon"), (a.token_sse, "token_sse")];
    arrays.extend(outs.into_iter().filter_map(|(b, name)| b.map(|b| (b.named(name), true))));
    out.extend(arrays.into_iter().map(|(span, write)| BatchSpan { item: Some(i), span, write }));
}

/// The arrays of a validated perturbation for [`no_overlap_across`] (in place: `x` once, written).
fn perturb_spans(i: usize, pc: &PerturbCall, spans: &mut Vec<BatchSpan>) {
    let (a, in_place) = (pc.call.args(), pc.call.in_place());
    let mut arrays = vec![(a.x, in_place)];
    arrays.extend(a.jnd.map(|j| (j, false)));
    if !in_place {
        arrays.push((a.out, true));
    }
    spans.extend(arrays.into_iter().map(|(span, write)| BatchSpan { item: Some(i), span, write }));
}

/// Every item of a batch has the first item's dtype.
fn same_dtype(i: usize, dt: Dtype, first: Dtype) -> R<()> {
    if dt != first {
        return fail(FJ_ERR_DTYPE, format!("items[{i}] is {}, items[0] {}: a batch has one dtype", dt.name(), first.name()));
    }
    Ok(())
}

/// How many `int64_t` statistics slots `fj_quantize_batch_async` needs for `count` items of `bits`
/// (8 or 16; 0 = 8): `count · fj_quantize_stats_slots(bits)`. Item `i`'s statistics are the
/// `fj_quantize_stats_slots(bits)` slots from `stats + i · fj_quantize_stats_slots(bits)`.
///
/// # Safety
/// `out_slots` is null or writable for one `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn fj_quantize_batch_stats_slots(bits: u32, count: u32, out_slots: *mut u64) -> i32 {
    guard(|| {
        nonnull(out_slots, "out_slots")?;
        let per = raw::quantize_slots(bits_of(bits)?, true) as u64;
        // SAFETY: non-null (checked) and writable (contract).
        unsafe { put(out_slots, per * count as u64) };
        Ok(())
    })
}

/// How many `int64_t` statistics slots `fj_perturb_batch_async` needs for `items[count]` (their
/// features' dims only; no data is read): the sum of every item's `fj_perturb_stats_slots(x)`, in
/// item order. Item `i`'s slice starts at the sum over the items before it; `out_offsets`, unless
/// null, receives those starts (`uint64_t[count]`, host memory). `count` 0 gives 0.
///
/// # Safety
/// `items` is null or readable for `count` `FjPerturbItem`s of `items[0].size` bytes each, whose
/// `x` are readable `FjFeature`s; `out_slots` null or writable for one `uint64_t`; `out_offsets`
/// null or writable for `count` `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn fj_perturb_batch_stats_slots(
    items: *const FjPerturbItem,
    count: u32,
    out_slots: *mut u64,
    out_offsets: *mut u64,
) -> i32 {
    guard(|| {
        nonnull(out_slots, "out_slots")?;
        if !out_offsets.is_null() {
            aligned(out_offsets as *const c_void, 8, "out_offsets")?;
        }
        // SAFETY: `items` is readable as the contract says; `out_offsets` null or writable.
        let offsets = unsafe { perturb_offsets(items, count)? };
        if !out_offsets.is_null() {
            // SAFETY: writable, aligned (checked) host memory for `count` u64 (contract), disjoint
            // from the fresh Vec.
            unsafe { std::ptr::copy_nonoverlapping(offsets.as_ptr(), out_offsets, count as usize) };
        }
        // SAFETY: non-null (checked) and writable (contract).
        unsafe { put(out_slots, offsets[count as usize]) };
        Ok(())
    })
}

/// The start of every item's statistics in a perturbation batch, then the total (`count + 1`
/// values; `[0]` for an empty batch).
///
/// # Safety
/// As `fj_perturb_batch_stats_slots`'s `items`.
unsafe fn perturb_offsets(items: *const FjPerturbItem, count: u32) -> R<Vec<u64>> {
    let mut v = vec![0u64];
    if count == 0 {
        return Ok(v);
    }
    // SAFETY: null or readable for its leading `u32` (contract).
    let stride = unsafe { item_stride(items, count)? };
    for i in 0..count as usize {
        // SAFETY: `i < count` items of `stride` bytes are readable (contract); `x` is null or a
        // readable struct (contract).
        let f = unsafe { read_item(items, i, stride).and_then(|it| feature(it.x, "x").map_err(|f| f.in_item(i)))? };
        v.push(v[i] + raw::perturb_slots(f.shape.samples()) as u64);
    }
    Ok(v)
}

/// `fj_quantize_async` on `count` independent features in one call (contract §8): every item has
/// its own feature, patch, steps and outputs; all share the dtype (else `FJ_ERR_DTYPE`) and `bits`
/// (8 or 16; 0 = 8). Item `i`'s statistics go to the `fj_quantize_stats_slots(bits)` slots from
/// `stats + i · fj_quantize_stats_slots(bits)` (`stats_len` at least
/// `fj_quantize_batch_stats_slots(bits, count)`); decode each with `fj_quantize_decode(ctx,
/// items[i].x, NULL, items[i].patch, bits, stats + i · s, s, stream, ...)`. Every item is checked
/// as `fj_quantize_async` checks its arguments (a message names the item: `items[i]: ...`), and no
/// output may overlap any other array of the batch or the statistics (`FJ_ERR_ARG`), all before
/// anything is written or enqueued. A bad element of item `i` (NaN or ±Inf) is not the call's
/// status: it is recorded in item `i`'s statistics, and the other items are unaffected.
/// On a CUDA context: one launch per 32 items on `stream`, nothing else (no sync, no allocation;
/// capturable). On a CPU context the items run in order, synchronously. `count` 0 is a no-op that
/// returns `FJ_OK` (`items` and `stats` are not read). `items` is an array of structs whose
/// stride is `items[0].size`.
///
/// # Safety
/// As `fj_quantize_async` for every item; `items` readable for `count` `FjQuantizeItem`s of
/// `items[0].size` bytes each (unless `count` is 0); `stats` writable for `stats_len` `int64_t` in
/// the context's memory; on a CUDA context every array must stay valid and untouched until
/// `stream` has run the work.
#[no_mangle]
pub unsafe extern "C" fn fj_quantize_batch_async(
    ctx: *const FjContext,
    items: *const FjQuantizeItem,
    count: u32,
    bits: u32,
    stats: *mut i64,
    stats_len: u64,
    stream: *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: `ctx` is null or live (contract).
        let c = unsafe { ctx_ref(ctx)? };
        check_stream(c, stream)?;
        if count == 0 {
            return Ok(());
        }
        // SAFETY: null or readable for its leading `u32` (contract).
        let stride = unsafe { item_stride(items, count)? };
        let b = bits_of(bits)?;
        let per = raw::quantize_slots(b, true);
        let st = check_stats(c, stats, stats_len, per * count as usize)?;
        let mut calls: Vec<QuantCall> = Vec::with_capacity(count as usize);
        let mut spans = vec![BatchSpan { item: None, span: st, write: true }];
        for i in 0..count as usize {
            // SAFETY: `i < count` items of `stride` bytes are readable (contract).
            let it = unsafe { read_item(items, i, stride)? };
            let o = FjQuantizeOptions {
                size: size_of::<FjQuantizeOptions>() as u32,
                bits,
                patch: it.patch,
                pad0: 0,
                symbols: it.symbols,
                recon: it.recon,
                token_sse: it.token_sse,
                histogram: std::ptr::null_mut(),
            };
            // SAFETY: `it.x` is null or readable (contract); `o` is a local of its full size.
            let q = unsafe { quant_call(c, it.x, it.steps, &o, false, Some(true), &[], &[st]) }.map_err(|f| f.in_item(i))?;
            same_dtype(i, q.f.dt, calls.first().map_or(q.f.dt, |f| f.f.dt))?;
            quant_spans(i, &q, &mut spans);
            calls.push(q);
        }
        no_overlap_across(&mut spans)?;
        if let Some(gpu) = &c.gpu {
            let calls: Vec<_> = calls.iter().map(|q| &q.call).collect();
            // SAFETY: `stream` per the contract; the arrays stay valid until it has run
            // (contract); within an item no overlap but `recon == x`, across items and with the
            // statistics none (checked).
            return Ok(unsafe { gpu.executor(stream)? }.quantize_batch_enqueue(&calls, &st, per)?);
        }
        // SAFETY: `stats` is non-null, aligned and holds `per · count` i64 of host memory (checked,
        // contract), overlapping nothing the items use (checked).
        let all: &mut [i64] = unsafe { slice_mut(stats as *mut c_void, per * count as usize) };
        for (q, s) in calls.iter().zip(all.chunks_mut(per)) {
            // Validated by `quant_call`, disjoint from every other item's arrays and the statistics.
            q.call.record_host(c.pool.as_ref(), s)?;
        }
        Ok(())
    })
}

/// `fj_perturb_async` on `count` independent features in one call (contract §8): every item has
/// its own feature, J (or none), NRMSE, noise and output; all share the dtype (else
/// `FJ_ERR_DTYPE`). Item `i`'s statistics follow item `i − 1`'s in `stats`
/// (`fj_perturb_batch_stats_slots` gives the total and each item's offset `off[i]`); decode each
/// with `fj_perturb_decode(ctx, items[i].x, items[i].jnd, items[i].nrmse, stats + off[i],
/// stats_len - off[i], stream, scales)`. Checks, overlap rule, bad elements, `count` 0 and the
/// CUDA and CPU paths as `fj_quantize_batch_async` (two launches per 32 items on CUDA).
///
/// # Safety
/// As `fj_perturb_async` for every item; `items` readable for `count` `FjPerturbItem`s of
/// `items[0].size` bytes each (unless `count` is 0); `stats` writable for `stats_len` `int64_t` in
/// the context's memory; on a CUDA context every array must stay valid and untouched until
/// `stream` has run the work.
#[no_mangle]
pub unsafe extern "C" fn fj_perturb_batch_async(
    ctx: *const FjContext,
    items: *const FjPerturbItem,
    count: u32,
    stats: *mut i64,
    stats_len: u64,
    stream: *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: `ctx` is null or live (contract).
        let c = unsafe { ctx_ref(ctx)? };
        check_stream(c, stream)?;
        if count == 0 {
            return Ok(());
        }
        // SAFETY: null or readable for its leading `u32` (contract).
        let stride = unsafe { item_stride(items, count)? };
        let mut calls: Vec<(PerturbCall, f64, *mut c_void, usize)> = Vec::with_capacity(count as usize);
        let mut spans = Vec::with_capacity(3 * count as usize + 1);
        let mut total = 0usize;
        for i in 0..count as usize {
            // SAFETY: `i < count` items of `stride` bytes are readable (contract).
            let it = unsafe { read_item(items, i, stride)? };
            if !(it.nrmse.is_finite() && it.nrmse >= 0.0) {
                return Err(Fail::from(Error::Nrmse(it.nrmse)).in_item(i));
            }
            let o = FjPerturbOptions {
                size: size_of::<FjPerturbOptions>() as u32,
                noise: it.noise,
                seed: it.seed,
                subsequence: it.subsequence,
                pad0: 0,
                scales: std::ptr::null_mut(),
            };
            // SAFETY: `it.x` and `it.jnd` are null or readable (contract); `o` is a local of its
            // full size.
            let pc = unsafe { perturb_call(c, it.x, it.jnd, it.nrmse, &o, it.out, &[]) }.map_err(|f| f.in_item(i))?;
            same_dtype(i, pc.dt, calls.first().map_or(pc.dt, |f| f.0.dt))?;
            perturb_spans(i, &pc, &mut spans);
            let slots = raw::perturb_slots(pc.samples);
            calls.push((pc, it.nrmse, it.out, total));
            total += slots;
        }
        let st = check_stats(c, stats, stats_len, total)?;
        spans.push(BatchSpan { item: None, span: st, write: true });
        no_overlap_across(&mut spans)?;
        if let Some(gpu) = &c.gpu {
            let calls: Vec<_> = calls.iter().map(|(pc, _, _, off)| (&pc.call, *off)).collect();
            // SAFETY: `stream` per the contract; the arrays stay valid until it has run
            // (contract); within an item `out` is `x` or overlaps neither input, across items and
            // with the statistics nothing overlaps a written array (checked).
            return Ok(unsafe { gpu.executor(stream)? }.perturb_batch_enqueue(&calls, &st)?);
        }
        // SAFETY: `stats` is non-null, aligned and holds `total` i64 of host memory (checked,
        // contract), overlapping nothing the items use (checked).
        let all: &mut [i64] = unsafe { slice_mut(stats as *mut c_void, total) };
        for (pc, _, _, off) in &calls {
            // Validated by `perturb_call`, disjoint from every other item's arrays and the statistics.
            pc.call.record_host(c.pool.as_ref(), &mut all[*off..*off + raw::perturb_slots(pc.samples)])?;
        }
        Ok(())
    })
}

// ---- decoding a batch with one copy of its statistics ----

/// The per-item status array of a batch decode: required, 4-byte aligned.
fn check_statuses(statuses: *mut i32) -> R<()> {
    nonnull(statuses, "statuses")?;
    aligned(statuses as *const c_void, 4, "statuses")
}

/// The status an item's bad element gives (`FJ_ERR_JND` or `FJ_ERR_NONFINITE`; the value is not
/// read back: `fj_quantize_decode` / `fj_perturb_decode` on the item's slice give the message).
fn bad_code(b: raw::BadElement) -> i32 {
    Fail::from(b.error(f32::NAN)).0
}

/// Decodes every item of `fj_quantize_batch_async` (the same `items`, `count` and `bits`) with
/// one copy of the statistics and, on a CUDA context, one sync of `stream`: `statuses[i]` (host,
/// `int32_t[count]`, required) receives what `fj_quantize_decode` would return for item `i`
/// (`FJ_OK`, `FJ_ERR_JND`, `FJ_ERR_ARG`, `FJ_ERR_NONFINITE`), `results[i]` (unless null) its result when
/// `FJ_OK`, and `hists + i · bins` (unless null; `bins` = 255 for 8 bits, 512 for 16) its
/// histogram. The call returns `FJ_OK` when it could decode every item, whatever their statuses;
/// a bad argument is its own status and writes nothing. An item's message (with the offending
/// value) comes from `fj_quantize_decode` on its slice.
///
/// # Safety
/// As `fj_quantize_batch_async` for `items` (their `x` still valid); `stats` valid for
/// `stats_len` `int64_t` in the context's memory, written by that call (complete on the CPU,
/// ordered before on `stream` on CUDA); `statuses` writable for `count` `int32_t`; `results`
/// null or writable for `count` `FjQuantizeResult`; `hists` null or writable for `count · bins`
/// `uint64_t`; all three host memory.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn fj_quantize_batch_decode(
    ctx: *const FjContext,
    items: *const FjQuantizeItem,
    count: u32,
    bits: u32,
    stats: *const i64,
    stats_len: u64,
    stream: *mut c_void,
    statuses: *mut i32,
    results: *mut FjQuantizeResult,
    hists: *mut u64,
) -> i32 {
    guard(|| {
        // SAFETY: `ctx` is null or live (contract).
        let c = unsafe { ctx_ref(ctx)? };
        check_stream(c, stream)?;
        if count == 0 {
            return Ok(());
        }
        check_statuses(statuses)?;
        if !results.is_null() {
            aligned(results as *const c_void, std::mem::align_of::<FjQuantizeResult>(), "results")?;
        }
        if !hists.is_null() {
            aligned(hists as *const c_void, 8, "hists")?;
        }
        let b = bits_of(bits)?;
        let (per, bins) = (raw::quantize_slots(b, true), b.hist_bins());
        // SAFETY: null or readable for its leading `u32` (contract).
        let stride = unsafe { item_stride(items, count)? };
        let mut grids = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            // SAFETY: `i < count` items of `stride` bytes are readable (contract); `x` is null or
            // a readable struct (contract).
            let (it, f) = unsafe {
                let it = read_item(items, i, stride)?;
                let f = feature(it.x, "x").map_err(|f| f.in_item(i))?;
                (it, f)
            };
            grids.push(TokenGrid::new(f.shape, it.patch.max(1) as usize).map_err(|e| Fail::from(e).in_item(i))?);
        }
        // SAFETY: by the contract (one copy and one sync on CUDA).
        let v = unsafe { host_stats(c, stats, stats_len, per * count as usize, stream)? };
        for (i, (g, s)) in grids.iter().zip(v.chunks(per)).enumerate() {
            let (bad, q) = raw::decode_quantize(s, b, true);
            let code = match bad {
                Some(bad) => bad_code(bad),
                None => {
                    let r = if results.is_null() { std::ptr::null_mut() } else { results.wrapping_add(i) };
                    let h = if hists.is_null() { std::ptr::null_mut() } else { hists.wrapping_add(i * bins) };
                    // SAFETY: `r` and `h` are null or item `i`'s cells of the caller's host arrays
                    // (contract), aligned (checked).
                    unsafe { finish_quantize(&QuantizeReport::finish(g, q), h, r)? };
                    FJ_OK
                }
            };
            // SAFETY: `statuses` is writable host memory for `count` i32 (contract), aligned.
            unsafe { *statuses.add(i) = code };
        }
        Ok(())
    })
}

/// Decodes every item of `fj_perturb_batch_async` (the same `items` and `count`) with one copy of
/// the statistics and one sync on CUDA: `statuses[i]` receives what `fj_perturb_decode` would
/// return for item `i` (`FJ_OK`, `FJ_ERR_NONFINITE`, `FJ_ERR_JND`, `FJ_ERR_BUDGET` for a scale
/// beyond `f32`), and `scales` (unless null) every item's per-sample scales one after the other
/// (item `i`'s `N_i` floats after those of the items before it). Return value and messages as
/// `fj_quantize_batch_decode`.
///
/// # Safety
/// As `fj_perturb_batch_async` for `items`; `stats`, `statuses` as for
/// `fj_quantize_batch_decode`; `scales` null or writable host memory for `Σ N_i` floats.
#[no_mangle]
pub unsafe extern "C" fn fj_perturb_batch_decode(
    ctx: *const FjContext,
    items: *const FjPerturbItem,
    count: u32,
    stats: *const i64,
    stats_len: u64,
    stream: *mut c_void,
    statuses: *mut i32,
    scales: *mut f32,
) -> i32 {
    guard(|| {
        // SAFETY: `ctx` is null or live (contract).
        let c = unsafe { ctx_ref(ctx)? };
        check_stream(c, stream)?;
        if count == 0 {
            return Ok(());
        }
        check_statuses(statuses)?;
        if !scales.is_null() {
            aligned(scales as *const c_void, 4, "scales")?;
        }
        // SAFETY: null or readable for its leading `u32` (contract).
        let stride = unsafe { item_stride(items, count)? };
        // Each item read once: its samples and NRMSE, and where its slots start (the prefix sums
        // `perturb_offsets` gives).
        let mut meta = Vec::with_capacity(count as usize);
        let mut offsets = vec![0usize];
        for i in 0..count as usize {
            // SAFETY: `i < count` items of `stride` bytes are readable (contract); `x` is null or
            // a readable struct (contract).
            let (it, f) = unsafe {
                let it = read_item(items, i, stride)?;
                let f = feature(it.x, "x").map_err(|f| f.in_item(i))?;
                (it, f)
            };
            meta.push((f.shape.samples(), it.nrmse));
            offsets.push(offsets[i] + raw::perturb_slots(f.shape.samples()));
        }
        let total = offsets[count as usize];
        // SAFETY: by the contract (one copy and one sync on CUDA).
        let v = unsafe { host_stats(c, stats, stats_len, total, stream)? };
        let mut out = 0usize;
        for (i, &(samples, nrmse)) in meta.iter().enumerate() {
            let s = &v[offsets[i]..offsets[i + 1]];
            let (bad, report) = raw::decode_perturb(s, samples);
            let code = match bad {
                Some(b) => bad_code(b),
                None => raw::check_scales(&report, nrmse).map_or_else(|e| Fail::from(e).0, |()| FJ_OK),
            };
            if code == FJ_OK && !scales.is_null() {
                // SAFETY: `scales` is writable host memory for the sum of every item's samples
                // (contract), aligned (checked); item `i`'s run starts at `out`.
                unsafe { std::ptr::copy_nonoverlapping(report.scales.as_ptr(), scales.add(out), samples) };
            }
            out += samples;
            // SAFETY: `statuses` is writable host memory for `count` i32 (contract), aligned.
            unsafe { *statuses.add(i) = code };
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rule_across_a_batch() {
        // Addresses from 1000 (0 is null: absent).
        let b = |item: Option<usize>, addr: usize, bytes, write| {
            let addr = if addr == 0 && item.is_none() { 0 } else { addr.saturating_add(1000) };
            // SAFETY: an address range for the rule only, never dereferenced.
            BatchSpan { item, span: unsafe { Buf::new("a", addr, bytes, Elem::I8, Mem::Host, true) }, write }
        };
        let ok = |mut v: Vec<BatchSpan>| no_overlap_across(&mut v).is_ok();
        // Reads may share memory; touching, null and empty arrays are fine.
        assert!(ok(vec![b(Some(0), 100, 50, false), b(Some(1), 120, 50, false), b(Some(1), 170, 8, true), b(None, 0, 64, true)]));
        assert!(ok(vec![b(Some(0), 100, 50, true), b(Some(1), 150, 50, true), b(Some(2), 120, 0, true)]));
        assert!(ok(vec![]));
        // A write inside a read, a read inside a write, one array written twice, a write that
        // only a long earlier read reaches.
        assert!(!ok(vec![b(Some(0), 0, 100, false), b(Some(1), 40, 10, true)]));
        assert!(!ok(vec![b(Some(0), 40, 10, false), b(Some(1), 0, 100, true)]));
        assert!(!ok(vec![b(Some(0), 0, 10, true), b(Some(1), 0, 10, true)]));
        assert!(!ok(vec![b(Some(0), 0, 100, false), b(Some(1), 10, 5, false), b(Some(2), 90, 4, true)]));
        assert!(!ok(vec![b(Some(3), 60, 8, true), b(None, 1, 64, true)]));
        // No wrap-around at the top of the address space.
        assert!(!ok(vec![b(Some(0), usize::MAX - 1008, 8, false), b(Some(1), usize::MAX - 1004, 4, true)]));
        let mut v = vec![b(Some(2), 40, 10, true), b(Some(0), 0, 100, false)];
        let e = no_overlap_across(&mut v).err().unwrap();
        assert_eq!(e.0, FJ_ERR_ARG);
        assert!(e.1.contains("items[2].a overlaps items[0].a"), "{}", e.1);
    }
}
