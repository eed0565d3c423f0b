//! Native code generation with Cranelift (under construction).
