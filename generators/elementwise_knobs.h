// The schedule knobs every element-wise generator declares (quantize, dequantize, batch norm),
// and their hand-over to the schedules, in one place.
#pragma once

#include "../schedules/pipelines.h"

// Declared in each generator class, so that each knob is a GeneratorParam the build and
// autotune/ can set (schedules/tuned/).
#define LOWBIT_ELEMENTWISE_KNOBS                                       \
    GeneratorParam<int> vector_width{"vector_width", 0};               \
    GeneratorParam<int> random_vector_width{"random_vector_width", 0}; \
    GeneratorParam<int> task_elements{"task_elements", 1 << 15};       \
    GeneratorParam<int> gpu_threads{"gpu_threads", 256};

namespace lowbit {

template <class Gen>
schedules::ElementwiseParams elementwise_params(const Gen &gen) {
    schedules::ElementwiseParams p;
    p.vector_width = gen.vector_width;
    p.random_vector_width = gen.random_vector_width;
    p.task_elements = gen.task_elements;
    p.gpu_threads = gen.gpu_threads;
    return p;
}

}  // namespace lowbit
