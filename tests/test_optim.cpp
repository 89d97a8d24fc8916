// The optimizer side of training: the parameter store's single-buffer layout, SGD against
// hand computation and against PyTorch 1.13's torch.optim.SGD, checkpointing its state, and
// the learning-rate schedules with their command-line parser.
#include <gtest/gtest.h>

#include "test_util.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "optim/parameters.h"
#include "optim/schedule.h"
#include "optim/sgd.h"

using namespace lowbit;

namespace {

bool aligned64(const void *p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

using lowbit::test_util::invalid_argument_message;

}  // namespace

TEST(ParameterStore, LayoutIsContiguousAndAligned) {
    ParameterStore store;
    EXPECT_EQ(store.add("conv1.weight", {4, 3, 3, 3}), 0u);  // 108 floats
    EXPECT_EQ(store.add("conv1.bias", {4}, false), 1u);
    EXPECT_EQ(store.add("fc.weight", {10, 16}), 2u);  // 160 floats, already a multiple of 16
    EXPECT_EQ(store.add("scalar", {}, false), 3u);
    EXPECT_EQ(store.count(), 4u);
    EXPECT_EQ(store.offset(0), 0);
    EXPECT_EQ(store.offset(1), 112);
    EXPECT_EQ(store.offset(2), 128);
    EXPECT_EQ(store.offset(3), 288);
    EXPECT_EQ(store.total_size(), 304);
    EXPECT_EQ(store.values(), nullptr);

    store.finalize();
    EXPECT_TRUE(aligned64(store.values()));
    EXPECT_TRUE(aligned64(store.grads()));
    for (int64_t i = 0; i < store.total_size(); ++i) {
        EXPECT_EQ(store.values()[i], 0.0f);
        EXPECT_EQ(store.grads()[i], 0.0f);
    }
    for (size_t i = 0; i < store.count(); ++i) {
        Tensor v = store.value(i), g = store.grad(i);
        EXPECT_EQ(v.shape(), store.shape(i));
        EXPECT_EQ(g.shape(), store.shape(i));
        EXPECT_EQ(v.data(), store.values() + store.offset(i));
        EXPECT_EQ(g.data(), store.grads() + store.offset(i));
        EXPECT_TRUE(aligned64(v.data()));
        EXPECT_TRUE(aligned64(g.data()));
        EXPECT_TRUE(v.is_contiguous());
        EXPECT_EQ(v.numel(), store.numel(i));
    }
    EXPECT_EQ(store.name(2), "fc.weight");
    EXPECT_EQ(store.shape(0), (Shape{4, 3, 3, 3}));
    EXPECT_TRUE(store.decay(0));
    EXPECT_FALSE(store.decay(1));
    EXPECT_EQ(store.index("conv1.bias"), 1u);
    EXPECT_THROW(store.index("nope"), std::out_of_range);
    EXPECT_THROW(store.value(4), std::out_of_range);
    EXPECT_THROW(store.name(4), std::out_of_range);
}

TEST(ParameterStore, ViewsAliasTheBuffers) {
    ParameterStore store;
    store.add("a", {2, 3});
    store.add("b", {5});
    store.finalize();
    Tensor b = store.value(1);
    b.at({4}) = 7.0f;
    EXPECT_EQ(store.values()[store.offset(1) + 4], 7.0f);
    store.grads()[store.offset(0) + 5] = 3.0f;
    EXPECT_EQ(store.grad(0).at({1, 2}), 3.0f);
    Tensor ga = store.grad(0);
    ga[0] = 1.0f;
    store.zero_grads();
    EXPECT_EQ(ga[0], 0.0f);
    EXPECT_EQ(store.grad(0).at({1, 2}), 0.0f);
    EXPECT_EQ(b.at({4}), 7.0f);  // values untouched
}

TEST(ParameterStore, RejectsDuplicatesAndLateRegistration) {
    ParameterStore store;
    store.add("layer.weight", {3});
    const std::string msg = invalid_argument_message([&] { store.add("layer.weight", {4}); });
    EXPECT_NE(msg.find("layer.weight"), std::string::npos) << msg;
    EXPECT_THROW(store.add("", {1}), std::invalid_argument);
    EXPECT_THROW(store.add("neg", {-1}), std::invalid_argument);
    EXPECT_THROW(store.value(0), std::logic_error);  // before finalize
    EXPECT_THROW(store.zero_grads(), std::logic_error);
    store.finalize();
    EXPECT_THROW(store.add("late", {1}), std::logic_error);
    EXPECT_THROW(store.finalize(), std::logic_error);
    EXPECT_EQ(store.count(), 1u);
}

TEST(ParameterStore, EmptyStoreFinalizes) {
    ParameterStore store;
    store.finalize();
    EXPECT_EQ(store.total_size(), 0);
    EXPECT_NE(store.values(), nullptr);
    store.zero_grads();
}

// By hand: w = 1, gradient 0.5 on every step, lr 0.1, momentum 0.9.
TEST(Sgd, MomentumByHand) {
    for (bool nesterov : {false, true}) {
        ParameterStore store;
        store.add("w", {1});
        store.finalize();
        store.values()[0] = 1.0f;
        Sgd sgd(store, {0.1f, 0.9f, nesterov, 0.0f, 0.0f});
        store.grads()[0] = 0.5f;
        sgd.step(0.1f);
        // buf = 0.5; plain: w = 1 - 0.1 * 0.5; nesterov: g = 0.5 + 0.9 * 0.5 = 0.95.
        EXPECT_FLOAT_EQ(store.values()[0], nesterov ? 0.905f : 0.95f);
        EXPECT_FLOAT_EQ(sgd.momentum_buffer()[0], 0.5f);
        sgd.step(0.1f);
        // buf = 0.9 * 0.5 + 0.5 = 0.95; plain: w -= 0.095; nesterov: g = 0.5 + 0.855 = 1.355.
        EXPECT_FLOAT_EQ(store.values()[0], nesterov ? 0.7695f : 0.855f);
        EXPECT_FLOAT_EQ(sgd.momentum_buffer()[0], 0.95f);
        EXPECT_EQ(sgd.steps(), 2);
    }
}

// By hand: decay applies to "w" only; dampening 0.5 leaves the first step undamped.
TEST(Sgd, DecayAndDampeningByHand) {
    ParameterStore store;
    store.add("w", {1});
    store.add("b", {1}, false);
    store.finalize();
    float *w = store.values() + store.offset(0), *b = store.values() + store.offset(1);
    *w = 2.0f;
    *b = 2.0f;
    Sgd sgd(store, {0.1f, 0.5f, false, 0.25f, 0.5f});
    store.grad(0)[0] = 1.0f;
    store.grad(1)[0] = 1.0f;
    sgd.step();  // options' lr
    // w: g = 1 + 0.25 * 2 = 1.5, buf = 1.5, w = 2 - 0.15; b: g = buf = 1, b = 1.9.
    EXPECT_FLOAT_EQ(*w, 1.85f);
    EXPECT_FLOAT_EQ(*b, 1.9f);
    sgd.step(1.0f);
    // w: g = 1 + 0.4625 = 1.4625, buf = 0.75 + 0.73125 = 1.48125, w = 1.85 - 1.48125;
    // b: buf = 0.5 + 0.5 = 1, b = 0.9.
    EXPECT_FLOAT_EQ(*w, 0.36875f);
    EXPECT_FLOAT_EQ(*b, 0.9f);
}

namespace {

// The case that the PyTorch references below were computed for: w (2x3, decay) = [[0.5, -1, 2],
// [0.25, -0.75, 1.5]], b (3, no decay) = [0.1, -0.2, 0.3], g (2, no decay) = [1, -1]; before step
// s (0-based) every element's gradient is 0.5 * value + 0.1 * (k + 1) - 0.05 * s, k the flat index
// within its parameter; learning rates 0.1, 0.05, 0.2, 0.1 for the four steps.
constexpr std::array<float, 4> kLrs = {0.1f, 0.05f, 0.2f, 0.1f};

void setup(ParameterStore &store) {
    store.add("w", {2, 3});
    store.add("b", {3}, false);
    store.add("g", {2}, false);
    store.finalize();
    const std::vector<std::vector<float>> init = {
        {0.5f, -1.0f, 2.0f, 0.25f, -0.75f, 1.5f}, {0.1f, -0.2f, 0.3f}, {1.0f, -1.0f}};
    for (size_t p = 0; p < 3; ++p) {
        Tensor v = store.value(p);
        for (int64_t k = 0; k < v.numel(); ++k) v[k] = init[p][size_t(k)];
    }
}

void set_grads(ParameterStore &store, int64_t s) {
    for (size_t p = 0; p < store.count(); ++p) {
        Tensor v = store.value(p), g = store.grad(p);
        for (int64_t k = 0; k < v.numel(); ++k) g[k] = 0.5f * v[k] + 0.1f * float(k + 1) - 0.05f * float(s);
    }
}

std::vector<float> flat_values(ParameterStore &store) {
    std::vector<float> out;
    for (size_t p = 0; p < store.count(); ++p) {
        Tensor v = store.value(p);
        for (int64_t k = 0; k < v.numel(); ++k) out.push_back(v[k]);
    }
    return out;
}

struct Reference {
    const char *name;
    SgdOptions options;
    std::array<float, 11> after;  // w, b, g flattened, after the four steps
};

// Produced once with /usr/bin/python3 and torch 1.13: torch.optim.SGD with two parameter groups
// ({w} with the weight decay, {b, g} with weight_decay 0), p.grad set as above before each
// opt.step(), the group lr set per step, and the final values printed with '%.9g'.
const Reference kReferences[] = {
    {"plain",
     {0.1f, 0.0f, false, 0.0f, 0.0f},
     {0.390498132f, -0.839028716f, 1.49519134f, 0.0676784441f, -0.765876532f, 0.974385619f, 0.0737206265f,
      -0.205473766f, 0.148886859f, 0.786469936f, -0.839028716f}},
    {"momentum",
     {0.1f, 0.9f, false, 0.0f, 0.0f},
     {0.206881255f, -0.641737461f, 0.754862487f, -0.21849063f, -0.817640662f, 0.204756156f, 0.00730624376f,
      -0.242587507f, -0.093331255f, 0.456350029f, -0.641737461f}},
    {"nesterov",
     {0.1f, 0.9f, true, 0.0f, 0.0f},
     {0.154653504f, -0.545657814f, 0.485877633f, -0.310647309f, -0.818531156f, -0.0756368935f, 0.000711575907f,
      -0.23777391f, -0.168375522f, 0.347080916f, -0.545657814f}},
    {"decay",
     {0.1f, 0.9f, false, 0.1f, 0.0f},
     {0.162514046f, -0.548027992f, 0.577009439f, -0.235509276f, -0.742098093f, 0.0770094395f, 0.00730624376f,
      -0.242587507f, -0.093331255f, 0.456350029f, -0.641737461f}},
    {"dampening",
     {0.1f, 0.8f, false, 0.05f, 0.3f},
     {0.26596567f, -0.706777751f, 1.02053392f, -0.102212518f, -0.774949849f, 0.502352595f, 0.0290223025f, -0.234393299f,
      0.00951583404f, 0.599762559f, -0.741717994f}},
    {"nesterov_decay",
     {0.1f, 0.9f, true, 0.1f, 0.0f},
     {0.106441177f, -0.438225776f, 0.292858243f, -0.322683752f, -0.7256006f, -0.207141787f, 0.000711575907f,
      -0.23777391f, -0.168375522f, 0.347080916f, -0.545657814f}},
};

}  // namespace

TEST(Sgd, MatchesPyTorch) {
    for (const Reference &ref : kReferences) {
        SCOPED_TRACE(ref.name);
        ParameterStore store;
        setup(store);
        Sgd sgd(store, ref.options);
        for (size_t s = 0; s < kLrs.size(); ++s) {
            set_grads(store, int64_t(s));
            sgd.step(kLrs[s]);
        }
        const std::vector<float> got = flat_values(store);
        ASSERT_EQ(got.size(), ref.after.size());
        // A few ulps: PyTorch's vectorised kernels may fuse multiply-adds differently.
        for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], ref.after[i], 2e-6f) << "element " << i;
    }
}

