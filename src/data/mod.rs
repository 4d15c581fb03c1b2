//! Data for the task models: the procedural shapes scenes (detection and instance segmentation
//! with exact boxes and masks) and the real sets available without internet (DESIGN §5).
pub mod deepforest;
pub mod fashion_mnist;
pub mod shapes;
pub mod stardist;
