//! The C ABI on device pointers (a CUDA context) against a CPU context on the same data. Needs
//! tch for device buffers, so it is built only with `--features torch-tests` (scripts/gpu-check.sh);
//! the plain build of this crate has no libtorch. Each test prints SKIP where no usable GPU exists.
#![cfg(feature = "torch-tests")]
#[path = "../../../tests/common/gpu.rs"]
mod gpu_common;
use featjnd_kernels::Layout;
use gpu_common::*;
use tch::{Device, Kind, Tensor};

// ---- The C ABI on device pointers (a CUDA context) against a CPU context on the same data. ----

mod capi_device {
    use super::*;
    use featjnd::*;
    use std::ffi::{c_void, CStr};
    use std::ptr::{null, null_mut};

    fn err() -> String {
        // SAFETY: fj_last_error returns this thread's NUL-terminated message, valid until the next call.
        unsafe { CStr::from_ptr(fj_last_error()) }.to_string_lossy().into_owned()
    }
    fn context(device: i32) -> *mut FjContext {
        context_with(device, FJ_POINTERS_CHECKED)
    }
    fn context_with(device: i32, pointer_checks: u32) -> *mut FjContext {
        let o = FjContextOptions { size: std::mem::size_of::<FjContextOptions>() as u32, device, num_threads: 0, pointer_checks };
        let mut c = null_mut();
        // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
        assert_eq!(unsafe { fj_context_create(&o, &mut c) }, FJ_OK, "{}", err());
        c
    }
    fn code(k: Kind) -> u32 {
        match k {
            Kind::Float => FJ_F32,
            Kind::Half => FJ_F16,
            _ => FJ_BF16,
        }
    }
    fn feat(t: &Tensor, layout: Layout) -> FjFeature {
        let s = t.size();
        let (l, dims) = match layout {
            Layout::Nchw => (FJ_NCHW, [s[0] as u64, s[1] as u64, s[2] as u64, s[3] as u64]),
            Layout::Ntc => (FJ_NTC, [s[0] as u64, s[1] as u64, s[2] as u64, 0]),
        };
        FjFeature { dtype: code(t.kind()), layout: l, dims, data: t.data_ptr() as *const c_void }
    }
    fn p<T>(t: &Tensor) -> *mut T {
        t.data_ptr() as *mut T
    }

    /// Token tolerances and steps through one context; outputs are tensors on `dev`.
    fn tolerances_and_steps(
        c: *const FjContext,
        j: &Tensor,
        layout: Layout,
        patch: usize,
        dev: Device,
        stream: *mut c_void,
    ) -> (Tensor, Tensor) {
        let fj = feat(j, layout);
        let mut t = 0u64;
        // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
        unsafe {
            assert_eq!(fj_token_count(&fj, patch as u32, &mut t), FJ_OK);
            let jt = Tensor::zeros([t as i64], (Kind::Float, dev));
            let steps = Tensor::zeros([t as i64], (Kind::Float, dev));
            tch::Cuda::synchronize(0);
            assert_eq!(fj_token_tolerance(c, &fj, patch as u32, FJ_MEAN, p(&jt), t, stream), FJ_OK, "{}", err());
            assert_eq!(fj_allocate_steps(c, p(&jt), t, 0.01, FJ_JND, 0, p(&steps)), FJ_OK, "{}", err());
            (jt.to_device(Device::Cpu), steps.to_device(Device::Cpu))
        }
    }

    /// The fused quantization with given steps: symbols, reconstruction, token errors, histogram
    /// (on the host) and the result struct.
    fn quantize(
        c: *const FjContext,
        x: &Tensor,
        steps: &Tensor,
        layout: Layout,
        patch: usize,
        dev: Device,
        stream: *mut c_void,
    ) -> (Vec<Tensor>, FjQuantizeResult) {
        let steps = steps.to_device(dev);
        let sym = Tensor::zeros(x.size(), (Kind::Int8, dev));
        let rec = Tensor::zeros(x.size(), (x.kind(), dev));
        let sse = Tensor::zeros([steps.numel() as i64], (Kind::Float, dev));
        let hist = Tensor::zeros([255], (Kind::Int64, dev));
        tch::Cuda::synchronize(0);
        let o = FjQuantizeOptions {
            size: std::mem::size_of::<FjQuantizeOptions>() as u32,
            bits: 8,
            patch: patch as u32,
            pad0: 0,
            symbols: p(&sym),
            recon: p(&rec),
            token_sse: p(&sse),
            histogram: p(&hist),
        };
        let mut r = FjQuantizeResult::default();
        // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
        assert_eq!(unsafe { fj_quantize(c, &feat(x, layout), p(&steps), &o, &mut r, stream) }, FJ_OK, "{}", err());
        (vec![sym, rec, sse, hist].into_iter().map(|t| t.to_device(Device::Cpu)).collect(), r)
    }

