// The training loop: data, network, SGD and schedule; per epoch a test evaluation, a row of
// metrics.csv and an atomically written checkpoint; config.json and summary.json in the run
// folder. Every result is a function of the configuration alone (not of the thread count: tested).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "nn/models.h"
#include "train/config.h"

namespace lowbit::train {

// One row of metrics.csv.
struct EpochMetrics {
    int epoch = 0;  // 1-based
    double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
    double lr = 0;  // at the epoch's last step
    double images_per_second = 0, seconds = 0;
};

struct TrainResult {
    std::vector<EpochMetrics> epochs;
    double wall_seconds = 0;
};

struct EvalResult {
    double loss = 0, accuracy = 0;
    int64_t images = 0;
};

// How this process runs the configured training: progress output (a bar on a terminal, plain
// lines otherwise, nothing when quiet) and an early stop after some epochs, as an interruption
// would (the schedule stays that of config.epochs; --resume continues it).
struct RunOptions {
    bool quiet = false;
    int stop_after_epochs = -1;  // -1: run to config.epochs
    // With resume: train to this many epochs instead of the checkpoint's own (0). A different
    // count stretches the learning-rate schedule, so the continuation is no longer exact.
    int resume_epochs = 0;
    // With resume: run on this many threads instead of the checkpoint's (0). Exact: results do
    // not depend on the thread count.
    int resume_threads = 0;
};

// Trains as `config` says into config.out. A folder that already holds a run is refused unless
// `resume`, which continues from its checkpoint.ckpt (the configuration comes from there; only
// the epoch count and the threads may change, through RunOptions). Throws std::runtime_error /
// std::invalid_argument naming what is wrong.
TrainResult run_training(const TrainConfig &config, bool resume, const RunOptions &progress = {});

// Test-split accuracy of a network in inference mode.
EvalResult evaluate(nn::Network &net, BatchLoader &loader, uint64_t seed);

// Re-estimates the batch-norm running statistics as the plain average over the next `batches`
// batches of `loader` (full batches: a low-bit tensor's scale is its max over the batch), in
// training mode without updating a parameter. For a network deployed at another precision
// than it trained in (double_width_formats): its convolutions' outputs, and so the statistics
// batch norm must remove, change with the precision. Returns the batches used (fewer where the
// loader runs out).
int recalibrate_batch_norm(nn::Network &net, BatchLoader &loader, int batches, uint64_t seed);

// A checkpoint's network with its parameters and statistics, and the config it was trained with.
struct LoadedModel {
    TrainConfig config;
    std::unique_ptr<nn::Network> network;
};
// Formats to run a trained network's inference in instead of those it trained with (empty:
// the trained one), e.g. method.md section 5's double-width deployment (double_width_formats).
struct InferenceFormats {
    std::string a_format, w_format;
};
// Throws std::invalid_argument naming the checkpoint when the formats do not apply (a float32
// run) or are not valid training formats.
LoadedModel load_model(const std::string &checkpoint_path, const Shape &image_shape, int classes,
                       const InferenceFormats &inference = {});
// The double-width deployment of a low-bit run (method.md section 5): its b-bit activation and
// weight formats as 2b-bit fixed point (m{2b-1}e0) with the same group exponents and axes.
// Throws std::invalid_argument naming `checkpoint_path` for a float32 run or where 2b bits
// would not fit the int8 kernels (b > 4).
InferenceFormats double_width_formats(const TrainConfig &trained, const std::string &checkpoint_path);
// Only the configuration a checkpoint was trained with.
TrainConfig load_model_config(const std::string &checkpoint_path);

// The augmentation a configuration trains and tests with.
Augmentation train_augmentation(const TrainConfig &config, const Dataset &train);
Augmentation test_augmentation(const TrainConfig &config, const Dataset &train);
// Loads a split, keeping the first `limit` images when limit >= 0.
Dataset load_split(const std::string &data, bool train, int64_t limit);

}  // namespace lowbit::train
