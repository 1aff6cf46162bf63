"""The README's quickstart ("Explain your own timm model") runs as printed, in quick mode."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Explain your own timm model", 1)
    assert len(section) == 2, "the README lost its quickstart section"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block, "the quickstart section has no python code block"
    return block.group(1)


@pytest.mark.slow
def test_readme_quickstart_runs_verbatim(tmp_path):
    env = {**os.environ, "RANEM_MODE": "quick", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    run = subprocess.run([sys.executable, "-c", quickstart_code()], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["Ra-NEM", "Saliency", "RISE"]
    scores = [float(line.split()[-1]) for line in lines]
    assert all(-1 <= v <= 1 for v in scores)  # AUC_ins - AUC_del of probabilities lies in [-1, 1]
    assert (tmp_path / "my_ranem.safetensors").is_file() and (tmp_path / "my_ranem.json").is_file()
