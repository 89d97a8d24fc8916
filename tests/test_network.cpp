// Whole networks: the gradient the modules' backward passes compute is the derivative of the
// loss (finite differences, float32 mode), and the low-bit network's gradient points where the
// float32 one does.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "nn/functional.h"
#include "nn/models.h"
#include "nn/modules.h"

namespace lowbit::nn {
namespace {

struct Problem {
    Tensor images;
    std::vector<int32_t> labels;
};

Problem random_problem(int64_t n, const Shape &image, int classes, uint32_t seed) {
    std::mt19937 rng(seed);
    Problem p{Tensor({n, image[0], image[1], image[2]}), {}};
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (int64_t k = 0; k < p.images.numel(); k++) p.images[k] = d(rng);
    for (int64_t i = 0; i < n; i++) p.labels.push_back(int32_t(rng() % uint32_t(classes)));
    return p;
}

double loss_of(Network &net, const Problem &p) {
    const Tensor logits = net.forward(p.images, StepContext{true, 7, 0});
    return softmax_cross_entropy(logits, p.labels, nullptr).loss;
}

std::vector<float> gradient_of(Network &net, const Problem &p) {
    const StepContext ctx{true, 7, 0};
    Tensor grad_logits;
    softmax_cross_entropy(net.forward(p.images, ctx), p.labels, &grad_logits);
    net.backward(grad_logits, ctx);
    const ParameterStore &s = net.parameters();
    return std::vector<float>(s.grads(), s.grads() + s.total_size());
}

// Directional derivative along the gradient restricted to one parameter (so that every
// layer's gradient is checked on its own) against a central difference of the loss.
void check_gradients_by_finite_differences(const std::string &model, const Shape &image, int64_t batch) {
    Network net(model, image, 3, PrecisionPolicy::float32(), 11);
    const Problem p = random_problem(batch, image, 3, 5);
    const std::vector<float> grad = gradient_of(net, p);
    ParameterStore &s = net.parameters();
    int checked = 0;
    for (size_t i = 0; i < s.count(); i++) {
        const int64_t offset = s.offset(i), count = s.numel(i);
        double norm = 0;
        for (int64_t k = 0; k < count; k++) norm += double(grad[size_t(offset + k)]) * grad[size_t(offset + k)];
        norm = std::sqrt(norm);
        if (norm < 1e-6) continue;  // e.g. a last BN's beta under an exactly balanced loss
        float *w = s.values() + offset;
        const std::vector<float> saved(w, w + count);
        const double h = 2e-3;
        auto shifted_loss = [&](double t) {
            for (int64_t k = 0; k < count; k++) w[k] = float(saved[size_t(k)] + t * grad[size_t(offset + k)] / norm);
            return loss_of(net, p);
        };
        const double numeric = (shifted_loss(h) - shifted_loss(-h)) / (2 * h);
        std::copy(saved.begin(), saved.end(), w);
        // The analytic directional derivative along g/|g| is |g|.
        EXPECT_NEAR(numeric, norm, 0.03 * norm + 1e-4) << model << " parameter " << s.name(i);
        checked++;
    }
    EXPECT_GT(checked, int(s.count()) / 2) << "too few parameters had a gradient to check";
}

TEST(NetworkGradient, TinyResNetMatchesFiniteDifferences) {
    check_gradients_by_finite_differences("resnet8", {2, 8, 8}, 4);
}

TEST(NetworkGradient, LeNetMatchesFiniteDifferences) {
    check_gradients_by_finite_differences("lenet5", {1, 16, 16}, 4);
}

TEST(NetworkGradient, VggSmallMatchesFiniteDifferences) {
    check_gradients_by_finite_differences("vgg_small", {3, 8, 8}, 3);
}

double cosine(const std::vector<float> &a, const std::vector<float> &b) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t k = 0; k < a.size(); k++) {
        ab += double(a[k]) * b[k];
        aa += double(a[k]) * a[k];
        bb += double(b[k]) * b[k];
    }
    return ab / std::sqrt(aa * bb);
}

