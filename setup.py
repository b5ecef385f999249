"""Packaging beyond pyproject.toml: the top-level prompts/ and configs/ ship inside the package.

They live at the top of the repository (where people edit them); a built wheel carries them as
`rmft_api/prompts/` and `rmft_api/configs/`, where rmft_api/shipped.py finds them with
importlib.resources. A source checkout or editable install reads them in place.
"""

from setuptools import find_packages, setup

# Data-only packages (no __init__.py): package name → source directory, file patterns.
SHIPPED = {
    "rmft_api.prompts": ("prompts", ["README.md"]),
    "rmft_api.prompts.templates": ("prompts/templates", ["*.txt"]),
    "rmft_api.prompts.scenarios": ("prompts/scenarios", ["*.toml"]),
    "rmft_api.configs": ("configs", ["*.toml"]),
    # A config's own templates (prompt.templates_dir, relative to the config file).
    "rmft_api.configs.smollm2.templates": ("configs/smollm2/templates", ["*.txt"]),
}

setup(
    packages=[*find_packages(include=["rmft_api", "rmft_api.*"]), *SHIPPED],
    package_dir={name: source for name, (source, _) in SHIPPED.items()},
    package_data={
        "rmft_api": ["py.typed"],
        **{name: patterns for name, (_, patterns) in SHIPPED.items()},
    },
)
