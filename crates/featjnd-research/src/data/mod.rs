//! Data for the task models: the procedural shapes scenes (detection and instance segmentation
//! with exact boxes and masks) and the real sets available without internet (design §5).
pub mod corpus;
pub mod deepforest;
pub mod fashion_mnist;
pub mod photos;
pub mod shapes;
pub mod stardist;

/// The running tight box of pixels added one by one (masks are built pixel by pixel here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extent {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

impl Extent {
    /// No pixel yet.
    pub const EMPTY: Extent = Extent { x0: usize::MAX, y0: usize::MAX, x1: 0, y1: 0 };

    #[inline]
    pub fn add(&mut self, x: usize, y: usize) {
        *self = Extent { x0: self.x0.min(x), y0: self.y0.min(y), x1: self.x1.max(x), y1: self.y1.max(y) };
    }

    /// COCO `[x, y, w, h]` in pixel edges (a single pixel is 1×1). Call only after an `add`.
    pub fn xywh(&self) -> [f32; 4] {
        [self.x0 as f32, self.y0 as f32, (self.x1 - self.x0 + 1) as f32, (self.y1 - self.y0 + 1) as f32]
    }
}
