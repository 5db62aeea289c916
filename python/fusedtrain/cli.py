"""The ``fusedtrain`` command line.

    fusedtrain train [options]   train an MLP on digits (default) or MNIST
    fusedtrain info              version and build information
    fusedtrain --version         the version

What it guarantees:

- Every option is checked before anything is loaded or trained. A bad value
  exits with status 2 and argparse's one-line message naming the option
  (``fusedtrain train: error: argument --batch-size: ...``).
- ``--save`` and ``--plot`` are checked to be writable before training, so a
  bad path never costs a trained model.
- ``--resume`` continues the checkpoint's run exactly: the same flags, stopped
  and resumed, give bitwise the parameters of a run that never stopped.
  Optimizer flags left out take the checkpoint's values; given ones that
  contradict the checkpoint are refused (see ``fusedtrain train --help``).
- Any other failure (data or checkpoint that cannot be read, a path that
  cannot be written, a training step that goes non-finite) prints one line
  ``fusedtrain: error: ...`` to stderr and exits with status 2 (1 for a
  failure during training), never a traceback. Output into a closed pipe
  (``fusedtrain info | head -1``) ends the program quietly.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import sys
import time

from . import data, optim, schedules
from ._version import __version__
from .callbacks import Callback
from .nn import ACTIVATIONS, BatchNorm, Dense, Dropout, LayerNorm, Sequential
from .train import ON_NONFINITE

__all__ = ["main"]

# The optimizer flags take default None on the parser, so that a resumed run
# can tell a flag the user gave from one left out; these are the values a new
# run uses for the ones left out.
DEFAULTS = {"optimizer": "adam", "lr": 3e-3, "momentum": 0.9, "weight_decay": 0.0, "l1": 0.0,
            "schedule": "cosine"}
#: optimizers that take --momentum
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")
#: the flag of each optimizer hyperparameter the command line sets
HYPER_FLAGS = {"lr": "--lr", "momentum": "--momentum", "weight_decay": "--weight-decay", "l1": "--l1"}
#: --norm's values and the layer class each inserts after the hidden Dense layers
NORMS = {"none": None, "batch": "BatchNorm", "layer": "LayerNorm"}
#: where MNIST can be had (fusedtrain downloads nothing)
MNIST_SOURCES = ("Keras's mnist.npz: https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
                 "mnist.npz; the four IDX files (train-images-idx3-ubyte.gz, "
                 "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                 "t10k-labels-idx1-ubyte.gz): https://storage.googleapis.com/cvdf-datasets/mnist/")


class _Refused(Exception):
    """A run the flags describe that cannot go ahead: one line, exit 2."""


class _SaveEachEpoch(Callback):
    """--save: the checkpoint is rewritten (atomically) after every epoch, so
    that a run which stops (Ctrl-C, a crash, a non-finite step) resumes from
    its last complete epoch exactly as if it had not stopped."""

    def __init__(self, path):
        self.path = path
        self.epochs = None  # the epoch count the file holds

    def on_epoch_end(self, epoch, logs, model):
        model.save(self.path)
        self.epochs = epoch + 1

    def where(self) -> str:
        if self.epochs is None:
            return "nothing was saved"
        return f"{self.path} holds epoch {self.epochs}: continue with --resume {self.path}"


# ---------------------------------------------------------------------------
# argument types: each returns the value or raises ArgumentTypeError, which
# argparse reports as "argument --flag: <message>" and exits 2
# ---------------------------------------------------------------------------
def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; received {text!r}") from None


def _integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; received {text!r}") from None


def _int_in(low, high=None, why="", bounds=None):
    bounds = bounds or (f"in [{low}, {high}]" if high is not None else f">= {low}")

    def check(text):
        v = _integer(text)
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}{why}; received {text!r}")
        return v
    check.__name__ = "int"
    return check


def _real_in(low, high=None, low_open=False, high_open=True):
    """A finite number in the interval (NaN and infinities refused)."""
    lo = "(" if low_open else "["
    if high is None:
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        what = f"a number in {lo}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(text):
        v = _number(text)
        ok = math.isfinite(v) and (v > low if low_open else v >= low)
        if high is not None:
            ok = ok and (v < high if high_open else v <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}; received {text!r}")
        return v
    check.__name__ = "number"
    return check


def _hidden(text):
    """``256,256`` -> [256, 256]; ``none`` -> [] (no hidden layer)."""
    if text.strip().lower() == "none":
        return []
    parts = text.split(",")
    try:
        sizes = [int(s) for s in parts]
    except ValueError:
        sizes = None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths >= 1 like 256,256 (or none); received {text!r}")
    return sizes


def _fraction(text):
    """A validation fraction in [0, 1) (0: no validation)."""
    v = _number(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); received {text!r}")
    return v


def _path(text):
    if not text:
        raise argparse.ArgumentTypeError("expected a file path; received ''")
    return text


def _hidden_activations():
    # softmax normalises a layer's outputs to sum to 1: an output activation
    # (the loss applies it), not a hidden one
    return [a for a in ACTIVATIONS if a != "softmax"]


def _load_data(args):
    """(train, test) of --data; an MNIST that is not there says where it
    comes from."""
    if args.data == "digits":
        return data.load_digits(seed=args.seed)
    try:
        return data.load_mnist(args.data_dir or ".")
    except FileNotFoundError as exc:
        raise _Refused(f"argument --data-dir: {_message(exc)}. fusedtrain downloads nothing: "
                       f"get MNIST as {MNIST_SOURCES}, then pass --data-dir DIR (the directory "
                       "holding them) or --data-dir PATH/mnist.npz") from None


def _holdout(x, y, fraction, seed):
    """(x_train, y_train), (x_val, y_val) or None: a fraction of the
    training data drawn with the seed (the same split on every run of the
    same flags, so a resumed run sees it again)."""
    if not fraction:
        return (x, y), None
    n_val = max(1, int(round(len(x) * fraction)))
    if n_val >= len(x):
        raise _Refused(f"argument --validation-split: {fraction} leaves no training samples")
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return (np.ascontiguousarray(x[train]), y[train]), (x[val], y[val])


def _max_threads() -> int:
    return os.cpu_count() or 1


def _parser():
    p = argparse.ArgumentParser(prog="fusedtrain", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fusedtrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train", help="train an MLP with the fused kernels",
        description="Train an MLP on digits (default) or MNIST with the fused kernels.",
        epilog=(
            "Resuming (--resume CKPT): the run goes on from the checkpoint's epoch up to --epochs "
            "(which must be above it), with the checkpoint's optimizer, its state and the "
            "learning-rate curve the run started on. --optimizer, --lr, --momentum, "
            "--weight-decay, --l1 and --schedule left out take the checkpoint's values; given, "
            "they must equal them (the run is refused otherwise: start a new run without "
            "--resume to change them). Give the same model and data flags (--data, --data-dir, --validation-split, "
            "--hidden, --activation, --norm, --dropout, --seed, --batch-size, --accumulate-steps) as the "
            "run that wrote the checkpoint. A run with --save that stops (Ctrl-C, a crash) "
            "resumed with the same flags gives bitwise the parameters of a run that never "
            "stopped. A finished run resumed with a larger --epochs stretches its schedule over "
            "the new total from where it stands (the learning rate of a decaying schedule goes "
            "back up to the longer curve's value)."))
    t.add_argument("--data", choices=["digits", "mnist"], default="digits",
                   help="data set (default: digits; needs scikit-learn)")
    t.add_argument("--data-dir", type=_path,
                   help="directory with the four MNIST IDX files (raw or .gz) or mnist.npz, or "
                        "the path of an mnist.npz (--data mnist only; nothing is downloaded; "
                        "default: the current directory)")
    t.add_argument("--hidden", type=_hidden, default=[256, 256], metavar="W1,W2,...",
                   help="hidden layer widths, comma-separated: 512 is one hidden layer, 256,128 "
                        "two, none a linear model (default: 256,256)")
    t.add_argument("--activation", default="relu", choices=_hidden_activations(),
                   help="hidden layers' activation (default: relu)")
    t.add_argument("--norm", choices=list(NORMS), default="none",
                   help="normalisation after each hidden Dense layer: batch puts a BatchNorm "
                        "after it, which applies --activation fused (the Dense then has neither "
                        "activation nor bias: BatchNorm's bias takes its place); layer puts a "
                        "LayerNorm after the Dense and its --activation (LayerNorm normalises "
                        "the activated outputs: the kernels fuse no activation after it); none "
                        "for neither (default: none)")
    t.add_argument("--optimizer", choices=optim.NAMES,
                   help=f"optimizer (default: {DEFAULTS['optimizer']})")
    t.add_argument("--lr", type=_real_in(0.0, low_open=True),
                   help=f"learning rate the schedule starts from (default: {DEFAULTS['lr']})")
    t.add_argument("--momentum", type=_real_in(0.0, 1.0),
                   help=f"momentum of {' and '.join(MOMENTUM_OPTIMIZERS)} "
                        f"(default: {DEFAULTS['momentum']})")
    t.add_argument("--weight-decay", type=_real_in(0.0),
                   help=f"weight decay (default: {DEFAULTS['weight_decay']:g})")
    t.add_argument("--l1", type=_real_in(0.0), help=f"L1 penalty (default: {DEFAULTS['l1']:g})")
    t.add_argument("--dropout", type=_real_in(0.0, 1.0), default=0.0,
                   help="dropout rate after each hidden layer, in [0, 1) (default: 0)")
    t.add_argument("--epochs", type=_int_in(1), default=30,
                   help="total epochs; a resumed run continues up to it (default: 30)")
    t.add_argument("--batch-size", type=_int_in(1), default=64,
                   help="samples per batch (default: 64)")
    t.add_argument("--validation-split", type=_fraction, default=0.1, metavar="FRACTION",
                   help="fraction of the training data held out (drawn with --seed) for the "
                        "per-epoch val_ metrics; the test set is evaluated once, at the end; 0 "
                        "for none (default: 0.1)")
    t.add_argument("--clip-norm", type=_real_in(0.0, low_open=True),
                   help="clip the gradients to this global L2 norm before each step (default: off)")
    t.add_argument("--accumulate-steps", type=_int_in(1), default=1,
                   help="batches whose gradients are summed per optimizer step (default: 1)")
    t.add_argument("--schedule", choices=schedules.NAMES,
                   help=f"learning-rate schedule over the whole run (default: {DEFAULTS['schedule']})")
    t.add_argument("--seed", type=_int_in(0, 2**64 - 1, bounds="in [0, 2**64)"), default=0,
                   help="seed of the data split, the initial weights, dropout and shuffling (default: 0)")
    t.add_argument("--save", metavar="CKPT", type=_path,
                   help="write a checkpoint here after every epoch, replacing it atomically "
                        "(checked to be writable before training; default: none)")
    t.add_argument("--resume", metavar="CKPT", type=_path,
                   help="continue from this checkpoint (see below; default: a new run)")
    t.add_argument("--plot", metavar="PNG", type=_path,
                   help="write the loss/accuracy curves here (needs matplotlib; default: none)")
    t.add_argument("--threads", type=_int_in(1, _max_threads(), " (this machine's CPU count)"),
                   help="kernel threads (default: all cores)")
    t.add_argument("--on-nonfinite", choices=ON_NONFINITE, default="raise",
                   help="a step whose loss or gradients hold inf or NaN: stop with an error "
                        "(raise), skip the step and go on (skip; the epoch line counts them), or "
                        "apply it (ignore) (default: raise)")
    t.add_argument("--flush-denormal", action="store_true",
                   help="flush subnormal optimizer states to zero (faster, not bit-exact IEEE; "
                        "default: off)")
    t.add_argument("--quiet", action="store_true",
                   help="no per-epoch output (default: a progress bar on a terminal and a line "
                        "per epoch)")
    sub.add_parser("info", help="print version and build information")
    return p


# ---------------------------------------------------------------------------
# fusedtrain info
# ---------------------------------------------------------------------------
def _info():
    import fusedtrain

    print(json.dumps(fusedtrain.build_info(), indent=2))  # "blas": what _core links
    return 0


# ---------------------------------------------------------------------------
# fusedtrain train
# ---------------------------------------------------------------------------
def _check_flags(args):
    """Cross-option checks that need no file."""
    if args.data_dir is not None and args.data != "mnist":
        raise _Refused(f"argument --data-dir: applies to --data mnist only; --data is {args.data}")
    name = args.optimizer or (None if args.resume else DEFAULTS["optimizer"])
    if args.momentum is not None and name is not None and name not in MOMENTUM_OPTIMIZERS:
        raise _Refused(f"argument --momentum: applies to {' and '.join(MOMENTUM_OPTIMIZERS)} "
                       f"only; the optimizer is {name}")


def _check_outputs(args):
    """--save and --plot can be written (before any training)."""
    from ._archive import check_writable

    for flag, path in (("--save", args.save), ("--plot", args.plot)):
        if path is None:
            continue
        try:
            check_writable(path)
        except (OSError, ValueError) as exc:
            raise _Refused(f"argument {flag}: {_message(exc)}") from None
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise _Refused('argument --plot: needs matplotlib (pip install "fusedtrain[examples]")')


def _build_model(args, n_features, n_classes):
    widths = [n_features] + args.hidden
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        if args.norm == "batch":
            layers += [Dense(a, b, activation=None, bias=False),
                       BatchNorm(b, activation=args.activation)]
        elif args.norm == "layer":
            layers += [Dense(a, b, activation=args.activation), LayerNorm(b)]
        else:
            layers.append(Dense(a, b, activation=args.activation))
        if args.dropout > 0:
            layers.append(Dropout(args.dropout))
    layers.append(Dense(widths[-1], n_classes))
    return Sequential(layers, seed=args.seed)


def _layers(config) -> str:
    """A model's layers in short, from their (JSON) config."""
    def one(entry):
        try:
            kind, cfg = entry
            if kind == "Dense":
                return f"Dense({cfg['in_features']}, {cfg['out_features']}, {cfg['activation']})"
            if kind == "Dropout":
                return f"Dropout({cfg['p']})"
            if kind == "BatchNorm":
                return f"BatchNorm({cfg['num_features']}, {cfg['activation']})"
            if kind == "LayerNorm":
                return f"LayerNorm({cfg['num_features']})"
            return str(kind)
        except (TypeError, ValueError, KeyError):
            return repr(entry)
    return " ".join(one(e) for e in config)


