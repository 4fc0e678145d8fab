"""A clone works with nothing beside it: the shipped data is complete and nothing points outside the repo."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import DATA, GSM8K_TEST, GSM8K_TRAIN, MATH500_TEST, REPO, need_data
from tokenskip.task.data import load_problems

#: (file, rows, SHA-256): the numbers data/README.md states.
SHIPPED = [(GSM8K_TRAIN, 7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
           (GSM8K_TEST, 1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
           (MATH500_TEST, 500, "233941a3491b977fa8a38219fccef14f6c15497a786e17c00a9e279e7976df9c")]

#: Text that names a place outside the repository (the build machine's layout, a sibling folder).
OUTSIDE = re.compile(r"\.\./shared|/work/|\bREFERENCE\.md|\bVLLM-CPU\.md|parents\[[2-9]\]|/home/\w|/root/")

#: Folders that are not part of a clone (build outputs, caches, environments).
NOT_SOURCE = {".git", ".venv", ".cache", "runs", "__pycache__", ".pytest_cache", "build", "dist"}


def project_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (what a commit would hold); a plain walk without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        files = [REPO / f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*") if p.is_file()]
    return [p for p in files if p.is_file() and not NOT_SOURCE.intersection(p.relative_to(REPO).parts)
            and not any(part.startswith(".venv") or part.endswith(".egg-info") for part in p.relative_to(REPO).parts)]


@pytest.mark.parametrize("path,rows,sha256", SHIPPED, ids=lambda v: v.name if isinstance(v, Path) else None)
def test_shipped_data_complete(path, rows, sha256):
    need_data(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert sum(1 for line in path.open(encoding="utf-8") if line.strip()) == rows
    assert (path.parent / "LICENSE").is_file() and "MIT License" in (path.parent / "LICENSE").read_text()
    readme = (DATA / "README.md").read_text()
    assert sha256 in readme and f"{rows:,}" in readme


def test_shipped_data_parses_as_the_benchmarks():
    gsm = load_problems("gsm8k", str(need_data(GSM8K_TEST)))
    assert len(gsm) == 1319 and gsm[0].answer == "18"  # Janet's ducks
    math = load_problems("math500", str(need_data(MATH500_TEST)))
    assert len(math) == 500 and math[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert len(load_problems("gsm8k", str(need_data(GSM8K_TRAIN)))) == 7473


def test_need_data_fails_instead_of_skipping(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="shipped data file missing"):
        need_data(tmp_path / "absent.jsonl")


def test_nothing_refers_outside_the_repository():
    offenders = []
    for path in project_files():
        if path.suffix == ".jsonl" or path.suffix in (".png", ".safetensors", ".gguf"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_paths_stay_inside_and_shipped_ones_exist(recipe):
    """Every local path a recipe names resolves inside the repository; the demo's all exist."""
    def paths(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("data", "compressed", "adapter", "run_dir", "out") and isinstance(v, str):
                    yield k, v
                yield from paths(v)
        elif isinstance(node, list):
            for v in node:
                yield from paths(v)

    cfg = yaml.safe_load(recipe.read_text())
    found = list(paths(cfg))
    assert found, f"{recipe.name}: no paths found (recipe layout changed?)"
    for key, value in found:
        if key == "data" and not value.endswith((".jsonl", ".json")) and not value.startswith((".", "/")):
            continue  # a Hub id
        resolved = (REPO / value).resolve()
        assert resolved.is_relative_to(REPO.resolve()), f"{recipe.name}: {key}: {value} leaves the repository"
        if recipe.name.startswith("demo-") and key == "data":
            assert resolved.is_file(), f"{recipe.name}: {key}: {value} does not exist"


def _make_dry(*args: str) -> str:
    r = subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent/venv", *args], cwd=REPO,
                       capture_output=True, text=True, check=True)
    return next(line for line in r.stdout.splitlines() if "torch" in line and "pip install" in line)


def test_make_torch_variables():
    """Default: the pinned torch from pip's configured indexes; TORCH_INDEX / TORCH change it."""
    assert _make_dry().endswith('pip install -q "torch==2.13.0"')
    cpu = _make_dry("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert cpu.endswith('pip install -q --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"')
    assert _make_dry("TORCH=torch>=2.6").endswith('pip install -q "torch>=2.6"')


def test_one_model_cache_for_cli_make_and_tests(monkeypatch, tmp_path):
    from tokenskip.engines.models import cache_dir

    monkeypatch.delenv("TOKENSKIP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "tokenskip"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tokenskip"
    monkeypatch.setenv("TOKENSKIP_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    # make exports no cache folder of its own, so `make demo` and a direct CLI run share one conversion
    r = subprocess.run(["make", "-n", "-p", "-f", "Makefile", "clean"], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"})
    assert "TOKENSKIP_CACHE =" not in r.stdout and "TOKENSKIP_CACHE :=" not in r.stdout