TEST(Sgd, DecayExemptParametersIgnoreWeightDecay) {
    // With decay only on "w", the no-decay parameters of "decay" match those of "momentum"
    // exactly (same arithmetic), while "w" differs.
    std::vector<float> results[2];
    for (int run = 0; run < 2; ++run) {
        ParameterStore store;
        setup(store);
        Sgd sgd(store, {0.1f, 0.9f, false, run == 0 ? 0.0f : 0.1f, 0.0f});
        for (size_t s = 0; s < kLrs.size(); ++s) {
            set_grads(store, int64_t(s));
            sgd.step(kLrs[s]);
        }
        results[run] = flat_values(store);
    }
    for (size_t i = 0; i < 6; ++i) EXPECT_NE(results[0][i], results[1][i]) << i;
    for (size_t i = 6; i < 11; ++i) EXPECT_EQ(results[0][i], results[1][i]) << i;
}

TEST(Sgd, StateRestoreContinuesIdentically) {
    const SgdOptions options{0.1f, 0.8f, false, 0.05f, 0.3f};
    // Uninterrupted run.
    ParameterStore a;
    setup(a);
    Sgd sa(a, options);
    for (size_t s = 0; s < kLrs.size(); ++s) {
        set_grads(a, int64_t(s));
        sa.step(kLrs[s]);
    }
    // Two steps, a "checkpoint" of values and optimizer state, then a fresh store and optimizer.
    ParameterStore b;
    setup(b);
    std::vector<float> values, momentum;
    int64_t steps = 0;
    {
        Sgd sb(b, options);
        for (size_t s = 0; s < 2; ++s) {
            set_grads(b, int64_t(s));
            sb.step(kLrs[s]);
        }
        values.assign(b.values(), b.values() + b.total_size());
        momentum = sb.state();
        steps = sb.steps();
        EXPECT_EQ(steps, 2);
        EXPECT_EQ(int64_t(momentum.size()), b.total_size());
    }
    ParameterStore c;
    setup(c);
    std::copy(values.begin(), values.end(), c.values());
    Sgd sc(c, options);
    sc.load_state(momentum, steps);
    EXPECT_EQ(sc.steps(), 2);
    for (size_t s = 2; s < kLrs.size(); ++s) {
        set_grads(c, int64_t(s));
        sc.step(kLrs[s]);
    }
    EXPECT_EQ(flat_values(a), flat_values(c));  // bit-identical
    for (int64_t i = 0; i < a.total_size(); ++i) EXPECT_EQ(sa.momentum_buffer()[i], sc.momentum_buffer()[i]) << i;

    // Without the step count the restored optimizer would re-initialise the buffer; steps = 0
    // must do exactly that.
    ParameterStore d;
    setup(d);
    Sgd sd(d, options);
    sd.load_state(std::vector<float>(size_t(d.total_size()), 123.0f), 0);
    set_grads(d, 0);
    sd.step(kLrs[0]);
    ParameterStore e;
    setup(e);
    Sgd se(e, options);
    set_grads(e, 0);
    se.step(kLrs[0]);
    EXPECT_EQ(flat_values(d), flat_values(e));

    EXPECT_THROW(sc.load_state(std::vector<float>(3), 1), std::invalid_argument);
    EXPECT_THROW(sc.load_state(momentum, -1), std::invalid_argument);
}

