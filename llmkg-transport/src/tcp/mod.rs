//! The TCP + Noise transport (in progress).
