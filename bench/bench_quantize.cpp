// Quantize throughput on a 128x64x32x32 float32 activation tensor, per rounding mode and
// group axis, beside a plain copy of the same bytes in the same run (memory-bound work is
// judged against the memory system, not against a clock).
//
//   build/bench/bench_quantize [--threads 2] [google-benchmark flags]
//
// Prints Google Benchmark's table (medians of repetitions), then each kernel's time as a
// multiple of the copy's. Aim (issue 2): nearest rounding within 2x of the copy.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <random>

#include "dispatch.h"
#include "quantize.h"

namespace {

using namespace lowbit;

const Tensor &activation() {
    static const Tensor x = [] {
        Tensor t({128, 64, 32, 32});
        std::mt19937 rng(1);
        std::normal_distribution<float> dist(0.0f, 1.0f);
        for (int64_t k = 0; k < t.numel(); k++) t[k] = std::max(0.0f, dist(rng));  // post-ReLU
        return t;
    }();
    return x;
}

void BM_copy(benchmark::State &state) {
    const Tensor &x = activation();
    Tensor y(x.shape());
    for (auto _ : state) {
        std::memcpy(y.data(), x.data(), size_t(x.numel()) * sizeof(float));
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * x.numel() * int64_t(sizeof(float)));
}

void BM_quantize(benchmark::State &state, const std::string &format, Rounding rounding) {
    const Tensor &x = activation();
    const Format f = parse_format(format);
    uint64_t step = 0;
    QuantizedTensor q;  // reused, as a training loop would
    for (auto _ : state) {
        quantize_into(q, x, f, rounding, 1, step++, 0, TensorRole::activation);
        benchmark::DoNotOptimize(q.values.data());
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * x.numel() * int64_t(sizeof(float)));
}

void BM_dequantize(benchmark::State &state, const std::string &format) {
    const QuantizedTensor q = quantize(activation(), parse_format(format));
    Tensor y = Tensor::uninitialized(q.shape);
    for (auto _ : state) {
        dequantize_into(y, q);
        benchmark::DoNotOptimize(y.data());
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * q.numel() * int64_t(sizeof(float)));
}

// Keeps the median of each benchmark for the ratio table.
class MedianReporter : public benchmark::ConsoleReporter {
public:
    std::map<std::string, double> median_ms;
    std::vector<std::string> order;
    void ReportRuns(const std::vector<Run> &runs) override {
        for (const Run &run : runs) {
            if (run.aggregate_name == "median") {
                const std::string name = run.run_name.function_name;
                if (!median_ms.count(name)) order.push_back(name);
                median_ms[name] = run.GetAdjustedRealTime();
            }
        }
        ConsoleReporter::ReportRuns(runs);
    }
};

}  // namespace

int main(int argc, char **argv) {
    int threads = 2;
    std::vector<char *> args;
    for (int i = 0; i < argc; i++) {
        if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = std::atoi(argv[++i]);
        } else {
            args.push_back(argv[i]);
        }
    }
    set_num_threads(threads);
    // Medians of several repetitions by default: the machine is shared and noisy.
    std::string reps = "--benchmark_repetitions=9";
    bool has_reps = false;
    for (char *a : args) has_reps |= std::strncmp(a, "--benchmark_repetitions", 23) == 0;
    if (!has_reps) args.push_back(reps.data());
    int n = int(args.size());
    benchmark::Initialize(&n, args.data());

    benchmark::RegisterBenchmark("copy", BM_copy)->UseRealTime()->Unit(benchmark::kMillisecond);
    for (const char *format : {"m3e0", "m3e0/g3/sample", "m3e0/g3/channel", "m3e0/g3/block32", "m1e2/g2/sample"}) {
        for (Rounding r : {Rounding::nearest, Rounding::stochastic}) {
            benchmark::RegisterBenchmark(fmt::format("quantize/{}/{}", format, to_string(r)).c_str(), BM_quantize,
                                         std::string(format), r)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
        }
    }
    for (const char *format : {"m3e0/g3/sample", "m3e0/g3/block32"}) {
        benchmark::RegisterBenchmark(fmt::format("dequantize/{}", format).c_str(), BM_dequantize, std::string(format))
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
    }
    fmt::print("quantize of a 128x64x32x32 float32 tensor (32 MiB), {} threads, kernels: {}\n", threads,
               to_string(forced_isa().value_or(best_isa())));
    MedianReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    const double copy = reporter.median_ms["copy"];
    fmt::print("\n{:<40} {:>10} {:>12}\n", "median", "ms", "x copy");
    for (const std::string &name : reporter.order) {
        fmt::print("{:<40} {:>10.3f} {:>12.2f}\n", name, reporter.median_ms[name], reporter.median_ms[name] / copy);
    }
    benchmark::Shutdown();
    return 0;
}