def _new_optimizer(args, model):
    name = args.optimizer or DEFAULTS["optimizer"]
    hyper = {k: getattr(args, k) for k in ("lr", "weight_decay", "l1")}
    if name in MOMENTUM_OPTIMIZERS:
        hyper["momentum"] = args.momentum
    hyper = {k: DEFAULTS[k] if v is None else v for k, v in hyper.items()}
    return optim.get(name)(model.parameters(), **hyper), hyper["lr"]


def _resume(args, model, steps_per_epoch):
    """Load --resume into ``model``; refuse flags that contradict it.
    Returns (epochs done, the learning rate the schedule starts from)."""
    path = args.resume
    theirs = _checkpoint_norm(path)
    if theirs is not None and theirs != args.norm:
        raise _Refused(f"argument --norm: the checkpoint {path} was trained with --norm {theirs}; "
                       f"received --norm {args.norm} (give --norm {theirs} to continue it)")
    meta = model.load(path)  # raises ValueError naming the file, changing nothing
    if isinstance(meta, dict) and isinstance(meta.get("layers"), list):
        # the layout is checked by load; the layers' settings (activation,
        # dropout rate) are not part of it
        mine = json.loads(json.dumps(model.config()))
        if meta["layers"] != mine:
            raise _Refused(f"argument --resume: the checkpoint {path} holds the layers "
                           f"{_layers(meta['layers'])}; --hidden, --activation, --norm and "
                           f"--dropout make {_layers(mine)}")
    state, opt = model.train_state, model.optimizer
    if state is None or opt is None:
        raise _Refused(f"argument --resume: the checkpoint {path} holds no training state (written before "
                       "training?); train without --resume")
    done, taken = int(state["epoch"]), int(state["step"])
    if args.epochs <= done:
        raise _Refused(f"argument --epochs: the checkpoint {path} has done {done} epochs; "
                       f"--epochs is the total, so it must be above {done} (received {args.epochs})")
    if taken != done * steps_per_epoch:
        raise _Refused(
            f"argument --batch-size: the checkpoint {path} took {taken} optimizer steps in {done} "
            f"epochs; --batch-size {args.batch_size} and --accumulate-steps "
            f"{args.accumulate_steps} make {steps_per_epoch} an epoch: give the run's own "
            "--batch-size, --accumulate-steps and data flags")

    # the optimizer flags given must agree with the checkpoint
    name = next((n for n in optim.NAMES if optim.get(n) is type(opt)), type(opt).__name__)
    if args.optimizer is not None and optim.get(args.optimizer) is not type(opt):
        raise _Refused(f"argument --optimizer: the checkpoint {path} was trained with {name}; "
                       f"received {args.optimizer} (leave --optimizer out to continue with {name})")
    base_lr = getattr(state, "base_lr", None)
    group = opt.param_groups[0]  # the command line makes one group (the parameter arena)
    ckpt = {"lr": group["lr"] if base_lr is None else base_lr}
    ckpt.update({k: group[k] for k in ("momentum", "weight_decay", "l1") if k in group})
    for key, flag in HYPER_FLAGS.items():
        given = getattr(args, key)
        if given is None:
            continue
        if key not in ckpt:
            raise _Refused(f"argument {flag}: the checkpoint's optimizer ({name}) has no {key}")
        if given != ckpt[key]:
            raise _Refused(f"argument {flag}: the checkpoint {path} has {key}={ckpt[key]!r}; "
                           f"received {given!r} (leave {flag} out to continue with it)")
    ckpt_schedule = getattr(state, "schedule_name", None)
    if args.schedule is not None and ckpt_schedule is not None and args.schedule != ckpt_schedule:
        raise _Refused(f"argument --schedule: the checkpoint {path} follows {ckpt_schedule}; "
                       f"received {args.schedule} (leave --schedule out to continue it)")
    if args.schedule is None:
        args.schedule = ckpt_schedule or DEFAULTS["schedule"]
    return done, ckpt["lr"]


