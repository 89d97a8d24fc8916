// The networks the trainer knows: the CIFAR ResNets (20/32/44/56: three stages of 16, 32 and
// 64 channels, n = (depth - 2) / 6 basic blocks each, 1x1 projection shortcuts where the shape
// changes), a small VGG and LeNet-5. A Network owns its modules and its ParameterStore.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/modules.h"

namespace lowbit::nn {

class Network {
public:
    // Builds `name` for images of shape (C, H, W) and `classes` classes, registers and
    // initializes its parameters from `seed`. Throws std::invalid_argument naming an unknown
    // model or an image size the model cannot take.
    Network(const std::string &name, const Shape &image_shape, int classes, const PrecisionPolicy &policy,
            uint64_t seed);

    const std::string &name() const { return name_; }
    ParameterStore &parameters() { return store_; }
    const ParameterStore &parameters() const { return store_; }
    // Logits (N, classes).
    Tensor forward(const Tensor &images, const StepContext &ctx) { return body_.forward(images, ctx); }
    // Writes every parameter gradient; the input gradient is not computed.
    void backward(const Tensor &grad_logits, const StepContext &ctx) { body_.backward(grad_logits, ctx, false); }
    // Batch-norm running statistics (views: writing them changes the network).
    StateList state();
    // Convolution and linear multiply-adds of one forward pass over one image.
    int64_t multiply_adds() const;

private:
    std::string name_;
    Shape image_shape_;
    Sequential body_;
    ParameterStore store_;
};

// The model names build_model accepts, for help texts.
std::vector<std::string> model_names();
// Throws std::invalid_argument unless `name` is one of them (any resnet of depth 6n + 2).
void validate_model_name(const std::string &name);

}  // namespace lowbit::nn
