"""The command line (cli.py): fusedtrain info, fusedtrain train on digits,
save / resume / plot; every flag's bad values exit 2 with one line naming
the flag before anything runs; --save / --plot checked before training; a
resumed run refuses flags that contradict its checkpoint and continues
bitwise as if it had not stopped; a closed stdout pipe ends it quietly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fusedtrain as ft
from fusedtrain import cli

from conftest import assert_state_dict_equal


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == ft.__version__ and "simd" in info and "blas" in info


def test_cli_default_reaches_097_on_digits(capsys):
    pytest.importorskip("sklearn")
    # on all the training data (the default holds 10% out for validation: 0.969)
    assert cli.main(["train", "--quiet", "--validation-split", "0"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].split()[0])
    assert acc >= 0.97, out


_NORM_KERNELS = pytest.mark.skipif(
    not hasattr(ft.ops, "batch_norm_forward") or not hasattr(ft.ops, "layer_norm_forward"),
    reason="the normalisation kernels (fusedtrain.ops.batch_norm_forward, ...) are not built")


@_NORM_KERNELS
def test_cli_batch_norm_reaches_097_on_digits(capsys):
    pytest.importorskip("sklearn")
    # 10 epochs at lr 0.01: about 0.98 in a few seconds
    assert cli.main(["train", "--quiet", "--validation-split", "0", "--norm", "batch",
                     "--epochs", "10", "--lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "relu batchnorm" in out
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


# ---------------------------------------------------------------------------
# every flag is checked before anything runs
# ---------------------------------------------------------------------------
def _run(argv, capsys):
    """(exit status, stdout, stderr) of ``fusedtrain <argv>`` run in-process."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


BAD_VALUES = [
    ("--batch-size", "0"), ("--batch-size", "-3"), ("--batch-size", "1.5"),
    ("--epochs", "0"), ("--epochs", "-5"), ("--epochs", "x"),
    ("--dropout", "-0.5"), ("--dropout", "nan"), ("--dropout", "1"), ("--dropout", "inf"),
    ("--threads", "99999999999"), ("--threads", "0"), ("--threads", "-1"),
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "fast"),
    ("--momentum", "-0.1"), ("--momentum", "1"), ("--momentum", "nan"),
    ("--weight-decay", "-1"), ("--weight-decay", "inf"), ("--weight-decay", "nan"),
    ("--l1", "-1"), ("--l1", "nan"), ("--l1", "inf"),
    ("--clip-norm", "0"), ("--clip-norm", "-1"), ("--clip-norm", "nan"), ("--clip-norm", "inf"),
    ("--accumulate-steps", "0"), ("--accumulate-steps", "-2"),
    ("--seed", "-1"), ("--seed", str(2**64)), ("--seed", "0.5"),
    ("--hidden", "0"), ("--hidden", "12,x"), ("--hidden", ""), ("--hidden", "16,"),
    ("--hidden", "-4"),
    ("--optimizer", "nope"), ("--schedule", "nope"), ("--activation", "softmax"),
    ("--activation", "swish"), ("--data", "cifar"), ("--norm", "group"), ("--norm", ""),
    ("--save", ""), ("--resume", ""), ("--plot", ""), ("--data-dir", ""),
]


@pytest.mark.parametrize("flag,value", BAD_VALUES, ids=[f"{f}={v}" for f, v in BAD_VALUES])
def test_bad_flag_value_exits_2_naming_the_flag(flag, value, capsys):
    code, out, err = _run(["train", flag, value], capsys)
    assert code == 2
    assert f"argument {flag}" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fusedtrain train: error: argument")
    assert out == ""  # nothing loaded, nothing trained


@pytest.mark.parametrize("argv,flag", [
    (["--momentum", "0.5"], "--momentum"),                          # adam has none
    (["--optimizer", "adagrad", "--momentum", "0.5"], "--momentum"),
    (["--data-dir", "."], "--data-dir"),                            # digits takes none
])
def test_contradicting_flags_exit_2_naming_the_flag(argv, flag, capsys):
    code, out, err = _run(["train"] + argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"fusedtrain train: error: argument {flag}") and len(err.splitlines()) == 1


def test_choices_come_from_the_registries():
    from fusedtrain import optim, schedules
    from fusedtrain._ops_dense import ACTIVATIONS

    parser = cli._parser()
    for name in optim.NAMES:
        assert parser.parse_args(["train", "--optimizer", name]).optimizer == name
    for name in schedules.NAMES:
        assert parser.parse_args(["train", "--schedule", name]).schedule == name
    for name in ACTIVATIONS:
        if name != "softmax":
            assert parser.parse_args(["train", "--activation", name]).activation == name


