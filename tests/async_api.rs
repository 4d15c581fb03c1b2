//! The sync-free calls (contract §8) on the CPU: they run synchronously there and write the
//! kernels' statistics layout, so `decode()` must give exactly what the synchronous calls give
//! (bit for bit), the same typed errors for bad inputs, and clear errors for bad workspaces.
//! The CUDA side (the same calls only enqueued, and captured into a graph) is in tests/gpu.rs.
use featjnd_kernels::ops::{self, Noise, PerturbItem, QuantizeBuffers, QuantizeItem, QuantizeOptions};
use featjnd_kernels::{Bits, Error, Layout, NoiseKind, Reduce, Strategy};
use tch::{Device, Kind, Tensor};

#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{bits_eq, feature, jnd, shapes, KINDS};

fn opts(bits: Bits) -> QuantizeOptions {
    QuantizeOptions { bits, ..Default::default() }
}

/// Zeroed output buffers for a quantization of `x` (symbols, reconstruction, token errors).
fn outputs(x: &Tensor, tokens: usize, bits: Bits) -> [Tensor; 3] {
    let sym = if bits == Bits::B8 { Kind::Int8 } else { Kind::Int16 };
    [
        Tensor::zeros(x.size(), (sym, Device::Cpu)),
        Tensor::zeros(x.size(), (x.kind(), Device::Cpu)),
        Tensor::zeros([tokens as i64], (Kind::Float, Device::Cpu)),
    ]
}

fn bufs(o: &[Tensor; 3]) -> QuantizeBuffers<'_> {
    QuantizeBuffers { symbols: Some(&o[0]), recon: Some(&o[1]), token_sse: Some(&o[2]) }
}

/// The decoded statistics against the synchronous call's, and the buffers against its outputs.
fn same_quantized(a: &ops::Quantized, b: &ops::Quantized, bufs_a: &[Tensor; 3], what: &str) {
    assert_eq!(a.clamped, b.clamped, "{what}: clamped");
    assert_eq!(a.total_sse.to_bits(), b.total_sse.to_bits(), "{what}: total error");
    assert_eq!(a.mse.to_bits(), b.mse.to_bits(), "{what}: mse");
    assert_eq!(a.histogram, b.histogram, "{what}: histogram");
    assert_eq!(a.rate.map(|r| r.bits_per_element.to_bits()), b.rate.map(|r| r.bits_per_element.to_bits()), "{what}: rate");
    for (buf, t, n) in [(&bufs_a[0], &b.symbols, "symbols"), (&bufs_a[1], &b.recon, "recon"), (&bufs_a[2], &b.token_sse, "token errors")] {
        bits_eq(buf, t.as_ref().unwrap(), &format!("{what}: {n}"));
    }
}

fn tokens(x: &Tensor, layout: Layout, patch: usize) -> usize {
    ops::grid_of(x, layout, patch).unwrap().tokens()
}

#[test]
fn quantize_async_on_cpu_equals_quantize_into_bit_for_bit() {
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            for bits in [Bits::B8, Bits::B16] {
                let x = feature(&sizes, kind, i as i64);
                let t = tokens(&x, layout, patch);
                let steps = jnd(&[t as i64], Kind::Float, i as i64 + 50) * 0.3;
                let sync = ops::quantize(&x, layout, patch, &steps, &opts(bits)).unwrap();
                let o = outputs(&x, t, bits);
                let mut ws = ops::stats_buffer(ops::quantize_stats_slots(bits), Device::Cpu).unwrap();
                let _ = ws.fill_(-1); // decode must not depend on what the workspace held before
                let p = ops::quantize_async(&x, layout, patch, &steps, &opts(bits), &bufs(&o), &ws).unwrap();
                same_quantized(&p.decode().unwrap(), &sync, &o, &format!("{layout:?} {sizes:?} {kind:?} {bits:?}"));
            }
        }
    }
}

