from .optim import sgd, adam, adamw, rmsprop, adagrad
from .dense import activation, activation_grad, dense_backward, dense_forward