// The same network and weights in low-bit and float32: the gradients point the same way, the
// closer the wider the format. Not closer than this: quantizing seven layers' activations at
// 8 bits already moves this untrained network's logits by ~5% (measured), and its gradients
// with them; each convolution's arithmetic is checked exactly in test_conv. What this catches
// is wiring: a wrong saved operand, role or layout gives a cosine near 0.
TEST(NetworkGradient, LowBitGradientsFollowFloat32) {
    const Shape image = {1, 16, 16};
    const Problem p = random_problem(16, image, 3, 9);
    Network reference("resnet8", image, 3, PrecisionPolicy::float32(), 3);
    const std::vector<float> want = gradient_of(reference, p);
    for (const auto &[format, min_cosine] : {std::pair{"m7e0/g3/sample", 0.93}, {"m3e0/g3/sample", 0.35}}) {
        for (Rounding r : {Rounding::nearest, Rounding::stochastic}) {
            PrecisionPolicy policy;
            policy.body.error_rounding = r;
            policy.body.low_bit = true;
            policy.body.activations = parse_format(format);
            policy.body.errors = parse_format(format);
            Format w = parse_format(format);
            w.axis = GroupAxis::channel;
            policy.body.weights = w;
            Network net("resnet8", image, 3, policy, 3);
            const double c = cosine(gradient_of(net, p), want);
            EXPECT_GT(c, min_cosine) << format << " " << to_string(r);
            EXPECT_LT(c, 1.0 - 1e-9) << format << ": identical to float32, so nothing was quantized";
        }
    }
}

PrecisionPolicy four_bit() {
    PrecisionPolicy policy;
    policy.body.low_bit = true;
    policy.body.activations = parse_format("m3e0/g3/sample");
    policy.body.errors = parse_format("m3e0/g3/sample");
    policy.body.weights = parse_format("m3e0/g3/channel");
    return policy;
}

// Linear layers on the integer kernels (as 1x1 convolutions), and the policy that keeps the
// first and last layers float32: the gradients still follow float32's, and differ from the
// all-quantized network's where the policy says they should.
TEST(NetworkGradient, QuantizedLinearAndFloatFirstLastFollowFloat32) {
    const Shape image = {1, 16, 16};
    const Problem p = random_problem(16, image, 3, 4);
    Network reference("lenet5", image, 3, PrecisionPolicy::float32(), 5);
    const std::vector<float> want = gradient_of(reference, p);
    PrecisionPolicy linear = four_bit();
    linear.quantize_linear = true;
    Network quantized_linear("lenet5", image, 3, linear, 5), plain("lenet5", image, 3, four_bit(), 5);
    const std::vector<float> with_linear = gradient_of(quantized_linear, p), without = gradient_of(plain, p);
    EXPECT_GT(cosine(with_linear, want), 0.35);
    EXPECT_NE(with_linear, without) << "--quantize-linear changed nothing";
    PrecisionPolicy first_last = linear;
    first_last.float_first_last = true;
    Network edges("lenet5", image, 3, first_last, 5);
    const std::vector<float> g = gradient_of(edges, p);
    EXPECT_GT(cosine(g, want), cosine(with_linear, want) - 0.05);
    // Which layers the policy keeps float32: the first conv and the last linear only.
    EXPECT_FALSE(first_last.first_conv().low_bit);
    EXPECT_FALSE(first_last.linear(true).low_bit);
    EXPECT_TRUE(first_last.linear(false).low_bit);
    EXPECT_TRUE(first_last.conv().low_bit);
}