    #[test]
    fn c_abi_on_device_pointers_matches_the_cpu_context() {
        let Some(d) = gpu() else { return };
        let (cpu, gpu_ctx) = (context(-1), context(0));
        // One non-default stream (the caller's) and the legacy default stream (NULL).
        let dev = featjnd_kernels::cuda::Device::get(0).unwrap();
        let own = dev.ctx.new_stream().unwrap();
        for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate().filter(|(i, _)| i % 2 == 1 || *i == 0) {
            for kind in KINDS {
                let (x, j) = (feature(&sizes, kind, 900 + i as i64), jnd(&sizes, kind, 900 + i as i64));
                let (xd, jd) = (x.to_device(d), j.to_device(d));
                let (jc, sc) = tolerances_and_steps(cpu, &j, layout, patch, Device::Cpu, null_mut());
                let (hc, rc) = quantize(cpu, &x, &sc, layout, patch, Device::Cpu, null_mut());
                for stream in [null_mut(), own.cu_stream() as *mut c_void] {
                    let what = format!("{sizes:?} {kind:?} patch {patch} stream {stream:p}");
                    // Token reductions run in another order on the device: equal to rounding.
                    let (jg, sg) = tolerances_and_steps(gpu_ctx, &jd, layout, patch, d, stream);
                    close(&jg, &jc, 1e-5, 0.0, &format!("token tolerance {what}"));
                    close(&sg, &sc, 1e-4, 0.0, &format!("steps {what}"));
                    // Given the same steps, quantization is bit-identical (contract §4).
                    let (hg, rg) = quantize(gpu_ctx, &xd, &sc, layout, patch, d, stream);
                    for (k, name) in [(0, "symbols"), (1, "reconstruction"), (3, "histogram")] {
                        bits_eq(&hg[k], &hc[k], &format!("{name} {what}"));
                    }
                    close(&hg[2], &hc[2], 1e-4, 1e-30, &format!("token sse {what}"));
                    assert_eq!(rg.clamped, rc.clamped, "{what}");
                    assert!((rg.total_sse - rc.total_sse).abs() <= 1e-4 * rc.total_sse, "{what}");
                    assert_eq!(rg.entropy_bits, rc.entropy_bits, "{what}");
                }
                // Perturbation: out of place with scales, on the caller's stream.
                let samples = sizes[0] as usize;
                let o = FjPerturbOptions {
                    size: std::mem::size_of::<FjPerturbOptions>() as u32,
                    noise: FJ_GAUSSIAN,
                    seed: 5,
                    subsequence: 3,
                    pad0: 0,
                    scales: null_mut(),
                };
                let (oc, og) = (Tensor::zeros(x.size(), (kind, Device::Cpu)), Tensor::zeros(x.size(), (kind, d)));
                let (sc, sg) =
                    (Tensor::zeros([samples as i64], (Kind::Float, Device::Cpu)), Tensor::zeros([samples as i64], (Kind::Float, d)));
                tch::Cuda::synchronize(0);
                // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
                unsafe {
                    let oc_opts = FjPerturbOptions { scales: p(&sc), ..o };
                    assert_eq!(
                        fj_perturb(cpu, &feat(&x, layout), &feat(&j, layout), 0.3, &oc_opts, p(&oc), null_mut()),
                        FJ_OK,
                        "{}",
                        err()
                    );
                    let og_opts = FjPerturbOptions { scales: p(&sg), ..o };
                    assert_eq!(
                        fj_perturb(gpu_ctx, &feat(&xd, layout), &feat(&jd, layout), 0.3, &og_opts, p(&og), own.cu_stream() as *mut c_void),
                        FJ_OK,
                        "{}",
                        err()
                    );
                }
                let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                let scale = x.to_kind(Kind::Double).abs().max().double_value(&[]);
                close(&og, &oc, tol, tol * scale, &format!("perturb {sizes:?} {kind:?}"));
                close(&sg, &sc, 1e-5, 0.0, &format!("scales {sizes:?} {kind:?}"));
            }
        }
        // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
        unsafe {
            fj_context_destroy(cpu);
            fj_context_destroy(gpu_ctx);
        }
    }

