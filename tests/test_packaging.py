"""Every install path works, and the package imports exactly what it declares.

The wheel test builds the real wheel and installs it into a new venv, then runs the CLI from a
directory outside the source tree, so prompts and configs must come from the package itself.
Third-party dependencies reach that venv through a .pth line to this venv's site-packages (the
suite stays offline); a full install from the index is `make wheel-check`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Declared but reached only through another package, never imported by ours.
USED_INDIRECTLY = {
    "python-multipart": "starlette's form parser, behind the sandbox's file uploads",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return canonical(match[0])


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core dependencies, extra → its dependencies) from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {requirement_name(r) for r in reqs}
        for extra, reqs in project["optional-dependencies"].items()
    }
    return core, extras


def distribution_of(module: str) -> str | None:
    dists = metadata.packages_distributions().get(module)
    return canonical(dists[0]) if dists else None


def imported_by_the_package() -> dict[str, set[str]]:
    """Top-level third-party module → the package files that import it."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "rmft_api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "rmft_api" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def closure(names: set[str]) -> set[str]:
    """`names` and everything they require (unconditional requirements), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(requirement_name(r) for r in requires if "extra ==" not in r)
    return seen


def test_the_declared_dependencies_are_exactly_what_the_package_imports() -> None:
    core, extras = declared()
    runtime = core | set().union(*(deps for name, deps in extras.items() if name != "dev"))
    imports = imported_by_the_package()
    undeclared = {}
    used: set[str] = set()
    for module, files in imports.items():
        dist = distribution_of(module)
        if dist is None:  # not installed here (an optional extra): the module name must match
            dist = canonical(module)
        used.add(dist)
        if dist not in runtime:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = runtime - used - set(USED_INDIRECTLY)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"


def test_importing_the_cli_needs_only_the_core_dependencies() -> None:
    """`rmft-api --help` must work on a core install: no torch, transformers, starlette, ..."""

    def top_level_modules(code: str) -> set[str]:
        code += "; import json, sys; print(json.dumps(sorted(sys.modules)))"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        return {name.split(".")[0] for name in json.loads(out.stdout)}

    # What the interpreter itself loads at start (site hooks such as setuptools' .pth) is not ours.
    modules = top_level_modules("import rmft_api.cli") - top_level_modules("pass")
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m != "rmft_api"}
    core, _ = declared()
    allowed = closure(core)
    outside = {m: distribution_of(m) for m in third_party if distribution_of(m) not in allowed}
    # Modules of no distribution (a dependency's private extension module, `_cffi_backend`
    # style) come with their owner; anything that maps to a distribution must be a core one.
    outside = {m: d for m, d in outside.items() if d is not None}
    assert not outside, f"importing rmft_api.cli pulls in non-core packages: {outside}"
    assert "torch" not in modules and "transformers" not in modules


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding the freshly built wheel (dependencies from this venv, see above)."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    # pip builds in the tree: a build/ left by an earlier build would carry files that setup.py
    # no longer ships (or does not ship yet) into this wheel.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    build = ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build, str(ROOT)],
        check=True,
        cwd=tmp,
        capture_output=True,
    )
    (wheel,) = dist.glob("rmft_api-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "outer-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def run_in(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(venv / "bin" / "rmft-api"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"rmft-api {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_wheel_carries_its_prompts_and_configs(wheel_venv: Path, tmp_path: Path) -> None:
    code = (
        "import rmft_api, rmft_api.shipped as s; "
        "print(rmft_api.__file__); print(s.prompts_dir()); print(s.default_config())"
    )
    out = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert all(line.startswith(str(wheel_venv)) for line in out), out
    names = {p.name for p in (Path(out[1]) / "templates").glob("*.txt")}
    assert names == {p.name for p in (ROOT / "prompts" / "templates").glob("*.txt")}
    shipped = {p.name for p in Path(out[2]).parent.glob("*.toml")}
    assert shipped == {p.name for p in (ROOT / "configs").glob("*.toml")}
    # A shipped config's own templates (templates_dir relative to it) ship beside it.
    own = ROOT / "configs" / "smollm2" / "templates"
    inside = Path(out[2]).parent / "smollm2" / "templates"
    assert {p.name for p in inside.glob("*.txt")} == {p.name for p in own.glob("*.txt")} != set()
    args = ("prompt-preview", "-c", "smollm2", "--context", "buttons")
    preview = run_in(wheel_venv, tmp_path, *args)
    assert "Which one button gives the most reward?" in preview  # the config's own question
    assert "ANSWER: The best button is" in preview  # its reply prefix


def test_the_installed_wheel_runs_outside_the_source_tree(wheel_venv: Path, tmp_path: Path) -> None:
    from tests.bootstrap_fixture import speaking_model

    # A base that speaks the answer format, so the fine-tuned policy of iteration 1 can be
    # selected from (a random tiny model forfeits every round).
    model = speaking_model()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_in(wheel_venv, elsewhere, "baselines", "--env", "mab", "--json")
    baselines = json.loads(out.strip().splitlines()[-1])
    assert baselines
    preview = run_in(wheel_venv, elsewhere, "prompt-preview", "--env", "mab")
    assert "ANSWER" in preview

    (elsewhere / "run.toml").write_text(
        f"""
[run]
seed = 5
runs_dir = "runs"
[env]
kind = "mab"
num_arms = 3
horizon = 4
gap = 0.6
[prompt]
transcript = "single_turn"
history = "summarized"
[parse]
max_reprompts = 0
fallback = "forfeit"
[policy]
spec = "agent/ucb1"
device = "cpu"
[policy.sampling]
temperature = 0.7
max_tokens = 32
[rollout]
scenarios = 4
rollouts_per_scenario = 2
[selection]
k = 1
[iterations]
count = 2
[eval]
scenarios = 3
baselines = ["uniform"]
[trainer]
kind = "lora"
base_model = "{model}"
epochs = 1
batch_size = 4
r = 4
lora_alpha = 8
cpu_threads = 1
"""
    )
    run_in(wheel_venv, elsewhere, "run", "run.toml", "--name", "wheel")
    (run_dir,) = (elsewhere / "runs").iterdir()
    status = run_in(wheel_venv, elsewhere, "status", str(run_dir), "--json")
    report = json.loads(status.strip().splitlines()[-1])
    assert [row["policy"] for row in report["iterations"]][:1] == ["agent/ucb1"]
    assert len(report["iterations"]) == 2
    assert all(row["job_status"] == "succeeded" for row in report["iterations"])
    assert report["final"]["policy"].startswith(f"hf/{model}+")
