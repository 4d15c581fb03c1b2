//! The shapes detector and instance segmenter: a small ResNet backbone (stride 2 stem, three
//! stages at strides 4, 8, 16), an FPN (P2–P4), and CenterNet-style dense heads at stride 4:
//!
//! * `heat` `[B, K, H/4, W/4]`: per-class centre heat-map logits;
//! * `box`  `[B, 4, H/4, W/4]`: `log(w/4)`, `log(h/4)` and the sub-cell centre offset (x, y);
//! * `mask` `[B, 3, H/4, W/4]`: foreground logit and, per pixel, the offset to its instance's
//!   centre in units of 16 px (instances are grouped by these votes, see `eval::detect`).
//!
//! The FPN has 1×1 laterals and nearest-neighbour top-down sums; the tail fuses the levels with a
//! 3×3 conv each, upsampled and summed. Input `[B, 3, H, W]` RGB in `[0, 1]` with H, W multiples of 16. Split points: `stem`
//! (stem + first stage, one tensor `[B, c1, H/4, W/4]`) and `fpn` (the level list P2, P3, P4).

use super::layers::{ConvBn, Stage};
use super::{expect_feats, unknown_split, SplitModel, TaskKind};
use crate::Result;
use serde::{Deserialize, Serialize};
use tch::nn::{self, VarStore};
use tch::{Device, Tensor};

pub const ARCH: &str = "shapes-det";
pub const SPLITS: [&str; 2] = ["stem", "fpn"];
/// Output stride of the dense heads.
pub const STRIDE: i64 = 4;
/// Unit of the centre-vote offsets, in pixels.
pub const VOTE_UNIT: f64 = 16.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetConfig {
    /// Widths of the stem and the three stages.
    pub widths: [i64; 4],
    /// FPN and head width.
    pub fpn: i64,
    pub classes: i64,
}

impl Default for DetConfig {
    fn default() -> Self {
        DetConfig { widths: [16, 24, 32, 48], fpn: 32, classes: crate::data::shapes::ShapeClass::COUNT as i64 }
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, k, nn::ConvConfig { padding: k / 2, ..Default::default() })
}

pub struct ShapesDetector {
    pub vs: VarStore,
    pub config: DetConfig,
    stem: ConvBn,
    stages: Vec<Stage>,
    lateral: Vec<nn::Conv2D>,
    fuse: Vec<nn::Conv2D>,
    det_trunk: nn::Conv2D,
    det_out: nn::Conv2D,
    mask_trunk: nn::Conv2D,
    mask_out: nn::Conv2D,
}

impl ShapesDetector {
    pub fn new(config: DetConfig, device: Device) -> ShapesDetector {
        let vs = VarStore::new(device);
        let r = vs.root();
        let [w0, w1, w2, w3] = config.widths;
        let f = config.fpn;
        let stem = ConvBn::new(&r / "stem", 3, w0, 3, 2);
        let stages =
            vec![Stage::new(&r / "stage1", w0, w1, 1, 2), Stage::new(&r / "stage2", w1, w2, 1, 2), Stage::new(&r / "stage3", w2, w3, 1, 2)];
        let lateral = [w1, w2, w3].iter().enumerate().map(|(i, &c)| conv(&r / "lateral" / i, c, f, 1)).collect();
        let fuse = (0..3).map(|i| conv(&r / "fuse" / i, f, f, 3)).collect();
        let det_trunk = conv(&r / "det_trunk", f, f, 3);
        let mut det_out = conv(&r / "det_out", f, config.classes + 4, 1);
        let mask_trunk = conv(&r / "mask_trunk", f, f, 3);
        let mask_out = conv(&r / "mask_out", f, 3, 1);
        let mut mask_out = mask_out;
        // CenterNet's prior: small output weights and heat-map logits at -2.19 (p = 0.1), so the
        // focal loss starts sane instead of saturating on a few confident wrong cells.
        tch::no_grad(|| {
            for c in [&mut det_out, &mut mask_out] {
                let _ = c.ws.normal_(0.0, 0.01);
            }
            if let Some(b) = det_out.bs.as_mut() {
                let _ = b.narrow(0, 0, config.classes).fill_(-2.19);
            }
        });
        ShapesDetector { vs, config, stem, stages, lateral, fuse, det_trunk, det_out, mask_trunk, mask_out }
    }

    /// Stem + stage 1 (the `stem` split).
    fn early(&self, x: &Tensor, train: bool) -> Tensor {
        self.stages[0].forward_t(&self.stem.forward_t(x, train).relu(), train)
    }

    /// Stages 2–3 and the FPN from the `stem` feature: `[P2, P3, P4]`.
    fn fpn(&self, c1: &Tensor, train: bool) -> Vec<Tensor> {
        let c2 = self.stages[1].forward_t(c1, train);
        let c3 = self.stages[2].forward_t(&c2, train);
        let p4 = c3.apply(&self.lateral[2]);
        let p3 = c2.apply(&self.lateral[1]) + p4.upsample_nearest2d([c2.size()[2], c2.size()[3]], None, None);
        let p2 = c1.apply(&self.lateral[0]) + p3.upsample_nearest2d([c1.size()[2], c1.size()[3]], None, None);
        // No 3×3 smoothing here: the tail's per-level 3×3 convs (`fuse`) do that work, which keeps
        // the stride-4 cost low on a CPU.
        vec![p2, p3, p4]
    }

    /// Dense heads from the level list: `[heat, box, mask]`.
    fn heads(&self, levels: &[Tensor]) -> Vec<Tensor> {
        let size = [levels[0].size()[2], levels[0].size()[3]];
        let mut y = levels[0].apply(&self.fuse[0]);
        for (p, c) in levels[1..].iter().zip(&self.fuse[1..]) {
            // Out of place on purpose: tch's `+=` is an in-place add, which autograd must not see.
            #[allow(clippy::assign_op_pattern)]
            {
                y = y + p.apply(c).upsample_bilinear2d(size, false, None, None);
            }
        }
        let y = y.relu();
        let det = y.apply(&self.det_trunk).relu().apply(&self.det_out);
        let k = self.config.classes;
        let mask = y.apply(&self.mask_trunk).relu().apply(&self.mask_out);
        vec![det.narrow(1, 0, k), det.narrow(1, k, 4), mask]
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        self.heads(&self.fpn(&self.early(x, train), train))
    }
}

impl SplitModel for ShapesDetector {
    fn arch(&self) -> &str {
        ARCH
    }
    fn task(&self) -> TaskKind {
        TaskKind::DetectionSegmentation
    }
    fn split_points(&self) -> Vec<String> {
        SPLITS.iter().map(|s| s.to_string()).collect()
    }
    fn head(&self, x: &Tensor, split: &str) -> Result<Vec<Tensor>> {
        match split {
            "stem" => Ok(vec![self.early(x, false)]),
            "fpn" => Ok(self.fpn(&self.early(x, false), false)),
            _ => Err(unknown_split(self, split)),
        }
    }
    fn tail(&self, feats: &[Tensor], split: &str) -> Result<Vec<Tensor>> {
        match split {
            "stem" => {
                expect_feats(feats, 1, split)?;
                Ok(self.heads(&self.fpn(&feats[0], false)))
            }
            "fpn" => {
                expect_feats(feats, 3, split)?;
                Ok(self.heads(feats))
            }
            _ => Err(unknown_split(self, split)),
        }
    }
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.forward_t(x, false))
    }
}