// Layers after a ReLU take the unsigned activation format of the same width: twice the levels
// for the same bits, so the gradients come closer to float32's. The first layer (a signed
// image) keeps the signed format, and an 8-bit format whose unsigned variant would not fit
// int8 stays as it is.
TEST(NetworkGradient, UnsignedActivationsAfterReluFollowFloat32Closer) {
    PrecisionPolicy policy = four_bit();
    policy.unsigned_activations = true;
    EXPECT_EQ(policy.conv().activations, parse_format("um4e0/g3/sample"));
    EXPECT_EQ(policy.first_conv().activations, parse_format("m3e0/g3/sample"));
    EXPECT_EQ(policy.conv().weights, parse_format("m3e0/g3/channel"));
    EXPECT_EQ(policy.conv().errors, parse_format("m3e0/g3/sample"));
    EXPECT_EQ(unsigned_same_bits(parse_format("m1e2/g3/sample")), parse_format("um2e2/g3/sample"));
    EXPECT_EQ(unsigned_same_bits(parse_format("m7e0")), parse_format("m7e0"));

    const Shape image = {1, 16, 16};
    const Problem p = random_problem(16, image, 3, 9);
    Network reference("resnet8", image, 3, PrecisionPolicy::float32(), 3);
    const std::vector<float> want = gradient_of(reference, p);
    Network signed_net("resnet8", image, 3, four_bit(), 3), unsigned_net("resnet8", image, 3, policy, 3);
    const double signed_cosine = cosine(gradient_of(signed_net, p), want);
    const double unsigned_cosine = cosine(gradient_of(unsigned_net, p), want);
    std::cout << "cosine to float32: signed 4-bit activations " << signed_cosine << ", unsigned " << unsigned_cosine
              << "\n";
    EXPECT_GT(unsigned_cosine, signed_cosine);
}

// Recalibration (StepContext::average_batch, for a network deployed at another precision):
// batch k sets the running statistics to the plain average of batches 1..k of the batch
// means and unbiased variances, whatever they held before; against float64.
// A residual block's strided shortcut reads the input its conv1 quantized
// (Conv2d::forward_sharing_input): its output and its gradients are those of a layer that
// quantized the input itself, bit for bit. With stochastic activation rounding it quantizes
// its own (the draws depend on the layer), which gives what forward gives.
TEST(Conv2dModule, SharedQuantizedInputGivesTheSameResults) {
    for (Rounding rounding : {Rounding::nearest, Rounding::stochastic}) {
        LayerPrecision p;
        p.low_bit = true;
        p.activations = parse_format("um4e0/g3/sample");
        p.weights = parse_format("m3e0/g3/channel");
        p.errors = parse_format("m1e2/g3/sample");
        p.activation_rounding = rounding;
        ParameterStore store;
        Conv2d conv1(4, 6, 3, 1, 1, p, 1), shared(4, 8, 1, 2, 0, p, 2), own(4, 8, 1, 2, 0, p, 2);
        conv1.register_parameters(store, "conv1.");
        shared.register_parameters(store, "shared.");
        own.register_parameters(store, "own.");
        store.finalize();
        std::mt19937_64 rng(3);
        conv1.initialize(store, rng);
        shared.initialize(store, rng);
        Tensor w_shared = store.value(1), w_own = store.value(2);
        for (int64_t k = 0; k < w_own.numel(); k++) w_own[k] = w_shared[k];
        std::mt19937 data(4);
        std::normal_distribution<float> d(0.0f, 1.0f);
        Tensor x({3, 4, 8, 8}), dy({3, 8, 4, 4});
        for (int64_t k = 0; k < x.numel(); k++) x[k] = std::max(0.0f, d(data));
        for (int64_t k = 0; k < dy.numel(); k++) dy[k] = d(data);
        const StepContext ctx{true, 5, 2};
        conv1.forward(x, ctx);
        const Tensor y_shared = shared.forward_sharing_input(x, conv1, ctx), y_own = own.forward(x, ctx);
        ASSERT_EQ(y_shared.numel(), y_own.numel());
        for (int64_t k = 0; k < y_own.numel(); k++) ASSERT_EQ(y_shared[k], y_own[k]) << to_string(rounding) << k;
        const Tensor dx_shared = shared.backward(dy, ctx, true), dx_own = own.backward(dy, ctx, true);
        for (int64_t k = 0; k < dx_own.numel(); k++) ASSERT_EQ(dx_shared[k], dx_own[k]) << k;
        const Tensor g_shared = store.grad(1), g_own = store.grad(2);
        double norm = 0;
        for (int64_t k = 0; k < g_own.numel(); k++) {
            ASSERT_EQ(g_shared[k], g_own[k]) << k;
            norm += std::fabs(g_own[k]);
        }
        EXPECT_GT(norm, 0.0);  // a gradient, not two zero buffers
    }
}

