// CPU schedules: AVX-512 (VNNI), AVX2 and baseline x86-64, one function per kernel family,
// each a short recipe over the loop structure its pipeline struct exposes.
#pragma once

#include "pipelines.h"

namespace lowbit::schedules::x86 {

void schedule_quantize_scales(QuantizeScalesPipeline p, const ElementwiseParams &params, const Halide::Target &target);
void schedule_elementwise(ElementwisePipeline p, const ElementwiseParams &params, const Halide::Target &target);
// batch_norm_statistics, batch_norm_backward: per-channel sums in a fixed order.
void schedule_channel_sums(ChannelSumsPipeline p, const ElementwiseParams &params, const Halide::Target &target);

}  // namespace lowbit::schedules::x86

namespace lowbit::schedules::x86 {

// conv_forward, conv_backward_data: register tiles of (vector of x) x (rows) x (channels),
// integer pairs reduced by pmaddwd (AVX2) / 4-term vpdpbusd (AVX-512 VNNI); unsigned inputs'
// narrow sums by pmaddubsw into int16 tiles, widened per chunk (AVX2).
void schedule_conv(ConvPipeline p, const ConvParams &params, const Halide::Target &target);
// conv_backward_weight: register tiles of (vector of o) x (channels c), per sample; narrow
// sums as above for unsigned inputs.
void schedule_conv(ConvWeightPipeline p, const ConvParams &params, const Halide::Target &target);

}  // namespace lowbit::schedules::x86
