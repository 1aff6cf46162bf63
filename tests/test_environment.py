"""environment.yml (conda) must list exactly the pip requirements of pyproject.toml."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def expanded(reqs: list[str], extras: dict) -> list[str]:
    """Requirements with the package's own extras (``ranem[viz]``) replaced by what they list."""
    out = []
    for r in reqs:
        own = re.fullmatch(r"ranem\[(\w+)\]", r.replace(" ", ""))
        out += expanded(extras[own.group(1)], extras) if own else [r]
    return out


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = list(project["dependencies"])
    for extra in ("book", "test", "lite"):
        reqs += expanded(extras[extra], extras)
    return {r.replace(" ", "") for r in reqs}


def conda_pip_requirements() -> tuple[set[str], list]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return {r.replace(" ", "") for r in pip if not r.startswith("-e")}, deps


def test_environment_matches_pyproject():
    conda, _ = conda_pip_requirements()
    assert conda == pyproject_requirements()


def test_environment_has_python_and_pip():
    _, deps = conda_pip_requirements()
    plain = [d for d in deps if isinstance(d, str)]
    assert "pip" in plain
    python = [d for d in plain if d.startswith("python")]
    assert python and ">=3.11" in python[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
