// Batch normalization (training statistics, forward, backward), with the ReLU and the residual
// add that follow it in a ResNet fused in, so that each costs no extra pass over memory: these
// layers move bytes, they hardly multiply.
//
// Every tensor is an (i, c, n) view of an NCHW tensor, i = the H*W plane. The runtime folds
// the learned parameters and statistics into one scale and shift per channel:
//   scale = gamma / sqrt(var + eps),  shift = beta - mean * scale,  y = scale * x + shift.
// Sums run in double and in a fixed order (see ChannelSumsPipeline), and all arithmetic is
// strict_float (no fused multiply-adds where one target has them and another not), so results
// are the same bits for every thread count and every CPU variant: a run resumed on another
// machine continues exactly.
//
// Algorithms only: the schedules live in schedules/, chosen by target.
#include "../schedules/x86.h"
#include "Halide.h"
#include "elementwise_knobs.h"
#include "quantize_values.h"

namespace {

using namespace Halide;
using lowbit::elementwise_params;
using lowbit::kRowMaxLanes;
using namespace lowbit::quantize_generators;
using lowbit::schedules::ChannelSumsPipeline;
using lowbit::schedules::ElementwiseParams;
using lowbit::schedules::ElementwisePipeline;

// Estimates: the largest ResNet-20 activation at batch 128.
const Region kViewEstimate = {{0, 32 * 32}, {0, 16}, {0, 128}};
const Region kChannelEstimate = {{0, 16}};

// scale * x + shift, the one expression every forward kernel uses (so the fused quantize sees
// the very floats batch_norm_forward writes).
Expr batch_norm_affine(const Expr &x, const Expr &scale, const Expr &shift) { return strict_float(scale * x + shift); }

// The rows and their order of summation, shared by statistics and backward: first the
// reduction domains (the summed terms are written over p.over_row), then the sums.
void define_rows(ChannelSumsPipeline &p, const Expr &row_length, const Expr &samples) {
    p.row_length = row_length;
    p.over_row = RDom(0, row_length, "over_row");
    p.over_samples = RDom(0, samples, "over_samples");
}

void define_sums(ChannelSumsPipeline &p, const Tuple &term) {
    const int terms = int(term.size());
    std::vector<Expr> zeros(terms, cast<double>(0)), row(terms), channel(terms);
    p.channel_sums = Func("channel_sums");
    p.row_sums(p.c, p.n) = Tuple(zeros);
    for (int t = 0; t < terms; t++) row[t] = strict_float(p.row_sums(p.c, p.n)[t] + term[t]);
    p.row_sums(p.c, p.n) = Tuple(row);
    p.channel_sums(p.c) = Tuple(zeros);
    for (int t = 0; t < terms; t++)
        channel[t] = strict_float(p.channel_sums(p.c)[t] + p.row_sums(p.c, p.over_samples)[t]);
    p.channel_sums(p.c) = Tuple(channel);
}

// ---------------------------------------------------------------------------------------
// Per-channel mean and biased variance over (i, n), as PyTorch's training-mode batch norm
// normalizes with (the runtime keeps the unbiased one for the running estimate).
class BatchNormStatistics : public Generator<BatchNormStatistics> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};  // (i, c, n)
    Output<Buffer<float, 1>> mean{"mean"};   // (c)
    Output<Buffer<float, 1>> variance{"variance"};

    void generate() {
        define_rows(p, input.dim(0).extent(), input.dim(2).extent());
        Expr x = cast<double>(input(p.over_row, p.c, p.n));
        define_sums(p, Tuple(x, strict_float(x * x)));
        Expr count = cast<double>(input.dim(0).extent()) * cast<double>(input.dim(2).extent());
        Expr m = p.channel_sums(p.c)[0] / count;
        mean(p.c) = cast<float>(m);
        // E[x^2] - E[x]^2 in double: float32 inputs cannot cancel catastrophically there.
        variance(p.c) = strict_float(cast<float>(max(p.channel_sums(p.c)[1] / count - m * m, cast<double>(0))));
        p.channel_outputs = {mean, variance};
        input.set_estimates(kViewEstimate);
        mean.set_estimates(kChannelEstimate);
        variance.set_estimates(kChannelEstimate);
    }

    void schedule() { lowbit::schedules::x86::schedule_channel_sums(p, elementwise_params(*this), get_target()); }

