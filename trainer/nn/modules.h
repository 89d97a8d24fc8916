// The layers of a network as modules with a forward and a backward pass. A module keeps what
// its backward needs from its forward (the quantized operands of a low-bit convolution, the
// input of a batch norm), writes its parameter gradients straight into the ParameterStore's
// one gradient buffer, and returns the gradient of its input.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "conv.h"
#include "layers.h"
#include "nn/precision.h"
#include "optim/parameters.h"
#include "quantize.h"
#include "tensor.h"

namespace lowbit::nn {

// What a pass needs to know about the step it belongs to.
struct StepContext {
    bool training = true;  // batch statistics and saved tensors; else running statistics
    uint64_t seed = 0;     // stochastic rounding draws from hash(seed, step, tensor, element)
    uint64_t step = 0;
    // > 0 while re-estimating batch-norm statistics (train::recalibrate_batch_norm): this is
    // the k-th batch, and the running statistics become the plain average of batches 1..k
    // (momentum 1/k, PyTorch's momentum=None) instead of the training's moving average.
    uint64_t average_batch = 0;
};

// Named non-trainable tensors (batch-norm running statistics) for checkpoints.
using StateList = std::vector<std::pair<std::string, Tensor>>;

class Module {
public:
    virtual ~Module() = default;
    // Registers parameters under `prefix`; called once, before store.finalize().
    virtual void register_parameters(ParameterStore &, const std::string &prefix) { (void)prefix; }
    // Sets initial values, after store.finalize().
    virtual void initialize(ParameterStore &, std::mt19937_64 &) {}
    virtual Tensor forward(const Tensor &x, const StepContext &ctx) = 0;
    // dy = dL/d(output) of the last forward; returns dL/d(input), or an empty tensor when
    // `need_input_grad` is false (the first layer: nothing to pass back to).
    virtual Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) = 0;
    virtual void collect_state(StateList &, const std::string &prefix) { (void)prefix; }
    // Convolution multiply-adds of one forward pass over one sample (for reports).
    virtual int64_t multiply_adds(const Shape &input) const {
        (void)input;
        return 0;
    }
    // Output shape for a given input shape (N, C, H, W).
    virtual Shape output_shape(const Shape &input) const = 0;
};

class BatchNorm2d;

class Conv2d : public Module {
public:
    // `id` distinguishes this layer's tensors in the stochastic-rounding hash.
    Conv2d(int in_channels, int out_channels, int kernel, int stride, int pad, LayerPrecision precision, uint32_t id);
    void register_parameters(ParameterStore &store, const std::string &prefix) override;
    void initialize(ParameterStore &store, std::mt19937_64 &rng) override;
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    int64_t multiply_adds(const Shape &input) const override;
    Shape output_shape(const Shape &input) const override;
    // conv(bn(x)) for a batch norm with ReLU: in low-bit mode the batch norm writes this
    // layer's quantized input directly (batch_norm_relu_quantize_into), never a float32 one.
    Tensor forward_after(BatchNorm2d &bn, const Tensor &bn_input, const StepContext &ctx);
    // forward(x, ctx) where `quantized_by`, a layer of the same activation format, has just
    // quantized this same x in its forward (a residual block's strided shortcut and its conv1
    // both read the block input): this layer reads that quantized input, for its forward and
    // its backward, instead of quantizing x again. The same results bit for bit; only with
    // nearest rounding (otherwise, and in float32 mode, plain forward).
    Tensor forward_sharing_input(const Tensor &x, const Conv2d &quantized_by, const StepContext &ctx);
    // backward(dy, ctx, true) added into dx (the input's shape) in the kernel's store: dx +
    // backward(...) bit for bit, without the pass of its own.
    void backward_add(const Tensor &dy, const StepContext &ctx, Tensor &dx);
    // The same two, given dy's row maxima as the batch norm that wrote dy reports them
    // (BatchNorm2d::grad_input_rows): the quantization of dy takes its scales from them
    // instead of a pass over dy. The same results bit for bit.
    Tensor backward(const Tensor &dy, const RowMaxima &dy_rows, const StepContext &ctx, bool need_input_grad);
    void backward_add(const Tensor &dy, const RowMaxima &dy_rows, const StepContext &ctx, Tensor &dx);

private:
    void backward_into(const Tensor &dy, const RowMaxima *dy_rows, const StepContext &ctx, Tensor *dx, bool accumulate);
    // The forward pass once activations() holds the quantized input.
    Tensor forward_quantized(const StepContext &ctx);
    const QuantizedTensor &activations() const {
        return shared_activations_ != nullptr ? *shared_activations_ : saved_activations_;
    }

    int in_, out_, kernel_;
    ConvGeometry geometry_;
    LayerPrecision precision_;
    uint32_t id_;
    ParameterStore *store_ = nullptr;
    size_t weight_ = 0;
    Shape input_shape_;
    Tensor saved_input_;                                 // float32 mode
    QuantizedTensor saved_activations_, saved_weights_;  // low-bit mode
    // Another layer's saved_activations_, read instead of this layer's own
    // (forward_sharing_input); null otherwise.
    const QuantizedTensor *shared_activations_ = nullptr;
};

