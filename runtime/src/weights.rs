//! Weights (under construction).
