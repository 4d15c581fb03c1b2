//! The studies of the mission: matched-NRMSE perturbation (issue 4), attribution pictures and
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
use crate::Result;
use tch::Tensor;

/// Per held-out batch of `task`: the split-point features, their FeatJND maps and the clean
/// tail outputs (no gradients).
#[allow(clippy::type_complexity)]
pub fn held_out_features(
    task: &tasks::Task,
    split: &str,
    est: &JndEstimator,
) -> Result<(Vec<Vec<Tensor>>, Vec<Vec<Tensor>>, Vec<Vec<Tensor>>)> {
    let model = task.model.as_ref();
    tch::no_grad(|| {
        let (mut fs, mut js, mut cs) = (Vec::new(), Vec::new(), Vec::new());
        for x in &task.eval {
            let f = model.head(x, split)?;
            js.push(est.forward(&f)?);
            cs.push(model.tail(&f, split)?);
            fs.push(f);
        }
        Ok((fs, js, cs))
    })
}
