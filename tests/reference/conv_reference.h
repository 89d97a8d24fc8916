// Plain float64 references of the three convolutions of training (method.md section 1), on
// NCHW activations, OIHW weights, square kernels, zero padding. Obviously right, slow;
// tests and benchmarks only.
#pragma once

#include <cstdint>
#include <vector>

namespace lowbit::reference {

struct ConvShape {
    int64_t N, C, H, W;  // input
    int64_t O, K;        // output channels, kernel size
    int64_t stride = 1, pad = 0;
    int64_t out_h() const { return (H + 2 * pad - K) / stride + 1; }
    int64_t out_w() const { return (W + 2 * pad - K) / stride + 1; }
    int64_t input_size() const { return N * C * H * W; }
    int64_t weight_size() const { return O * C * K * K; }
    int64_t output_size() const { return N * O * out_h() * out_w(); }
};

// Calls f(y, a, w) for every product of the forward convolution, with the flat NCHW / OIHW
// indices of the output element, the input element and the weight it multiplies.
template <class F>
void for_each_product(const ConvShape &s, F f) {
    const int64_t OH = s.out_h(), OW = s.out_w();
    for (int64_t n = 0; n < s.N; n++)
        for (int64_t o = 0; o < s.O; o++)
            for (int64_t y = 0; y < OH; y++)
                for (int64_t x = 0; x < OW; x++)
                    for (int64_t c = 0; c < s.C; c++)
                        for (int64_t ky = 0; ky < s.K; ky++)
                            for (int64_t kx = 0; kx < s.K; kx++) {
                                const int64_t iy = y * s.stride + ky - s.pad, ix = x * s.stride + kx - s.pad;
                                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;  // zero padding
                                f(size_t(((n * s.O + o) * OH + y) * OW + x),
                                  size_t(((n * s.C + c) * s.H + iy) * s.W + ix),
                                  size_t(((o * s.C + c) * s.K + ky) * s.K + kx));
                            }
}

// Y[n,o,y,x] = sum_{c,ky,kx} A[n,c,y s + ky - p, x s + kx - p] W[o,c,ky,kx]
inline std::vector<double> conv_forward(const ConvShape &s, const std::vector<double> &A,
                                        const std::vector<double> &W) {
    std::vector<double> Y(size_t(s.output_size()), 0.0);
    for_each_product(s, [&](size_t y, size_t a, size_t w) { Y[y] += A[a] * W[w]; });
    return Y;
}

// dA = dL/dA given E = dL/dY: every product A[a] W[w] of Y[y] sends E[y] W[w] back to A[a].
inline std::vector<double> conv_backward_data(const ConvShape &s, const std::vector<double> &E,
                                              const std::vector<double> &W) {
    std::vector<double> dA(size_t(s.input_size()), 0.0);
    for_each_product(s, [&](size_t y, size_t a, size_t w) { dA[a] += E[y] * W[w]; });
    return dA;
}

// dW = dL/dW: every product A[a] W[w] of Y[y] sends E[y] A[a] to W[w].
inline std::vector<double> conv_backward_weight(const ConvShape &s, const std::vector<double> &E,
                                                const std::vector<double> &A) {
    std::vector<double> dW(size_t(s.weight_size()), 0.0);
    for_each_product(s, [&](size_t y, size_t a, size_t w) { dW[w] += E[y] * A[a]; });
    return dW;
}

}  // namespace lowbit::reference
