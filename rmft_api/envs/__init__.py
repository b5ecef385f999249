"""Decision environments: a numeric core (hidden truth, pre-drawn rewards) and a text layer."""