private:
    ChannelSumsPipeline p;
};

// ---------------------------------------------------------------------------------------
// y = scale * x + shift, then ReLU if `relu`.
class BatchNormForward : public Generator<BatchNormForward> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    GeneratorParam<bool> relu{"relu", true};
    Input<Buffer<float, 3>> input{"input"};  // (i, c, n)
    Input<Buffer<float, 1>> scale{"scale"};  // (c)
    Input<Buffer<float, 1>> shift{"shift"};
    Output<Buffer<float, 3>> output{"output"};

    void generate() {
        Var i = p.i, c = p.g, n = p.o;
        Expr y = batch_norm_affine(input(i, c, n), scale(c), shift(c));
        output(i, c, n) = relu ? max(y, 0.0f) : y;
        p.output = output;
        p.row_length = input.dim(0).extent();
        input.set_estimates(kViewEstimate);
        scale.set_estimates(kChannelEstimate);
        shift.set_estimates(kChannelEstimate);
        output.set_estimates(kViewEstimate);
    }

    void schedule() { lowbit::schedules::x86::schedule_elementwise(p, elementwise_params(*this), get_target()); }

private:
    ElementwisePipeline p;
};

// The end of a residual block: y = ReLU(scale * x + shift + residual).
class BatchNormAddRelu : public Generator<BatchNormAddRelu> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};  // (i, c, n)
    Input<Buffer<float, 1>> scale{"scale"};  // (c)
    Input<Buffer<float, 1>> shift{"shift"};
    Input<Buffer<float, 3>> residual{"residual"};  // (i, c, n)
    // y, and the ReLU mask y > 0 (1 byte, all the backward needs of y), written in one pass.
    Output<Func> output{"output", {Float(32), UInt(8)}, 3};

    void generate() {
        Var i = p.i, c = p.g, n = p.o;
        Expr y = max(strict_float(scale(c) * input(i, c, n) + shift(c) + residual(i, c, n)), 0.0f);
        output(i, c, n) = Tuple(y, cast<uint8_t>(y > 0.0f));
        p.output = output;
        p.row_length = input.dim(0).extent();
        input.set_estimates(kViewEstimate);
        residual.set_estimates(kViewEstimate);
        scale.set_estimates(kChannelEstimate);
        shift.set_estimates(kChannelEstimate);
        output.set_estimates(kViewEstimate);
    }

    void schedule() { lowbit::schedules::x86::schedule_elementwise(p, elementwise_params(*this), get_target()); }

private:
    ElementwisePipeline p;
};

// ---------------------------------------------------------------------------------------
// Training-mode backward, with batch statistics. With g the incoming gradient (masked by the
// ReLU when `relu`: the mask scale * x + shift > 0 is recomputed from x exactly as the forward
// computed it, so no mask is stored) and x̂ = (x - mean) * inv_std:
//   grad_beta = sum g,  grad_gamma = sum g x̂,
//   grad_input = scale * (g - grad_beta / M - x̂ grad_gamma / M),  M = count over (i, n).
// The sums and the element-wise gradient, given the (masked) incoming gradient g; returns the
// gradient as an inlined Func (grad_input reads it).
template <class In, class Channel, class Out, class ChannelOut>
Func define_backward(ChannelSumsPipeline &p, const Func &g, const In &input, const Channel &mean,
                     const Channel &inv_std, const Channel &scale, Out &grad_input, ChannelOut &grad_gamma,
                     ChannelOut &grad_beta) {
    Var i = p.i, c = p.c, n = p.n;
    Func normalized("normalized");
    normalized(i, c, n) = strict_float((input(i, c, n) - mean(c)) * inv_std(c));
    define_rows(p, input.dim(0).extent(), input.dim(2).extent());
    Expr gr = cast<double>(g(p.over_row, c, n));
    define_sums(p, Tuple(gr, strict_float(gr * cast<double>(normalized(p.over_row, c, n)))));
    grad_beta(c) = cast<float>(p.channel_sums(c)[0]);
    grad_gamma(c) = cast<float>(p.channel_sums(c)[1]);
    Expr count = cast<float>(input.dim(0).extent() * input.dim(2).extent());
    Func mean_beta("mean_grad_beta"), mean_gamma("mean_grad_gamma");
    mean_beta(c) = grad_beta(c) / count;
    mean_gamma(c) = grad_gamma(c) / count;
    // An inlined Func of its own, so that the row maxima compute the same values inline, in
    // grad_input's pass (define_row_max_lanes), rather than read grad_input back.
    Func value("grad_input_value");
    value(i, c, n) = strict_float(scale(c) * (g(i, c, n) - mean_beta(c) - normalized(i, c, n) * mean_gamma(c)));
    grad_input(i, c, n) = value(i, c, n);
    p.channel_outputs = {grad_beta, grad_gamma, mean_beta, mean_gamma};
    p.elementwise = {grad_input};
    return value;
}