TEST(BatchNormModule, RecalibrationAveragesTheBatchStatistics) {
    const int64_t N = 4, C = 3, H = 5, W = 6;
    BatchNorm2d bn(C, false);
    ParameterStore store;
    bn.register_parameters(store, "bn.");
    store.finalize();
    std::mt19937_64 rng(1);
    bn.initialize(store, rng);
    StateList state;
    bn.collect_state(state, "bn.");
    ASSERT_EQ(state.size(), 2u);
    Tensor &running_mean = state[0].second, &running_var = state[1].second;
    for (int64_t c = 0; c < C; c++) running_mean[c] = running_var[c] = 100.0f;  // stale values

    std::vector<double> mean_sum(C, 0.0), var_sum(C, 0.0);
    for (int k = 1; k <= 3; k++) {
        const Tensor x = random_problem(N, {C, H, W}, 2, uint32_t(10 + k)).images;
        for (int64_t c = 0; c < C; c++) {
            double sum = 0, squares = 0;
            for (int64_t n = 0; n < N; n++) {
                for (int64_t i = 0; i < H * W; i++) sum += x[(n * C + c) * H * W + i];
            }
            const double mean = sum / double(N * H * W);
            for (int64_t n = 0; n < N; n++) {
                for (int64_t i = 0; i < H * W; i++) {
                    const double d = x[(n * C + c) * H * W + i] - mean;
                    squares += d * d;
                }
            }
            mean_sum[size_t(c)] += mean;
            var_sum[size_t(c)] += squares / double(N * H * W - 1);
        }
        bn.forward(x, StepContext{true, 1, uint64_t(k - 1), uint64_t(k)});
        for (int64_t c = 0; c < C; c++) {
            EXPECT_NEAR(running_mean[c], mean_sum[size_t(c)] / k, 1e-6) << "batch " << k << ", channel " << c;
            EXPECT_NEAR(running_var[c], var_sum[size_t(c)] / k, 1e-5) << "batch " << k << ", channel " << c;
        }
    }
    // Training proper keeps its moving average (momentum 0.1).
    const float before = running_mean[0];
    const Tensor x = random_problem(N, {C, H, W}, 2, 20).images;
    bn.forward(x, StepContext{true, 1, 3});
    double sum = 0;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t i = 0; i < H * W; i++) sum += x[n * C * H * W + i];
    }
    EXPECT_NEAR(running_mean[0], 0.9 * before + 0.1 * sum / double(N * H * W), 1e-6);
}

TEST(Network, RejectsUnknownModelsAndSizes) {
    EXPECT_THROW(Network("resnet21", {1, 32, 32}, 10, PrecisionPolicy::float32(), 1), std::invalid_argument);
    EXPECT_THROW(Network("alexnet", {1, 32, 32}, 10, PrecisionPolicy::float32(), 1), std::invalid_argument);
    EXPECT_THROW(Network("lenet5", {1, 8, 8}, 10, PrecisionPolicy::float32(), 1), std::invalid_argument);
}

TEST(Network, ResNet20HasThePapersShape) {
    Network net("resnet20", {3, 32, 32}, 10, PrecisionPolicy::float32(), 1);
    // 0.27 M parameters (He et al. 2016, table 6) and 41 M multiply-adds per 32x32 image.
    int64_t params = 0;
    for (size_t i = 0; i < net.parameters().count(); i++) params += net.parameters().numel(i);
    EXPECT_NEAR(double(params), 0.27e6, 0.01e6);
    EXPECT_NEAR(double(net.multiply_adds()), 41e6, 1.5e6);
}

}  // namespace
}  // namespace lowbit::nn
