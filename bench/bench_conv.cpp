// The ResNet-20 convolution layers at batch 128, each pass separately, beside PyTorch 1.13's
// float32 conv2d on the same shapes in the same run (bench/pytorch_conv.py) and beside this
// machine's measured peaks (bench/peak.h).
//
//   build/bench/bench_conv [--threads 2] [--repetitions 7] [--batch 128] [--rounds 1]
//                          [--no-pytorch] [--only TEXT]
//
// With --rounds R, ours, PyTorch's and the peaks are measured R times in turn, each ratio
// taken within a round and the median of the R ratios printed, so that the shared machine's
// drift (its peaks move ±30% within an hour) cancels instead of landing on one column.
//
// Columns, all in G multiply-adds/s (median of repetitions):
//   int        integer kernel on quantized operands (m3e0/g3/sample A and E, m3e0/g3/channel W)
//   int+q      the same plus the quantization of both inputs
//   f32        our float32 kernel
//   torch      PyTorch float32
// then int / torch, f32 / torch and int as a fraction of the int8 (or i16) dot-product peak.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>

#include "conv.h"
#include "conv_backward_data_narrow_variants.h"
#include "conv_backward_weight_unsigned_16_variants.h"
#include "conv_backward_weight_unsigned_16_wide_variants.h"
#include "conv_backward_weight_unsigned_variants.h"
#include "conv_forward_unsigned_channels_32_variants.h"
#include "conv_forward_unsigned_channels_64_variants.h"
#include "conv_forward_unsigned_variants.h"
#include "conv_forward_unsigned_wide_variants.h"
#include "dispatch.h"
#include "median.h"
#include "peak.h"

namespace {

using namespace lowbit;

struct Layer {
    const char *name;
    int64_t C, O, H, K, stride;
};

const Layer kLayers[] = {
    {"16->16 32x32", 16, 16, 32, 3, 1},  {"16->32 s2", 16, 32, 32, 3, 2}, {"32->32 16x16", 32, 32, 16, 3, 1},
    {"32->64 s2", 32, 64, 16, 3, 2},     {"64->64 8x8", 64, 64, 8, 3, 1}, {"1x1 16->32 s2", 16, 32, 32, 1, 2},
    {"1x1 32->64 s2", 32, 64, 16, 1, 2},
};
const char *kPasses[] = {"forward", "backward-data", "backward-weight"};

double median_ms(const std::function<void()> &fn, int repetitions) {
    fn();  // warm up: first-touch of outputs, thread pool start
    std::vector<double> t;
    for (int i = 0; i < repetitions; i++) {
        const auto start = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

Tensor random_tensor(const Shape &shape, uint32_t seed, bool relu) {
    Tensor t(shape);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t k = 0; k < t.numel(); k++) t[k] = relu ? std::max(0.0f, dist(rng)) : dist(rng);
    return t;
}

// PyTorch's medians by (layer, pass), from bench/pytorch_conv.py run now.
std::map<std::pair<std::string, std::string>, double> run_pytorch(int threads, int repetitions, int batch) {
    std::map<std::pair<std::string, std::string>, double> ms;
    const std::string cmd = fmt::format("/usr/bin/python3 {}/pytorch_conv.py --threads {} --repetitions {} --batch {}",
                                        LOWBIT_BENCH_DIR, threads, repetitions, batch);
    FILE *pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) return ms;
    char line[512];
    while (std::fgets(line, sizeof line, pipe)) {
        char layer[128], pass[64];
        double value;
        if (std::sscanf(line, "%127[^\t]\t%63[^\t]\t%lf", layer, pass, &value) == 3) ms[{layer, pass}] = value;
    }
    if (pclose(pipe) != 0) fmt::print(stderr, "bench_conv: PyTorch side failed ({}); its columns stay empty\n", cmd);
    return ms;
}

// Calls so far of the kernels that multiply uint8 by int8, the shape-chosen ones included (the
// others: int16 pairs, or 4-term dot products on VNNI, whose peak is the same).
uint64_t uint8_kernel_calls() {
    return kernels::conv_forward_unsigned.calls() + kernels::conv_forward_unsigned_wide.calls() +
           kernels::conv_forward_unsigned_channels_32.calls() + kernels::conv_forward_unsigned_channels_64.calls() +
           kernels::conv_backward_weight_unsigned.calls() + kernels::conv_backward_weight_unsigned_16.calls() +
           kernels::conv_backward_weight_unsigned_16_wide.calls() + kernels::conv_backward_data_narrow.calls();
}

struct Row {
    std::string layer, pass;
    double macs;
    std::vector<double> int_ms, intq_ms, f32_ms, torch_ms;  // one per round
    bool uint8_products = false;  // the pass ran uint8 x int8 products: its peak is the uint8 one
};

}  // namespace

