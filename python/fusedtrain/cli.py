"""The ``fusedtrain`` command line.

    fusedtrain train [options]   train an MLP on digits (default) or MNIST
    fusedtrain info              version and build information
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

__all__ = ["main"]


def _hidden(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 256,256; received {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1; received {text!r}")
    return sizes


def _parser():
    p = argparse.ArgumentParser(prog="fusedtrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP with the fused kernels",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", choices=["digits", "mnist"], default="digits")
    t.add_argument("--data-dir", default=".", help="directory with the MNIST files (for --data mnist)")
    t.add_argument("--hidden", type=_hidden, default=[256, 256], help="hidden layer widths")
    t.add_argument("--activation", default="relu",
                   choices=["relu", "leaky_relu", "sigmoid", "tanh", "gelu"])
    t.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "rmsprop", "adagrad"])
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--momentum", type=float, default=0.9, help="for sgd and rmsprop")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--l1", type=float, default=0.0)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--epochs", type=int, default=30, help="total epochs (a resumed run continues up to it)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--clip-norm", type=float, default=None,
                   help="clip the gradients to this global L2 norm before each step")
    t.add_argument("--accumulate-steps", type=int, default=1,
                   help="batches whose gradients are summed per optimizer step")
    t.add_argument("--schedule", default="cosine",
                   help="constant, exponential, step, multistep, cosine or warmup_cosine")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", metavar="CKPT", help="write a checkpoint here at the end")
    t.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint")
    t.add_argument("--plot", metavar="PNG", help="write the loss/accuracy curves here")
    t.add_argument("--threads", type=int, help="kernel threads (default: all cores)")
    t.add_argument("--flush-denormal", action="store_true",
                   help="flush subnormal optimizer states to zero (faster, not bit-exact IEEE)")
    t.add_argument("--quiet", action="store_true", help="no per-epoch output")
    sub.add_parser("info", help="print version and build information")
    return p


def _info():
    import fusedtrain

    print(json.dumps(fusedtrain.build_info(), indent=2))  # "blas": what _core links
    return 0


def _train(args):
    import fusedtrain
    from fusedtrain import data, optim, schedules
    from fusedtrain.nn import Dense, Dropout, Sequential

    if args.threads is not None:
        fusedtrain.set_num_threads(args.threads)
    if args.flush_denormal:
        fusedtrain.set_flush_denormal(True)
    if args.data == "digits":
        (x_train, y_train), (x_test, y_test) = data.load_digits(seed=args.seed)
    else:
        (x_train, y_train), (x_test, y_test) = data.load_mnist(args.data_dir)

    widths = [x_train.shape[1]] + args.hidden
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(Dense(a, b, activation=args.activation))
        if args.dropout > 0:
            layers.append(Dropout(args.dropout))
    layers.append(Dense(widths[-1], int(y_train.max()) + 1))
    model = Sequential(layers, seed=args.seed)

    hyper = {"lr": args.lr, "weight_decay": args.weight_decay, "l1": args.l1}
    if args.optimizer in ("sgd", "rmsprop"):
        hyper["momentum"] = args.momentum
    from fusedtrain.train import OPTIMIZERS

    opt = OPTIMIZERS[args.optimizer](model.parameters(), **hyper)
    if args.resume:
        model.load(args.resume)
        if model.optimizer is not None:
            opt = model.optimizer
    batches = -(-len(x_train) // args.batch_size)
    steps_per_epoch = -(-batches // max(args.accumulate_steps, 1))  # optimizer steps
    sched = schedules.get(args.schedule, lr=args.lr, total_steps=args.epochs * steps_per_epoch)

    done = model.train_state["epoch"] if model.train_state else 0
    remaining = max(args.epochs - done, 0)
    print(f"fusedtrain {fusedtrain.__version__}: {args.data} {x_train.shape[0]} train / "
          f"{x_test.shape[0]} test, MLP {'-'.join(map(str, widths + [model.output_dim]))} "
          f"{args.activation}, {args.optimizer} lr={args.lr}, {remaining} epochs"
          + (f" (resumed at epoch {done})" if args.resume else ""), flush=True)
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, optimizer=opt, epochs=remaining, batch_size=args.batch_size,
                        seed=args.seed, validation_data=(x_test, y_test), schedule=sched,
                        progress=not args.quiet, clip_norm=args.clip_norm,
                        accumulate_steps=args.accumulate_steps)
    elapsed = time.perf_counter() - t0
    result = model.evaluate(x_test, y_test)
    per_epoch = elapsed / remaining if remaining else 0.0
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  "
          f"time/epoch {per_epoch * 1e3:.1f} ms  total {elapsed:.2f} s", flush=True)
    if args.save:
        model.save(args.save)
        print(f"checkpoint written to {args.save}")
    if args.plot:
        history.plot(args.plot)
        print(f"plot written to {args.plot}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            return _info()
        return _train(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"fusedtrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
