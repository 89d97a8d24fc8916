#include "nn/modules.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "layers.h"
#include "nn/functional.h"

namespace lowbit::nn {

namespace {

// Tensor ids of the stochastic-rounding hash: four per layer, one per operand kind.
uint32_t tensor_id(uint32_t layer, TensorRole role) { return layer * 4 + uint32_t(role); }

void copy_into(Tensor &dst, const Tensor &src) {
    if (dst.numel() != src.numel()) {
        throw std::logic_error(fmt::format("gradient of shape {} into a slot of shape {}", shape_string(src.shape()),
                                           shape_string(dst.shape())));
    }
    std::memcpy(dst.data(), src.data(), size_t(src.numel()) * sizeof(float));
}

// The quantized errors of a layer live only within its backward (quantized, then read by
// backward-data and backward-weight), and a network's backward runs one layer at a time on
// the calling thread. So one buffer per thread serves every layer, kept between steps at the
// largest layer's size (no allocation per step). Held per layer instead, the last step's
// errors of every layer (20 MiB of int8 in a ResNet-20 at batch 128) stayed resident through
// the next forward, where the step's memory peaks.
QuantizedTensor &error_scratch() {
    thread_local QuantizedTensor errors;
    return errors;
}

// He (Kaiming) normal initialization with fan-out, as torchvision's ResNets.
void kaiming_normal(Tensor w, int64_t fan_out, std::mt19937_64 &rng) {
    std::normal_distribution<float> d(0.0f, float(std::sqrt(2.0 / double(fan_out))));
    for (int64_t k = 0; k < w.numel(); k++) w[k] = d(rng);
}

}  // namespace

std::string describe(const LayerPrecision &p) {
    if (!p.low_bit) return "float32";
    return fmt::format("A={} ({}) W={} ({}) E={} ({})", to_string(p.activations), to_string(p.activation_rounding),
                       to_string(p.weights), to_string(p.weight_rounding), to_string(p.errors),
                       to_string(p.error_rounding));
}

std::string describe(const PrecisionPolicy &p) {
    std::string s = describe(p.body);
    if (!p.body.low_bit) return s;
    if (p.conv().activations != p.body.activations) s += ", after a ReLU A=" + to_string(p.conv().activations);
    if (p.float_first_last) s += ", first conv and classifier float32";
    return s;
}

// ---------------------------------------------------------------------------------------
Conv2d::Conv2d(int in_channels, int out_channels, int kernel, int stride, int pad, LayerPrecision precision,
               uint32_t id)
    : in_(in_channels), out_(out_channels), kernel_(kernel), geometry_{stride, pad}, precision_(precision), id_(id) {}

void Conv2d::register_parameters(ParameterStore &store, const std::string &prefix) {
    store_ = &store;
    weight_ = store.add(prefix + "weight", {out_, in_, kernel_, kernel_});
}

void Conv2d::initialize(ParameterStore &store, std::mt19937_64 &rng) {
    kaiming_normal(store.value(weight_), int64_t(out_) * kernel_ * kernel_, rng);
}

Shape Conv2d::output_shape(const Shape &input) const {
    return conv_output_shape(input, {out_, in_, kernel_, kernel_}, geometry_);
}

int64_t Conv2d::multiply_adds(const Shape &input) const {
    const Shape out = output_shape(input);
    return out[1] * out[2] * out[3] * int64_t(in_) * kernel_ * kernel_;
}

Tensor Conv2d::forward(const Tensor &x, const StepContext &ctx) {
    input_shape_ = x.shape();
    const Tensor w = store_->value(weight_);
    if (!precision_.low_bit) {
        if (ctx.training) saved_input_ = x;
        return conv_forward(x, w, geometry_);
    }
    const LayerPrecision &p = precision_;
    shared_activations_ = nullptr;
    quantize_into(saved_activations_, x, p.activations, p.activation_rounding, ctx.seed, ctx.step,
                  tensor_id(id_, TensorRole::activation), TensorRole::activation);
    return forward_quantized(ctx);
}

Tensor Conv2d::forward_sharing_input(const Tensor &x, const Conv2d &quantized_by, const StepContext &ctx) {
    // Nearest rounding only: stochastic draws depend on the layer's tensor id, so two layers'
    // quantizations of one tensor differ.
    const LayerPrecision &p = precision_, &q = quantized_by.precision_;
    const bool same = p.low_bit && q.low_bit && p.activations == q.activations &&
                      p.activation_rounding == Rounding::nearest && q.activation_rounding == Rounding::nearest &&
                      quantized_by.shared_activations_ == nullptr && quantized_by.saved_activations_.shape == x.shape();
    if (!same) return forward(x, ctx);
    input_shape_ = x.shape();
    shared_activations_ = &quantized_by.saved_activations_;
    return forward_quantized(ctx);
}

Tensor Conv2d::forward_quantized(const StepContext &ctx) {
    const LayerPrecision &p = precision_;
    quantize_into(saved_weights_, store_->value(weight_), p.weights, p.weight_rounding, ctx.seed, ctx.step,
                  tensor_id(id_, TensorRole::weight), TensorRole::weight);
    return conv_forward(activations(), saved_weights_, geometry_);
}

Tensor Conv2d::forward_after(BatchNorm2d &bn, const Tensor &bn_input, const StepContext &ctx) {
    const LayerPrecision &p = precision_;
    if (!p.low_bit || !bn.relu() || !fused_quantize_supports(p.activations))
        return forward(bn.forward(bn_input, ctx), ctx);
    input_shape_ = bn_input.shape();
    shared_activations_ = nullptr;
    bn.forward_quantized(bn_input, ctx, saved_activations_, p.activations, p.activation_rounding,
                         tensor_id(id_, TensorRole::activation));
    return forward_quantized(ctx);
}

Tensor Conv2d::backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) {
    Tensor dx;
    backward_into(dy, nullptr, ctx, need_input_grad ? &dx : nullptr, false);
    return dx;
}