#[test]
fn quantize_with_jnd_async_on_cpu_equals_the_fused_call() {
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        for kind in KINDS {
            for strategy in [Strategy::Jnd, Strategy::Uniform] {
                let (x, j) = (feature(&sizes, kind, i as i64), jnd(&sizes, kind, i as i64));
                let t = tokens(&x, layout, patch);
                let q = opts(Bits::B8);
                let (steps, sync) = ops::quantize_with_jnd(&x, &j, layout, patch, Reduce::Rms, 0.05, strategy, &q).unwrap();
                let o = outputs(&x, t, Bits::B8);
                let st = Tensor::zeros([t as i64], (Kind::Float, Device::Cpu));
                let ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t), Device::Cpu).unwrap();
                let p = ops::quantize_with_jnd_async(&x, &j, layout, patch, Reduce::Rms, 0.05, strategy, &q, &bufs(&o), &st, &ws).unwrap();
                let what = format!("{layout:?} {sizes:?} {kind:?} {strategy:?}");
                bits_eq(&st, &steps, &format!("{what}: steps"));
                same_quantized(&p.decode().unwrap(), &sync, &o, &what);
            }
        }
    }
}

#[test]
fn perturb_async_on_cpu_equals_perturb_into() {
    for (i, sizes) in [vec![1i64, 1, 1, 1], vec![3, 7, 5, 3], vec![2, 17, 1025], vec![1, 1, 5137]].into_iter().enumerate() {
        for kind in KINDS {
            for noise in [NoiseKind::Gaussian, NoiseKind::Uniform] {
                let x = feature(&sizes, kind, i as i64);
                if sizes[0] > 1 {
                    let _ = x.get(1).zero_(); // a zero sample is reported and returned unchanged
                }
                let j = jnd(&sizes, kind, i as i64);
                let spec = Noise { kind: noise, seed: 42 + i as u64, subsequence: 1 };
                for jref in [None, Some(&j)] {
                    let want = x.zeros_like();
                    let rep = ops::perturb_into(&x, jref, 0.1, spec, &want).unwrap();
                    let out = x.zeros_like();
                    let ws = ops::stats_buffer(ops::perturb_stats_slots(sizes[0] as usize), Device::Cpu).unwrap();
                    let p = ops::perturb_async(&x, jref, 0.1, spec, &out, &ws).unwrap();
                    let what = format!("{sizes:?} {kind:?} {noise:?} J={}", jref.is_some());
                    assert_eq!(p.decode().unwrap(), rep, "{what}: report");
                    bits_eq(&out, &want, &what);
                }
            }
        }
    }
}

/// The error of a synchronous call and of the async call's decode, as text (value included).
fn same_error(sync: Error, decoded: Error) {
    assert_eq!(format!("{sync:?}"), format!("{decoded:?}"));
    assert!(matches!(decoded, Error::NonFinite { .. } | Error::Jnd { .. }), "{decoded}");
}

