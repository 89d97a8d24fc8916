// The quantize pipeline (method.md sections 2 and 3): float32 tensors to LB element values,
// group exponents and a tensor scale, and back.
//
// Every tensor is seen through a 3-d view (i, g, o) of its row-major data, chosen by the
// runtime (runtime/quantize.cpp) so that one group structure serves every group axis:
//   grouped (none, sample, channel): one group per index g, over all i and o;
//   blocked (blockK):                one group per (i, g / K, o), K consecutive g.
// The element index that seeds stochastic rounding is i + I (g + G o), the element's
// position in the tensor whatever the view.
//
// Algorithms only: the schedules live in schedules/, chosen by target.
#include "../schedules/cuda.h"
#include "../schedules/x86.h"
#include "Halide.h"
#include "elementwise_knobs.h"
#include "format.h"
#include "halide_ops.h"
#include "quantize_values.h"

namespace {

using namespace Halide;
using lowbit::elementwise_params;
using lowbit::HalideOps;
using namespace lowbit::quantize_generators;
using lowbit::schedules::ElementwiseParams;
using lowbit::schedules::ElementwisePipeline;
using lowbit::schedules::QuantizeScalesPipeline;

// |x| as the bits of a float: ordered like |x| for finite values, and >= 0x7f800000 for
// Inf and NaN, so an integer max finds the scale and flags bad input in one pass.
Expr magnitude_bits(const Expr &x) { return reinterpret<uint32_t>(x) & 0x7fffffff; }

// Estimates for the shipped autoschedulers and for bounds: a 128x64x32x32 activation.
constexpr int kEstimateRow = 32 * 32, kEstimateGroups = 64, kEstimateOuter = 128;
const Region kViewEstimate = {{0, kEstimateRow}, {0, kEstimateGroups}, {0, kEstimateOuter}};
const Region kGroupedExponentEstimate = {{0, kEstimateGroups}};
const Region kBlockExponentEstimate = {{0, kEstimateRow}, {0, 2}, {0, kEstimateOuter}};  // block32

void schedule_elementwise(const Target &target, const ElementwisePipeline &p, const ElementwiseParams &params) {
    if (target.has_gpu_feature()) {
        lowbit::schedules::cuda::schedule_elementwise(p, params);
    } else {
        lowbit::schedules::x86::schedule_elementwise(p, params, target);
    }
}

// ---------------------------------------------------------------------------------------
// Tensor scale S = max|x|, group exponents e_g = min(2^G - 1, floor(log2(S / max|x_g|))).
class QuantizeScales : public Generator<QuantizeScales> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};  // (i, g, o)
    Input<int> max_group_exponent{"max_group_exponent"};
    Output<Buffer<uint8_t, 1>> group_exponent{"group_exponent"};  // (g)
    // S; Inf or NaN when the input holds one: the runtime then reports the bad input.
    Output<Buffer<float, 0>> tensor_scale{"tensor_scale"};

    void generate() {
        p.row_length = input.dim(0).extent();
        p.over_row = RDom(0, input.dim(0).extent(), "over_row");
        p.over_rows = RDom(0, input.dim(2).extent(), "over_rows");
        p.over_groups = RDom(0, input.dim(1).extent(), "over_groups");
        Var g = p.g, o = p.o;

        p.row_max(g, o) = cast<uint32_t>(0);
        p.row_max(g, o) = max(p.row_max(g, o), magnitude_bits(input(p.over_row, g, o)));
        p.group_max(g) = cast<uint32_t>(0);
        p.group_max(g) = max(p.group_max(g), p.row_max(g, p.over_rows));
        p.tensor_max() = cast<uint32_t>(0);
        p.tensor_max() = max(p.tensor_max(), p.group_max(p.over_groups));

        Expr scale = reinterpret<float>(p.tensor_max());
        Expr group = reinterpret<float>(p.group_max(g));
        group_exponent(g) = cast<uint8_t>(
            lowbit::group_exponent<HalideOps>(cast<double>(scale), cast<double>(group), max_group_exponent));
        tensor_scale() = scale;
        p.group_exponent = group_exponent;
        p.tensor_scale = tensor_scale;

        input.set_estimates(kViewEstimate);
        max_group_exponent.set_estimate(7);
        group_exponent.set_estimates(kGroupedExponentEstimate);
    }

    void schedule() {
        if (get_target().has_gpu_feature()) {
            lowbit::schedules::cuda::schedule_quantize_scales(p, elementwise_params(*this));
        } else {
            lowbit::schedules::x86::schedule_quantize_scales(p, elementwise_params(*this), get_target());
        }
    }

