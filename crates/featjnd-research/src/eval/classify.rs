//! Classification metrics on logits: top-k accuracy against labels, agreement with the clean
//! prediction, and the KL divergence from the clean output distribution.

use tch::{Kind, Tensor};

/// Number of rows whose label is among the `k` largest logits.
pub fn topk_correct(logits: &Tensor, labels: &Tensor, k: i64) -> i64 {
    let (_, idx) = logits.topk(k, -1, true, true);
    idx.eq_tensor(&labels.unsqueeze(-1)).any_dim(-1, false).sum(Kind::Int64).int64_value(&[])
}

/// Number of rows whose arg-max equals the clean arg-max.
pub fn agreement(logits: &Tensor, clean: &Tensor) -> i64 {
    logits.argmax(-1, false).eq_tensor(&clean.argmax(-1, false)).sum(Kind::Int64).int64_value(&[])
}

/// Per-row `KL(softmax(clean) ‖ softmax(logits))` in nats, `[B]`.
pub fn kl_to_clean(logits: &Tensor, clean: &Tensor) -> Tensor {
    let lp = clean.log_softmax(-1, Kind::Float);
    let lq = logits.log_softmax(-1, Kind::Float);
    (lp.exp() * (&lp - lq)).sum_dim_intlist(-1, false, Kind::Float)
}

/// Running sums of the classification measures over batches.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClassStats {
    pub n: i64,
    pub top1: i64,
    pub top5: i64,
    pub agree: i64,
    pub kl_sum: f64,
}

impl ClassStats {
    /// Adds a batch; `labels` may be absent (unlabelled photos), `clean` too (clean runs).
    pub fn add(&mut self, logits: &Tensor, labels: Option<&Tensor>, clean: Option<&Tensor>) {
        self.n += logits.size()[0];
        if let Some(y) = labels {
            self.top1 += topk_correct(logits, y, 1);
            self.top5 += topk_correct(logits, y, 5.min(logits.size()[1]));
        }
        if let Some(c) = clean {
            self.agree += agreement(logits, c);
            self.kl_sum += kl_to_clean(logits, c).sum(Kind::Double).double_value(&[]);
        }
    }
    pub fn top1(&self) -> f64 {
        self.top1 as f64 / self.n.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5 as f64 / self.n.max(1) as f64
    }
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.n.max(1) as f64
    }
    pub fn kl(&self) -> f64 {
        self.kl_sum / self.n.max(1) as f64
    }
}
