//! Chat-server simulator.
