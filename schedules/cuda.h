// GPU schedules (CUDA, and OpenCL for correctness runs on PoCL): compiled ahead of time with
// the LOWBIT_CUDA option; they run only where a GPU exists.
#pragma once

#include "pipelines.h"

namespace lowbit::schedules::cuda {

void schedule_quantize_scales(QuantizeScalesPipeline p, const ElementwiseParams &params);
void schedule_elementwise(ElementwisePipeline p, const ElementwiseParams &params);

}  // namespace lowbit::schedules::cuda

namespace lowbit::schedules::cuda {

void schedule_conv(ConvPipeline p, const ConvParams &params);
void schedule_conv(ConvWeightPipeline p, const ConvParams &params);

}  // namespace lowbit::schedules::cuda
