"""Classic decision algorithms, run on the environments' numeric core."""
