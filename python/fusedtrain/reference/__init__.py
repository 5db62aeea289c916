from .optim import sgd, adam, adamw, rmsprop, adagrad
