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

// A checkpoint's network with its parameters and statistics, and the config it was trained with.
struct LoadedModel {
    TrainConfig config;
    std::unique_ptr<nn::Network> network;
};
LoadedModel load_model(const std::string &checkpoint_path, const Shape &image_shape, int classes);
// Only the configuration a checkpoint was trained with.
TrainConfig load_model_config(const std::string &checkpoint_path);

// The augmentation a configuration trains and tests with.
Augmentation train_augmentation(const TrainConfig &config, const Dataset &train);
Augmentation test_augmentation(const TrainConfig &config, const Dataset &train);
// Loads a split, keeping the first `limit` images when limit >= 0.
Dataset load_split(const std::string &data, bool train, int64_t limit);

}  // namespace lowbit::train
