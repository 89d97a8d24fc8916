// The float32 layers of trainer/nn/functional against the float64 references of
// reference/layers_reference.h (themselves checked against finite differences): pooling, linear,
// ReLU, softmax cross-entropy and add, forward and backward, on odd shapes and batches of 1 and 3;
// max-pooling ties, huge logits, determinism, and the errors on bad shapes and labels.
#include <gtest/gtest.h>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "nn/functional.h"
#include "reference/layers_reference.h"

using namespace lowbit;
namespace ref = lowbit::reference;

namespace {

Tensor random_tensor(const Shape &shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    Tensor t(shape);
    for (int64_t i = 0; i < t.numel(); i++) t[i] = dist(rng);
    return t;
}

std::vector<double> to_double(const Tensor &t) { return std::vector<double>(t.data(), t.data() + t.numel()); }

// got matches want to within rel_tol times want's largest magnitude (a few float32 ulps of the
// result's scale), element by element.
void expect_close(const Tensor &got, const std::vector<double> &want, double rel_tol = 1e-5) {
    ASSERT_EQ(got.numel(), int64_t(want.size()));
    double scale = 0.0;
    for (double w : want) scale = std::max(scale, std::abs(w));
    const double tol = rel_tol * std::max(scale, 1e-30);
    for (size_t i = 0; i < want.size(); i++) {
        ASSERT_TRUE(std::isfinite(got[int64_t(i)])) << "at " << i;
        ASSERT_NEAR(got[int64_t(i)], want[i], tol) << "at " << i << " of " << want.size();
    }
}

bool bitwise_equal(const Tensor &a, const Tensor &b) {
    return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.numel(), b.data());
}

using lowbit::test_util::invalid_argument_message;

bool contains(const std::string &s, const std::string &part) { return s.find(part) != std::string::npos; }

struct PoolCase {
    int64_t N, C, H, W;
    int K, S;
};

const PoolCase kPoolCases[] = {
    {1, 1, 4, 4, 2, 2}, {3, 2, 7, 7, 2, 2},  // 7x7 -> 3x3, last row / column unused
    {3, 2, 7, 7, 3, 1}, {1, 3, 5, 8, 3, 2},  // overlapping windows; non-square input
    {3, 4, 6, 5, 1, 1}, {1, 2, 9, 9, 3, 3},  // identity-sized windows; whole-tile windows
    {3, 1, 5, 5, 5, 1},                      // one window covering the input
};

