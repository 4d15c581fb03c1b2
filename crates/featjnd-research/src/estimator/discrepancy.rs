//! Task discrepancies `D_t(h(f), h(f + δ))` per sample (design §1), differentiable in the
//! perturbed outputs. Zero when the outputs are equal; about 1 when the task output is lost.

use crate::model::TaskKind;
use tch::{Kind, Tensor};

/// Bernoulli KL `KL(p ‖ q)` from logits, elementwise.
fn kl_bernoulli(clean_logit: &Tensor, logit: &Tensor) -> Tensor {
    let p = clean_logit.sigmoid();
    let (lp, lq) = (clean_logit.log_sigmoid(), logit.log_sigmoid());
    let (lp1, lq1) = (clean_logit.neg().log_sigmoid(), logit.neg().log_sigmoid());
    &p * (lp - lq) + (p.neg() + 1.0) * (lp1 - lq1)
}

fn per_sample_sum(t: &Tensor) -> Tensor {
    t.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float)
}

/// `[B]` discrepancies between the clean outputs and the perturbed ones.
///
/// * Classification: `KL(softmax(clean) ‖ softmax(perturbed))`.
/// * Detection + instance segmentation (`[heat, box, mask]`): the Bernoulli KL of the centre
///   heat-maps normalised by the clean heat mass (≈ per object), plus the box regression L1
///   weighted by the clean objectness, plus the foreground KL (mean per cell) and the centre-vote
///   L1 weighted by the clean foreground.
pub fn discrepancy(task: TaskKind, clean: &[Tensor], pert: &[Tensor]) -> Tensor {
    match task {
        TaskKind::Classification => {
            let lp = clean[0].log_softmax(-1, Kind::Float);
            let lq = pert[0].log_softmax(-1, Kind::Float);
            (lp.exp() * (lp - lq)).sum_dim_intlist(-1, false, Kind::Float)
        }
        TaskKind::DetectionSegmentation => {
            let eps = 1e-6;
            let heat_mass = per_sample_sum(&clean[0].sigmoid()) + eps;
            let d_heat = per_sample_sum(&kl_bernoulli(&clean[0], &pert[0])) / heat_mass;
            let obj = clean[0].sigmoid().amax([1i64].as_slice(), true);
            let d_box = per_sample_sum(&((&pert[1] - &clean[1]).abs() * &obj)) / (per_sample_sum(&obj) + eps);
            let (cf, pf) = (clean[2].narrow(1, 0, 1), pert[2].narrow(1, 0, 1));
            let cells = cf.size()[2] * cf.size()[3];
            let d_fg = per_sample_sum(&kl_bernoulli(&cf, &pf)) / cells as f64;
            let fgp = cf.sigmoid();
            let d_vote =
                per_sample_sum(&((pert[2].narrow(1, 1, 2) - clean[2].narrow(1, 1, 2)).abs() * &fgp)) / (per_sample_sum(&fgp) + eps);
            d_heat + d_box + d_fg + d_vote
        }
        TaskKind::Detection => crate::eval::nanodet::discrepancy(clean, pert),
        // A user's dense tail is compared output by output as its sidecar says
        // (`study::dense::discrepancy`, through `study::user::task_discrepancy`); without that,
        // the relative squared error of all outputs.
        TaskKind::Dense => {
            let num: Tensor = clean.iter().zip(pert).map(|(c, p)| per_sample_sum(&(p - c).square())).sum();
            let den: Tensor = clean.iter().map(|c| per_sample_sum(&c.square())).sum();
            num / (den + 1e-12)
        }
    }
}
