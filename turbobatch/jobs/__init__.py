"""Driver side of turbobatch: spec, inputs, plan, resume state, scheduling, progress, CLI."""