#[test]
fn decode_reports_the_synchronous_calls_errors() {
    let sizes = [2i64, 5, 3, 4];
    let (x, j) = (feature(&sizes, Kind::Float, 1), jnd(&sizes, Kind::Float, 1));
    let (bad_x, bad_j) = (x.copy(), j.copy());
    let _ = bad_x.view([-1]).get(37).fill_(f64::NAN);
    let _ = bad_j.view([-1]).get(11).fill_(-0.5);
    let t = tokens(&x, Layout::Nchw, 1);
    let steps = jnd(&[t as i64], Kind::Float, 3);
    let q = opts(Bits::B8);
    let o = outputs(&x, t, Bits::B8);
    let ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t), Device::Cpu).unwrap();
    // Plain quantization of a NaN.
    let sync = ops::quantize_into(&bad_x, Layout::Nchw, 1, &steps, &q, &QuantizeBuffers::default()).unwrap_err();
    let p = ops::quantize_async(&bad_x, Layout::Nchw, 1, &steps, &q, &bufs(&o), &ws).unwrap();
    same_error(sync, p.decode().unwrap_err());
    // The fused chain: a bad J (found first), then a NaN x with a good J.
    let st = Tensor::zeros([t as i64], (Kind::Float, Device::Cpu));
    for (xx, jj) in [(&x, &bad_j), (&bad_x, &bad_j), (&bad_x, &j)] {
        let sync = ops::quantize_with_jnd(xx, jj, Layout::Nchw, 1, Reduce::Mean, 0.01, Strategy::Jnd, &q).unwrap_err();
        let p = ops::quantize_with_jnd_async(xx, jj, Layout::Nchw, 1, Reduce::Mean, 0.01, Strategy::Jnd, &q, &bufs(&o), &st, &ws).unwrap();
        same_error(sync, p.decode().unwrap_err());
    }
    // Perturbation: bad x before bad J, as the CPU checks them.
    let pws = ops::stats_buffer(ops::perturb_stats_slots(2), Device::Cpu).unwrap();
    let spec = Noise { kind: NoiseKind::Gaussian, seed: 1, subsequence: 0 };
    for (xx, jj) in [(&bad_x, &bad_j), (&x, &bad_j)] {
        let sync = ops::perturb(xx, Some(jj), 0.2, spec).unwrap_err();
        let out = x.zeros_like();
        let p = ops::perturb_async(xx, Some(jj), 0.2, spec, &out, &pws).unwrap();
        same_error(sync, p.decode().unwrap_err());
    }
    // Errors that need no data come from the call itself.
    let out = x.zeros_like();
    assert!(matches!(ops::perturb_async(&x, None, -1.0, spec, &out, &pws), Err(Error::Nrmse(_))));
    let e = ops::quantize_with_jnd_async(&x, &j, Layout::Nchw, 1, Reduce::Mean, 0.0, Strategy::Jnd, &q, &bufs(&o), &st, &ws);
    assert!(matches!(e, Err(Error::Budget(_))));
    let e =
        ops::quantize_with_jnd_async(&x, &j, Layout::Nchw, 1, Reduce::Mean, 0.1, Strategy::Permuted { seed: 1 }, &q, &bufs(&o), &st, &ws);
    assert!(matches!(e, Err(Error::Arg(_))));
}

/// A bad step (contract §8): the sync-free call takes it (on CUDA the kernels check the steps
/// where they use them, without a host round trip), and decode gives the synchronous call's error
/// — the first bad token, its value in the message — ahead of a non-finite `x`; the same for a
/// batch item, and for a fused chain whose steps overflow `f32`.
#[test]
fn decode_reports_a_bad_step_as_the_synchronous_call_does() {
    let sizes = [2i64, 5, 3, 4];
    let x = feature(&sizes, Kind::Float, 1);
    let bad_x = x.copy();
    let _ = bad_x.view([-1]).get(37).fill_(f64::NAN);
    let t = tokens(&x, Layout::Nchw, 1);
    let steps = jnd(&[t as i64], Kind::Float, 3);
    let _ = steps.get(7).fill_(0.0);
    let _ = steps.get(9).fill_(f64::NAN);
    let q = opts(Bits::B8);
    let o = outputs(&x, t, Bits::B8);
    let ws = ops::stats_buffer(ops::quantize_with_jnd_stats_slots(Bits::B8, t), Device::Cpu).unwrap();
    for xx in [&x, &bad_x] {
        let sync = ops::quantize_into(xx, Layout::Nchw, 1, &steps, &q, &QuantizeBuffers::default()).unwrap_err();
        let p = ops::quantize_async(xx, Layout::Nchw, 1, &steps, &q, &bufs(&o), &ws).unwrap();
        assert_eq!(format!("{sync:?}"), format!("{:?}", p.decode().unwrap_err()));
        assert!(matches!(&sync, Error::Arg(m) if m.contains("step Δ[7] = 0 ")), "{sync}");
    }
    let good = jnd(&[t as i64], Kind::Float, 4);
    let (o1, o2) = (outputs(&x, t, Bits::B8), outputs(&x, t, Bits::B8));
    let item = |steps, o| QuantizeItem { x: &x, layout: Layout::Nchw, patch: 1, steps, bufs: bufs(o) };
    let bws = ops::stats_buffer(ops::quantize_batch_stats_slots(Bits::B8, 2), Device::Cpu).unwrap();
    let got = ops::quantize_batch_async(&[item(&good, &o1), item(&steps, &o2)], &q, &bws).unwrap().decode();
    assert!(got[0].is_ok());
    assert!(matches!(&got[1], Err(Error::Arg(m)) if m.contains("step Δ[7] = 0 ")), "{:?}", got[1]);
    // The chain: a uniform step for an absurd budget is +Inf in f32, token 0 first.
    let j = jnd(&sizes, Kind::Float, 1);
    let st = Tensor::zeros([t as i64], (Kind::Float, Device::Cpu));
    let sync = ops::quantize_with_jnd(&x, &j, Layout::Nchw, 1, Reduce::Mean, 1e300, Strategy::Uniform, &q).unwrap_err();
    let p = ops::quantize_with_jnd_async(&x, &j, Layout::Nchw, 1, Reduce::Mean, 1e300, Strategy::Uniform, &q, &bufs(&o), &st, &ws).unwrap();
    assert_eq!(format!("{sync:?}"), format!("{:?}", p.decode().unwrap_err()));
    assert!(matches!(&sync, Error::Arg(m) if m.contains("step Δ[0] = inf")), "{sync}");
}