Tensor Conv2d::backward(const Tensor &dy, const RowMaxima &dy_rows, const StepContext &ctx, bool need_input_grad) {
    Tensor dx;
    backward_into(dy, &dy_rows, ctx, need_input_grad ? &dx : nullptr, false);
    return dx;
}

void Conv2d::backward_add(const Tensor &dy, const StepContext &ctx, Tensor &dx) {
    backward_into(dy, nullptr, ctx, &dx, true);
}

void Conv2d::backward_add(const Tensor &dy, const RowMaxima &dy_rows, const StepContext &ctx, Tensor &dx) {
    backward_into(dy, &dy_rows, ctx, &dx, true);
}

// The weight gradient, and dA written to *dx or added to it (`accumulate`); no dA without dx.
void Conv2d::backward_into(const Tensor &dy, const RowMaxima *dy_rows, const StepContext &ctx, Tensor *dx,
                           bool accumulate) {
    Tensor grad = store_->grad(weight_);
    if (!precision_.low_bit) {
        const Tensor w = store_->value(weight_);
        if (dx && accumulate) conv_backward_data_add(dy, w, geometry_, *dx);
        if (dx && !accumulate) *dx = conv_backward_data(dy, w, input_shape_, geometry_);
        copy_into(grad, conv_backward_weight(dy, saved_input_, kernel_, geometry_));
        saved_input_ = Tensor();
        return;
    }
    const LayerPrecision &p = precision_;
    QuantizedTensor &errors = error_scratch();
    const uint32_t errors_id = tensor_id(id_, TensorRole::error);
    if (dy_rows != nullptr && row_maxima_serve(p.errors)) {
        quantize_into(errors, dy, *dy_rows, p.errors, p.error_rounding, ctx.seed, ctx.step, errors_id,
                      TensorRole::error);
    } else {
        quantize_into(errors, dy, p.errors, p.error_rounding, ctx.seed, ctx.step, errors_id, TensorRole::error);
    }
    if (dx && accumulate) conv_backward_data_add(errors, saved_weights_, geometry_, *dx);
    if (dx && !accumulate) *dx = conv_backward_data(errors, saved_weights_, input_shape_, geometry_);
    copy_into(grad, conv_backward_weight(errors, activations(), kernel_, geometry_));
}

