//! Datasets (under construction).