TEST(Sgd, RejectsBadOptions) {
    ParameterStore unfinalized;
    unfinalized.add("w", {1});
    EXPECT_THROW(Sgd(unfinalized, {}), std::logic_error);
    ParameterStore store;
    store.add("w", {1});
    store.finalize();
    EXPECT_THROW(Sgd(store, {-0.1f, 0.9f, false, 0.0f, 0.0f}), std::invalid_argument);
    EXPECT_THROW(Sgd(store, {0.1f, -0.9f, false, 0.0f, 0.0f}), std::invalid_argument);
    EXPECT_THROW(Sgd(store, {0.1f, 0.9f, false, -1.0f, 0.0f}), std::invalid_argument);
    EXPECT_THROW(Sgd(store, {0.1f, 0.0f, true, 0.0f, 0.0f}), std::invalid_argument);  // nesterov, no momentum
    EXPECT_THROW(Sgd(store, {0.1f, 0.9f, true, 0.0f, 0.1f}), std::invalid_argument);  // nesterov, dampening
    EXPECT_THROW(Sgd(store, {NAN, 0.9f, false, 0.0f, 0.0f}), std::invalid_argument);
}

TEST(LrSchedule, WarmupThenConstant) {
    LrSchedule s;
    s.kind = LrSchedule::Kind::constant;
    s.base_lr = 0.4f;
    s.warmup_steps = 4;
    EXPECT_FLOAT_EQ(s.lr(0), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(1), 0.2f);
    EXPECT_FLOAT_EQ(s.lr(3), 0.4f);  // last warm-up step reaches base_lr
    EXPECT_FLOAT_EQ(s.lr(4), 0.4f);
    EXPECT_FLOAT_EQ(s.lr(1000), 0.4f);
    EXPECT_THROW(s.lr(-1), std::invalid_argument);
    s.warmup_steps = 0;
    EXPECT_FLOAT_EQ(s.lr(0), 0.4f);
}