// ---------------------------------------------------------------------------------------
BatchNorm2d::BatchNorm2d(int channels, bool relu, float momentum, float eps)
    : channels_(channels),
      relu_(relu),
      momentum_(momentum),
      eps_(eps),
      running_mean_({channels}),
      running_var_({channels}),
      mean_({channels}),
      variance_({channels}),
      inv_std_({channels}),
      scale_({channels}),
      shift_({channels}) {
    for (int c = 0; c < channels; c++) running_var_[c] = 1.0f;
}

void BatchNorm2d::register_parameters(ParameterStore &store, const std::string &prefix) {
    store_ = &store;
    gamma_ = store.add(prefix + "gamma", {channels_}, /*decay=*/false);
    beta_ = store.add(prefix + "beta", {channels_}, /*decay=*/false);
}

void BatchNorm2d::initialize(ParameterStore &store, std::mt19937_64 &) {
    Tensor gamma = store.value(gamma_), beta = store.value(beta_);
    for (int c = 0; c < channels_; c++) {
        gamma[c] = 1.0f;
        beta[c] = 0.0f;
        running_mean_[c] = 0.0f;
        running_var_[c] = 1.0f;
    }
}

void BatchNorm2d::collect_state(StateList &out, const std::string &prefix) {
    out.emplace_back(prefix + "running_mean", running_mean_);
    out.emplace_back(prefix + "running_var", running_var_);
}

// scale and shift from the batch statistics (training; updating the running ones as PyTorch
// does, with the unbiased variance; or averaging them, StepContext::average_batch) or from the
// running statistics (inference).
void BatchNorm2d::fold(const StepContext &ctx, const Tensor &x) {
    const Tensor gamma = store_->value(gamma_), beta = store_->value(beta_);
    if (ctx.training) {
        batch_norm_statistics(x, mean_, variance_);
        const double count = double(x.numel() / channels_);
        const double unbias = count > 1 ? count / (count - 1) : 1.0;
        const float momentum = ctx.average_batch > 0 ? float(1.0 / double(ctx.average_batch)) : momentum_;
        for (int c = 0; c < channels_; c++) {
            running_mean_[c] = (1 - momentum) * running_mean_[c] + momentum * mean_[c];
            running_var_[c] = (1 - momentum) * running_var_[c] + momentum * float(variance_[c] * unbias);
        }
    } else {
        std::memcpy(mean_.data(), running_mean_.data(), sizeof(float) * size_t(channels_));
        std::memcpy(variance_.data(), running_var_.data(), sizeof(float) * size_t(channels_));
    }
    for (int c = 0; c < channels_; c++) {
        inv_std_[c] = float(1.0 / std::sqrt(double(variance_[c]) + eps_));
        scale_[c] = gamma[c] * inv_std_[c];
        shift_[c] = beta[c] - mean_[c] * scale_[c];
    }
}

Tensor BatchNorm2d::forward(const Tensor &x, const StepContext &ctx) {
    fold(ctx, x);
    Tensor y = Tensor::uninitialized(x.shape());
    batch_norm_forward(x, scale_, shift_, relu_, y);
    if (ctx.training) saved_input_ = x;
    return y;
}

void BatchNorm2d::forward_quantized(const Tensor &x, const StepContext &ctx, QuantizedTensor &out, const Format &format,
                                    Rounding rounding, uint32_t tensor_id) {
    if (!relu_) throw std::logic_error("BatchNorm2d::forward_quantized: only after a ReLU");
    fold(ctx, x);
    batch_norm_relu_quantize_into(out, x, scale_, shift_, format, rounding, ctx.seed, ctx.step, tensor_id);
    if (ctx.training) saved_input_ = x;
}

Tensor BatchNorm2d::forward_add_relu(const Tensor &x, const Tensor &residual, const StepContext &ctx) {
    fold(ctx, x);
    Tensor y = Tensor::uninitialized(x.shape());
    // The mask buffer persists between steps (no allocation per step); y itself is not kept.
    batch_norm_add_relu(x, scale_, shift_, residual, y, saved_mask_);
    if (ctx.training) saved_input_ = x;
    return y;
}

