//! The deterministic network simulator (in progress).