TEST(LrSchedule, StepAtMilestones) {
    LrSchedule s;
    s.kind = LrSchedule::Kind::step;
    s.base_lr = 0.1f;
    s.milestones = {30, 60};
    EXPECT_FLOAT_EQ(s.lr(0), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(29), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(30), 0.01f);
    EXPECT_FLOAT_EQ(s.lr(59), 0.01f);
    EXPECT_FLOAT_EQ(s.lr(60), 0.001f);
    EXPECT_FLOAT_EQ(s.lr(10000), 0.001f);
    s.gamma = 0.5f;
    s.warmup_steps = 10;
    EXPECT_FLOAT_EQ(s.lr(0), 0.01f);
    EXPECT_FLOAT_EQ(s.lr(9), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(10), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(30), 0.05f);
    EXPECT_FLOAT_EQ(s.lr(60), 0.025f);
}

TEST(LrSchedule, CosineStartMiddleEnd) {
    LrSchedule s;
    s.kind = LrSchedule::Kind::cosine;
    s.base_lr = 0.1f;
    s.final_lr = 0.001f;
    s.total_steps = 110;
    s.warmup_steps = 10;
    EXPECT_FLOAT_EQ(s.lr(0), 0.01f);
    EXPECT_FLOAT_EQ(s.lr(9), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(10), 0.1f);                                                     // t = 0
    EXPECT_FLOAT_EQ(s.lr(35), 0.001f + 0.099f * float((1.0 + std::cos(M_PI / 4)) / 2));  // t = T/4
    EXPECT_FLOAT_EQ(s.lr(60), 0.0505f);  // t = T/2: halfway between base and final
    EXPECT_FLOAT_EQ(s.lr(109), 0.001f + 0.099f * float((1.0 + std::cos(M_PI * 99 / 100)) / 2));
    EXPECT_FLOAT_EQ(s.lr(110), 0.001f);  // t = T
    EXPECT_FLOAT_EQ(s.lr(500), 0.001f);  // held past the end
    s.warmup_steps = 0;
    s.total_steps = 100;
    s.final_lr = 0.0f;
    EXPECT_FLOAT_EQ(s.lr(0), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(50), 0.05f);
    EXPECT_FLOAT_EQ(s.lr(100), 0.0f);
}

