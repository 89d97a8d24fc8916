#include "nn/models.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

namespace lowbit::nn {

namespace {

// Layer ids for the stochastic-rounding hash, handed out in order of construction.
struct Ids {
    uint32_t next = 0;
    uint32_t take(uint32_t n = 1) {
        const uint32_t id = next;
        next += n;
        return id;
    }
};

void add_conv_bn_relu(Sequential &s, int in, int out, int kernel, int pad, const LayerPrecision &p, Ids &ids) {
    s.add(std::make_unique<Conv2d>(in, out, kernel, 1, pad, p, ids.take()));
    s.add(std::make_unique<BatchNorm2d>(out, /*relu=*/true));
}

void build_resnet(Sequential &s, int depth, int in_channels, int classes, const PrecisionPolicy &policy) {
    if (depth < 8 || (depth - 2) % 6 != 0) {
        throw std::invalid_argument(fmt::format("resnet{}: depth must be 6n + 2 (20, 32, 44, 56, ...)", depth));
    }
    const int blocks = (depth - 2) / 6;
    Ids ids;
    add_conv_bn_relu(s, in_channels, 16, 3, 1, policy.first_conv(), ids);
    int channels = 16;
    for (int stage = 0; stage < 3; stage++) {
        const int out = 16 << stage;
        for (int b = 0; b < blocks; b++) {
            const int stride = (stage > 0 && b == 0) ? 2 : 1;
            s.add(std::make_unique<BasicBlock>(channels, out, stride, policy.conv(), ids.take(3)));
            channels = out;
        }
    }
    s.add(std::make_unique<GlobalAvgPool>());
    s.add(std::make_unique<Linear>(channels, classes, policy.linear(true), ids.take()));
}

// VGG-style: three stages of two 3x3 conv-BN-ReLU layers (32, 64, 128 channels), each
// followed by 2x2 max pooling, then a linear classifier on the flattened features.
void build_vgg_small(Sequential &s, const Shape &image, int classes, const PrecisionPolicy &policy) {
    Ids ids;
    int channels = int(image[0]);
    int64_t h = image[1], w = image[2];
    for (int stage = 0; stage < 3; stage++) {
        const int out = 32 << stage;
        add_conv_bn_relu(s, channels, out, 3, 1, stage == 0 ? policy.first_conv() : policy.conv(), ids);
        add_conv_bn_relu(s, out, out, 3, 1, policy.conv(), ids);
        s.add(std::make_unique<Pool2d>(PoolKind::max, 2, 2));
        channels = out;
        h /= 2;
        w /= 2;
    }
    if (h < 1 || w < 1) throw std::invalid_argument("vgg_small: images must be at least 8x8");
    s.add(std::make_unique<Linear>(int(channels * h * w), classes, policy.linear(true), ids.take()));
}

// LeNet-5: 5x5 convolutions of 6 and 16 channels, each with batch norm (in place of the
// original's biases and squashing), ReLU and 2x2 average pooling (the original's
// subsampling), then fully connected layers of 120 and 84 units with ReLU.
void build_lenet5(Sequential &s, const Shape &image, int classes, const PrecisionPolicy &policy) {
    Ids ids;
    int64_t h = image[1], w = image[2];
    add_conv_bn_relu(s, int(image[0]), 6, 5, 0, policy.first_conv(), ids);
    s.add(std::make_unique<Pool2d>(PoolKind::average, 2, 2));
    add_conv_bn_relu(s, 6, 16, 5, 0, policy.conv(), ids);
    s.add(std::make_unique<Pool2d>(PoolKind::average, 2, 2));
    h = ((h - 4) / 2 - 4) / 2;
    w = ((w - 4) / 2 - 4) / 2;
    if (h < 1 || w < 1) throw std::invalid_argument("lenet5: images must be at least 12x12");
    s.add(std::make_unique<Linear>(int(16 * h * w), 120, policy.linear(false), ids.take()));
    s.add(std::make_unique<Relu>());
    s.add(std::make_unique<Linear>(120, 84, policy.linear(false), ids.take()));
    s.add(std::make_unique<Relu>());
    s.add(std::make_unique<Linear>(84, classes, policy.linear(true), ids.take()));
}

}  // namespace

std::vector<std::string> model_names() {
    return {"resnet20", "resnet32", "resnet44", "resnet56", "vgg_small", "lenet5"};
}

namespace {
bool is_resnet(const std::string &name) {
    return name.rfind("resnet", 0) == 0 && name.size() > 6 && name.size() < 10 &&
           name.find_first_not_of("0123456789", 6) == std::string::npos;
}
}  // namespace

void validate_model_name(const std::string &name) {
    if (is_resnet(name)) {
        const int depth = std::stoi(name.substr(6));
        if (depth < 8 || (depth - 2) % 6 != 0)
            throw std::invalid_argument(fmt::format("{}: depth must be 6n + 2 (20, 32, 44, 56, ...)", name));
        return;
    }
    if (name != "vgg_small" && name != "lenet5")
        throw std::invalid_argument(
            fmt::format("unknown model '{}' (known: {})", name, fmt::join(model_names(), ", ")));
}

Network::Network(const std::string &name, const Shape &image_shape, int classes, const PrecisionPolicy &policy,
                 uint64_t seed)
    : name_(name), image_shape_(image_shape) {
    if (image_shape.size() != 3) throw std::invalid_argument("image shape must be (C, H, W)");
    if (classes < 2) throw std::invalid_argument(fmt::format("{}: needs at least 2 classes, got {}", name, classes));
    validate_model_name(name);
    if (is_resnet(name)) {
        build_resnet(body_, std::stoi(name.substr(6)), int(image_shape[0]), classes, policy);
    } else if (name == "vgg_small") {
        build_vgg_small(body_, image_shape, classes, policy);
    } else {
        build_lenet5(body_, image_shape, classes, policy);
    }
    body_.register_parameters(store_, "");
    store_.finalize();
    std::mt19937_64 rng(seed);
    body_.initialize(store_, rng);
}

StateList Network::state() {
    StateList out;
    body_.collect_state(out, "");
    return out;
}

int64_t Network::multiply_adds() const {
    Shape input = {1};
    input.insert(input.end(), image_shape_.begin(), image_shape_.end());
    return body_.multiply_adds(input);
}

}  // namespace lowbit::nn