@pytest.mark.parametrize("argv", [
    ["train", "--batch-size", "0"],
    ["train", "--threads", "99999999999"],
    ["train", "--dropout", "nan"],
])
def test_bad_flags_through_the_real_entry_point(argv, tmp_path):
    done = subprocess.run([sys.executable, "-m", "fusedtrain"] + argv, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"fusedtrain train: error: argument {argv[1]}")


# ---------------------------------------------------------------------------
# outputs are checked before training
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--save", "--plot"])
@pytest.mark.parametrize("where", ["a directory", "a missing directory", "a file as directory"])
def test_unwritable_output_is_refused_before_training(flag, where, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    path = {"a directory": tmp_path,
            "a missing directory": tmp_path / "missing" / "out",
            "a file as directory": tmp_path / "file" / "out"}[where]
    t0 = time.perf_counter()
    code, out, err = _run(["train", "--epochs", "30", flag, str(path)], capsys)
    assert code == 2
    assert out == ""  # no start line, no epoch: nothing was loaded or trained
    assert err.startswith(f"fusedtrain train: error: argument {flag}: ") and str(path) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert time.perf_counter() - t0 < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_save_into_a_read_only_directory_is_refused_before_training(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = _run(["train", "--save", str(ro / "c.npz")], capsys)
    finally:
        ro.chmod(0o700)
    assert code == 2 and out == "" and "argument --save" in err


# ---------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------
# small and quick: digits, a 16-wide hidden layer, 12 optimizer steps an epoch
SMALL = ["train", "--quiet", "--hidden", "16", "--batch-size", "128", "--dropout", "0.1",
         "--lr", "0.01"]


def _load(path):
    from fusedtrain.nn import Dense, Dropout, Sequential

    model = Sequential([Dense(64, 16, activation="relu"), Dropout(0.1), Dense(16, 10)])
    model.load(path)
    return model


def _interrupted(argv, path, capsys, after=2):
    """Run ``argv --save path`` and stop it (Ctrl-C) right after epoch
    ``after``'s checkpoint was written; returns stderr."""
    save = cli._SaveEachEpoch.on_epoch_end

    def interrupt(self, epoch, logs, model):
        save(self, epoch, logs, model)
        if epoch + 1 == after:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli._SaveEachEpoch, "on_epoch_end", interrupt)
        code, out, err = _run(argv + ["--save", str(path)], capsys)
    assert code == 128 + signal.SIGINT
    return err


@pytest.fixture
def two_epochs(tmp_path, capsys):
    """A checkpoint of SMALL --epochs 4 stopped after its second epoch."""
    pytest.importorskip("sklearn")
    path = tmp_path / "two.npz"
    err = _interrupted(SMALL + ["--epochs", "4"], path, capsys)
    assert err == f"fusedtrain: interrupted; {path} holds epoch 2: continue with --resume {path}\n"
    assert _load(path).train_state["epoch"] == 2
    return path


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine", "step"])
def test_interrupted_and_resumed_is_bitwise_an_uninterrupted_run(schedule, tmp_path, capsys):
    pytest.importorskip("sklearn")
    flags = SMALL + ["--schedule", schedule, "--epochs", "4"]
    full, part, resumed = (str(tmp_path / n) for n in ("full.npz", "part.npz", "resumed.npz"))
    assert _run(flags + ["--save", full], capsys)[0] == 0
    _interrupted(flags, part, capsys)

    code, out, err = _run(flags + ["--resume", part, "--save", resumed], capsys)
    assert code == 0, err
    assert f"Adam lr=0.01 {schedule}, 2 epochs (resumed at epoch 2)" in out

    a, b = _load(full), _load(resumed)
    assert b.train_state["epoch"] == 4 and b.train_state["step"] == a.train_state["step"]
    assert a.param_arena.tobytes() == b.param_arena.tobytes()
    assert_state_dict_equal(a.optimizer.state_dict(), b.optimizer.state_dict())


def test_resume_without_optimizer_flags_uses_the_checkpoints(two_epochs, capsys):
    # --lr 0.01 started the run; the default --lr is something else
    code, out, err = _run(["train", "--quiet", "--hidden", "16", "--batch-size", "128",
                           "--dropout", "0.1", "--epochs", "3", "--resume", str(two_epochs)], capsys)
    assert code == 0, err
    assert "Adam lr=0.01 cosine, 1 epochs (resumed at epoch 2)" in out


def test_resume_with_the_checkpoints_own_values_is_accepted(two_epochs, capsys):
    code, out, err = _run(SMALL + ["--optimizer", "adam", "--schedule", "cosine",
                                   "--weight-decay", "0", "--l1", "0", "--epochs", "3",
                                   "--resume", str(two_epochs)], capsys)
    assert code == 0, err
    assert "Adam lr=0.01 cosine" in out


@pytest.mark.parametrize("argv,flag,theirs", [
    (["--optimizer", "sgd"], "--optimizer", "adam"),
    (["--optimizer", "adamw"], "--optimizer", "adam"),
    (["--lr", "0.1"], "--lr", "lr=0.01"),
    (["--weight-decay", "0.01"], "--weight-decay", "weight_decay=0.0"),
    (["--l1", "0.001"], "--l1", "l1=0.0"),
    (["--momentum", "0.9"], "--momentum", "no momentum"),
    (["--schedule", "constant"], "--schedule", "cosine"),
    (["--optimizer", "sgd", "--lr", "0.1"], "--optimizer", "adam"),
])
def test_resume_refuses_flags_that_contradict_the_checkpoint(two_epochs, argv, flag, theirs,
                                                             capsys):
    before = two_epochs.read_bytes()
    code, out, err = _run(SMALL[:-2] + ["--epochs", "4", "--resume", str(two_epochs),
                                        "--save", str(two_epochs)] + argv, capsys)
    assert code == 2
    assert err.startswith(f"fusedtrain train: error: argument {flag}: ")
    assert theirs in err and len(err.splitlines()) == 1
    assert "test accuracy" not in out and "epochs (resumed" not in out  # not trained
    assert two_epochs.read_bytes() == before


@pytest.mark.parametrize("epochs", ["1", "2"])
def test_resume_refuses_epochs_not_above_those_done(two_epochs, epochs, capsys):
    code, out, err = _run(SMALL + ["--epochs", epochs, "--resume", str(two_epochs)], capsys)
    assert code == 2 and "test accuracy" not in out
    assert err.startswith("fusedtrain train: error: argument --epochs: ")
    assert "done 2 epochs" in err and len(err.splitlines()) == 1


def test_resume_refuses_another_batch_size(two_epochs, capsys):
    argv = [a if a != "128" else "64" for a in SMALL]
    code, out, err = _run(argv + ["--epochs", "4", "--resume", str(two_epochs)], capsys)
    assert code == 2 and "--batch-size" in err and "test accuracy" not in out


@pytest.mark.parametrize("argv", [["--hidden", "12"], ["--activation", "tanh"], ["--dropout", "0.2"]])
def test_resume_refuses_another_model(two_epochs, argv, capsys):
    code, out, err = _run(SMALL + ["--epochs", "4", "--resume", str(two_epochs)] + argv, capsys)
    assert code == 2 and "test accuracy" not in out
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04" + b"\0" * 40])
def test_corrupt_or_missing_resume_file_is_one_line(content, tmp_path, capsys):
    pytest.importorskip("sklearn")
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    for target in (path, tmp_path / "missing.npz", tmp_path):
        code, out, err = _run(SMALL + ["--epochs", "2", "--resume", str(target)], capsys)
        assert code == 2 and "test accuracy" not in out
        assert err.startswith("fusedtrain: error: ") and len(err.splitlines()) == 1
        assert str(target) in err


def test_non_finite_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    pytest.importorskip("sklearn")
    path = tmp_path / "c.npz"
    code, out, err = _run(["train", "--quiet", "--hidden", "16", "--epochs", "2", "--optimizer",
                           "sgd", "--lr", "1e200", "--save", str(path)], capsys)
    assert code == 1 and "test accuracy" not in out
    assert err.startswith("fusedtrain: error: fit: non-finite") and len(err.splitlines()) == 1
    assert err.rstrip().endswith("nothing was saved") and not path.exists()


# ---------------------------------------------------------------------------
# pipes
# ---------------------------------------------------------------------------
def test_info_into_a_closed_pipe_exits_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fusedtrain", "info"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write (as `| head` that exited)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert err == ""


def test_info_piped_to_head(tmp_path):
    done = subprocess.run(f"set -o pipefail; {sys.executable} -m fusedtrain info | head -1",
                          shell=True, executable="/bin/bash", capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.stdout == "{\n" and "Traceback" not in done.stderr
    assert done.returncode in (0, 128 + signal.SIGPIPE)  # whether head left before the write


# ---------------------------------------------------------------------------
# --version, --help, --validation-split, --on-nonfinite, the MNIST message
# ---------------------------------------------------------------------------
def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"fusedtrain {ft.__version__}"


def test_help_shows_every_default_and_the_hidden_format():
    parser = cli._parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    for action in train._actions:
        if action.dest != "help":
            assert "default" in (action.help or ""), action.option_strings
    text = train.format_help()
    assert "256,128" in text and "W1,W2" in text


def _quick(extra):
    return ["train", "--hidden", "16", "--epochs", "2", "--batch-size", "256"] + extra


def test_validation_split_reports_validation_and_the_test_set_at_the_end(capsys, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _run(_quick([]), capsys)
    lines = out.splitlines()
    assert code == 0 and "1294 train / 144 validation / 359 test" in lines[0]
    epochs = [l for l in lines if l.startswith("epoch ")]
    assert len(epochs) == 2 and all("val_loss=" in l and len(l) < 80 for l in epochs)
    assert lines[-1].startswith("test accuracy")
    code, out, _ = _run(_quick(["--validation-split", "0", "--quiet"]), capsys)
    assert code == 0 and "1438 train / 359 test" in out and "val_" not in out


@pytest.mark.parametrize("value", ["1", "-0.1", "x", "nan"])
def test_bad_validation_split(value, capsys):
    code, _, err = _run(["train", "--validation-split", value], capsys)
    assert code == 2 and "argument --validation-split" in err


def test_on_nonfinite(capsys):
    pytest.importorskip("sklearn")
    code, _, err = _run(_quick(["--lr", "1e38", "--quiet"]), capsys)
    assert code == 1 and "non-finite" in err
    code, out, _ = _run(_quick(["--lr", "1e38", "--on-nonfinite", "skip"]), capsys)
    assert code == 0 and ("nonfinite_steps=" in out or "skipped=" in out)
    code, _, err = _run(["train", "--on-nonfinite", "maybe"], capsys)
    assert code == 2 and "argument --on-nonfinite" in err


def test_missing_mnist_says_where_it_comes_from(tmp_path, capsys):
    code, _, err = _run(["train", "--data", "mnist", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "downloads nothing" in err and "mnist.npz" in err and "idx3-ubyte" in err
    assert "https://" in err


# ---------------------------------------------------------------------------
# --norm
# ---------------------------------------------------------------------------
def test_norm_builds_the_layers():
    args = cli._parser().parse_args(["train", "--hidden", "16,8", "--dropout", "0.1"])
    assert args.norm == "none"
    for norm, want in [
        ("none", ["Dense", "Dropout", "Dense", "Dropout", "Dense"]),
        ("batch", ["Dense", "BatchNorm", "Dropout", "Dense", "BatchNorm", "Dropout", "Dense"]),
        ("layer", ["Dense", "LayerNorm", "Dropout", "Dense", "LayerNorm", "Dropout", "Dense"]),
    ]:
        args.norm = norm
        model = cli._build_model(args, 64, 10)
        assert [type(l).__name__ for l in model.layers] == want
        dense = model.layers[0]
        if norm == "batch":  # the activation moves into the BatchNorm, its bias replaces Dense's
            assert dense.activation == "linear" and not dense.use_bias
            assert model.layers[1].activation == "relu"
        else:  # LayerNorm normalises the activated outputs
            assert dense.activation == "relu" and dense.use_bias


def _load_norm(path):
    from fusedtrain.nn import load_model

    return load_model(path)


@_NORM_KERNELS
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_interrupted_and_resumed_is_bitwise_an_uninterrupted_run(norm, tmp_path, capsys):
    pytest.importorskip("sklearn")
    flags = SMALL + ["--norm", norm, "--epochs", "3"]
    full, part, resumed = (str(tmp_path / n) for n in ("full.npz", "part.npz", "resumed.npz"))
    assert _run(flags + ["--save", full], capsys)[0] == 0
    _interrupted(flags, part, capsys)
    code, out, err = _run(flags + ["--resume", part, "--save", resumed], capsys)
    assert code == 0, err
    a, b = _load_norm(full), _load_norm(resumed)
    assert a.param_arena.tobytes() == b.param_arena.tobytes()
    assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
    assert len(a.named_buffers()) == (2 if norm == "batch" else 0)
    for (_, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
        assert x.tobytes() == y.tobytes()
    assert_state_dict_equal(a.optimizer.state_dict(), b.optimizer.state_dict())


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_resume_refuses_another_norm(two_epochs, norm, capsys):
    before = two_epochs.read_bytes()
    code, out, err = _run(SMALL + ["--epochs", "4", "--resume", str(two_epochs), "--save",
                                   str(two_epochs), "--norm", norm], capsys)
    assert code == 2 and "test accuracy" not in out and "epochs (resumed" not in out
    assert err.startswith("fusedtrain train: error: argument --norm: ")
    assert "--norm none" in err and f"--norm {norm}" in err and len(err.splitlines()) == 1
    assert two_epochs.read_bytes() == before


@_NORM_KERNELS
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_resume_of_a_batch_norm_run_refuses_another_norm(norm, tmp_path, capsys):
    pytest.importorskip("sklearn")
    path = tmp_path / "bn.npz"
    _interrupted(SMALL + ["--norm", "batch", "--epochs", "3"], path, capsys, after=1)
    before = path.read_bytes()
    argv = SMALL + ["--epochs", "3", "--resume", str(path)]
    if norm != "none":
        argv += ["--norm", norm]
    code, out, err = _run(argv, capsys)
    assert code == 2 and "test accuracy" not in out
    assert err.startswith("fusedtrain train: error: argument --norm: ")
    assert "--norm batch" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before