TEST(LrSchedule, ParsesSpecs) {
    LrSchedule s = parse_lr_schedule("constant", 0.2f, 1000, 100);
    EXPECT_EQ(s.kind, LrSchedule::Kind::constant);
    EXPECT_FLOAT_EQ(s.base_lr, 0.2f);
    EXPECT_EQ(s.warmup_steps, 0);

    s = parse_lr_schedule("cosine", 0.1f, 1000, 100);
    EXPECT_EQ(s.kind, LrSchedule::Kind::cosine);
    EXPECT_EQ(s.total_steps, 1000);
    EXPECT_FLOAT_EQ(s.final_lr, 0.0f);

    s = parse_lr_schedule("cosine+warmup:2", 0.1f, 1000, 100);
    EXPECT_EQ(s.kind, LrSchedule::Kind::cosine);
    EXPECT_EQ(s.warmup_steps, 200);
    EXPECT_FLOAT_EQ(s.lr(199), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(200), 0.1f);

    s = parse_lr_schedule("step:30,60", 0.1f, 9000, 100);
    EXPECT_EQ(s.kind, LrSchedule::Kind::step);
    EXPECT_EQ(s.milestones, (std::vector<int64_t>{3000, 6000}));
    EXPECT_FLOAT_EQ(s.gamma, 0.1f);
    EXPECT_FLOAT_EQ(s.lr(2999), 0.1f);
    EXPECT_FLOAT_EQ(s.lr(3000), 0.01f);

    s = parse_lr_schedule("step:5+warmup:1", 0.1f, 1000, 10);
    EXPECT_EQ(s.milestones, (std::vector<int64_t>{50}));
    EXPECT_EQ(s.warmup_steps, 10);
}

TEST(LrSchedule, RejectsBadSpecs) {
    for (const std::string spec :
         {"", "linear", "step", "step:", "step:30,", "step:60,30", "step:30,30", "step:-5", "step:3x", "cosine+",
          "cosine+warmup:", "cosine+warmup:-1", "cosine+cooldown:3", "Cosine", "cosine+warmup:2+warmup:3"}) {
        const std::string msg = invalid_argument_message([&] { parse_lr_schedule(spec, 0.1f, 100, 10); });
        EXPECT_NE(msg, "") << "accepted '" << spec << "'";
        EXPECT_NE(msg.find("'" + spec + "'"), std::string::npos) << msg;
    }
    EXPECT_THROW(parse_lr_schedule("cosine", 0.1f, 100, 0), std::invalid_argument);
}
