// conv_forward (method.md section 1): Y = conv(A, W), stride 1 or 2, zero padding.
//   integer: quantized A (N,C,H,W) and W (O,C,K,K) as int8 element values; int32 sums, exact
//            (2-term int16 or 4-term u8 x i8 dot products, see conv_common.h);
//            Y = acc * input_scale(n) * weight_scale(o), in double, rounded once to float.
//            The scales are S 2^-e / qmax of each operand's group; the runtime splits operands
//            whose groups vary along the reduction (runtime/conv.cpp), so here they do not.
//   float:   the same correlation on float32 operands, the float32 baseline.
// Algorithms only: schedules/ decides loops, vectors, threads.
#include "conv_common.h"

namespace {

using namespace Halide;
using namespace lowbit::conv;
using lowbit::schedules::ConvPipeline;

class ConvForward : public Generator<ConvForward> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> input{"input"};                // (x, y, c, n)
    Input<Buffer<int8_t, 4>> weights{"weights"};            // (kx, ky, c, o)
    Input<Buffer<double, 1>> input_scale{"input_scale"};    // (n)
    Input<Buffer<double, 1>> weight_scale{"weight_scale"};  // (o)
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Output<Buffer<float, 4>> output{"output"};  // (x, y, o, n)

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, group = p.channel_group;
        const int g = p.group = dot_width(get_target(), dot);
        Func a = channel_bounded(input, input.dim(2).extent(), cast<int8_t>(0));
        Func w = BoundaryConditions::constant_exterior(weights, cast<int8_t>(0));
        define_padded_input(p, input.dim(0).extent(), input.dim(1).extent(), pad, pad, 1, [&](Expr ix, Expr iy) {
            return pack_integer_input(a(ix, iy, channel_in_group(group, j, g), n), g);
        });
        p.packed_weights(j, x, y, group, k) = pack_integer_weight(w(x, y, channel_in_group(group, j, g), k), g);
        Expr sum = define_correlation(p, weights.dim(0).extent(), weights.dim(1).extent(), input.dim(2).extent(),
                                      stride, Int(32));
        // strict_float: the same rounding on every target (no FMA contraction).
        output(x, y, k, n) = strict_float(cast<float>(cast<double>(sum) * input_scale(n) * weight_scale(k)));
        p.output = output;

        input.set_estimates(kActivationEstimate);
        weights.set_estimates(kWeightEstimate);
        input_scale.set_estimates({{0, kEstimateBatch}});
        weight_scale.set_estimates({{0, kEstimateChannels}});
        stride.set_estimate(1);
        pad.set_estimate(1);
        output.set_estimates(kActivationEstimate);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvPipeline p;
};

class ConvForwardFloat : public Generator<ConvForwardFloat> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<float, 4>> input{"input"};      // (x, y, c, n)
    Input<Buffer<float, 4>> weights{"weights"};  // (kx, ky, c, o)
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Output<Buffer<float, 4>> output{"output"};  // (x, y, o, n)

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, c = p.channel_group;
        p.group = 1;
        define_padded_input(p, input.dim(0).extent(), input.dim(1).extent(), pad, pad, 1,
                            [&](Expr ix, Expr iy) { return input(ix, iy, c, n); });
        p.packed_weights(j, x, y, c, k) = weights(x, y, c, k);
        output(x, y, k, n) = define_correlation(p, weights.dim(0).extent(), weights.dim(1).extent(),
                                                input.dim(2).extent(), stride, Float(32));
        p.output = output;

        input.set_estimates(kActivationEstimate);
        weights.set_estimates(kWeightEstimate);
        stride.set_estimate(1);
        pad.set_estimate(1);
        output.set_estimates(kActivationEstimate);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvPipeline p;
};

}  // namespace

HALIDE_REGISTER_GENERATOR(ConvForward, conv_forward)
HALIDE_REGISTER_GENERATOR(ConvForwardFloat, conv_forward_float)
