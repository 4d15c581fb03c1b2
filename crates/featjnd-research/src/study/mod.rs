//! The studies of the mission: matched-NRMSE perturbation (design §1), attribution pictures and
//! FeatJND-guided token-wise quantization, on the bundled tasks; `featjnd run` drives them.

pub mod attrib;
pub mod dense;
pub mod oracle;
pub mod perturb;
pub mod plot;
pub mod quant;
pub mod real_gt;
pub mod resample;
pub mod run;
pub mod stats;
pub mod tasks;
pub mod user;

use crate::estimator::JndEstimator;
use crate::train::Progress;
use crate::Result;
use std::cell::OnceCell;
use tch::Tensor;

/// The held-out batches of one split, computed once for every study of the split (the
/// matched-NRMSE study and the quantization study): per batch, the split-point features, their
/// FeatJND maps and the clean tail outputs (no gradients), and, on first use, the task's measured
/// sensitivity (the oracle's gradient probes, the expensive part).
pub struct HeldOut {
    pub feats: Vec<Vec<Tensor>>,
    pub jnds: Vec<Vec<Tensor>>,
    /// The maps of the quantization rules ([`JndEstimator::forward_for_steps`]: the trained
    /// shape); the same tensors as `jnds` where the estimator is not sharpened.
    pub step_jnds: Vec<Vec<Tensor>>,
    pub clean: Vec<Vec<Tensor>>,
    sensitivity: OnceCell<Vec<Vec<Tensor>>>,
}

impl HeldOut {
    /// Runs the head, the estimator and the tail on every held-out batch of `task`.
    pub fn new(task: &tasks::Task, split: &str, est: &JndEstimator) -> Result<HeldOut> {
        let model = task.model.as_ref();
        tch::no_grad(|| {
            let (mut feats, mut jnds, mut step_jnds, mut clean) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for x in &task.eval {
                let f = model.head(x, split)?;
                let (j, steps) = est.forward_and_steps(&f)?;
                jnds.push(j);
                step_jnds.push(steps);
                clean.push(model.tail(&f, split)?);
                feats.push(f);
            }
            Ok(HeldOut { feats, jnds, step_jnds, clean, sensitivity: OnceCell::new() })
        })
    }

    /// Per batch, the measured sensitivity of every level (`oracle::task_sensitivity`, batch `b`
    /// numbering the probes), probed on the first call and kept for the others.
    pub fn sensitivity(&self, task: &tasks::Task, split: &str, quiet: bool) -> Result<&[Vec<Tensor>]> {
        if let Some(g) = self.sensitivity.get() {
            return Ok(g);
        }
        let mut pb = Progress::new(self.feats.len() as u64, &format!("{} {split} oracle", task.id.name()), quiet);
        let mut g = Vec::with_capacity(self.feats.len());
        for (b, (f, c)) in self.feats.iter().zip(&self.clean).enumerate() {
            g.push(oracle::task_sensitivity(task, split, f, c, b)?);
            pb.step(format!("batch {b}"));
        }
        pb.finish();
        Ok(self.sensitivity.get_or_init(|| g))
    }
}