def _checkpoint_norm(path):
    """The --norm a checkpoint's layers were made with; None when its
    metadata cannot be read or names no such layers in a known way (load
    then says what is wrong)."""
    from . import _archive

    try:
        with _archive.Reader(path) as r:
            layers = r.json("meta")["layers"]
        kinds = {entry[0] for entry in layers}
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None
    found = [flag for flag, kind in NORMS.items() if kind in kinds]
    if len(found) > 1:
        return None
    return found[0] if found else "none"


def _train(args):
    import fusedtrain

    _check_flags(args)
    _check_outputs(args)
    if args.threads is not None:
        fusedtrain.set_num_threads(args.threads)
    if args.flush_denormal:
        fusedtrain.set_flush_denormal(True)
    (x_all, y_all), (x_test, y_test) = _load_data(args)
    (x_train, y_train), validation = _holdout(x_all, y_all, args.validation_split, args.seed)

    model = _build_model(args, x_train.shape[1], int(y_all.max()) + 1)
    batches = -(-len(x_train) // args.batch_size)
    steps_per_epoch = -(-batches // args.accumulate_steps)  # optimizer steps
    if args.resume:
        done, lr = _resume(args, model, steps_per_epoch)
        opt = None  # fit continues the checkpoint's optimizer and schedule
        name = type(model.optimizer).__name__
    else:
        done = 0
        opt, lr = _new_optimizer(args, model)
        name = type(opt).__name__
        args.schedule = args.schedule or DEFAULTS["schedule"]
    remaining = args.epochs - done

    widths = [x_train.shape[1]] + args.hidden + [model.output_dim]
    held = f" / {len(validation[0])} validation" if validation is not None else ""
    print(f"fusedtrain {fusedtrain.__version__}: {args.data} {x_train.shape[0]} train{held} / "
          f"{x_test.shape[0]} test, MLP {'-'.join(map(str, widths))} {args.activation}"
          f"{'' if args.norm == 'none' else f' {args.norm}norm'}, "
          f"{name} lr={lr!r} {args.schedule}, {remaining} epochs"
          + (f" (resumed at epoch {done})" if args.resume else ""), flush=True)
    saver = _SaveEachEpoch(args.save) if args.save else None
    t0 = time.perf_counter()
    try:
        history = model.fit(x_train, y_train, optimizer=opt, epochs=remaining,
                            batch_size=args.batch_size, seed=args.seed,
                            validation_data=validation, schedule=args.schedule,
                            progress=not args.quiet, clip_norm=args.clip_norm,
                            accumulate_steps=args.accumulate_steps,
                            on_nonfinite=args.on_nonfinite,
                            callbacks=[saver] if saver else [])
    except FloatingPointError as exc:  # the step that went non-finite was not applied
        print(f"fusedtrain: error: {exc}" + (f"; {saver.where()}" if saver else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if saver is None:
            raise
        print(f"fusedtrain: interrupted; {saver.where()}", file=sys.stderr)
        return 128 + signal.SIGINT
    elapsed = time.perf_counter() - t0
    result = model.evaluate(x_test, y_test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  "
          f"time/epoch {elapsed / remaining * 1e3:.1f} ms  total {elapsed:.2f} s", flush=True)
    if args.save:  # written after the last epoch
        print(f"checkpoint written to {args.save}", flush=True)
    if args.plot:
        history.plot(args.plot)
        print(f"plot written to {args.plot}", flush=True)
    return 0


def _message(exc) -> str:
    """One line for an exception: an OSError's text without the errno, with
    the file it names."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None and os.fsdecode(exc.filename) not in text:
            text = f"{text}: {os.fsdecode(exc.filename)}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``fusedtrain info | head -1``): end
    quietly, as a CLI killed by SIGPIPE would, with its status 128 + 13.
    stdout is pointed at /dev/null so that the interpreter's final flush of
    what is still buffered does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured)
        pass
    return 128 + signal.SIGPIPE


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        status = _info() if args.command == "info" else _train(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("fusedtrain: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except _Refused as exc:
        print(f"fusedtrain train: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as exc:
        print(f"fusedtrain: error: {_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