int main(int argc, char **argv) {
    CLI::App app{"ResNet-20 conv layers: integer and float32 kernels beside PyTorch and the machine's peaks"};
    int threads = 2, repetitions = 7, batch = 128, rounds = 1;
    bool no_pytorch = false;
    std::string only;
    app.add_option("--threads", threads);
    app.add_option("--repetitions", repetitions, "timed calls per measurement; the median is taken");
    app.add_option("--batch", batch);
    app.add_option("--rounds", rounds,
                   "rounds of ours, then PyTorch's, then the peaks; ratios are taken within a round, then the "
                   "median over rounds")
        ->check(CLI::PositiveNumber);
    app.add_flag("--no-pytorch", no_pytorch);
    app.add_option("--only", only, "run only the passes whose \"layer pass\" contains this text");
    // The defaults are what `lowbit train` uses in a layer after a ReLU (every layer here).
    std::string a_text = "um4e0/g3/sample", w_text = "m3e0/g3/channel", e_text = "m1e2/g3/sample";
    app.add_option("--a-format", a_text, "activations' format")->capture_default_str();
    app.add_option("--w-format", w_text, "weights' format")->capture_default_str();
    app.add_option("--e-format", e_text, "errors' format")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    set_num_threads(threads);
    Format a_format, w_format, e_format;
    try {
        a_format = parse_format(a_text);
        w_format = parse_format(w_text);
        e_format = parse_format(e_text);
    } catch (const std::invalid_argument &error) {
        fmt::print(stderr, "bench_conv: {}\n", error.what());
        return 2;
    }
    std::vector<Row> rows;
    std::vector<Peaks> peaks;  // one per round
    for (int round = 0; round < rounds; round++) {
        size_t row = 0;
        for (const Layer &l : kLayers) {
            const ConvGeometry g{int(l.stride), int(l.K / 2)};
            const Shape a_shape = {batch, l.C, l.H, l.H}, w_shape = {l.O, l.C, l.K, l.K};
            const Shape y_shape = conv_output_shape(a_shape, w_shape, g);
            const Tensor a = random_tensor(a_shape, 1, true), w = random_tensor(w_shape, 2, false);
            const Tensor e = random_tensor(y_shape, 3, false);
            const double macs = double(y_shape[0]) * y_shape[1] * y_shape[2] * y_shape[3] * l.C * l.K * l.K;
            QuantizedTensor qa, qw, qe;
            auto quantize_inputs = [&](int pass) {
                if (pass != 1) quantize_into(qa, a, a_format, Rounding::nearest, 0, 0, 0, TensorRole::activation);
                if (pass != 2) quantize_into(qw, w, w_format, Rounding::nearest, 0, 0, 1, TensorRole::weight);
                if (pass != 0) quantize_into(qe, e, e_format, Rounding::stochastic, 1, 0, 2, TensorRole::error);
            };
            for (int pass = 0; pass < 3; pass++) {
                if (!only.empty() && (std::string(l.name) + " " + kPasses[pass]).find(only) == std::string::npos)
                    continue;
                quantize_inputs(pass);
                std::function<void()> run_int, run_f32;
                if (pass == 0) {
                    run_int = [&] { conv_forward(qa, qw, g); };
                    run_f32 = [&] { conv_forward(a, w, g); };
                } else if (pass == 1) {
                    run_int = [&] { conv_backward_data(qe, qw, a_shape, g); };
                    run_f32 = [&] { conv_backward_data(e, w, a_shape, g); };
                } else {
                    run_int = [&] { conv_backward_weight(qe, qa, int(l.K), g); };
                    run_f32 = [&] { conv_backward_weight(e, a, int(l.K), g); };
                }
                if (round == 0) {
                    const uint64_t before = uint8_kernel_calls();
                    run_int();
                    rows.push_back({l.name, kPasses[pass], macs, {}, {}, {}, {}, uint8_kernel_calls() != before});
                }
                Row &r = rows[row++];
                r.int_ms.push_back(median_ms(run_int, repetitions));
                r.intq_ms.push_back(median_ms(
                    [&] {
                        quantize_inputs(pass);
                        run_int();
                    },
                    repetitions));
                r.f32_ms.push_back(median_ms(run_f32, repetitions));
            }
        }
        const auto torch_ms = no_pytorch ? std::map<std::pair<std::string, std::string>, double>{}
                                         : run_pytorch(threads, repetitions, batch);
        peaks.push_back(measure_peaks(threads));
        for (Row &r : rows) {
            const auto it = torch_ms.find({r.layer, r.pass});
            r.torch_ms.push_back(it == torch_ms.end() ? 0.0 : it->second);
        }
    }

    fmt::print("ResNet-20 conv layers, batch {}, {} threads, kernels: {}, median of {}, {} round{}\n", batch, threads,
               to_string(forced_isa().value_or(best_isa())), repetitions, rounds, rounds > 1 ? "s" : "");
    fmt::print("formats: A {}, W {}, E {}\n", to_string(a_format), to_string(w_format), to_string(e_format));
    std::vector<double> integer_peaks, unsigned_peaks, float_peaks;
    for (const Peaks &p : peaks) {
        integer_peaks.push_back(p.integer_gmacs);
        unsigned_peaks.push_back(p.unsigned_gmacs);
        float_peaks.push_back(p.float_gmacs);
    }
    const std::string integer_peak = fmt::format("{} {:.0f} G/s", peaks[0].integer_name, median(integer_peaks));
    const std::string unsigned_peak =
        std::strcmp(peaks[0].unsigned_name, peaks[0].integer_name) == 0
            ? std::string()
            : fmt::format(", {} {:.0f} G/s", peaks[0].unsigned_name, median(unsigned_peaks));
    fmt::print("machine peaks (median over rounds): {}{}, {} {:.0f} G/s\n", integer_peak, unsigned_peak,
               peaks[0].float_name, median(float_peaks));
    fmt::print(
        "int/peak: of the {} peak where a pass ran uint8 x int8 products (unsigned activations, "
        "backward-data's offset weights)\n",
        peaks[0].unsigned_name);
    fmt::print("G/s columns: medians over rounds; ratio columns: medians of the per-round ratios\n");
    fmt::print("\n{:<15} {:<16} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}\n", "layer", "pass", "int", "int+q",
               "f32", "torch", "int/torch", "f32/torch", "int/peak", "f32/peak");
    for (const Row &r : rows) {
        auto gmacs = [&](double ms) { return ms > 0 ? r.macs / (ms * 1e6) : 0.0; };
        std::vector<double> speed_int, speed_intq, speed_f32, speed_torch, int_torch, f32_torch, int_peak, f32_peak;
        for (size_t k = 0; k < r.int_ms.size(); k++) {
            speed_int.push_back(gmacs(r.int_ms[k]));
            speed_intq.push_back(gmacs(r.intq_ms[k]));
            speed_f32.push_back(gmacs(r.f32_ms[k]));
            speed_torch.push_back(gmacs(r.torch_ms[k]));
            const double torch = gmacs(r.torch_ms[k]);
            int_torch.push_back(torch > 0 ? gmacs(r.int_ms[k]) / torch : 0.0);
            f32_torch.push_back(torch > 0 ? gmacs(r.f32_ms[k]) / torch : 0.0);
            int_peak.push_back(gmacs(r.int_ms[k]) /
                               (r.uint8_products ? peaks[k].unsigned_gmacs : peaks[k].integer_gmacs));
            f32_peak.push_back(gmacs(r.f32_ms[k]) / peaks[k].float_gmacs);
        }
        fmt::print("{:<15} {:<16} {:>7.1f} {:>7.1f} {:>7.1f} {:>7.1f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f}\n", r.layer,
                   r.pass, median(speed_int), median(speed_intq), median(speed_f32), median(speed_torch),
                   median(int_torch), median(f32_torch), median(int_peak), median(f32_peak));
    }
    return 0;
}
