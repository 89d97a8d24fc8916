// ResNet training steps at batch 128: images/s and peak resident memory of lowbit in float32
// and low-bit modes, beside PyTorch 1.13 float32 training of the same network in the same run
// (bench/pytorch_train_step.py). Each mode runs in its own process, so that each peak
// resident set is that mode's alone. The modes run in rounds, each round every mode once
// (PyTorch first): a ratio to PyTorch is taken within a round, then the median over rounds,
// so that the shared machine's slow drift (±30% here) cancels instead of landing on one mode.
//
//   bench_train_step [--threads 2] [--batch 128] [--steps 5] [--repetitions 5] [--rounds 3]
//                    [--no-pytorch]
//   bench_train_step --one MODE ...   (internal: one mode, one result line)
//
// Modes: float32; the low-bit formats of docs/RESULTS.md, one for all three operands
// (activations and errors grouped per sample, weights per output channel; E rounded
// stochastically); and `defaults`, the formats `lowbit train` uses when given none.
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "dispatch.h"
#include "median.h"
#include "nn/functional.h"
#include "nn/models.h"
#include "optim/sgd.h"
#include "train/config.h"

using namespace lowbit;

namespace {

struct Options {
    int threads = 2, batch = 128, steps = 5, repetitions = 5, depth = 20, rounds = 3;
    bool no_pytorch = false;
    std::string one;
};

struct Result {
    double images_per_second = 0, peak_rss_mib = 0;
};

// "float32", "defaults" (what `lowbit train` runs without format flags: 4-bit fixed-point
// A and W, m1e2 errors) or one format for all three operands.
nn::PrecisionPolicy policy_for(const std::string &mode) {
    if (mode == "float32") return nn::PrecisionPolicy::float32();
    if (mode == "defaults") return train::TrainConfig{}.policy();
    nn::PrecisionPolicy p;
    p.body.low_bit = true;
    p.body.activations = parse_format(mode + "/g3/sample");
    p.body.weights = parse_format(mode + "/g3/channel");
    p.body.errors = parse_format(mode + "/g3/sample");
    p.unsigned_activations = true;  // as lowbit train's default
    return p;
}

double peak_rss_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) / 1024.0;
}

Result run_one(const Options &o) {
    set_num_threads(o.threads);
    nn::Network net(fmt::format("resnet{}", o.depth), {1, 32, 32}, 10, policy_for(o.one), 1);
    Sgd sgd(net.parameters(), SgdOptions{});
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0.0f, 1.0f);
    Tensor images({o.batch, 1, 32, 32});
    for (int64_t k = 0; k < images.numel(); k++) images[k] = d(rng);
    std::vector<int32_t> labels;
    for (int i = 0; i < o.batch; i++) labels.push_back(int32_t(rng() % 10));
    Tensor grad_logits;
    uint64_t step = 0;
    auto train_step = [&] {
        const nn::StepContext ctx{true, 1, step++};
        nn::softmax_cross_entropy(net.forward(images, ctx), labels, &grad_logits);
        net.backward(grad_logits, ctx);
        sgd.step();
    };
    for (int i = 0; i < 2; i++) train_step();  // warm up
    std::vector<double> times;
    for (int r = 0; r < o.repetitions; r++) {
        const auto start = std::chrono::steady_clock::now();
        for (int s = 0; s < o.steps; s++) train_step();
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / o.steps);
    }
    std::sort(times.begin(), times.end());
    return {o.batch / times[times.size() / 2], peak_rss_mib()};
}

// Runs a command and reads "... images_per_second X peak_rss_mib Y" from its last line.
Result run_child(const std::string &command) {
    FILE *pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
    char line[512];
    std::string last;
    while (std::fgets(line, sizeof line, pipe) != nullptr) last = line;
    const int status = pclose(pipe);
    Result r;
    const size_t at = last.find("images_per_second");
    if (status != 0 || at == std::string::npos ||
        std::sscanf(last.c_str() + at, "images_per_second %lf peak_rss_mib %lf", &r.images_per_second,
                    &r.peak_rss_mib) != 2) {
        throw std::runtime_error(fmt::format("{}: no result (exit {}): {}", command, status, last));
    }
    return r;
}

}  // namespace