    #[test]
    fn c_abi_device_context_rejects_host_pointers_short_buffers_and_bad_values() {
        let Some(d) = gpu() else { return };
        let c = context(0);
        let x = feature(&[2, 4, 4, 4], Kind::Float, 77);
        let xd = x.to_device(d);
        let out = Tensor::full([32], 7.0, (Kind::Float, d));
        // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
        unsafe {
            // Host memory given to a device context.
            let host = feat(&x, Layout::Nchw);
            assert_eq!(fj_token_tolerance(c, &host, 1, FJ_MEAN, p(&out), 32, null_mut()), FJ_ERR_ARG);
            assert!(err().contains("not CUDA device memory"), "{}", err());
            // A device buffer shorter than its dims say (a plain cuMemAlloc of 16 floats: torch's
            // caching allocator would hide it inside a larger block).
            let dev = featjnd_kernels::cuda::Device::get(0).unwrap();
            dev.ctx.bind_to_thread().unwrap();
            let short = cudarc::driver::result::malloc_sync(64).unwrap();
            let mut f = feat(&xd, Layout::Nchw);
            f.data = short as *const c_void;
            assert_eq!(fj_token_tolerance(c, &f, 1, FJ_MEAN, p(&out), 32, null_mut()), FJ_ERR_ARG);
            assert!(err().contains("needs 512 bytes"), "{}", err());
            cudarc::driver::result::free_sync(short).unwrap();
            // J <= 0 names its index; nothing but the op's own output is touched.
            let bad_j = xd.abs() + 0.5;
            let _ = bad_j.flatten(0, -1).narrow(0, 37, 1).fill_(-1.0);
            assert_eq!(fj_token_tolerance(c, &feat(&bad_j, Layout::Nchw), 1, FJ_MEAN, p(&out), 32, null_mut()), FJ_ERR_JND);
            assert!(err().contains("37"), "{}", err());
            // A NaN in x: quantize reports its index.
            let steps = Tensor::full([32], 0.1, (Kind::Float, d));
            let xn = xd.copy();
            let _ = xn.flatten(0, -1).narrow(0, 101, 1).fill_(f64::NAN);
            let sym = Tensor::zeros([2, 4, 4, 4], (Kind::Int8, d));
            let o = FjQuantizeOptions {
                size: std::mem::size_of::<FjQuantizeOptions>() as u32,
                bits: 8,
                patch: 1,
                pad0: 0,
                symbols: p(&sym),
                recon: null_mut(),
                token_sse: null_mut(),
                histogram: null_mut(),
            };
            tch::Cuda::synchronize(0);
            assert_eq!(fj_quantize(c, &feat(&xn, Layout::Nchw), p(&steps), &o, null_mut(), null_mut()), FJ_ERR_NONFINITE);
            assert!(err().contains("101"), "{}", err());
            // Host steps for a device context.
            let hs = [0.1f32; 32];
            assert_eq!(fj_quantize(c, &feat(&xd, Layout::Nchw), hs.as_ptr(), &o, null_mut(), null_mut()), FJ_ERR_ARG);
            assert_eq!(fj_perturb(c, &feat(&xd, Layout::Nchw), null(), -1.0, null(), p(&xd), null_mut()), FJ_ERR_BUDGET);
            fj_context_destroy(c);
        }
    }
    /// The capped allocation (contract §3.5) through a device context: token RMS, caps and steps
    /// against a CPU context on the same data; errors as on the CPU. Not yet run on a GPU.
    #[test]
    fn c_abi_capped_allocation_on_device_matches_cpu() {
        let Some(d) = gpu() else { return };
        let (cpu, gpu_ctx) = (context(-1), context(0));
        for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
            let x = feature(&sizes, Kind::Float, 900 + i as i64);
            let (xd, fx) = (x.to_device(d), feat(&x, layout));
            let mut t = 0u64;
            // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
            unsafe { assert_eq!(fj_token_count(&fx, patch as u32, &mut t), FJ_OK) };
            let jt = jnd(&[t as i64], Kind::Float, 900 + i as i64);
            let host = |n| Tensor::zeros([n as i64], (Kind::Float, Device::Cpu));
            let dev = |n| Tensor::zeros([n as i64], (Kind::Float, d));
            let (rc, cc, sc) = (host(t), host(t), host(t));
            let (rg, cg, sg, jd) = (dev(t), dev(t), dev(t), jt.to_device(d));
            tch::Cuda::synchronize(0);
            // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
            unsafe {
                assert_eq!(fj_token_rms(cpu, &fx, patch as u32, p(&rc), t, null_mut()), FJ_OK, "{}", err());
                assert_eq!(fj_token_rms(gpu_ctx, &feat(&xd, layout), patch as u32, p(&rg), t, null_mut()), FJ_OK, "{}", err());
                assert_eq!(fj_caps_from_rms(cpu, p(&rc), t, 2.0, p(&cc), null_mut()), FJ_OK, "{}", err());
                // The device caps from the CPU's r_t: bit-identical to the CPU's caps.
                let rcd = rc.to_device(d);
                tch::Cuda::synchronize(0);
                assert_eq!(fj_caps_from_rms(gpu_ctx, p(&rcd), t, 2.0, p(&cg), null_mut()), FJ_OK, "{}", err());
                let ccd = cc.to_device(d);
                tch::Cuda::synchronize(0);
                assert_eq!(fj_allocate_steps_capped(cpu, p(&jt), p(&cc), t, 0.5, p(&sc), null_mut()), FJ_OK, "{}", err());
                assert_eq!(fj_allocate_steps_capped(gpu_ctx, p(&jd), p(&ccd), t, 0.5, p(&sg), null_mut()), FJ_OK, "{}", err());
            }
            let what = format!("{layout:?} {sizes:?} p{patch}");
            close(&rg, &rc, 1e-5, 0.0, &format!("token rms {what}"));
            bits_eq(&cg, &cc, &format!("caps {what}"));
            // Bisection vs sort-and-sweep: within one f32 ulp (3e-7 relative covers it).
            close(&sg, &sc, 2.4e-7, 0.0, &format!("capped steps {what}"));
        }
        // Errors: a zero feature, a bad cap.
        let z = Tensor::zeros([4], (Kind::Float, d));
        let out = Tensor::full([4], 7.0, (Kind::Float, d));
        let cbad = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 1.0]).to_device(d);
        tch::Cuda::synchronize(0);
        // SAFETY: live tensors (device or host, as the context takes) of the documented sizes, synchronized with torch's stream.
        unsafe {
            assert_eq!(fj_caps_from_rms(gpu_ctx, p(&z), 4, 2.0, p(&out), null_mut()), FJ_ERR_ARG);
            assert!(err().contains("zero"), "{}", err());
            let ones = Tensor::ones([4], (Kind::Float, d));
            tch::Cuda::synchronize(0);
            assert_eq!(fj_allocate_steps_capped(gpu_ctx, p(&ones), p(&cbad), 4, 0.1, p(&out), null_mut()), FJ_ERR_ARG);
            assert!(err().contains("c[1]"), "{}", err());
            fj_context_destroy(cpu);
            fj_context_destroy(gpu_ctx);
        }
    }

    /// The buffers of one round of a server loop: the fused chain on (x, J), the perturbation of
    /// its reconstruction, and a plain quantization of the perturbed feature with the same steps.
    struct Round {
        x: Tensor,
        j: Tensor,
        layout: Layout,
        patch: u32,
        steps: Tensor,
        sym: Tensor,
        rec: Tensor,
        sse: Tensor,
        qstats: Tensor,
        pert: Tensor,
        pstats: Tensor,
        sym2: Tensor,
        q2stats: Tensor,
    }

    impl Round {
        fn new(x: &Tensor, j: &Tensor, layout: Layout, patch: u32, dev: Device) -> Round {
            let (mut t, mut qs, mut ps, mut fs) = (0u64, 0u64, 0u64, 0u64);
            let (fx, fj) = (feat(x, layout), feat(j, layout));
            // SAFETY: readable feature structs and writable counters; no data is read.
            unsafe {
                assert_eq!(fj_token_count(&fx, patch, &mut t), FJ_OK);
                assert_eq!(fj_quantize_stats_slots(8, &mut qs), FJ_OK);
                assert_eq!(fj_perturb_stats_slots(&fj, &mut ps), FJ_OK);
                assert_eq!(fj_quantize_with_jnd_stats_slots(&fx, patch, 8, &mut fs), FJ_OK);
            }
            let z = |sizes: &[i64], k: Kind| Tensor::zeros(sizes, (k, dev));
            Round {
                x: x.shallow_clone(),
                j: j.shallow_clone(),
                layout,
                patch,
                steps: z(&[t as i64], Kind::Float),
                sym: z(&x.size(), Kind::Int8),
                rec: z(&x.size(), x.kind()),
                sse: z(&[t as i64], Kind::Float),
                qstats: z(&[fs as i64], Kind::Int64),
                pert: z(&x.size(), x.kind()),
                pstats: z(&[ps as i64], Kind::Int64),
                sym2: z(&x.size(), Kind::Int8),
                q2stats: z(&[qs as i64], Kind::Int64),
            }
        }

        fn qopts(&self, sym: &Tensor, rec: *mut c_void, sse: *mut f32) -> FjQuantizeOptions {
            FjQuantizeOptions {
                size: std::mem::size_of::<FjQuantizeOptions>() as u32,
                bits: 8,
                patch: self.patch,
                pad0: 0,
                symbols: p(sym),
                recon: rec,
                token_sse: sse,
                histogram: null_mut(),
            }
        }

        /// Enqueues the round's three async calls on `stream`.
        fn enqueue(&self, c: *const FjContext, stream: *mut c_void) {
            let (fx, fj, fr, fp) =
                (feat(&self.x, self.layout), feat(&self.j, self.layout), feat(&self.rec, self.layout), feat(&self.pert, self.layout));
            let o = self.qopts(&self.sym, p(&self.rec), p(&self.sse));
            let po = FjPerturbOptions {
                size: std::mem::size_of::<FjPerturbOptions>() as u32,
                noise: FJ_GAUSSIAN,
                seed: 77,
                subsequence: 1,
                pad0: 0,
                scales: null_mut(),
            };
            let o2 = self.qopts(&self.sym2, null_mut(), null_mut());
            let len = |t: &Tensor| t.numel() as u64;
            // SAFETY: live device tensors of the documented sizes, allocated (and synchronized)
            // before; they outlive the stream's work (the test synchronizes before dropping them).
            unsafe {
                let rc = fj_quantize_with_jnd_async(
                    c,
                    &fx,
                    &fj,
                    FJ_MEAN,
                    0.02,
                    FJ_JND,
                    &o,
                    p(&self.steps),
                    p(&self.qstats),
                    len(&self.qstats),
                    stream,
                );
                assert_eq!(rc, FJ_OK, "{}", err());
                let rc = fj_perturb_async(c, &fr, &fj, 0.1, &po, p(&self.pert), p(&self.pstats), len(&self.pstats), stream);
                assert_eq!(rc, FJ_OK, "{}", err());
                let rc = fj_quantize_async(c, &fp, p(&self.steps), &o2, p(&self.q2stats), len(&self.q2stats), stream);
                assert_eq!(rc, FJ_OK, "{}", err());
            }
        }

        /// Decodes the three calls' statistics (on `stream`, which this synchronizes).
        fn decode(&self, c: *const FjContext, stream: *mut c_void) -> (FjQuantizeResult, Vec<u64>, Vec<f32>, FjQuantizeResult) {
            let (fx, fj, fr, fp) =
                (feat(&self.x, self.layout), feat(&self.j, self.layout), feat(&self.rec, self.layout), feat(&self.pert, self.layout));
            let (mut r, mut r2, mut h) = (FjQuantizeResult::default(), FjQuantizeResult::default(), vec![0u64; 255]);
            let mut scales = vec![0f32; self.x.size()[0] as usize];
            let len = |t: &Tensor| t.numel() as u64;
            // SAFETY: as in `enqueue`; the histogram and scales outputs are host vectors of the
            // documented lengths.
            unsafe {
                let rc = fj_quantize_decode(c, &fx, &fj, self.patch, 8, p(&self.qstats), len(&self.qstats), stream, &mut r, h.as_mut_ptr());
                assert_eq!(rc, FJ_OK, "{}", err());
                let rc = fj_perturb_decode(c, &fr, &fj, 0.1, p(&self.pstats), len(&self.pstats), stream, scales.as_mut_ptr());
                assert_eq!(rc, FJ_OK, "{}", err());
                let rc =
                    fj_quantize_decode(c, &fp, null(), self.patch, 8, p(&self.q2stats), len(&self.q2stats), stream, &mut r2, null_mut());
                assert_eq!(rc, FJ_OK, "{}", err());
            }
            (r, h, scales, r2)
        }

        fn outputs(&self) -> [&Tensor; 6] {
            [&self.steps, &self.sym, &self.rec, &self.sse, &self.pert, &self.sym2]
        }
    }

    #[test]
    fn c_abi_async_calls_capture_into_a_cuda_graph_and_replay_bit_for_bit() {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let Some(d) = gpu() else { return };
        // The eager loop asks the driver about every pointer; the captured one runs on a context
        // that trusts them (FJ_POINTERS_TRUSTED): both must give the same bits.
        let c = context(0);
        let trusted = context_with(0, FJ_POINTERS_TRUSTED);
        let dev = featjnd_kernels::cuda::Device::get(0).unwrap();
        let stream = dev.ctx.new_stream().unwrap();
        let s = stream.cu_stream() as *mut c_void;
        let cases =
            [(Layout::Nchw, vec![2i64, 7, 5, 3], 1u32), (Layout::Ntc, vec![3, 33, 1025], 1), (Layout::Nchw, vec![1, 64, 28, 28], 4)];
        for kind in KINDS {
            let inputs: Vec<_> = cases
                .iter()
                .enumerate()
                .map(|(i, (l, sz, pt))| (feature(sz, kind, 40 + i as i64).to_device(d), jnd(sz, kind, 40 + i as i64).to_device(d), *l, *pt))
                .collect();
            let eager: Vec<Round> = inputs.iter().map(|(x, j, l, pt)| Round::new(x, j, *l, *pt, d)).collect();
            let graph: Vec<Round> = inputs.iter().map(|(x, j, l, pt)| Round::new(x, j, *l, *pt, d)).collect();
            tch::Cuda::synchronize(0);
            // Eager: the loop on the stream, then one sync.
            eager.iter().for_each(|r| r.enqueue(c, s));
            stream.synchronize().unwrap();
            // Captured: nothing runs while capturing (the outputs stay zero), then two replays (the
            // graph zeroes its own statistics, so a replay starts clean).
            stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
            graph.iter().for_each(|r| r.enqueue(trusted, s));
            let g = stream.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("an empty capture");
            stream.synchronize().unwrap();
            assert_eq!(graph[0].rec.abs().sum(Kind::Double).double_value(&[]), 0.0, "capture must not run the work");
            g.launch().unwrap();
            g.launch().unwrap();
            stream.synchronize().unwrap();
            for (i, (e, r)) in eager.iter().zip(&graph).enumerate() {
                let what = format!("round {i} {kind:?}");
                for (k, (a, b)) in e.outputs().into_iter().zip(r.outputs()).enumerate() {
                    bits_eq(a, b, &format!("{what}: output {k}"));
                }
                let (qa, ha, sa, q2a) = e.decode(c, s);
                let (qb, hb, sb, q2b) = r.decode(c, s);
                assert_eq!((qa.clamped, q2a.clamped, &ha, &sa), (qb.clamped, q2b.clamped, &hb, &sb), "{what}");
                assert_eq!(qa.entropy_bits, qb.entropy_bits, "{what}");
                // The total error is an atomic f64 sum: its order (not its terms) may differ.
                assert!((qa.total_sse - qb.total_sse).abs() <= 1e-9 * qa.total_sse, "{what}");
            }
        }
        // SAFETY: a live context, used by no one after this.
        unsafe { fj_context_destroy(c) };
    }

    #[test]
    fn c_abi_async_device_errors_decode_like_the_cpu_context() {
        let Some(d) = gpu() else { return };
        let (cpu, gpu_ctx) = (context(-1), context(0));
        let sizes = [2i64, 4, 3, 3];
        let (x, j) = (feature(&sizes, Kind::Float, 3), jnd(&sizes, Kind::Float, 3));
        let _ = x.view([-1]).get(29).fill_(f64::NAN);
        let r = |c: *const FjContext, dev: Device| {
            let round = Round::new(&x.to_device(dev), &j.to_device(dev), Layout::Nchw, 1, dev);
            tch::Cuda::synchronize(0);
            let (fx, fj) = (feat(&round.x, Layout::Nchw), feat(&round.j, Layout::Nchw));
            let o = round.qopts(&round.sym, p(&round.rec), null_mut());
            let mut res = FjQuantizeResult::default();
            let n = round.qstats.numel() as u64;
            // SAFETY: live tensors of the documented sizes on the context's device, synchronized.
            unsafe {
                let rc =
                    fj_quantize_with_jnd_async(c, &fx, &fj, FJ_MEAN, 0.02, FJ_JND, &o, p(&round.steps), p(&round.qstats), n, null_mut());
                assert_eq!(rc, FJ_OK, "{}", err());
                let rc = fj_quantize_decode(c, &fx, &fj, 1, 8, p(&round.qstats), n, null_mut(), &mut res, null_mut());
                (rc, err())
            }
        };
        let (a, b) = (r(cpu, Device::Cpu), r(gpu_ctx, d));
        assert_eq!(a.0, FJ_ERR_NONFINITE);
        assert_eq!(a, b);
        // A host statistics array on a device context is refused before anything is enqueued.
        let round = Round::new(&x.to_device(d), &j.to_device(d), Layout::Nchw, 1, d);
        let host = Tensor::zeros([round.q2stats.numel() as i64], (Kind::Int64, Device::Cpu));
        tch::Cuda::synchronize(0);
        let o = round.qopts(&round.sym2, null_mut(), null_mut());
        // SAFETY: live tensors of the documented sizes; the host array must be refused unread.
        let rc = unsafe {
            fj_quantize_async(gpu_ctx, &feat(&round.x, Layout::Nchw), p(&round.steps), &o, p(&host), host.numel() as u64, null_mut())
        };
        assert_eq!(rc, FJ_ERR_ARG, "{}", err());
        // SAFETY: live contexts, used by no one after this.
        unsafe {
            fj_context_destroy(cpu);
            fj_context_destroy(gpu_ctx);
        }
    }
    // ---- the batched calls (contract §8) ----

    /// One batch item's inputs: the feature and its J (host tensors), layout, patch and the steps
    /// a CPU context allocated for it.
    struct BatchInput {
        x: Tensor,
        j: Tensor,
        layout: Layout,
        patch: u32,
        steps: Tensor,
    }

    /// `count` items cycling through the awkward shapes, each its own data.
    fn batch_inputs(cpu: *const FjContext, kind: Kind, count: usize) -> Vec<BatchInput> {
        let shapes = shapes();
        (0..count)
            .map(|k| {
                let (layout, sizes, patch) = shapes[k % shapes.len()].clone();
                let (x, j) = (feature(&sizes, kind, 3000 + k as i64), jnd(&sizes, kind, 3000 + k as i64));
                let (_, steps) = tolerances_and_steps(cpu, &j, layout, patch, Device::Cpu, null_mut());
                BatchInput { x, j, layout, patch: patch as u32, steps }
            })
            .collect()
    }

    /// The outputs of one quantization of a batch on `dev`: per item symbols, reconstruction and
    /// token errors, and the statistics of all items (`per` slots each).
    struct QuantRun {
        x: Vec<Tensor>,
        steps: Vec<Tensor>,
        outs: Vec<[Tensor; 3]>,
        stats: Tensor,
    }

    impl QuantRun {
        fn new(inputs: &[BatchInput], bits: u32, per: usize, dev: Device) -> QuantRun {
            let sym_kind = if bits == 16 { Kind::Int16 } else { Kind::Int8 };
            let outs = inputs
                .iter()
                .map(|b| {
                    let z = |sizes: &[i64], k: Kind| Tensor::full(sizes, -3, (k, dev));
                    [z(&b.x.size(), sym_kind), z(&b.x.size(), b.x.kind()), z(&[b.steps.numel() as i64], Kind::Float)]
                })
                .collect();
            QuantRun {
                x: inputs.iter().map(|b| b.x.to_device(dev)).collect(),
                steps: inputs.iter().map(|b| b.steps.to_device(dev)).collect(),
                outs,
                stats: Tensor::full([(per * inputs.len()) as i64], -3, (Kind::Int64, dev)),
            }
        }

        fn feats(&self, inputs: &[BatchInput]) -> Vec<FjFeature> {
            self.x.iter().zip(inputs).map(|(x, b)| feat(x, b.layout)).collect()
        }

        fn items(&self, inputs: &[BatchInput], feats: &[FjFeature]) -> Vec<FjQuantizeItem> {
            (0..inputs.len())
                .map(|i| FjQuantizeItem {
                    size: std::mem::size_of::<FjQuantizeItem>() as u32,
                    patch: inputs[i].patch,
                    x: &feats[i],
                    steps: p(&self.steps[i]),
                    symbols: p(&self.outs[i][0]),
                    recon: p(&self.outs[i][1]),
                    token_sse: p(&self.outs[i][2]),
                })
                .collect()
        }

        /// The whole batch in one `fj_quantize_batch_async` on `stream` (torch's work on the
        /// tensors must be complete: the caller synchronizes).
        fn batch(&self, c: *const FjContext, inputs: &[BatchInput], bits: u32, stream: *mut c_void) {
            let feats = self.feats(inputs);
            let items = self.items(inputs, &feats);
            // SAFETY: live tensors (device or host, as the context takes) of the documented sizes,
            // synchronized with torch's stream by the caller (no sync here: this runs under
            // capture too); they outlive the stream's work (decoded before drop).
            let rc = unsafe {
                fj_quantize_batch_async(c, items.as_ptr(), items.len() as u32, bits, p(&self.stats), self.stats.numel() as u64, stream)
            };
            assert_eq!(rc, FJ_OK, "{}", err());
        }

        /// Each item alone through `fj_quantize_async` on `stream`, its statistics in its slice.
        fn singles(&self, c: *const FjContext, inputs: &[BatchInput], bits: u32, per: usize, stream: *mut c_void) {
            let feats = self.feats(inputs);
            tch::Cuda::synchronize(0);
            for (i, it) in self.items(inputs, &feats).iter().enumerate() {
                let o = FjQuantizeOptions {
                    size: std::mem::size_of::<FjQuantizeOptions>() as u32,
                    bits,
                    patch: it.patch,
                    pad0: 0,
                    symbols: it.symbols,
                    recon: it.recon,
                    token_sse: it.token_sse,
                    histogram: null_mut(),
                };
                // SAFETY: as in `batch`; item `i`'s slice of the statistics holds `per` slots.
                let rc = unsafe { fj_quantize_async(c, &feats[i], it.steps, &o, p::<i64>(&self.stats).add(i * per), per as u64, stream) };
                assert_eq!(rc, FJ_OK, "{}", err());
            }
        }

        /// Item `i`'s decoded result and histogram (a sync of `stream`).
        fn decode(
            &self,
            c: *const FjContext,
            inputs: &[BatchInput],
            i: usize,
            bits: u32,
            per: usize,
            stream: *mut c_void,
        ) -> (FjQuantizeResult, Vec<u64>) {
            let f = feat(&self.x[i], inputs[i].layout);
            let (mut r, mut h) = (FjQuantizeResult::default(), vec![0u64; if bits == 16 { 512 } else { 255 }]);
            // SAFETY: live tensors of the documented sizes; item `i`'s slice holds `per` slots; `h`
            // is host memory for the bins.
            let rc = unsafe {
                let st = p::<i64>(&self.stats).add(i * per);
                fj_quantize_decode(c, &f, null(), inputs[i].patch, bits, st, per as u64, stream, &mut r, h.as_mut_ptr())
            };
            assert_eq!(rc, FJ_OK, "item {i}: {}", err());
            (r, h)
        }
    }

    /// The batched quantization and perturbation on a device context: 40 items of mixed shapes
    /// (two launches' worth) against the same batch on a CPU context (the contract's equalities)
    /// and against a loop of single async calls on the device (bit for bit for the quantization);
    /// a captured batch replays bit for bit. Not yet run on a GPU.
    #[test]
    fn c_abi_batch_calls_on_device_match_the_cpu_context_and_single_calls() {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let Some(d) = gpu() else { return };
        let (cpu, gpu_ctx) = (context(-1), context(0));
        let dev = featjnd_kernels::cuda::Device::get(0).unwrap();
        let stream = dev.ctx.new_stream().unwrap();
        let s = stream.cu_stream() as *mut c_void;
        let count = 40;
        for kind in KINDS {
            let inputs = batch_inputs(cpu, kind, count);
            for bits in [8u32, 16] {
                let mut per = 0u64;
                // SAFETY: a writable counter.
                assert_eq!(unsafe { fj_quantize_stats_slots(bits, &mut per) }, FJ_OK);
                let per = per as usize;
                let (host, batch, single, graph) = (
                    QuantRun::new(&inputs, bits, per, Device::Cpu),
                    QuantRun::new(&inputs, bits, per, d),
                    QuantRun::new(&inputs, bits, per, d),
                    QuantRun::new(&inputs, bits, per, d),
                );
                tch::Cuda::synchronize(0);
                host.batch(cpu, &inputs, bits, null_mut());
                batch.batch(gpu_ctx, &inputs, bits, s);
                single.singles(gpu_ctx, &inputs, bits, per, s);
                // Captured: nothing runs while capturing, then one replay.
                stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
                graph.batch(gpu_ctx, &inputs, bits, s);
                let g = stream.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("an empty capture");
                stream.synchronize().unwrap();
                assert_eq!(
                    graph.outs[3][1].abs().sum(Kind::Double).double_value(&[]),
                    3.0 * graph.outs[3][1].numel() as f64,
                    "capture must not run the work"
                );
                g.launch().unwrap();
                stream.synchronize().unwrap();
                for i in 0..count {
                    let what = format!("{kind:?} bits {bits} item {i} {:?}", inputs[i].x.size());
                    for (k, name) in ["symbols", "recon", "token_sse"].into_iter().enumerate() {
                        bits_eq(&batch.outs[i][k], &single.outs[i][k], &format!("{what}: {name} batch vs single"));
                        bits_eq(&batch.outs[i][k], &graph.outs[i][k], &format!("{what}: {name} batch vs replay"));
                    }
                    // Given the same steps, quantization is bit-identical to the CPU (contract §4).
                    bits_eq(&batch.outs[i][0], &host.outs[i][0], &format!("{what}: symbols vs cpu"));
                    bits_eq(&batch.outs[i][1], &host.outs[i][1], &format!("{what}: recon vs cpu"));
                    close(&batch.outs[i][2], &host.outs[i][2], 1e-4, 1e-30, &format!("{what}: token sse vs cpu"));
                    let (rb, hb) = batch.decode(gpu_ctx, &inputs, i, bits, per, s);
                    let (rs, hs) = single.decode(gpu_ctx, &inputs, i, bits, per, s);
                    let (rc, hc) = host.decode(cpu, &inputs, i, bits, per, null_mut());
                    assert_eq!((rb.clamped, &hb), (rs.clamped, &hs), "{what}: vs single");
                    assert_eq!((rb.clamped, &hb, rb.entropy_bits), (rc.clamped, &hc, rc.entropy_bits), "{what}: vs cpu");
                    // The total error is an atomic f64 sum: its order (not its terms) may differ.
                    assert!((rb.total_sse - rs.total_sse).abs() <= 1e-9 * rs.total_sse.max(1e-30), "{what}");
                    assert!((rb.total_sse - rc.total_sse).abs() <= 1e-4 * rc.total_sse.max(1e-30), "{what}");
                }
                // The whole batch decoded with one copy (and one sync): item by item the same.
                let feats = batch.feats(&inputs);
                let items = batch.items(&inputs, &feats);
                let bins = if bits == 16 { 512 } else { 255 };
                let (mut st, mut hists) = (vec![-9i32; count], vec![0u64; count * bins]);
                let mut res: Vec<FjQuantizeResult> = (0..count).map(|_| FjQuantizeResult::default()).collect();
                // SAFETY: live device tensors of the documented sizes, written by work on `s`; host
                // arrays for the statuses, results and histograms.
                let rc = unsafe {
                    fj_quantize_batch_decode(
                        gpu_ctx,
                        items.as_ptr(),
                        count as u32,
                        bits,
                        p(&batch.stats),
                        batch.stats.numel() as u64,
                        s,
                        st.as_mut_ptr(),
                        res.as_mut_ptr(),
                        hists.as_mut_ptr(),
                    )
                };
                assert_eq!(rc, FJ_OK, "{}", err());
                for i in 0..count {
                    let (rb, hb) = batch.decode(gpu_ctx, &inputs, i, bits, per, s);
                    assert_eq!(st[i], FJ_OK, "{kind:?} bits {bits} item {i}");
                    assert_eq!((res[i].clamped, res[i].total_sse.to_bits()), (rb.clamped, rb.total_sse.to_bits()), "item {i}");
                    assert_eq!(&hists[i * bins..(i + 1) * bins], &hb[..], "{kind:?} bits {bits} item {i}");
                }
            }
            // The perturbation: per item its own J (or none), noise, seed and strength.
            let items_on = |dev: Device| -> (Vec<Tensor>, Vec<Option<Tensor>>, Vec<Tensor>) {
                let x: Vec<Tensor> = inputs.iter().map(|b| b.x.to_device(dev)).collect();
                let j = inputs.iter().enumerate().map(|(k, b)| (!k.is_multiple_of(3)).then(|| b.j.to_device(dev))).collect();
                let out = inputs.iter().map(|b| Tensor::zeros(b.x.size(), (kind, dev))).collect();
                (x, j, out)
            };
            let run = |c: *const FjContext, dev: Device, one_by_one: bool, stream: *mut c_void| -> (Vec<Tensor>, Vec<Vec<f32>>) {
                let (x, j, out) = items_on(dev);
                let fx: Vec<FjFeature> = x.iter().zip(&inputs).map(|(t, b)| feat(t, b.layout)).collect();
                let fj: Vec<Option<FjFeature>> = j.iter().zip(&inputs).map(|(t, b)| t.as_ref().map(|t| feat(t, b.layout))).collect();
                let items: Vec<FjPerturbItem> = (0..count)
                    .map(|k| FjPerturbItem {
                        size: std::mem::size_of::<FjPerturbItem>() as u32,
                        noise: [FJ_GAUSSIAN, FJ_UNIFORM_NOISE][k % 2],
                        seed: 40 + k as u64,
                        subsequence: (k % 3) as u32,
                        pad0: 0,
                        nrmse: 0.05 + 0.01 * k as f64,
                        x: &fx[k],
                        jnd: fj[k].as_ref().map_or(null(), |f| f as *const FjFeature),
                        out: p(&out[k]),
                    })
                    .collect();
                let (mut total, mut offsets) = (0u64, vec![0u64; count]);
                // SAFETY: readable item structs and writable counters; no data is read.
                assert_eq!(unsafe { fj_perturb_batch_stats_slots(items.as_ptr(), count as u32, &mut total, offsets.as_mut_ptr()) }, FJ_OK);
                let stats = Tensor::full([total as i64], -3, (Kind::Int64, dev));
                tch::Cuda::synchronize(0);
                // SAFETY: live tensors (device or host, as the context takes) of the documented
                // sizes, synchronized with torch's stream; decoded (a sync) before they drop.
                unsafe {
                    if one_by_one {
                        for (k, it) in items.iter().enumerate() {
                            let o = FjPerturbOptions {
                                size: std::mem::size_of::<FjPerturbOptions>() as u32,
                                noise: it.noise,
                                seed: it.seed,
                                subsequence: it.subsequence,
                                pad0: 0,
                                scales: null_mut(),
                            };
                            let st = p::<i64>(&stats).add(offsets[k] as usize);
                            let rc = fj_perturb_async(c, it.x, it.jnd, it.nrmse, &o, it.out, st, total - offsets[k], stream);
                            assert_eq!(rc, FJ_OK, "{}", err());
                        }
                    } else {
                        let rc = fj_perturb_batch_async(c, items.as_ptr(), count as u32, p(&stats), total, stream);
                        assert_eq!(rc, FJ_OK, "{}", err());
                    }
                }
                let scales = items
                    .iter()
                    .enumerate()
                    .map(|(k, it)| {
                        let mut sc = vec![0f32; inputs[k].x.size()[0] as usize];
                        // SAFETY: as above; `sc` is host memory for N floats.
                        let rc = unsafe {
                            let st = p::<i64>(&stats).add(offsets[k] as usize);
                            fj_perturb_decode(c, it.x, it.jnd, it.nrmse, st, total - offsets[k], stream, sc.as_mut_ptr())
                        };
                        assert_eq!(rc, FJ_OK, "item {k}: {}", err());
                        sc
                    })
                    .collect();
                (out.iter().map(|t| t.to_device(Device::Cpu)).collect(), scales)
            };
            let (oc, sc) = run(cpu, Device::Cpu, false, null_mut());
            let (og, sg) = run(gpu_ctx, d, false, s);
            let (o1, s1) = run(gpu_ctx, d, true, s);
            let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
            for k in 0..count {
                let what = format!("perturb {kind:?} item {k} {:?}", inputs[k].x.size());
                let scale = inputs[k].x.to_kind(Kind::Double).abs().max().double_value(&[]);
                close(&og[k], &oc[k], tol, tol * scale, &format!("{what}: vs cpu"));
                close(&og[k], &o1[k], tol, tol * scale, &format!("{what}: vs single"));
                let t = |v: &[f32]| Tensor::from_slice(v);
                close(&t(&sg[k]), &t(&sc[k]), 1e-5, 0.0, &format!("{what}: scales vs cpu"));
                close(&t(&sg[k]), &t(&s1[k]), 1e-6, 0.0, &format!("{what}: scales vs single"));
            }
        }
        // A device context refuses a host array in any item, or host statistics, before anything
        // is enqueued; the message names the item.
        let inputs = batch_inputs(cpu, Kind::Float, 3);
        let run = QuantRun::new(&inputs, 8, 0, d);
        let mut per = 0u64;
        // SAFETY: a writable counter.
        assert_eq!(unsafe { fj_quantize_batch_stats_slots(8, 3, &mut per) }, FJ_OK);
        let stats = Tensor::full([per as i64], -3, (Kind::Int64, d));
        let host_stats = Tensor::full([per as i64], -3, (Kind::Int64, Device::Cpu));
        let mut feats = run.feats(&inputs);
        feats[1] = feat(&inputs[1].x, inputs[1].layout);
        let items = run.items(&inputs, &feats);
        tch::Cuda::synchronize(0);
        // SAFETY: live tensors; the host arrays must be refused unread.
        unsafe {
            assert_eq!(fj_quantize_batch_async(gpu_ctx, items.as_ptr(), 3, 8, p(&stats), per, s), FJ_ERR_ARG);
            assert!(err().contains("items[1]: x->data") && err().contains("not CUDA device memory"), "{}", err());
            let feats = run.feats(&inputs);
            let items = run.items(&inputs, &feats);
            assert_eq!(fj_quantize_batch_async(gpu_ctx, items.as_ptr(), 3, 8, p(&host_stats), per, s), FJ_ERR_ARG);
            assert!(err().contains("stats"), "{}", err());
        }
        assert_eq!(stats.eq(-3).all().int64_value(&[]), 1, "nothing was enqueued");
        assert!(run.outs.iter().all(|o| o[0].eq(-3).all().int64_value(&[]) == 1), "nothing was enqueued");
        // SAFETY: live contexts, used by no one after this.
        unsafe {
            fj_context_destroy(cpu);
            fj_context_destroy(gpu_ctx);
        }
    }

    /// The codec on a CUDA context (contract §10): `fj_encode` / `fj_decode` stage through host
    /// memory on the caller's stream and must give the CPU context's file and reconstruction bit
    /// for bit; `opts->steps_out` lands in device memory; the `_async` forms are `FJ_ERR_DEVICE`
    /// there (no GPU codec kernels yet), and a host feature given to the device context is refused.
    #[test]
    fn c_abi_codec_on_a_device_context_stages_through_the_host() {
        let Some(d) = gpu() else { return };
        let (cpu, gpu_ctx) = (context(-1), context(0));
        let dev = featjnd_kernels::cuda::Device::get(0).unwrap();
        let own = dev.ctx.new_stream().unwrap();
        let s = own.cu_stream() as *mut c_void;
        for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
            for kind in KINDS {
                let x = feature(&sizes, kind, 950 + i as i64);
                let xd = x.to_device(d);
                let (fx, fxd) = (feat(&x, layout), feat(&xd, layout));
                let mut t = 0u64;
                // SAFETY: a readable feature, a writable counter.
                unsafe { assert_eq!(fj_token_count(&fx, patch as u32, &mut t), FJ_OK) };
                let steps = jnd(&[t as i64], Kind::Float, 960 + i as i64) * 0.05;
                let steps_d = steps.to_device(d);
                let (stored, stored_d) = (steps.zeros_like(), steps_d.zeros_like());
                let mut o = FjEncodeOptions {
                    size: std::mem::size_of::<FjEncodeOptions>() as u32,
                    bits: 8,
                    patch: patch as u32,
                    step_mode: FJ_STEPS_TOKEN,
                    step_coding: FJ_CODING_GRID,
                    per_octave: 0,
                    chunk_symbols: 4096,
                    pad0: 0,
                    steps_out: p(&stored),
                };
                let mut bound = 0u64;
                // SAFETY: live tensors (device or host, as the context takes) of the documented
                // sizes, synchronized with torch's stream; host byte buffers.
                unsafe {
                    assert_eq!(fj_encode_bound(&fx, &o, &mut bound), FJ_OK, "{}", err());
                    let (mut fc, mut fg) = (vec![0u8; bound as usize], vec![1u8; bound as usize]);
                    let (mut lc, mut lg) = (0u64, 0u64);
                    assert_eq!(fj_encode(cpu, &fx, p(&steps), t, &o, fc.as_mut_ptr(), bound, &mut lc, null_mut()), FJ_OK, "{}", err());
                    o.steps_out = p(&stored_d);
                    tch::Cuda::synchronize(0);
                    assert_eq!(fj_encode(gpu_ctx, &fxd, p(&steps_d), t, &o, fg.as_mut_ptr(), bound, &mut lg, s), FJ_OK, "{}", err());
                    assert_eq!(fc[..lc as usize], fg[..lg as usize], "{layout:?} {sizes:?} {kind:?}: the files differ");
                    bits_eq(&stored_d.to_device(Device::Cpu), &stored, "steps_out");
                    let (rc, rg) = (x.zeros_like(), xd.zeros_like());
                    tch::Cuda::synchronize(0);
                    assert_eq!(fj_decode(cpu, fc.as_ptr(), lc, &feat(&rc, layout), null_mut()), FJ_OK, "{}", err());
                    assert_eq!(fj_decode(gpu_ctx, fg.as_ptr(), lg, &feat(&rg, layout), s), FJ_OK, "{}", err());
                    bits_eq(&rg.to_device(Device::Cpu), &rc, "reconstruction");
                    // Not yet on a device context: the sync-free forms.
                    let st = fj_encode_async(gpu_ctx, &fxd, p(&steps_d), t, &o, fg.as_mut_ptr(), bound, &mut lg, s);
                    assert_eq!(st, FJ_ERR_DEVICE, "{}", err());
                    assert_eq!(fj_decode_async(gpu_ctx, fg.as_ptr(), lg, &feat(&rg, layout), s), FJ_ERR_DEVICE, "{}", err());
                    // Host memory given to the device context.
                    o.steps_out = null_mut();
                    let st = fj_encode(gpu_ctx, &fx, p(&steps_d), t, &o, fg.as_mut_ptr(), bound, &mut lg, s);
                    assert_eq!(st, FJ_ERR_ARG, "{}", err());
                    assert!(err().contains("not CUDA device memory"), "{}", err());
                }
            }
        }
        // SAFETY: live contexts, used by no one after this.
        unsafe {
            fj_context_destroy(cpu);
            fj_context_destroy(gpu_ctx);
        }
    }
}
