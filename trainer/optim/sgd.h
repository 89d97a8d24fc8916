// Stochastic gradient descent with momentum, step for step the arithmetic of PyTorch 1.13's
// torch.optim.SGD, so that a run here can be checked against a PyTorch reference run.
#pragma once

#include "optim/parameters.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace lowbit {

struct SgdOptions {
    float lr = 0.1f;  // the default for step() callers that have no schedule; step(lr) overrides it
    float momentum = 0.9f;
    bool nesterov = false;
    float weight_decay = 5e-4f;  // applied only to parameters registered with decay = true
    float dampening = 0.0f;
};

// Per parameter element, with g its gradient and w its value:
//   g = g + weight_decay * w                       (parameters with decay = true only)
//   buf = g on the first step, else buf = momentum * buf + (1 - dampening) * g  (momentum != 0)
//   g = nesterov ? g + momentum * buf : buf        (momentum != 0)
//   w = w - lr * g
// Sequential loops: the result is bit-identical from run to run.
class Sgd {
public:
    // The store must be finalized and outlive the optimizer. Throws std::invalid_argument on a
    // negative lr, momentum, weight decay or dampening, on nesterov without momentum or with
    // dampening (PyTorch rejects these too), and std::logic_error on an unfinalized store.
    Sgd(ParameterStore &store, SgdOptions options);
    Sgd(const Sgd &) = delete;
    Sgd &operator=(const Sgd &) = delete;

    // One update of every parameter from the gradient buffer, with this learning rate.
    void step(float lr);
    void step() { step(options_.lr); }

    const SgdOptions &options() const { return options_; }
    // Steps taken so far; 0 means the next step initialises the momentum buffer.
    int64_t steps() const { return steps_; }
    // The momentum buffer, laid out like the store's buffers (store.total_size() floats).
    const float *momentum_buffer() const { return buffer_.get(); }

    // For checkpoints: the momentum buffer as a copy, and its restoration together with the step
    // count (which carries the "first step" flag). load_state throws std::invalid_argument when
    // the size is not store.total_size() or steps < 0.
    std::vector<float> state() const;
    void load_state(const std::vector<float> &momentum, int64_t steps);

private:
    struct Free {
        void operator()(float *p) const { aligned_free(p); }
    };

    ParameterStore &store_;
    SgdOptions options_;
    std::unique_ptr<float[], Free> buffer_;
    int64_t steps_ = 0;
};

}  // namespace lowbit
