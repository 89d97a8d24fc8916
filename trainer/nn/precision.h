// The precision of one layer's convolution arithmetic (method.md section 1): float32, or
// low-bit with one format and rounding per operand kind (activations A, weights W, errors E).
#pragma once

#include <string>

#include "format.h"

namespace lowbit::nn {

struct LayerPrecision {
    bool low_bit = false;
    Format activations, weights, errors;
    Rounding activation_rounding = Rounding::nearest, weight_rounding = Rounding::nearest;
    Rounding error_rounding = Rounding::stochastic;
};

// How a whole network is quantized: every convolution by default, the first and last layers
// optionally kept float32, the classifier's linear layer float32 unless asked (method.md).
struct PrecisionPolicy {
    LayerPrecision body;
    bool float_first_last = false;
    bool quantize_linear = false;

    static PrecisionPolicy float32() { return PrecisionPolicy{}; }
    LayerPrecision first_conv() const { return float_first_last ? LayerPrecision{} : body; }
    LayerPrecision conv() const { return body; }
    LayerPrecision linear(bool last) const {
        return (!quantize_linear || (last && float_first_last)) ? LayerPrecision{} : body;
    }
};

// "float32", or "A=m3e0/g3/sample W=... E=..." with the roundings.
std::string describe(const LayerPrecision &p);

}  // namespace lowbit::nn
