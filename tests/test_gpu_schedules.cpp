// The GPU schedules (schedules/cuda.cpp) compiled for OpenCL and run on PoCL, the CPU OpenCL
// driver: every kernel's GPU variant must give the CPU variant's results, bit for bit where
// the arithmetic is exact (integer sums, strict double scaling, rounding), within float
// rounding for the float32 convolutions. Speed and CUDA-only instructions need a real GPU.
#include <HalideBuffer.h>
#include <HalideRuntime.h>
#include <HalideRuntimeOpenCL.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "conv.h"
#include "conv_backward_data_float_opencl.h"
#include "conv_backward_data_float_variants.h"
#include "conv_backward_data_opencl.h"
#include "conv_backward_data_variants.h"
#include "conv_backward_weight_float_opencl.h"
#include "conv_backward_weight_opencl.h"
#include "conv_backward_weight_variants.h"
#include "conv_forward_float_opencl.h"
#include "conv_forward_opencl.h"
#include "conv_forward_variants.h"
#include "dequantize_opencl.h"
#include "quantize.h"
#include "quantize_scales_opencl.h"
#include "quantize_values_block_opencl.h"
#include "quantize_values_opencl.h"

namespace lowbit {
namespace {

using Halide::Runtime::Buffer;

Tensor random_tensor(const Shape &shape, uint32_t seed) {
    Tensor t(shape);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t k = 0; k < t.numel(); k++) t[k] = dist(rng) * std::ldexp(1.0f, -int(k % 3));
    return t;
}

// Host memory as a Halide buffer. Marked host-dirty: a pipeline copies an input to the GPU
// only when the host copy is newer.
template <class T>
Buffer<T> host(T *data, std::vector<int> extents) {
    Buffer<T> b(data, extents);
    b.set_host_dirty();
    return b;
}

template <class T>
Buffer<T> nchw(T *data, const Shape &s) {
    return host(data, {int(s[3]), int(s[2]), int(s[1]), int(s[0])});
}

// Skips the suite where no OpenCL platform answers (a machine without PoCL); CI installs it.
class GpuSchedules : public testing::Test {
protected:
    void SetUp() override {
        Buffer<float> probe(4);
        probe.fill(1.0f);
        if (probe.copy_to_device(halide_opencl_device_interface()) != 0) {
            GTEST_SKIP() << "no OpenCL device (install pocl-opencl-icd)";
        }
        probe.device_free();
    }
};

template <class T>
void finish(Buffer<T> &b) {
    ASSERT_EQ(b.copy_to_host(), 0);
    b.device_free();
}

TEST_F(GpuSchedules, QuantizeMatchesCpu) {
    const Tensor x = random_tensor({6, 5, 7, 3}, 1);
    for (const char *name : {"m3e0/g3/sample", "m1e2/g2/channel", "m2e1/g3/block2", "um4e0/g3/sample"}) {
        for (Rounding r : {Rounding::nearest, Rounding::stochastic}) {
            SCOPED_TRACE(std::string(name) + " " + to_string(r));
            const Format f = parse_format(name);
            const QuantizedTensor cpu = quantize(x, f, r, 3, 4, 5);
            const GroupView &v = cpu.view;
            Buffer<const float> in = host(x.data(), {int(v.inner), int(v.groups), int(v.outer)});
            std::vector<int8_t> values(cpu.values.size());
            Buffer<int8_t> out(values.data(), {int(v.inner), int(v.groups), int(v.outer)});
            const RandomKey key = random_key(3, 4, 5);
            std::vector<uint8_t> e = cpu.group_exponents;
            if (v.blocked) {
                Buffer<uint8_t> eb =
                    host(e.data(), {int(v.inner), int((v.groups + v.block - 1) / v.block), int(v.outer)});
                ASSERT_EQ(quantize_values_block_opencl(in, eb, v.block, cpu.scale, int(f.mantissa_max()),
                                                       f.exponent_steps(), f.shift, int(f.qmax()), f.has_sign,
                                                       r == Rounding::stochastic, key.k0, key.k1, out),
                          0);
            } else {
                Buffer<uint8_t> eb = host(e.data(), {int(v.groups)});
                ASSERT_EQ(
                    quantize_values_opencl(in, eb, cpu.scale, int(f.mantissa_max()), f.exponent_steps(), f.shift,
                                           int(f.qmax()), f.has_sign, r == Rounding::stochastic, key.k0, key.k1, out),
                    0);
                // The scale pass too.
                std::vector<uint8_t> e_gpu(e.size());
                Buffer<uint8_t> egb(e_gpu.data(), {int(v.groups)});
                Buffer<float> s = Buffer<float>::make_scalar();
                ASSERT_EQ(quantize_scales_opencl(in, f.max_group_exponent(), egb, s), 0);
                finish(egb);
                finish(s);
                EXPECT_EQ(e_gpu, cpu.group_exponents);
                EXPECT_EQ(s(), cpu.scale);
                // And back.
                Tensor back = Tensor::uninitialized(x.shape());
                Buffer<float> bb(back.data(), {int(v.inner), int(v.groups), int(v.outer)});
                Buffer<const int8_t> qb = host(cpu.values.data(), {int(v.inner), int(v.groups), int(v.outer)});
                ASSERT_EQ(dequantize_opencl(qb, eb, cpu.scale, int(f.qmax()), bb), 0);
                finish(bb);
                const Tensor expected = dequantize(cpu);
                EXPECT_EQ(std::vector<float>(back.data(), back.data() + back.numel()),
                          std::vector<float>(expected.data(), expected.data() + expected.numel()));
            }
            finish(out);
            EXPECT_EQ(values, std::vector<int8_t>(cpu.values.begin(), cpu.values.end()));
        }
    }
}

TEST_F(GpuSchedules, IntegerConvolutionsMatchCpu) {
    for (int stride : {1, 2}) {
        const Shape a_shape = {3, 5, 9, 8}, w_shape = {4, 5, 3, 3};
        const ConvGeometry g{stride, 1};
        const Shape y_shape = conv_output_shape(a_shape, w_shape, g);
        const QuantizedTensor a = quantize(random_tensor(a_shape, 2), parse_format("m3e0/g3/sample"));
        const QuantizedTensor w = quantize(random_tensor(w_shape, 3), parse_format("m3e0/g3/channel"),
                                           Rounding::nearest, 0, 0, 0, TensorRole::weight);
        const QuantizedTensor e = quantize(random_tensor(y_shape, 4), parse_format("m3e0/g3/sample"), Rounding::nearest,
                                           0, 0, 0, TensorRole::error);
        // Constant scales: the comparison is about the sums, the scaling is shared code.
        std::vector<double> s3(3, 0.5), s4(4, 0.25), s5(5, 0.125);
        Buffer<const int8_t> ab = nchw(a.values.data(), a_shape), wb = nchw(w.values.data(), w_shape);
        Buffer<const int8_t> eb = nchw(e.values.data(), y_shape);
        {
            std::vector<uint8_t> shifts = {0, 2, 1, 3, 0};  // per input channel of the layer
            auto channel_shifts = host<const uint8_t>(shifts.data(), {5});
            Tensor y = Tensor::uninitialized(y_shape);
            Buffer<float> yb = nchw(y.data(), y_shape);
            ASSERT_EQ(conv_forward_opencl(ab, wb, host<const double>(s3.data(), {3}),
                                          host<const double>(s4.data(), {4}), channel_shifts, stride, 1, yb),
                      0);
            finish(yb);
            Tensor cpu = Tensor::uninitialized(y_shape);
            Buffer<float> cb = nchw(cpu.data(), y_shape);
            kernels::conv_forward(ab, wb, host<const double>(s3.data(), {3}), host<const double>(s4.data(), {4}),
                                  channel_shifts, stride, 1, cb);
            EXPECT_EQ(std::vector<float>(y.data(), y.data() + y.numel()),
                      std::vector<float>(cpu.data(), cpu.data() + cpu.numel()))
                << "forward, stride " << stride;
        }
        {
            Tensor d = Tensor::uninitialized(a_shape), cpu = Tensor::uninitialized(a_shape);
            Buffer<float> db = nchw(d.data(), a_shape), cb = nchw(cpu.data(), a_shape);
            // Per output channel of the layer; 3-bit weights shifted by 4 still fit the int8 of
            // the 4-term (VNNI) variant that may be the CPU reference here.
            std::vector<uint8_t> shifts = {0, 3, 1, 4};
            // At stride 2 the kernel interleaves four phases, from weights of 4 C channels.
            const Shape wd_shape = {4, stride * stride * 5, 3, 3};
            const QuantizedTensor wd = quantize(random_tensor(wd_shape, 8), parse_format("m3e0/g3/channel"),
                                                Rounding::nearest, 0, 0, 0, TensorRole::weight);
            Buffer<const int8_t> wdb = nchw(wd.values.data(), wd_shape);
            ASSERT_EQ(conv_backward_data_opencl(
                          eb, wdb, host<const double>(s3.data(), {3}), host<const double>(s5.data(), {5}),
                          host<const uint8_t>(shifts.data(), {4}), stride, 1, 1, kAllWindowTaps, db, false, db),
                      0);
            finish(db);
            kernels::conv_backward_data(eb, wdb, host<const double>(s3.data(), {3}), host<const double>(s5.data(), {5}),
                                        host<const uint8_t>(shifts.data(), {4}), stride, 1, 1, kAllWindowTaps, cb,
                                        false, cb);
            EXPECT_EQ(std::vector<float>(d.data(), d.data() + d.numel()),
                      std::vector<float>(cpu.data(), cpu.data() + cpu.numel()))
                << "backward-data, stride " << stride;
        }
        {
            std::vector<int32_t> d(size_t(shape_numel(w_shape))), cpu(d.size());
            Buffer<int32_t> db = nchw(d.data(), w_shape), cb = nchw(cpu.data(), w_shape);
            // Per (channel, n) shifts of each sample's sums, as the runtime passes them.
            std::vector<uint8_t> se = {0, 1, 2, 3, 1, 0, 0, 2, 3, 3, 1, 0},
                                 sa = {2, 0, 1, 0, 3, 1, 1, 0, 2, 0, 0, 3, 2, 1, 0};
            Buffer<const uint8_t> seb = host<const uint8_t>(se.data(), {4, 3}),  // (channel, n)
                sab = host<const uint8_t>(sa.data(), {5, 3});
            ASSERT_EQ(conv_backward_weight_opencl(eb, ab, seb, sab, stride, 1, db), 0);
            finish(db);
            kernels::conv_backward_weight(eb, ab, seb, sab, stride, 1, cb);
            EXPECT_EQ(d, cpu) << "backward-weight, stride " << stride;
        }
    }
}

TEST_F(GpuSchedules, FloatConvolutionsMatchCpu) {
    const Shape a_shape = {2, 3, 7, 6}, w_shape = {4, 3, 3, 3};
    const ConvGeometry g{2, 1};
    const Shape y_shape = conv_output_shape(a_shape, w_shape, g);
    const Tensor a = random_tensor(a_shape, 5), w = random_tensor(w_shape, 6), e = random_tensor(y_shape, 7);
    auto expect_near = [](const Tensor &gpu, const Tensor &cpu, const char *what) {
        for (int64_t k = 0; k < cpu.numel(); k++) {
            EXPECT_NEAR(gpu[k], cpu[k], 1e-5f * (1 + std::fabs(cpu[k]))) << what << " element " << k;
        }
    };
    // Backward-data at stride 2 interleaves four phases, from weights of 4 C channels
    // (runtime/conv.cpp builds them from the layer's): compared with the CPU kernel.
    const Shape wd_shape = {4, 12, 3, 3};
    const Tensor wd = random_tensor(wd_shape, 8);
    Tensor y = Tensor::uninitialized(y_shape), da = Tensor::uninitialized(a_shape), dw = Tensor::uninitialized(w_shape);
    Tensor da_cpu = Tensor::uninitialized(a_shape);
    Buffer<float> yb = nchw(y.data(), y_shape), dab = nchw(da.data(), a_shape), dwb = nchw(dw.data(), w_shape);
    Buffer<const float> ab = nchw(a.data(), a_shape), wb = nchw(w.data(), w_shape), eb = nchw(e.data(), y_shape);
    ASSERT_EQ(conv_forward_float_opencl(ab, wb, 2, 1, yb), 0);
    ASSERT_EQ(conv_backward_data_float_opencl(eb, nchw(wd.data(), wd_shape), 2, 1, 1, kAllWindowTaps, dab, false, dab),
              0);
    ASSERT_EQ(conv_backward_weight_float_opencl(eb, ab, 2, 1, dwb), 0);
    finish(yb);
    finish(dab);
    finish(dwb);
    Buffer<float> da_cpu_buffer = nchw(da_cpu.data(), a_shape);
    kernels::conv_backward_data_float(eb, nchw(wd.data(), wd_shape), 2, 1, 1, kAllWindowTaps, da_cpu_buffer, false,
                                      da_cpu_buffer);
    expect_near(y, conv_forward(a, w, g), "forward");
    expect_near(da, da_cpu, "backward-data");
    expect_near(dw, conv_backward_weight(e, a, 3, g), "backward-weight");
}

}  // namespace
}  // namespace lowbit