ref::PoolShape pool_shape(const PoolCase &c) { return ref::PoolShape{c.N, c.C, c.H, c.W, c.K, c.S}; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Pooling

TEST(Functional, MaxPoolMatchesReference) {
    uint32_t seed = 1;
    for (const PoolCase &c : kPoolCases) {
        SCOPED_TRACE(testing::Message() << "N" << c.N << " C" << c.C << " " << c.H << "x" << c.W << " K" << c.K << " S"
                                        << c.S);
        const ref::PoolShape s = pool_shape(c);
        const Tensor x = random_tensor({c.N, c.C, c.H, c.W}, seed++);
        std::vector<int32_t> argmax;
        const Tensor y = nn::max_pool2d_forward(x, c.K, c.S, argmax);
        EXPECT_EQ(y.shape(), (Shape{c.N, c.C, s.out_h(), s.out_w()}));
        expect_close(y, ref::max_pool_forward(s, to_double(x)), 0.0);  // a copy: exact

        const std::vector<size_t> ref_arg = ref::max_pool_argmax(s, to_double(x));
        ASSERT_EQ(argmax.size(), ref_arg.size());
        for (size_t i = 0; i < ref_arg.size(); i++) EXPECT_EQ(size_t(argmax[i]), ref_arg[i]) << "at " << i;

        const Tensor dy = random_tensor(y.shape(), seed++);
        const Tensor dx = nn::max_pool2d_backward(dy, argmax, x.shape());
        EXPECT_EQ(dx.shape(), x.shape());
        expect_close(dx, ref::max_pool_backward(s, to_double(dy), to_double(x)));
    }
}

// Few distinct values, so most windows hold several equal maxima: the gradient must go to the
// first of them in row-major window order, where the reference puts it.
TEST(Functional, MaxPoolTiesGoToTheFirstMaximum) {
    {
        const Tensor x({1, 1, 2, 2});  // all zero: one window, four equal maxima
        std::vector<int32_t> argmax;
        nn::max_pool2d_forward(x, 2, 2, argmax);
        ASSERT_EQ(argmax, (std::vector<int32_t>{0}));
        Tensor dy({1, 1, 1, 1});
        dy[0] = 5.0f;
        const Tensor dx = nn::max_pool2d_backward(dy, argmax, x.shape());
        EXPECT_EQ(to_double(dx), (std::vector<double>{5, 0, 0, 0}));
    }
    uint32_t seed = 100;
    for (const PoolCase &c : kPoolCases) {
        SCOPED_TRACE(testing::Message() << c.H << "x" << c.W << " K" << c.K << " S" << c.S);
        const ref::PoolShape s = pool_shape(c);
        std::mt19937 rng(seed++);
        std::uniform_int_distribution<int> level(0, 2);
        Tensor x({c.N, c.C, c.H, c.W});
        for (int64_t i = 0; i < x.numel(); i++) x[i] = float(level(rng));
        std::vector<int32_t> argmax;
        nn::max_pool2d_forward(x, c.K, c.S, argmax);
        const std::vector<size_t> ref_arg = ref::max_pool_argmax(s, to_double(x));
        for (size_t i = 0; i < ref_arg.size(); i++) ASSERT_EQ(size_t(argmax[i]), ref_arg[i]) << "at " << i;
        // Integer gradients: sums of them are exact, so the comparison can be too.
        Tensor dy({c.N, c.C, s.out_h(), s.out_w()});
        for (int64_t i = 0; i < dy.numel(); i++) dy[i] = float(1 + i % 7);
        expect_close(nn::max_pool2d_backward(dy, argmax, x.shape()),
                     ref::max_pool_backward(s, to_double(dy), to_double(x)), 0.0);
    }
}

TEST(Functional, AvgPoolMatchesReference) {
    uint32_t seed = 200;
    for (const PoolCase &c : kPoolCases) {
        SCOPED_TRACE(testing::Message() << "N" << c.N << " " << c.H << "x" << c.W << " K" << c.K << " S" << c.S);
        const ref::PoolShape s = pool_shape(c);
        const Tensor x = random_tensor({c.N, c.C, c.H, c.W}, seed++);
        const Tensor y = nn::avg_pool2d_forward(x, c.K, c.S);
        EXPECT_EQ(y.shape(), (Shape{c.N, c.C, s.out_h(), s.out_w()}));
        expect_close(y, ref::avg_pool_forward(s, to_double(x)));

        const Tensor dy = random_tensor(y.shape(), seed++);
        const Tensor dx = nn::avg_pool2d_backward(dy, x.shape(), c.K, c.S);
        EXPECT_EQ(dx.shape(), x.shape());
        expect_close(dx, ref::avg_pool_backward(s, to_double(dy)));
    }
}

TEST(Functional, GlobalAvgPoolMatchesReference) {
    const Shape shapes[] = {{1, 1, 1, 1}, {1, 3, 7, 7}, {3, 5, 4, 9}, {3, 2, 56, 56}};
    uint32_t seed = 300;
    for (const Shape &shape : shapes) {
        SCOPED_TRACE(shape_string(shape));
        const ref::ActShape s{shape[0], shape[1], shape[2], shape[3]};
        const Tensor x = random_tensor(shape, seed++);
        const Tensor y = nn::global_avg_pool_forward(x);
        EXPECT_EQ(y.shape(), (Shape{shape[0], shape[1]}));
        expect_close(y, ref::global_avg_pool_forward(s, to_double(x)));

        const Tensor dy = random_tensor(y.shape(), seed++);
        const Tensor dx = nn::global_avg_pool_backward(dy, shape);
        EXPECT_EQ(dx.shape(), shape);
        expect_close(dx, ref::global_avg_pool_backward(s, to_double(dy)));
    }
}

TEST(Functional, PoolingRejectsBadShapes) {
    const Tensor x({1, 2, 5, 5});
    std::vector<int32_t> argmax;
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::max_pool2d_forward(x, 6, 1, argmax); }), "6"));
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::max_pool2d_forward(x, 0, 1, argmax); }), "kernel 0"));
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::avg_pool2d_forward(x, 2, 0); }), "stride 0"));
    EXPECT_TRUE(contains(invalid_argument_message([&] {
                             nn::avg_pool2d_forward(Tensor({2, 5, 5}), 2, 2);
                         }),
                         "[2, 5, 5]"));
    EXPECT_THROW(nn::global_avg_pool_forward(Tensor({2, 5})), std::invalid_argument);
    EXPECT_THROW(nn::global_avg_pool_backward(Tensor({2, 3}), {2, 2, 4, 4}), std::invalid_argument);

    // Backward: dy of the wrong shape, argmax of the wrong length or from another input.
    EXPECT_TRUE(contains(invalid_argument_message([&] {
                             nn::avg_pool2d_backward(Tensor({1, 2, 3, 3}), x.shape(), 2, 2);
                         }),
                         "[1, 2, 3, 3]"));
    const Tensor y = nn::max_pool2d_forward(x, 2, 2, argmax);  // 2x2 output
    EXPECT_THROW(nn::max_pool2d_backward(Tensor({1, 2, 3, 3}), argmax, x.shape()), std::invalid_argument);
    EXPECT_THROW(nn::max_pool2d_backward(y, argmax, {1, 3, 5, 5}), std::invalid_argument);
    std::vector<int32_t> bad = argmax;
    bad[0] = 30;  // in plane 1, but output 0 belongs to plane 0
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::max_pool2d_backward(y, bad, x.shape()); }), "30"));
    bad[0] = -1;
    EXPECT_THROW(nn::max_pool2d_backward(y, bad, x.shape()), std::invalid_argument);
    bad.pop_back();
    EXPECT_THROW(nn::max_pool2d_backward(y, bad, x.shape()), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Linear

TEST(Functional, LinearMatchesReference) {
    struct Case {
        Shape x;
        int64_t O;
    };
    const Case cases[] = {
        {{1, 1}, 1},         {{3, 7}, 5},   {{1, 33}, 10},                      // tails of the 16-lane sums
        {{3, 300}, 17},      {{5, 16}, 33}, {{9, 1000}, 3}, {{3, 2, 3, 5}, 4},  // rank-4 input
        {{6, 64, 1, 1}, 10},
    };
    uint32_t seed = 400;
    for (const Case &c : cases) {
        SCOPED_TRACE(testing::Message() << shape_string(c.x) << " O" << c.O);
        const int64_t N = c.x[0], I = shape_numel(c.x) / N;
        const ref::LinearShape s{N, I, c.O};
        const Tensor x = random_tensor(c.x, seed++);
        const Tensor w = random_tensor({c.O, I}, seed++);
        const Tensor b = random_tensor({c.O}, seed++);
        const Tensor y = nn::linear_forward(x, w, b);
        EXPECT_EQ(y.shape(), (Shape{N, c.O}));
        expect_close(y, ref::linear_forward(s, to_double(x), to_double(w), to_double(b)));

        // Gradients land in views of one buffer prefilled with garbage, as in the parameter store.
        const Tensor dy = random_tensor(y.shape(), seed++);
        std::vector<float> grads(size_t(c.O * I + c.O), 123.0f);
        Tensor dw = Tensor::wrap(grads.data(), {c.O, I});
        Tensor db = Tensor::wrap(grads.data() + c.O * I, {c.O});
        const Tensor dx = nn::linear_backward(dy, x, w, dw, db, true);
        EXPECT_EQ(dx.shape(), x.shape());
        const ref::LinearGrads g = ref::linear_backward(s, to_double(dy), to_double(x), to_double(w));
        expect_close(dx, g.dx);
        expect_close(dw, g.dW);
        expect_close(db, g.db);

        // Without dx: the same parameter gradients, and an empty result.
        std::vector<float> grads2(grads.size(), -7.0f);
        Tensor dw2 = Tensor::wrap(grads2.data(), {c.O, I});
        Tensor db2 = Tensor::wrap(grads2.data() + c.O * I, {c.O});
        const Tensor none = nn::linear_backward(dy, x, w, dw2, db2, false);
        EXPECT_EQ(none.numel(), 0);
        EXPECT_EQ(none.data(), nullptr);
        EXPECT_EQ(grads2, grads);
    }
}

// A sample's output must not depend on the batch around it (nor on its position in a tile), and
// runs must repeat bit for bit.
TEST(Functional, LinearIsDeterministicAndBatchIndependent) {
    const int64_t N = 7, I = 531, O = 37;  // 7 = one full tile of 4 and a short one
    const Tensor x = random_tensor({N, I}, 500);
    const Tensor w = random_tensor({O, I}, 501);
    const Tensor b = random_tensor({O}, 502);
    const Tensor y = nn::linear_forward(x, w, b);
    EXPECT_TRUE(bitwise_equal(y, nn::linear_forward(x, w, b)));
    for (int64_t n = 0; n < N; n++) {
        Tensor one({1, I});
        std::copy(x.data() + n * I, x.data() + (n + 1) * I, one.data());
        const Tensor y1 = nn::linear_forward(one, w, b);
        EXPECT_TRUE(std::equal(y1.data(), y1.data() + O, y.data() + n * O)) << "sample " << n;
    }
    const Tensor dy = random_tensor(y.shape(), 503);
    Tensor dw1({O, I}), db1({O}), dw2({O, I}), db2({O});
    const Tensor dx1 = nn::linear_backward(dy, x, w, dw1, db1, true);
    const Tensor dx2 = nn::linear_backward(dy, x, w, dw2, db2, true);
    EXPECT_TRUE(bitwise_equal(dx1, dx2));
    EXPECT_TRUE(bitwise_equal(dw1, dw2));
    EXPECT_TRUE(bitwise_equal(db1, db2));
}

TEST(Functional, LinearRejectsBadShapes) {
    const Tensor x({3, 8}), w({4, 8}), b({4}), dy({3, 4});
    Tensor dw({4, 8}), db({4});
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::linear_forward(x, Tensor({4, 9}), b); }), "[4, 9]"));
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::linear_forward(x, w, Tensor({5})); }), "[5]"));
    EXPECT_THROW(nn::linear_forward(Tensor({3, 2, 4}), w, b), std::invalid_argument);     // rank 3
    EXPECT_THROW(nn::linear_forward(Tensor({3, 2, 2, 3}), w, b), std::invalid_argument);  // 12 features
    EXPECT_THROW(nn::linear_forward(x, Tensor({32}), b), std::invalid_argument);
    EXPECT_THROW(nn::linear_backward(Tensor({3, 5}), x, w, dw, db, true), std::invalid_argument);
    Tensor bad_dw({8, 4}), bad_db({3});
    EXPECT_THROW(nn::linear_backward(dy, x, w, bad_dw, db, true), std::invalid_argument);
    EXPECT_THROW(nn::linear_backward(dy, x, w, dw, bad_db, true), std::invalid_argument);
    // A strided (non-contiguous) view is refused rather than read wrongly.
    std::vector<float> storage(64);
    const Tensor strided = Tensor::wrap(storage.data(), {3, 8}, {16, 1});
    EXPECT_THROW(nn::linear_forward(strided, w, b), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// ReLU, add

TEST(Functional, ReluMatchesReference) {
    Tensor x = random_tensor({3, 4, 7, 7}, 600);
    x[0] = 0.0f;  // the kink: gradient 0
    x[1] = -0.0f;
    const Tensor y = nn::relu_forward(x);
    EXPECT_EQ(y.shape(), x.shape());
    expect_close(y, ref::relu_forward(to_double(x)), 0.0);
    const Tensor dy = random_tensor(x.shape(), 601);
    const Tensor dx = nn::relu_backward(dy, y);
    expect_close(dx, ref::relu_backward(to_double(dy), to_double(x)), 0.0);
    EXPECT_THROW(nn::relu_backward(Tensor({3, 4, 7, 6}), y), std::invalid_argument);
}

TEST(Functional, AddMatchesReference) {
    const Tensor a = random_tensor({3, 5, 7, 7}, 700), b = random_tensor({3, 5, 7, 7}, 701);
    const Tensor y = nn::add(a, b);
    expect_close(y, ref::residual_add_forward(to_double(a), to_double(b)));
    EXPECT_TRUE(contains(invalid_argument_message([&] { nn::add(a, Tensor({3, 5, 7, 6})); }), "[3, 5, 7, 6]"));
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy

namespace {

void check_softmax(const Tensor &logits, const std::vector<int32_t> &labels, double rel_tol) {
    const int64_t N = logits.size(0), classes = logits.size(1);
    const std::vector<int64_t> labels64(labels.begin(), labels.end());
    const ref::SoftmaxCrossEntropy want = ref::softmax_cross_entropy(N, classes, to_double(logits), labels64);
    Tensor d;  // allocated by the call
    const nn::LossResult got = nn::softmax_cross_entropy(logits, labels, &d);
    EXPECT_TRUE(std::isfinite(got.loss));
    EXPECT_NEAR(got.loss, want.loss, 1e-12 * std::max(1.0, std::abs(want.loss)));
    EXPECT_EQ(d.shape(), logits.shape());
    expect_close(d, want.dlogits, rel_tol);
    int64_t correct = 0;
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits.data() + n * classes;
        correct += (std::max_element(z, z + classes) - z) == labels[size_t(n)];  // first max
    }
    EXPECT_EQ(got.correct, correct);
    // Into a view already shaped, and without dlogits: the same loss.
    std::vector<float> buffer(size_t(logits.numel()), 99.0f);
    Tensor view = Tensor::wrap(buffer.data(), logits.shape());
    EXPECT_EQ(nn::softmax_cross_entropy(logits, labels, &view).loss, got.loss);
    EXPECT_TRUE(bitwise_equal(view, d));
    EXPECT_EQ(nn::softmax_cross_entropy(logits, labels, nullptr).loss, got.loss);
}

}  // namespace

TEST(Functional, SoftmaxCrossEntropyMatchesReference) {
    const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 10}, {3, 10}, {7, 3}, {32, 100}};
    uint32_t seed = 800;
    for (auto [N, classes] : shapes) {
        SCOPED_TRACE(testing::Message() << N << "x" << classes);
        const Tensor logits = random_tensor({N, classes}, seed++, -5.0f, 5.0f);
        std::mt19937 rng(seed++);
        std::uniform_int_distribution<int32_t> label(0, int32_t(classes - 1));
        std::vector<int32_t> labels(static_cast<size_t>(N));
        for (int32_t &l : labels) l = label(rng);
        check_softmax(logits, labels, 1e-6);
    }
}