// The max-abs bits of `value` (an (i, c, n) output's expression) over each (c, n) row, in
// kRowMaxLanes lanes: lane l holds the maximum over elements l, l + lanes, ... of the row's
// whole vectors of lanes, lane 0 also over the row's last elements past them. The runtime
// takes the maximum of the lanes: the rows' maxima, from which the quantization of
// grad_input takes its scales without a pass of its own (quantize_into with RowMaxima).
// Bits >= 0x7f800000 where a row holds Inf or NaN.
template <class Value>
void define_row_max_lanes(ChannelSumsPipeline &p, const Value &value, Func &lane_max) {
    Var lane("lane");
    const Expr whole = p.row_length / kRowMaxLanes;
    RDom over_lanes(0, whole, "over_lanes"), tail(0, p.row_length - whole * kRowMaxLanes, "tail");
    auto bits = [&](const Expr &i) { return reinterpret<uint32_t>(value(i, p.c, p.n)) & 0x7fffffff; };
    lane_max(lane, p.c, p.n) = cast<uint32_t>(0);
    lane_max(lane, p.c, p.n) = max(lane_max(lane, p.c, p.n), bits(over_lanes * kRowMaxLanes + lane));
    lane_max(0, p.c, p.n) = max(lane_max(0, p.c, p.n), bits(whole * kRowMaxLanes + tail));
    p.row_max_lanes = lane_max;
    p.lane = lane;
    p.over_lanes = over_lanes;
}

class BatchNormBackward : public Generator<BatchNormBackward> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    GeneratorParam<bool> relu{"relu", true};
    Input<Buffer<float, 3>> grad_output{"grad_output"};  // (i, c, n)
    Input<Buffer<float, 3>> input{"input"};              // x, as the forward saw it
    Input<Buffer<float, 1>> mean{"mean"};                // (c), the batch statistics
    Input<Buffer<float, 1>> inv_std{"inv_std"};
    Input<Buffer<float, 1>> scale{"scale"};  // what the forward used
    Input<Buffer<float, 1>> shift{"shift"};
    Output<Buffer<float, 3>> grad_input{"grad_input"};
    Output<Buffer<float, 1>> grad_gamma{"grad_gamma"};  // (c)
    Output<Buffer<float, 1>> grad_beta{"grad_beta"};
    Output<Buffer<uint32_t, 3>> grad_input_row_max{"grad_input_row_max"};  // (lane, c, n): max-abs bits

    void generate() {
        Var i = p.i, c = p.c, n = p.n;
        Func g("masked_grad");
        g(i, c, n) =
            relu ? select(batch_norm_affine(input(i, c, n), scale(c), shift(c)) > 0.0f, grad_output(i, c, n), 0.0f)
                 : grad_output(i, c, n);
        const Func value = define_backward(p, g, input, mean, inv_std, scale, grad_input, grad_gamma, grad_beta);
        Func row_max("row_max_lanes");
        define_row_max_lanes(p, value, row_max);
        grad_input_row_max = row_max;
        grad_input_row_max.set_estimates({{0, kRowMaxLanes}, {0, 16}, {0, 128}});
        grad_output.set_estimates(kViewEstimate);
        input.set_estimates(kViewEstimate);
        for (auto *b : {&mean, &inv_std, &scale, &shift}) b->set_estimates(kChannelEstimate);
        grad_input.set_estimates(kViewEstimate);
        grad_gamma.set_estimates(kChannelEstimate);
        grad_beta.set_estimates(kChannelEstimate);
    }

    void schedule() { lowbit::schedules::x86::schedule_channel_sums(p, elementwise_params(*this), get_target()); }

