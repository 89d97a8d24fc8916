// conv_forward (method.md section 1): Y = conv(A, W), stride 1 or 2, zero padding.
//   integer: quantized A (N,C,H,W) and W (O,C,K,K) as int8 element values; int32 sums, exact
//            (2-term int16 or 4-term u8 x i8 dot products, see conv_common.h);
//            Y = acc * input_scale(n) * weight_scale(o), in double, rounded once to float.
//            The scales are S 2^-e / qmax of each operand's group. Activations grouped per
//            channel vary along the reduction (over c): the runtime passes their group
//            factors as left shifts of the weights, weight_shift(c) = e_max - e_c, applied before
//            accumulation (method.md section 4; exact while nothing overflows, which the
//            runtime checks), and one scale S 2^-e_max / qmax. The 4-term path offsets the
//            shifted weights by +128 to uint8, so there they must stay within int8; where they
//            do not, the runtime splits the activations into exponent classes instead
//            (runtime/conv.cpp), as it does for any other group structure that varies along
//            the reduction.
//   unsigned: the same on inputs known to be >= 0, as uint8 (no offset; int16 narrow sums
//            on AVX2, see ConvForwardUnsigned).
//   float:   the same correlation on float32 operands, the float32 baseline.
// Algorithms only: schedules/ decides loops, vectors, threads.
#include "conv_common.h"

namespace {

using namespace Halide;
using namespace lowbit::conv;
using lowbit::schedules::ConvPipeline;

template <class Gen>
void set_integer_forward_estimates(Gen &gen) {
    gen.input.set_estimates(kActivationEstimate);
    gen.weights.set_estimates(kWeightEstimate);
    gen.input_scale.set_estimates({{0, kEstimateBatch}});
    gen.weight_scale.set_estimates({{0, kEstimateChannels}});
    gen.weight_shift.set_estimates({{0, kEstimateChannels}});
    gen.stride.set_estimate(1);
    gen.pad.set_estimate(1);
    gen.output.set_estimates(kActivationEstimate);
}

class ConvForward : public Generator<ConvForward> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> input{"input"};                 // (x, y, c, n)
    Input<Buffer<int8_t, 4>> weights{"weights"};             // (kx, ky, c, o)
    Input<Buffer<double, 1>> input_scale{"input_scale"};     // (n)
    Input<Buffer<double, 1>> weight_scale{"weight_scale"};   // (o)
    Input<Buffer<uint8_t, 1>> weight_shift{"weight_shift"};  // (c); 4-term: shifted W within int8
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Output<Buffer<float, 4>> output{"output"};  // (x, y, o, n)

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, group = p.channel_group;
        const int g = p.group = dot_width(get_target(), dot);
        Func a = channel_bounded(input, input.dim(2).extent(), cast<int8_t>(0));
        Func w = BoundaryConditions::constant_exterior(weights, cast<int8_t>(0));
        const Expr c = channel_in_group(group, j, g);
        define_padded_input(p, input.dim(0).extent(), input.dim(1).extent(), pad, pad, stride,
                            [&](Expr ix, Expr iy) { return pack_integer_input(a(ix, iy, c, n), g); });
        Func shift = BoundaryConditions::constant_exterior(weight_shift, cast<uint8_t>(0));
        p.packed_weights(j, x, y, group, k) =
            pack_integer_weight(cast<int16_t>(w(x, y, c, k)) << cast<int16_t>(shift(c)), g);
        Expr kernel_x = weights.dim(0).extent(), kernel_y = weights.dim(1).extent();
        Expr sum = define_correlation(p, kernel_x, kernel_y, input.dim(2).extent(), Int(32));
        if (g == 4) sum -= define_offset_correction(p, a, input.dim(2).extent(), kernel_x, kernel_y, kWeightOffset4);
        // strict_float: the same rounding on every target (no FMA contraction).
        output(x, y, k, n) = strict_float(cast<float>(cast<double>(sum) * input_scale(n) * weight_scale(k)));
        p.output = output;
        p.input_stride_x = any_x_stride(input);  // the pixels a 1x1 strided layer reads

        set_integer_forward_estimates(*this);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvPipeline p;
};

// The same on unsigned inputs (activations in an unsigned format, after a ReLU): values
// 0..qmax held as uint8, so uint8 x int8 products need no offset. With 4-term dot products
// (VNNI) they go straight into int32; elsewhere they run as narrow sums (int16 over `chunk`
// groups of 4 channels, pmaddubsw; see ConvPipeline), which the runtime uses only where
// 2 K^2 chunk qmax_a max|W << shift| <= 32767, so that no int16 sum can overflow. The weights
// stay int8 after their shifts (the runtime passes shifts only where they fit), on every path.
class ConvForwardUnsigned : public Generator<ConvForwardUnsigned> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> input{"input"};  // (x, y, c, n), every value >= 0
    Input<Buffer<int8_t, 4>> weights{"weights"};
    Input<Buffer<double, 1>> input_scale{"input_scale"};
    Input<Buffer<double, 1>> weight_scale{"weight_scale"};
    Input<Buffer<uint8_t, 1>> weight_shift{"weight_shift"};  // (c), as ConvForward's
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Input<int> chunk{"chunk"};  // groups of 4 channels per int16 sum (narrow sums only)
    Output<Buffer<float, 4>> output{"output"};

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, group = p.channel_group;
        p.group = 4;
        Func a = channel_bounded(input, input.dim(2).extent(), cast<int8_t>(0));
        Func w = BoundaryConditions::constant_exterior(weights, cast<int8_t>(0));
        Func shift = BoundaryConditions::constant_exterior(weight_shift, cast<uint8_t>(0));
        const Expr c = channel_in_group(group, j, 4);
        define_padded_input(p, input.dim(0).extent(), input.dim(1).extent(), pad, pad, stride,
                            [&](Expr ix, Expr iy) { return cast<uint8_t>(a(ix, iy, c, n)); });
        p.packed_weights(j, x, y, group, k) = cast<int8_t>(cast<int16_t>(w(x, y, c, k)) << cast<int16_t>(shift(c)));
        Expr kernel_x = weights.dim(0).extent(), kernel_y = weights.dim(1).extent();
        Expr channels = input.dim(2).extent();
        // GPUs: plain int32 sums of groups of 4 (no int16 instruction to gain from).
        const bool narrow = dot_width(get_target(), dot) != 4 && !get_target().has_gpu_feature();
        Expr sum = !narrow ? define_correlation(p, kernel_x, kernel_y, channels, Int(32))
                           : define_narrow_correlation(p, kernel_x, kernel_y, channels, chunk);
        output(x, y, k, n) = strict_float(cast<float>(cast<double>(sum) * input_scale(n) * weight_scale(k)));
        p.output = output;
        p.input_stride_x = any_x_stride(input);  // the pixels a 1x1 strided layer reads

        set_integer_forward_estimates(*this);
        chunk.set_estimate(8);
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
        define_padded_input(p, input.dim(0).extent(), input.dim(1).extent(), pad, pad, stride,
                            [&](Expr ix, Expr iy) { return input(ix, iy, c, n); });
        p.packed_weights(j, x, y, c, k) = weights(x, y, c, k);
        output(x, y, k, n) =
            define_correlation(p, weights.dim(0).extent(), weights.dim(1).extent(), input.dim(2).extent(), Float(32));
        p.output = output;
        p.input_stride_x = any_x_stride(input);  // the pixels a 1x1 strided layer reads

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
HALIDE_REGISTER_GENERATOR(ConvForwardUnsigned, conv_forward_unsigned)
HALIDE_REGISTER_GENERATOR(ConvForwardFloat, conv_forward_float)
