//! The studies of the mission: matched-NRMSE perturbation (issue 4), attribution pictures and
//! FeatJND-guided token-wise quantization, on the bundled tasks; `featjnd run` drives them.

pub mod attrib;
pub mod perturb;
pub mod plot;
pub mod quant;
pub mod run;
pub mod tasks;