#[test]
fn bad_workspaces_and_missing_buffers_are_clear_errors() {
    let sizes = [1i64, 4, 16];
    let x = feature(&sizes, Kind::Float, 2);
    let t = tokens(&x, Layout::Ntc, 1);
    let steps = jnd(&[t as i64], Kind::Float, 3);
    let q = opts(Bits::B8);
    let o = outputs(&x, t, Bits::B8);
    let n = ops::quantize_stats_slots(Bits::B8) as i64;
    let run = |ws: &Tensor| ops::quantize_async(&x, Layout::Ntc, 1, &steps, &q, &bufs(&o), ws).map(|_| ());
    assert!(matches!(run(&Tensor::zeros([n - 1], (Kind::Int64, Device::Cpu))), Err(Error::Shape(_))));
    assert!(matches!(run(&Tensor::zeros([n], (Kind::Float, Device::Cpu))), Err(Error::Arg(_))));
    assert!(matches!(run(&Tensor::zeros([n, 2], (Kind::Int64, Device::Cpu))), Err(Error::Arg(_))));
    assert!(matches!(run(&Tensor::zeros([2 * n], (Kind::Int64, Device::Cpu)).slice(0, 0, 2 * n, 2)), Err(Error::Arg(_))));
    assert!(run(&Tensor::zeros([n + 5], (Kind::Int64, Device::Cpu))).is_ok());
    // The workspace may not alias an output; requested outputs must be given.
    let ws = Tensor::zeros([n], (Kind::Int64, Device::Cpu));
    let sse_in_ws = ws.view_dtype(Kind::Float).narrow(0, 0, t as i64);
    let alias = QuantizeBuffers { token_sse: Some(&sse_in_ws), ..bufs(&o) };
    let e = ops::quantize_async(&x, Layout::Ntc, 1, &steps, &q, &alias, &ws);
    assert!(matches!(e, Err(Error::Arg(_))), "{e:?}");
    let none = QuantizeBuffers { recon: None, ..bufs(&o) };
    assert!(matches!(ops::quantize_async(&x, Layout::Ntc, 1, &steps, &q, &none, &ws), Err(Error::Arg(_))));
    // Wanted outputs off: nothing to pass.
    let lean = QuantizeOptions { symbols: false, recon: false, token_sse: false, ..q };
    let p = ops::quantize_async(&x, Layout::Ntc, 1, &steps, &lean, &QuantizeBuffers::default(), &ws).unwrap();
    assert_eq!(p.decode().unwrap().clamped, ops::quantize(&x, Layout::Ntc, 1, &steps, &lean).unwrap().clamped);
    // Perturbation: a short workspace, a wrong output.
    let out = x.zeros_like();
    let spec = Noise { kind: NoiseKind::Uniform, seed: 3, subsequence: 0 };
    assert!(matches!(ops::perturb_async(&x, None, 0.1, spec, &out, &Tensor::zeros([2], (Kind::Int64, Device::Cpu))), Err(Error::Shape(_))));
    let half = x.to_kind(Kind::Half);
    assert!(ops::perturb_async(&x, None, 0.1, spec, &half, &ws).is_err());
}