private:
    QuantizeScalesPipeline p;
};

// The same for block groups: one group per (i, b, o), over channels g in [b K, b K + K).
class QuantizeScalesBlock : public Generator<QuantizeScalesBlock> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};  // (i, c, o)
    Input<int> max_group_exponent{"max_group_exponent"};
    Input<int> block{"block"};
    Output<Buffer<uint8_t, 3>> group_exponent{"group_exponent"};  // (i, b, o)
    Output<Buffer<float, 0>> tensor_scale{"tensor_scale"};

    void generate() {
        Var i = p.i, b = p.g, o = p.o;
        Expr channels = input.dim(1).extent();
        Expr blocks = (channels + block - 1) / block;
        p.blocked = true;
        p.row_length = input.dim(0).extent();
        p.over_row = RDom(0, block, "over_block");
        p.over_groups = RDom(0, input.dim(0).extent(), 0, blocks, 0, input.dim(2).extent(), "over_groups");

        // The last block may be partial: channels past the end count as zero.
        Expr c = b * block + p.over_row;
        Expr inside = c < channels;
        p.row_max(i, b, o) = cast<uint32_t>(0);
        p.row_max(i, b, o) =
            max(p.row_max(i, b, o), select(inside, magnitude_bits(input(i, min(c, channels - 1), o)), 0));
        p.tensor_max() = cast<uint32_t>(0);
        const RDom &r = p.over_groups;
        p.tensor_max() = max(p.tensor_max(), p.row_max(r.x, r.y, r.z));

        Expr scale = reinterpret<float>(p.tensor_max());
        Expr group = reinterpret<float>(p.row_max(i, b, o));
        group_exponent(i, b, o) = cast<uint8_t>(
            lowbit::group_exponent<HalideOps>(cast<double>(scale), cast<double>(group), max_group_exponent));
        tensor_scale() = scale;
        p.group_exponent = group_exponent;
        p.tensor_scale = tensor_scale;

        input.set_estimates(kViewEstimate);
        max_group_exponent.set_estimate(7);
        block.set_estimate(32);
        group_exponent.set_estimates(kBlockExponentEstimate);
    }

    void schedule() {
        if (get_target().has_gpu_feature()) {
            lowbit::schedules::cuda::schedule_quantize_scales(p, elementwise_params(*this));
        } else {
            lowbit::schedules::x86::schedule_quantize_scales(p, elementwise_params(*this), get_target());
        }
    }

private:
    QuantizeScalesPipeline p;
};

// ---------------------------------------------------------------------------------------
// Element values q (quantized_value, in quantize_values.h).

class QuantizeValues : public Generator<QuantizeValues> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};                      // (i, g, o)
    Input<Buffer<uint8_t, 1>> group_exponent{"group_exponent"};  // (g)
    LOWBIT_QUANTIZE_VALUE_INPUTS

    void generate() {
        Var i = p.i, g = p.g, o = p.o;
        p.random = element_randoms(i, g, o, input.dim(0).extent(), input.dim(1).extent(), key0, key1);
        values(i, g, o) =
            quantized_value(input(i, g, o), tensor_scale, cast<int>(group_exponent(g)),
                            {mantissa_max, exponent_steps, shift_bits, qmax, has_sign}, stochastic, p.random(i, g, o));
        p.output = values;
        p.arithmetic = Float(64);  // quantized_value computes in double
        p.row_length = input.dim(0).extent();
        p.specializations = value_specializations(*this);
        input.set_estimates(kViewEstimate);
        group_exponent.set_estimates(kGroupedExponentEstimate);
        values.set_estimates(kViewEstimate);
    }

    void schedule() { schedule_elementwise(get_target(), p, elementwise_params(*this)); }

private:
    ElementwisePipeline p;
};