private:
    ChannelSumsPipeline p;
};

// Backward of the end of a residual block, y = ReLU(BN(x) + residual): the ReLU mask y > 0
// is the one the forward wrote (the residual is not at hand to recompute it), and the masked
// gradient is also the residual's gradient, written in the same pass.
class BatchNormAddReluBackward : public Generator<BatchNormAddReluBackward> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> grad_output{"grad_output"};  // (i, c, n)
    Input<Buffer<float, 3>> input{"input"};              // x
    Input<Buffer<uint8_t, 3>> mask{"mask"};              // y > 0 of the forward
    Input<Buffer<float, 1>> mean{"mean"};                // (c)
    Input<Buffer<float, 1>> inv_std{"inv_std"};
    Input<Buffer<float, 1>> scale{"scale"};
    Output<Buffer<float, 3>> grad_input{"grad_input"};
    Output<Buffer<float, 1>> grad_gamma{"grad_gamma"};  // (c)
    Output<Buffer<float, 1>> grad_beta{"grad_beta"};
    Output<Buffer<float, 3>> grad_residual{"grad_residual"};
    Output<Buffer<uint32_t, 3>> grad_input_row_max{"grad_input_row_max"};  // (lane, c, n): max-abs bits

    void generate() {
        Var i = p.i, c = p.c, n = p.n;
        Func g("masked_grad");
        g(i, c, n) = select(mask(i, c, n) != 0, grad_output(i, c, n), 0.0f);
        const Func value = define_backward(p, g, input, mean, inv_std, scale, grad_input, grad_gamma, grad_beta);
        Func row_max("row_max_lanes");
        define_row_max_lanes(p, value, row_max);
        grad_input_row_max = row_max;
        grad_input_row_max.set_estimates({{0, kRowMaxLanes}, {0, 16}, {0, 128}});
        grad_residual(i, c, n) = g(i, c, n);
        p.elementwise.push_back(grad_residual);
        for (auto *b : {&grad_output, &input}) b->set_estimates(kViewEstimate);
        mask.set_estimates(kViewEstimate);
        for (auto *b : {&mean, &inv_std, &scale}) b->set_estimates(kChannelEstimate);
        grad_input.set_estimates(kViewEstimate);
        grad_residual.set_estimates(kViewEstimate);
        grad_gamma.set_estimates(kChannelEstimate);
        grad_beta.set_estimates(kChannelEstimate);
    }

    void schedule() { lowbit::schedules::x86::schedule_channel_sums(p, elementwise_params(*this), get_target()); }

private:
    ChannelSumsPipeline p;
};

// ---------------------------------------------------------------------------------------
// Batch norm + ReLU + quantization of the next convolution's input, without ever writing the
// float32 output: two reads of x instead of a write and two reads of y. Inside a residual
// block nothing else needs y (the backward recomputes the ReLU mask from x), so y never exists.
// The values are bit for bit those of quantize(ReLU(scale * x + shift)): the same expression
// for y, the same scales, the same quantized_value and element index.

// y = ReLU(scale * x + shift) exactly as BatchNormForward computes it.
Expr batch_norm_relu(const Expr &x, const Expr &scale, const Expr &shift) {
    return max(batch_norm_affine(x, scale, shift), 0.0f);
}

