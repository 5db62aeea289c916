// Compiles the shared per-element math (FT_HD headers) as device code for
// every variant and both dtypes, so a change that nvcc rejects fails the
// build at once, before any kernel that calls it is touched.
#include "fusedtrain/optim_math.h"

namespace fusedtrain {
namespace {

template <typename T>
__global__ void optim_math_check(T* x, AdamScalars<T> a, SgdScalars<T> s, RmspropScalars<T> r,
                                 AdagradScalars<T> ag) {
  T p = x[0], g = x[1], m = x[2], v = x[3], w = x[4];
  adam_update<WeightDecay::L2, AmsGrad::Off>(p, g, m, v, w, a);
  adam_update<WeightDecay::Decoupled, AmsGrad::On>(p, g, m, v, w, a);
  sgd_update<Momentum::Off, Nesterov::Off>(p, g, m, s);
  sgd_update<Momentum::First, Nesterov::On>(p, g, m, s);
  sgd_update<Momentum::On, Nesterov::Off>(p, g, m, s);
  rmsprop_update<Centered::On, Momentum::On>(p, g, m, v, w, r);
  rmsprop_update<Centered::Off, Momentum::Off>(p, g, m, v, w, r);
  adagrad_update(p, g, m, ag);
  x[0] = p; x[2] = m; x[3] = v; x[4] = w;
}

}  // namespace

// Exported so that the instantiations are kept.
void* optim_math_check_kernels[] = {reinterpret_cast<void*>(&optim_math_check<float>),
                                    reinterpret_cast<void*>(&optim_math_check<double>)};

}  // namespace fusedtrain