TEST(Functional, SoftmaxCrossEntropyHugeLogitsStayFinite) {
    const Tensor logits = random_tensor({3, 10}, 900, -1e4f, 1e4f);
    check_softmax(logits, {0, 4, 9}, 1e-6);
    Tensor same({2, 4});
    for (int64_t i = 0; i < same.numel(); i++) same[i] = 3e4f;  // all equal: uniform softmax
    check_softmax(same, {0, 3}, 1e-6);
}

TEST(Functional, SoftmaxCrossEntropyCountsCorrectWithFirstMaxOnTies) {
    Tensor logits({3, 3});
    const float values[] = {1, 3, 3, /**/ 1, 3, 3, /**/ 2, 0, 1};
    std::copy(values, values + 9, logits.data());
    const nn::LossResult r = nn::softmax_cross_entropy(logits, {1, 2, 0}, nullptr);
    EXPECT_EQ(r.correct, 2);  // sample 1's label is a tied maximum, but not the first
}

TEST(Functional, SoftmaxCrossEntropyRejectsBadInput) {
    const Tensor logits({3, 10});
    Tensor d({3, 10});
    EXPECT_TRUE(contains(invalid_argument_message([&] {
                             nn::softmax_cross_entropy(logits, {0, 10, 2}, &d);
                         }),
                         "label 10"));
    EXPECT_TRUE(contains(invalid_argument_message([&] {
                             nn::softmax_cross_entropy(logits, {0, 1, -1}, &d);
                         }),
                         "label -1"));
    EXPECT_THROW(nn::softmax_cross_entropy(logits, {0, 1}, &d), std::invalid_argument);
    Tensor wrong({3, 9});
    EXPECT_THROW(nn::softmax_cross_entropy(logits, {0, 1, 2}, &wrong), std::invalid_argument);
    EXPECT_THROW(nn::softmax_cross_entropy(Tensor({3, 2, 5}), {0, 1, 2}, nullptr), std::invalid_argument);
    EXPECT_THROW(nn::softmax_cross_entropy(Tensor({0, 10}), {}, nullptr), std::invalid_argument);
    // A bad label is found before dlogits is written.
    for (int64_t i = 0; i < d.numel(); i++) d[i] = 5.0f;
    EXPECT_THROW(nn::softmax_cross_entropy(logits, {0, 1, 12}, &d), std::invalid_argument);
    for (int64_t i = 0; i < d.numel(); i++) EXPECT_EQ(d[i], 5.0f);
}