/// Items of awkward sizes (1, 7, 17, 1025 and 5137 elements among them), both layouts.
fn batch_shapes() -> Vec<(Layout, Vec<i64>, usize)> {
    vec![
        (Layout::Ntc, vec![1, 1, 1], 1),
        (Layout::Ntc, vec![1, 1, 7], 1),
        (Layout::Nchw, vec![1, 17, 1, 1], 1),
        (Layout::Ntc, vec![1, 1, 1025], 1),
        (Layout::Nchw, vec![1, 11, 467, 1], 1),
        (Layout::Nchw, vec![2, 7, 6, 4], 2),
        (Layout::Ntc, vec![3, 33, 64], 1),
    ]
}

#[test]
fn a_batch_on_cpu_equals_a_loop_of_single_calls() {
    for kind in KINDS {
        for bits in [Bits::B8, Bits::B16] {
            let q = opts(bits);
            let shapes = batch_shapes();
            let xs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, (_, s, _))| feature(s, kind, 100 + i as i64)).collect();
            let ts: Vec<usize> = shapes.iter().zip(&xs).map(|((l, _, p), x)| tokens(x, *l, *p)).collect();
            let steps: Vec<Tensor> = ts.iter().enumerate().map(|(i, &t)| jnd(&[t as i64], Kind::Float, 7 + i as i64) * 0.2).collect();
            let outs: Vec<[Tensor; 3]> = xs.iter().zip(&ts).map(|(x, &t)| outputs(x, t, bits)).collect();
            let items: Vec<QuantizeItem> = (0..xs.len())
                .map(|i| QuantizeItem { x: &xs[i], layout: shapes[i].0, patch: shapes[i].2, steps: &steps[i], bufs: bufs(&outs[i]) })
                .collect();
            let ws = ops::stats_buffer(ops::quantize_batch_stats_slots(bits, items.len()), Device::Cpu).unwrap();
            let got = ops::quantize_batch_async(&items, &q, &ws).unwrap().decode();
            assert_eq!(got.len(), items.len());
            for (i, g) in got.into_iter().enumerate() {
                let (layout, sizes, patch) = &shapes[i];
                let sync = ops::quantize(&xs[i], *layout, *patch, &steps[i], &q).unwrap();
                same_quantized(&g.unwrap(), &sync, &outs[i], &format!("item {i} {sizes:?} {kind:?} {bits:?}"));
            }
        }
    }
}

