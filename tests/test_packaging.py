"""The package metadata: pyproject.toml's license, authors and classifiers
agree with the LICENSE file."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _project():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_file_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c)" in text
    assert "fusedtrain contributors" in text
    project = _project()
    assert project["license"] == {"text": "MIT"}
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]
    assert project["authors"] == [{"name": "fusedtrain contributors"}]


def test_classifiers_and_no_made_up_urls():
    project = _project()
    assert len(set(project["classifiers"])) == len(project["classifiers"])
    assert "urls" not in project  # none exists yet
    assert any(c.startswith("Programming Language :: Python :: 3") for c in project["classifiers"])
