"""The package as a user installs it: a wheel built from the repository, installed into a fresh virtual
environment, imports, explains, and writes nothing inside site-packages (data and cache go to
~/.cache/ranem there, not next to the installed package).

The fresh environment gets only the wheel; its dependencies (torch, timm, ...) are borrowed from the
test run's own environment through a .pth file, so the test needs no download and takes seconds.
"""
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USE = r"""
import sys, timm, torch, ranem
from ranem import config
assert "site-packages" in ranem.__file__, ranem.__file__
model = timm.create_model("test_resnet", num_classes=3).eval()
x = torch.randn(2, 3, 32, 32)
maps = ranem.explain("saliency", model, x)
scores = ranem.faithfulness(model, x, maps, steps=4)
assert maps.shape == (2, 32, 32) and scores.shape == (2,)
print(config.data_root(), config.cache_dir())
"""


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_an_installed_wheel_imports_explains_and_writes_nothing_in_site_packages(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "ranem", src / "ranem", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(src)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("ranem-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    (fresh_site / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # torch, timm, ...
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(fresh_site), str(wheel)],
                   check=True)
    before = files_under(fresh_site)
    env = {k: v for k, v in os.environ.items() if k not in ("RANEM_DATA", "RANEM_CACHE", "PYTHONPATH")}
    env["HOME"] = str(tmp_path / "home")
    run = subprocess.run([str(python), "-c", USE], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout.split()
    assert files_under(fresh_site) == before  # nothing written next to the installed package
    data_root, cache = (Path(p) for p in out[-2:])
    assert data_root == tmp_path / "home" / ".cache" / "ranem" / "data"
    assert fresh_site not in cache.parents
