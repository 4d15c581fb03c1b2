//! Fashion-MNIST IDX loader (filled in by the loader work).