Tensor BatchNorm2d::backward_masked(const Tensor &g, bool relu) {
    if (saved_input_.numel() == 0) throw std::logic_error("BatchNorm2d: backward without a training forward");
    Tensor dx = Tensor::uninitialized(g.shape());
    Tensor dgamma = store_->grad(gamma_), dbeta = store_->grad(beta_);
    batch_norm_backward(g, saved_input_, mean_, inv_std_, scale_, shift_, relu, dx, dgamma, dbeta, &grad_rows_);
    saved_input_ = Tensor();
    return dx;
}

Tensor BatchNorm2d::backward(const Tensor &dy, const StepContext &, bool) { return backward_masked(dy, relu_); }

Tensor BatchNorm2d::backward_add_relu(const Tensor &dy, Tensor &residual_grad) {
    if (saved_input_.numel() == 0) throw std::logic_error("BatchNorm2d: backward without a training forward");
    Tensor dx = Tensor::uninitialized(dy.shape());
    residual_grad = Tensor::uninitialized(dy.shape());
    Tensor dgamma = store_->grad(gamma_), dbeta = store_->grad(beta_);
    batch_norm_add_relu_backward(dy, saved_input_, saved_mask_, mean_, inv_std_, scale_, dx, dgamma, dbeta,
                                 residual_grad, &grad_rows_);
    saved_input_ = Tensor();
    return dx;
}

// ---------------------------------------------------------------------------------------
Linear::Linear(int in_features, int out_features, LayerPrecision precision, uint32_t id)
    : in_(in_features), out_(out_features), precision_(precision), id_(id) {}

void Linear::register_parameters(ParameterStore &store, const std::string &prefix) {
    store_ = &store;
    weight_ = store.add(prefix + "weight", {out_, in_});
    bias_ = store.add(prefix + "bias", {out_}, /*decay=*/false);
}

// PyTorch's default: uniform in +-1/sqrt(in_features), weights and bias.
void Linear::initialize(ParameterStore &store, std::mt19937_64 &rng) {
    std::uniform_real_distribution<float> d(-1.0f / std::sqrt(float(in_)), 1.0f / std::sqrt(float(in_)));
    for (Tensor t : {store.value(weight_), store.value(bias_)}) {
        for (int64_t k = 0; k < t.numel(); k++) t[k] = d(rng);
    }
}

Tensor Linear::forward(const Tensor &x, const StepContext &ctx) {
    input_shape_ = x.shape();
    const int64_t n = x.size(0);
    if (x.numel() != n * in_) {
        throw std::invalid_argument(
            fmt::format("Linear({}, {}): input of shape {}", in_, out_, shape_string(x.shape())));
    }
    const Tensor w = store_->value(weight_), b = store_->value(bias_);
    const Tensor flat = x.contiguous().reshape({n, in_});
    if (!precision_.low_bit) {
        if (ctx.training) saved_input_ = flat;
        return linear_forward(flat, w, b);
    }
    const LayerPrecision &p = precision_;
    quantize_into(saved_activations_, flat.reshape({n, in_, 1, 1}), p.activations, p.activation_rounding, ctx.seed,
                  ctx.step, tensor_id(id_, TensorRole::activation), TensorRole::activation);
    quantize_into(saved_weights_, w.reshape({out_, in_, 1, 1}), p.weights, p.weight_rounding, ctx.seed, ctx.step,
                  tensor_id(id_, TensorRole::weight), TensorRole::weight);
    Tensor y = conv_forward(saved_activations_, saved_weights_, ConvGeometry{1, 0}).reshape({n, out_});
    for (int64_t i = 0; i < n; i++)
        for (int o = 0; o < out_; o++) y[i * out_ + o] += b[o];
    return y;
}

