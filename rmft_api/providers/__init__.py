"""Model providers behind one async, batch-shaped interface; resolved from spec strings."""