// First pass: the max-abs bits of y over each (c, n) row; the runtime turns them into the
// group maxima of whatever group axis the format has (none, sample, channel), the tensor
// scale and the group exponents, exactly as quantize_scales would (format.h, ScalarOps).
class BatchNormReluRowMax : public Generator<BatchNormReluRowMax> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};  // (i, c, n)
    Input<Buffer<float, 1>> scale{"scale"};  // (c)
    Input<Buffer<float, 1>> shift{"shift"};
    Output<Buffer<uint32_t, 2>> row_max{"row_max"};  // (c, n): bits of max |y|; >= 0x7f800000 for Inf/NaN

    void generate() {
        define_rows(p, input.dim(0).extent(), input.dim(2).extent());
        Expr y = batch_norm_relu(input(p.over_row, p.c, p.n), scale(p.c), shift(p.c));
        row_max(p.c, p.n) = cast<uint32_t>(0);
        row_max(p.c, p.n) = max(row_max(p.c, p.n), reinterpret<uint32_t>(y) & 0x7fffffff);
        p.row_sums = row_max;
        input.set_estimates(kViewEstimate);
        scale.set_estimates(kChannelEstimate);
        shift.set_estimates(kChannelEstimate);
        row_max.set_estimates({{0, 16}, {0, 128}});
    }

    void schedule() { lowbit::schedules::x86::schedule_channel_sums(p, elementwise_params(*this), get_target()); }

private:
    ChannelSumsPipeline p;
};

// Second pass: q of every element, with the group exponent of its (c, n) given by the runtime.
class BatchNormReluQuantize : public Generator<BatchNormReluQuantize> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};  // (i, c, n)
    Input<Buffer<float, 1>> scale{"scale"};  // (c)
    Input<Buffer<float, 1>> shift{"shift"};
    Input<Buffer<uint8_t, 2>> group_exponent{"group_exponent"};  // (c, n)
    LOWBIT_QUANTIZE_VALUE_INPUTS

    void generate() {
        Var i = p.i, c = p.g, n = p.o;
        Expr y = batch_norm_relu(input(i, c, n), scale(c), shift(c));
        p.random = element_randoms(i, c, n, input.dim(0).extent(), input.dim(1).extent(), key0, key1);
        values(i, c, n) =
            quantized_value(y, tensor_scale, cast<int>(group_exponent(c, n)),
                            {mantissa_max, exponent_steps, shift_bits, qmax, has_sign}, stochastic, p.random(i, c, n));
        p.output = values;
        p.arithmetic = Float(64);  // quantized_value computes in double
        p.row_length = input.dim(0).extent();
        // Stochastic activations other than m1e2 skip its short way (quantized_value); m1e2
        // ones, an odd choice, take the unspecialized loop, which computes both.
        const Expr m1e2 = is_m1e2(mantissa_max, exponent_steps, shift_bits);
        p.specializations = {stochastic && !m1e2, !stochastic && exponent_steps == 0, !stochastic};
        input.set_estimates(kViewEstimate);
        scale.set_estimates(kChannelEstimate);
        shift.set_estimates(kChannelEstimate);
        group_exponent.set_estimates({{0, 16}, {0, 128}});
        values.set_estimates(kViewEstimate);
    }

    void schedule() { lowbit::schedules::x86::schedule_elementwise(p, elementwise_params(*this), get_target()); }

private:
    ElementwisePipeline p;
};

}  // namespace

HALIDE_REGISTER_GENERATOR(BatchNormStatistics, batch_norm_statistics)
HALIDE_REGISTER_GENERATOR(BatchNormForward, batch_norm_forward)
HALIDE_REGISTER_GENERATOR(BatchNormAddRelu, batch_norm_add_relu)
HALIDE_REGISTER_GENERATOR(BatchNormBackward, batch_norm_backward)
HALIDE_REGISTER_GENERATOR(BatchNormAddReluBackward, batch_norm_add_relu_backward)
HALIDE_REGISTER_GENERATOR(BatchNormReluRowMax, batch_norm_relu_row_max)
HALIDE_REGISTER_GENERATOR(BatchNormReluQuantize, batch_norm_relu_quantize)