#[test]
fn a_batch_reports_each_items_error_and_refuses_mixed_or_aliased_items() {
    let a = feature(&[1, 1, 17], Kind::Float, 1);
    let b = feature(&[1, 2, 9], Kind::Float, 2);
    let _ = b.view([-1]).get(13).fill_(f64::INFINITY);
    let (sa, sb) = (jnd(&[1], Kind::Float, 1), jnd(&[2], Kind::Float, 2));
    let q = opts(Bits::B8);
    let (oa, ob) = (outputs(&a, 1, Bits::B8), outputs(&b, 2, Bits::B8));
    let item = |x, steps, o| QuantizeItem { x, layout: Layout::Ntc, patch: 1, steps, bufs: bufs(o) };
    let ws = ops::stats_buffer(ops::quantize_batch_stats_slots(Bits::B8, 2), Device::Cpu).unwrap();
    let got = ops::quantize_batch_async(&[item(&a, &sa, &oa), item(&b, &sb, &ob)], &q, &ws).unwrap().decode();
    assert!(got[0].is_ok());
    assert!(matches!(got[1], Err(Error::NonFinite { index: 13, .. })), "{:?}", got[1]);
    // Two items writing one buffer, mixed dtypes, a short workspace.
    assert!(matches!(ops::quantize_batch_async(&[item(&a, &sa, &oa), item(&a, &sa, &oa)], &q, &ws), Err(Error::Arg(_))));
    let h = a.to_kind(Kind::Half);
    let oh = outputs(&h, 1, Bits::B8);
    assert!(matches!(ops::quantize_batch_async(&[item(&a, &sa, &oa), item(&h, &sa, &oh)], &q, &ws), Err(Error::Dtype(_))));
    let short = ops::stats_buffer(ops::quantize_batch_stats_slots(Bits::B8, 1), Device::Cpu).unwrap();
    assert!(matches!(ops::quantize_batch_async(&[item(&a, &sa, &oa), item(&b, &sb, &ob)], &q, &short), Err(Error::Shape(_))));
    assert!(ops::quantize_batch_async(&[], &q, &short).unwrap().decode().is_empty());
}

#[test]
fn a_perturbation_batch_on_cpu_equals_a_loop_of_single_calls() {
    for kind in KINDS {
        let shapes: Vec<Vec<i64>> = vec![vec![1, 1], vec![1, 7], vec![2, 17], vec![1, 1025], vec![3, 5137], vec![2, 7, 5, 3]];
        let xs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| feature(s, kind, 200 + i as i64)).collect();
        let js: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| jnd(s, kind, 200 + i as i64)).collect();
        let outs: Vec<Tensor> = xs.iter().map(|x| x.zeros_like()).collect();
        let items: Vec<PerturbItem> = (0..xs.len())
            .map(|i| PerturbItem {
                x: &xs[i],
                jnd: (i % 2 == 0).then_some(&js[i]),
                nrmse: 0.05 * (i + 1) as f64,
                noise: Noise { kind: if i % 3 == 0 { NoiseKind::Uniform } else { NoiseKind::Gaussian }, seed: i as u64, subsequence: 4 },
                out: &outs[i],
            })
            .collect();
        let ws = ops::stats_buffer(ops::perturb_batch_stats_slots(&items), Device::Cpu).unwrap();
        let got = ops::perturb_batch_async(&items, &ws).unwrap().decode();
        for (i, (it, g)) in items.iter().zip(got).enumerate() {
            let want = it.x.zeros_like();
            let rep = ops::perturb_into(it.x, it.jnd, it.nrmse, it.noise, &want).unwrap();
            assert_eq!(g.unwrap(), rep, "item {i} {kind:?}");
            bits_eq(&outs[i], &want, &format!("item {i} {kind:?}"));
        }
        // An item writing into another item's input, and a bad value in one item only.
        let o2 = xs[1].zeros_like();
        let alias = [items[1], PerturbItem { x: &outs[1], jnd: None, out: &o2, ..items[1] }]; // reads what item 0 writes
        assert!(matches!(ops::perturb_batch_async(&alias, &ws), Err(Error::Arg(_))));
        let bad = xs[2].copy();
        let _ = bad.view([-1]).get(20).fill_(f64::NAN);
        let two = [items[0], PerturbItem { x: &bad, ..items[2] }];
        let got = ops::perturb_batch_async(&two, &ws).unwrap().decode();
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(Error::NonFinite { index: 20, .. })), "{:?}", got[1]);
        let short = ops::stats_buffer(ops::perturb_batch_stats_slots(&two) - 1, Device::Cpu).unwrap();
        assert!(matches!(ops::perturb_batch_async(&two, &short), Err(Error::Shape(_))));
    }
}
