"""The project's set-up files agree with each other."""
import re
import tomllib

import yaml

from kit import paths

ROOT = paths.root()


def lock_pins():
    return {l.strip() for l in (ROOT / "requirements-lock.txt").read_text().splitlines() if l.strip() and not l.startswith("#")}


def test_environment_yml_pins_equal_the_lock_file():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) == lock_pins()
    assert "python=3.11" in env["dependencies"]


def test_lock_pins_the_recipe():
    pins = lock_pins()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "jupyter-book==1.0.4.post1", "nbval==0.11.0", "pycocotools==2.0.11"):
        assert pin in pins
    assert all("==" in p for p in pins)


def test_pyproject_states_ranges_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        assert "==" not in dep, dep
    torch_range = next(d for d in project["dependencies"] if d.startswith("torch>"))
    assert torch_range == "torch>=2.4"  # the GPU machines run torch 2.11


def test_readme_starts_with_the_two_commands_and_ci_runs_the_tests():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make \w+", readme, flags=re.M)
    assert commands[:2] == ["make book", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book:", "test:", "lab:", "study:", "bench:", "setup:"):
        assert re.search(rf"^{target}", makefile, flags=re.M), target