// Batch norm over channels, with a fused ReLU (`relu`) or, through forward_add_relu, the
// residual add and ReLU that end a residual block.
class BatchNorm2d : public Module {
public:
    BatchNorm2d(int channels, bool relu, float momentum = 0.1f, float eps = 1e-5f);
    void register_parameters(ParameterStore &store, const std::string &prefix) override;
    void initialize(ParameterStore &store, std::mt19937_64 &rng) override;
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    // y = ReLU(BN(x) + residual); backward_add_relu also returns dL/d(residual).
    Tensor forward_add_relu(const Tensor &x, const Tensor &residual, const StepContext &ctx);
    Tensor backward_add_relu(const Tensor &dy, Tensor &residual_grad);
    // y = ReLU(BN(x)) straight into its quantized form (relu must be on; see Conv2d::forward_after).
    void forward_quantized(const Tensor &x, const StepContext &ctx, QuantizedTensor &out, const Format &format,
                           Rounding rounding, uint32_t tensor_id);
    bool relu() const { return relu_; }
    // The row maxima of the gradient the last backward returned (see Conv2d::backward).
    const RowMaxima &grad_input_rows() const { return grad_rows_; }
    void collect_state(StateList &out, const std::string &prefix) override;
    Shape output_shape(const Shape &input) const override { return input; }

private:
    void fold(const StepContext &ctx, const Tensor &x);
    Tensor backward_masked(const Tensor &g, bool relu);

    int channels_;
    bool relu_;
    float momentum_, eps_;
    ParameterStore *store_ = nullptr;
    size_t gamma_ = 0, beta_ = 0;
    Tensor running_mean_, running_var_;
    Tensor mean_, variance_, inv_std_, scale_, shift_;
    Tensor saved_input_;
    ReluMask saved_mask_;  // forward_add_relu's, for backward_add_relu
    RowMaxima grad_rows_;
};

// y = x W^T + b on (N, I) or (N, C, H, W) flattened. float32 unless its precision says
// low-bit, then through the integer convolution kernels as a 1x1 convolution.
class Linear : public Module {
public:
    Linear(int in_features, int out_features, LayerPrecision precision, uint32_t id);
    void register_parameters(ParameterStore &store, const std::string &prefix) override;
    void initialize(ParameterStore &store, std::mt19937_64 &rng) override;
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    int64_t multiply_adds(const Shape &) const override { return int64_t(in_) * out_; }
    Shape output_shape(const Shape &input) const override { return {input[0], out_}; }

private:
    int in_, out_;
    LayerPrecision precision_;
    uint32_t id_;
    ParameterStore *store_ = nullptr;
    size_t weight_ = 0, bias_ = 0;
    Shape input_shape_;
    Tensor saved_input_;
    QuantizedTensor saved_activations_, saved_weights_;
};

class Relu : public Module {
public:
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    Shape output_shape(const Shape &input) const override { return input; }

private:
    Tensor saved_output_;
};

enum class PoolKind { max, average };
class Pool2d : public Module {
public:
    Pool2d(PoolKind kind, int kernel, int stride) : kind_(kind), kernel_(kernel), stride_(stride) {}
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    Shape output_shape(const Shape &input) const override;

private:
    PoolKind kind_;
    int kernel_, stride_;
    Shape input_shape_;
    std::vector<int32_t> argmax_;
};

class GlobalAvgPool : public Module {
public:
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    Shape output_shape(const Shape &input) const override { return {input[0], input[1]}; }

private:
    Shape input_shape_;
};

// The basic residual block of the CIFAR ResNets: conv3x3-BN-ReLU, conv3x3-BN, plus the
// shortcut (identity, or a strided 1x1 conv with BN where the shape changes), then ReLU.
class BasicBlock : public Module {
public:
    BasicBlock(int in_channels, int out_channels, int stride, const LayerPrecision &precision, uint32_t first_id);
    void register_parameters(ParameterStore &store, const std::string &prefix) override;
    void initialize(ParameterStore &store, std::mt19937_64 &rng) override;
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    void collect_state(StateList &out, const std::string &prefix) override;
    int64_t multiply_adds(const Shape &input) const override;
    Shape output_shape(const Shape &input) const override { return conv1_.output_shape(input); }

private:
    Conv2d conv1_, conv2_;
    BatchNorm2d bn1_, bn2_;
    std::unique_ptr<Conv2d> shortcut_conv_;
    std::unique_ptr<BatchNorm2d> shortcut_bn_;
};

// Modules in a row.
class Sequential : public Module {
public:
    void add(std::unique_ptr<Module> m) { modules_.push_back(std::move(m)); }
    void register_parameters(ParameterStore &store, const std::string &prefix) override;
    void initialize(ParameterStore &store, std::mt19937_64 &rng) override;
    Tensor forward(const Tensor &x, const StepContext &ctx) override;
    Tensor backward(const Tensor &dy, const StepContext &ctx, bool need_input_grad) override;
    void collect_state(StateList &out, const std::string &prefix) override;
    int64_t multiply_adds(const Shape &input) const override;
    Shape output_shape(const Shape &input) const override;

private:
    std::vector<std::unique_ptr<Module>> modules_;
};

}  // namespace lowbit::nn
