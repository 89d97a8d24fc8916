#include "sgd.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace lowbit {

Sgd::Sgd(ParameterStore &store, SgdOptions options) : store_(store), options_(options) {
    if (!store.finalized()) throw std::logic_error("Sgd needs a finalized ParameterStore");
    // Written as !(x >= 0) so that NaN is rejected too.
    auto check = [](float v, const char *what) {
        if (!(v >= 0.0f)) throw std::invalid_argument(fmt::format("SGD {} must be >= 0, got {}", what, v));
    };
    check(options.lr, "learning rate");
    check(options.momentum, "momentum");
    check(options.weight_decay, "weight decay");
    check(options.dampening, "dampening");
    if (options.nesterov && (options.momentum <= 0.0f || options.dampening != 0.0f))
        throw std::invalid_argument(fmt::format("SGD nesterov needs momentum > 0 and zero dampening, got {} and {}",
                                                options.momentum, options.dampening));
    buffer_.reset(aligned_zeros(store.total_size()));
}

void Sgd::step(float lr) {
    const float momentum = options_.momentum, dampening = options_.dampening;
    const bool first = steps_ == 0;
    float *values = store_.values();
    const float *grads = store_.grads();
    float *buffer = buffer_.get();
    for (size_t p = 0; p < store_.count(); ++p) {
        const int64_t begin = store_.offset(p), end = begin + store_.numel(p);
        const float wd = store_.decay(p) ? options_.weight_decay : 0.0f;
        for (int64_t i = begin; i < end; ++i) {
            float g = grads[i];
            // PyTorch skips the add when weight_decay == 0; g + 0 * w is the same except for
            // w = inf or NaN, which would turn g into NaN, so keep the skip.
            if (wd != 0.0f) g = g + wd * values[i];
            if (momentum != 0.0f) {
                // PyTorch clones g into the buffer on its first step, without dampening.
                buffer[i] = first ? g : momentum * buffer[i] + (1.0f - dampening) * g;
                g = options_.nesterov ? g + momentum * buffer[i] : buffer[i];
            }
            values[i] = values[i] - lr * g;
        }
    }
    ++steps_;
}

std::vector<float> Sgd::state() const { return std::vector<float>(buffer_.get(), buffer_.get() + store_.total_size()); }

void Sgd::load_state(const std::vector<float> &momentum, int64_t steps) {
    if (int64_t(momentum.size()) != store_.total_size())
        throw std::invalid_argument(
            fmt::format("SGD state has {} floats, the parameters need {}", momentum.size(), store_.total_size()));
    if (steps < 0) throw std::invalid_argument(fmt::format("SGD state with a negative step count {}", steps));
    std::copy(momentum.begin(), momentum.end(), buffer_.get());
    steps_ = steps;
}

}  // namespace lowbit