class QuantizeValuesBlock : public Generator<QuantizeValuesBlock> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<float, 3>> input{"input"};                      // (i, c, o)
    Input<Buffer<uint8_t, 3>> group_exponent{"group_exponent"};  // (i, c / block, o)
    Input<int> block{"block"};
    LOWBIT_QUANTIZE_VALUE_INPUTS

    void generate() {
        Var i = p.i, c = p.g, o = p.o;
        p.random = element_randoms(i, c, o, input.dim(0).extent(), input.dim(1).extent(), key0, key1);
        values(i, c, o) =
            quantized_value(input(i, c, o), tensor_scale, cast<int>(group_exponent(i, c / block, o)),
                            {mantissa_max, exponent_steps, shift_bits, qmax, has_sign}, stochastic, p.random(i, c, o));
        p.output = values;
        p.arithmetic = Float(64);  // quantized_value computes in double
        p.row_length = input.dim(0).extent();
        p.specializations = value_specializations(*this);
        input.set_estimates(kViewEstimate);
        group_exponent.set_estimates(kBlockExponentEstimate);
        block.set_estimate(32);
        values.set_estimates(kViewEstimate);
    }

    void schedule() { schedule_elementwise(get_target(), p, elementwise_params(*this)); }

private:
    ElementwisePipeline p;
};

// ---------------------------------------------------------------------------------------
// Dequantize: x = q * S * 2^-e_g / qmax, in double, rounded once to float.
Expr dequantized(const Expr &q, const Expr &tensor_scale, const Expr &group_exponent, const Expr &qmax) {
    Expr group_scale = lowbit::group_scale<HalideOps>(cast<double>(tensor_scale), group_exponent);
    return strict_float(
        cast<float>(lowbit::dequantized_value<HalideOps>(cast<double>(q), cast<double>(qmax), group_scale)));
}

class Dequantize : public Generator<Dequantize> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<int8_t, 3>> values{"values"};                   // (i, g, o)
    Input<Buffer<uint8_t, 1>> group_exponent{"group_exponent"};  // (g)
    Input<float> tensor_scale{"tensor_scale"};
    Input<int> qmax{"qmax"};
    Output<Buffer<float, 3>> output{"output"};

    void generate() {
        Var i = p.i, g = p.g, o = p.o;
        output(i, g, o) = dequantized(values(i, g, o), tensor_scale, cast<int>(group_exponent(g)), qmax);
        p.output = output;
        p.arithmetic = Float(64);  // dequantized computes in double
        p.row_length = values.dim(0).extent();
        values.set_estimates(kViewEstimate);
        group_exponent.set_estimates(kGroupedExponentEstimate);
        output.set_estimates(kViewEstimate);
    }

    void schedule() { schedule_elementwise(get_target(), p, elementwise_params(*this)); }

private:
    ElementwisePipeline p;
};

class DequantizeBlock : public Generator<DequantizeBlock> {
public:
    LOWBIT_ELEMENTWISE_KNOBS
    Input<Buffer<int8_t, 3>> values{"values"};                   // (i, c, o)
    Input<Buffer<uint8_t, 3>> group_exponent{"group_exponent"};  // (i, c / block, o)
    Input<int> block{"block"};
    Input<float> tensor_scale{"tensor_scale"};
    Input<int> qmax{"qmax"};
    Output<Buffer<float, 3>> output{"output"};

    void generate() {
        Var i = p.i, c = p.g, o = p.o;
        output(i, c, o) = dequantized(values(i, c, o), tensor_scale, cast<int>(group_exponent(i, c / block, o)), qmax);
        p.output = output;
        p.arithmetic = Float(64);  // dequantized computes in double
        p.row_length = values.dim(0).extent();
        values.set_estimates(kViewEstimate);
        group_exponent.set_estimates(kBlockExponentEstimate);
        block.set_estimate(32);
        output.set_estimates(kViewEstimate);
    }

    void schedule() { schedule_elementwise(get_target(), p, elementwise_params(*this)); }

private:
    ElementwisePipeline p;
};

}  // namespace

HALIDE_REGISTER_GENERATOR(QuantizeScales, quantize_scales)
HALIDE_REGISTER_GENERATOR(QuantizeScalesBlock, quantize_scales_block)
HALIDE_REGISTER_GENERATOR(QuantizeValues, quantize_values)
HALIDE_REGISTER_GENERATOR(QuantizeValuesBlock, quantize_values_block)
HALIDE_REGISTER_GENERATOR(Dequantize, dequantize)
HALIDE_REGISTER_GENERATOR(DequantizeBlock, dequantize_block)
