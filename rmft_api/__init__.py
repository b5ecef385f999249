"""rmft-api: Iterative Regret-Minimization Fine-Tuning orchestrator."""

__version__ = "0.1.0"
