"""The development package finds the repository without looking at where its own file is."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_controller_dev import repo


def checkout(folder: Path, name: str = "router-controller") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    return folder


def test_found_by_walking_up_from_a_subfolder(tmp_path: Path) -> None:
    root = checkout(tmp_path / "checkout")
    deep = root / "tests" / "e2e"
    deep.mkdir(parents=True)
    assert repo.find(deep) == root.resolve()


def test_another_projects_pyproject_is_passed_over(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    inner = checkout(tmp_path / "vendored", name="something-else")
    assert repo.find(inner) == root.resolve()


def test_the_environment_names_it(tmp_path: Path) -> None:
    root = checkout(tmp_path / "elsewhere")
    assert repo.find(Path("/"), str(root)) == root.resolve()


def test_a_wrong_environment_value_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(repo.RepoNotFound, match=f"{repo.ENV}=.* is not a router-controller"):
        repo.find(tmp_path, str(tmp_path))


def test_outside_a_checkout_the_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(repo.RepoNotFound) as caught:
        repo.find(tmp_path)
    assert "run from the repository" in str(caught.value)
    assert repo.ENV in str(caught.value)


def test_this_checkout_is_found() -> None:
    root = repo.root()
    assert (root / "operator" / "router_controller" / "__init__.py").is_file()
