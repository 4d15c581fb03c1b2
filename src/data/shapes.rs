//! Procedural shapes scenes (filled in by the shapes work).