Tensor Linear::backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) {
    Tensor dw = store_->grad(weight_), db = store_->grad(bias_);
    const int64_t n = dy.size(0);
    if (!precision_.low_bit) {
        Tensor dx = linear_backward(dy, saved_input_, store_->value(weight_), dw, db, need_input_grad);
        saved_input_ = Tensor();
        return need_input_grad ? dx.reshape(input_shape_) : Tensor();
    }
    const LayerPrecision &p = precision_;
    QuantizedTensor &errors = error_scratch();
    quantize_into(errors, dy.reshape({n, out_, 1, 1}), p.errors, p.error_rounding, ctx.seed, ctx.step,
                  tensor_id(id_, TensorRole::error), TensorRole::error);
    for (int o = 0; o < out_; o++) {
        double sum = 0;
        for (int64_t i = 0; i < n; i++) sum += dy[i * out_ + o];
        db[o] = float(sum);
    }
    copy_into(dw, conv_backward_weight(errors, saved_activations_, 1, ConvGeometry{1, 0}));
    if (!need_input_grad) return Tensor();
    return conv_backward_data(errors, saved_weights_, {n, in_, 1, 1}, ConvGeometry{1, 0}).reshape(input_shape_);
}

// ---------------------------------------------------------------------------------------
Tensor Relu::forward(const Tensor &x, const StepContext &ctx) {
    Tensor y = relu_forward(x);
    if (ctx.training) saved_output_ = y;
    return y;
}

Tensor Relu::backward(const Tensor &dy, const StepContext &, bool) {
    Tensor dx = relu_backward(dy, saved_output_);
    saved_output_ = Tensor();
    return dx;
}

Shape Pool2d::output_shape(const Shape &input) const {
    return {input[0], input[1], (input[2] - kernel_) / stride_ + 1, (input[3] - kernel_) / stride_ + 1};
}

Tensor Pool2d::forward(const Tensor &x, const StepContext &) {
    input_shape_ = x.shape();
    if (kind_ == PoolKind::max) return max_pool2d_forward(x, kernel_, stride_, argmax_);
    return avg_pool2d_forward(x, kernel_, stride_);
}

Tensor Pool2d::backward(const Tensor &dy, const StepContext &, bool) {
    if (kind_ == PoolKind::max) return max_pool2d_backward(dy, argmax_, input_shape_);
    return avg_pool2d_backward(dy, input_shape_, kernel_, stride_);
}

Tensor GlobalAvgPool::forward(const Tensor &x, const StepContext &) {
    input_shape_ = x.shape();
    return global_avg_pool_forward(x);
}

Tensor GlobalAvgPool::backward(const Tensor &dy, const StepContext &, bool) {
    return global_avg_pool_backward(dy, input_shape_);
}

// ---------------------------------------------------------------------------------------
BasicBlock::BasicBlock(int in_channels, int out_channels, int stride, const LayerPrecision &precision,
                       uint32_t first_id)
    : conv1_(in_channels, out_channels, 3, stride, 1, precision, first_id),
      conv2_(out_channels, out_channels, 3, 1, 1, precision, first_id + 1),
      bn1_(out_channels, /*relu=*/true),
      bn2_(out_channels, /*relu=*/false) {
    if (stride != 1 || in_channels != out_channels) {
        shortcut_conv_ = std::make_unique<Conv2d>(in_channels, out_channels, 1, stride, 0, precision, first_id + 2);
        shortcut_bn_ = std::make_unique<BatchNorm2d>(out_channels, /*relu=*/false);
    }
}

void BasicBlock::register_parameters(ParameterStore &store, const std::string &prefix) {
    conv1_.register_parameters(store, prefix + "conv1.");
    bn1_.register_parameters(store, prefix + "bn1.");
    conv2_.register_parameters(store, prefix + "conv2.");
    bn2_.register_parameters(store, prefix + "bn2.");
    if (shortcut_conv_) {
        shortcut_conv_->register_parameters(store, prefix + "shortcut.conv.");
        shortcut_bn_->register_parameters(store, prefix + "shortcut.bn.");
    }
}

void BasicBlock::initialize(ParameterStore &store, std::mt19937_64 &rng) {
    conv1_.initialize(store, rng);
    bn1_.initialize(store, rng);
    conv2_.initialize(store, rng);
    bn2_.initialize(store, rng);
    if (shortcut_conv_) {
        shortcut_conv_->initialize(store, rng);
        shortcut_bn_->initialize(store, rng);
    }
}

