//! Small building blocks shared by the models trained here (ResNet-style basic blocks).

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// 3×3 (or k×k) convolution without bias followed by batch norm.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> ConvBn {
        let cfg = nn::ConvConfig { stride, padding: k / 2, bias: false, ..Default::default() };
        ConvBn { conv: nn::conv2d(&p / "conv", c_in, c_out, k, cfg), bn: nn::batch_norm2d(&p / "bn", c_out, Default::default()) }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), train)
    }
}

/// ResNet v1 basic block: two 3×3 conv-bn, identity or 1×1 projection shortcut, ReLU after the sum.
#[derive(Debug)]
pub struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    proj: Option<ConvBn>,
}

impl BasicBlock {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> BasicBlock {
        let proj = (stride != 1 || c_in != c_out).then(|| ConvBn::new(&p / "proj", c_in, c_out, 1, stride));
        BasicBlock { a: ConvBn::new(&p / "a", c_in, c_out, 3, stride), b: ConvBn::new(&p / "b", c_out, c_out, 3, 1), proj }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.b.forward_t(&self.a.forward_t(x, train).relu(), train);
        let s = match &self.proj {
            Some(p) => p.forward_t(x, train),
            None => x.shallow_clone(),
        };
        (y + s).relu()
    }
}

/// A stage: `n` basic blocks, the first with the stage's stride.
#[derive(Debug)]
pub struct Stage(Vec<BasicBlock>);

impl Stage {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, n: usize, stride: i64) -> Stage {
        Stage(
            (0..n)
                .map(|i| {
                    let (ci, s) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
                    BasicBlock::new(&p / i, ci, c_out, s)
                })
                .collect(),
        )
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for b in &self.0 {
            y = b.forward_t(&y, train);
        }
        y
    }
}
