"""The command line (cli.py): fusedtrain info, fusedtrain train on digits,
save / resume / plot, bad arguments."""

import json
import os

import pytest

import fusedtrain as ft
from fusedtrain import cli


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == ft.__version__ and "simd" in info and "blas" in info


def test_cli_default_reaches_097_on_digits(capsys):
    pytest.importorskip("sklearn")
    assert cli.main(["train", "--quiet"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].split()[0])
    assert acc >= 0.97, out


def test_cli_save_resume_and_plot(tmp_path, capsys):
    pytest.importorskip("sklearn")
    ck, png = str(tmp_path / "c.npz"), str(tmp_path / "c.png")
    args = ["train", "--quiet", "--hidden", "32", "--batch-size", "128", "--dropout", "0.1"]
    assert cli.main(args + ["--epochs", "2", "--save", ck]) == 0
    assert cli.main(args + ["--epochs", "3", "--resume", ck, "--plot", png]) == 0
    out = capsys.readouterr().out
    assert "resumed at epoch 2" in out and os.path.exists(png)


def test_cli_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "nope"])
    with pytest.raises(SystemExit):
        cli.main(["train", "--hidden", "12,x"])
    assert cli.main(["train", "--data", "mnist", "--data-dir", "/nonexistent"]) == 2
    assert "mnist" in capsys.readouterr().err.lower()
