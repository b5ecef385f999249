"""The paper's first experiment: Iterative RMFT on a small Transformer with numeric input/output.

Every module but `config` imports torch: the CLI imports them inside the `numeric` command only.
"""