int main(int argc, char **argv) {
    CLI::App app{"ResNet training steps: lowbit float32 and low-bit vs PyTorch float32"};
    Options o;
    app.add_option("--threads", o.threads);
    app.add_option("--batch", o.batch);
    app.add_option("--steps", o.steps, "steps per timed repetition");
    app.add_option("--repetitions", o.repetitions, "timed repetitions; the median is reported");
    app.add_option("--depth", o.depth, "ResNet depth (20, 32, 44, 56)");
    app.add_option("--rounds", o.rounds, "rounds of all modes; ratios are medians over rounds")
        ->check(CLI::PositiveNumber);
    app.add_flag("--no-pytorch", o.no_pytorch);
    app.add_option("--one", o.one, "internal: run one mode and print its result line");
    CLI11_PARSE(app, argc, argv);
    try {
        if (!o.one.empty()) {
            const Result r = run_one(o);
            fmt::print("lowbit {} images_per_second {:.1f} peak_rss_mib {:.1f}\n", o.one, r.images_per_second,
                       r.peak_rss_mib);
            return 0;
        }
        const std::string self = fmt::format("{} --threads {} --batch {} --steps {} --repetitions {} --depth {}",
                                             "/proc/self/exe", o.threads, o.batch, o.steps, o.repetitions, o.depth);
        fmt::print(
            "ResNet-{} training step, batch {}, {} threads, median of {} x {} steps per round, {} rounds, kernels: "
            "{}\n",
            o.depth, o.batch, o.threads, o.repetitions, o.steps, o.rounds, to_string(best_isa()));
        // /proc/self/exe in a child shell would be the shell: resolve it here.
        char exe[4096];
        const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) throw std::runtime_error("cannot resolve /proc/self/exe");
        exe[n] = 0;
        const std::string base = std::string(exe) + self.substr(std::string("/proc/self/exe").size());
        struct Row {
            std::string name, command;
            std::vector<Result> rounds;
        };
        std::vector<Row> rows;
        if (!o.no_pytorch) {
            rows.push_back({"PyTorch 1.13 float32",
                            fmt::format("/usr/bin/python3 {}/pytorch_train_step.py --threads {} --batch {} "
                                        "--steps {} --repetitions {} --depth {}",
                                        LOWBIT_BENCH_DIR, o.threads, o.batch, o.steps, o.repetitions, o.depth),
                            {}});
        }
        for (const char *mode : {"float32", "m7e0", "m3e0", "m1e2", "defaults"}) {
            rows.push_back({std::string("lowbit ") + mode, base + " --one " + mode, {}});
        }
        for (int round = 0; round < o.rounds; round++) {
            for (Row &row : rows) row.rounds.push_back(run_child(row.command));
        }
        fmt::print("| {:<22} | {:>9} | {:>10} | {:>13} | {:>13} | {:>11} |\n", "mode", "images/s", "vs PyTorch",
                   "(per round)", "peak RSS MiB", "vs PyTorch");
        fmt::print("|{:-<24}|{:->11}|{:->12}|{:->15}|{:->15}|{:->13}|\n", "", "", "", "", "", "");
        const bool ref = !o.no_pytorch;
        for (const Row &row : rows) {
            std::vector<double> speed, ratio, rss, rss_ratio;
            for (size_t k = 0; k < row.rounds.size(); k++) {
                speed.push_back(row.rounds[k].images_per_second);
                rss.push_back(row.rounds[k].peak_rss_mib);
                if (ref) {
                    ratio.push_back(row.rounds[k].images_per_second / rows[0].rounds[k].images_per_second);
                    rss_ratio.push_back(row.rounds[k].peak_rss_mib / rows[0].rounds[k].peak_rss_mib);
                }
            }
            const auto [lo, hi] = std::minmax_element(ratio.begin(), ratio.end());
            fmt::print("| {:<22} | {:>9.1f} | {:>10} | {:>13} | {:>13.0f} | {:>11} |\n", row.name, median(speed),
                       ref ? fmt::format("{:.2f}x", median(ratio)) : "-",
                       ref ? fmt::format("{:.2f}-{:.2f}", *lo, *hi) : "-", median(rss),
                       ref ? fmt::format("{:.2f}x", median(rss_ratio)) : "-");
        }
    } catch (const std::exception &e) {
        fmt::print(stderr, "bench_train_step: {}\n", e.what());
        return 1;
    }
    return 0;
}