void BasicBlock::collect_state(StateList &out, const std::string &prefix) {
    bn1_.collect_state(out, prefix + "bn1.");
    bn2_.collect_state(out, prefix + "bn2.");
    if (shortcut_bn_) shortcut_bn_->collect_state(out, prefix + "shortcut.bn.");
}

int64_t BasicBlock::multiply_adds(const Shape &input) const {
    const Shape mid = conv1_.output_shape(input);
    return conv1_.multiply_adds(input) + conv2_.multiply_adds(mid) +
           (shortcut_conv_ ? shortcut_conv_->multiply_adds(input) : 0);
}

Tensor BasicBlock::forward(const Tensor &x, const StepContext &ctx) {
    const Tensor c2 = conv2_.forward_after(bn1_, conv1_.forward(x, ctx), ctx);
    // The strided shortcut reads the block input that conv1 has just quantized.
    const Tensor shortcut =
        shortcut_conv_ ? shortcut_bn_->forward(shortcut_conv_->forward_sharing_input(x, conv1_, ctx), ctx) : x;
    return bn2_.forward_add_relu(c2, shortcut, ctx);
}

Tensor BasicBlock::backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) {
    Tensor g;  // dL/d(shortcut output) = dL/d(bn2 output) behind the ReLU
    // Each convolution's incoming gradient comes with its row maxima, from the batch norm
    // that wrote it: the scales of its quantization, without a pass of their own.
    const Tensor d_conv2 = bn2_.backward_add_relu(dy, g);
    const Tensor d_h = conv2_.backward(d_conv2, bn2_.grad_input_rows(), ctx, true);
    const Tensor d_conv1 = bn1_.backward(d_h, ctx, true);
    const RowMaxima &conv1_rows = bn1_.grad_input_rows();
    // The two paths' input gradients meet in backward-data's store (Conv2d::backward_add):
    // the shortcut's gradient, or conv1's where the shortcut has a convolution of its own.
    if (!shortcut_conv_) {
        if (!need_input_grad) return conv1_.backward(d_conv1, conv1_rows, ctx, false);
        Tensor dx = std::move(g);  // dL/dx through the identity; nothing else reads g
        conv1_.backward_add(d_conv1, conv1_rows, ctx, dx);
        return dx;
    }
    Tensor dx = conv1_.backward(d_conv1, conv1_rows, ctx, need_input_grad);
    const Tensor d_short = shortcut_bn_->backward(g, ctx, true);
    const RowMaxima &short_rows = shortcut_bn_->grad_input_rows();
    if (!need_input_grad) return shortcut_conv_->backward(d_short, short_rows, ctx, false);
    shortcut_conv_->backward_add(d_short, short_rows, ctx, dx);
    return dx;
}

// ---------------------------------------------------------------------------------------
void Sequential::register_parameters(ParameterStore &store, const std::string &prefix) {
    for (size_t i = 0; i < modules_.size(); i++)
        modules_[i]->register_parameters(store, fmt::format("{}{}.", prefix, i));
}

void Sequential::initialize(ParameterStore &store, std::mt19937_64 &rng) {
    for (auto &m : modules_) m->initialize(store, rng);
}

void Sequential::collect_state(StateList &out, const std::string &prefix) {
    for (size_t i = 0; i < modules_.size(); i++) modules_[i]->collect_state(out, fmt::format("{}{}.", prefix, i));
}

Tensor Sequential::forward(const Tensor &x, const StepContext &ctx) {
    Tensor h = x;
    for (auto &m : modules_) h = m->forward(h, ctx);
    return h;
}

Tensor Sequential::backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) {
    Tensor g = dy;
    for (size_t i = modules_.size(); i-- > 0;) g = modules_[i]->backward(g, ctx, i > 0 || need_input_grad);
    return g;
}

int64_t Sequential::multiply_adds(const Shape &input) const {
    int64_t total = 0;
    Shape s = input;
    for (const auto &m : modules_) {
        total += m->multiply_adds(s);
        s = m->output_shape(s);
    }
    return total;
}

Shape Sequential::output_shape(const Shape &input) const {
    Shape s = input;
    for (const auto &m : modules_) s = m->output_shape(s);
    return s;
}

}  // namespace lowbit::nn
