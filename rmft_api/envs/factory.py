"""Build one scenario's numeric instance from the env config and the scenario seed alone."""

from __future__ import annotations

import numpy as np

from rmft_api.config import EnvConfig
from rmft_api.envs.bandit import make_bandit
from rmft_api.envs.base import Instance
from rmft_api.envs.online import make_full_info


def make_instance(env: EnvConfig, seed: int) -> Instance:
    """The instance of scenario `seed`: a BanditInstance (mab, ns) or FullInfoInstance (fol).

    Deterministic: the same (env, seed) always gives identical means and reward tables.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    if env.kind == "fol":
        return make_full_info(env, rng)
    return make_bandit(env, rng)
