from .optim import sgd, adam, adamw, rmsprop, adagrad, mixed
from .dense import activation, activation_grad, dense_backward, dense_forward
from .loss import (bce_with_logits, dropout, dropout_backward, dropout_mask, mse, philox4x32_10,
                   softmax_cross_entropy)
from . import clip
from .clip import clip_grad_norm, clip_grad_value, global_norm
from . import normalize
from .normalize import (batch_norm_backward, batch_norm_forward, layer_norm_backward,
                        layer_norm_forward)
