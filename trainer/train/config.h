// The configuration of a training run: what `lowbit train` takes as flags or as a JSON/YAML
// file, and what a run folder's config.json and every checkpoint record.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "nn/precision.h"

namespace lowbit::train {

struct TrainConfig {
    std::string model = "resnet20";
    std::string data = "fashion-mnist";  // a name load_dataset knows, or a directory
    std::string precision = "lowbit";    // "lowbit" or "float32" (the same network on float32 kernels)
    // Defaults: 4-bit elements with 3-bit group exponents per sample (activations, errors) or
    // per output channel (weights): fixed point for A and W, the later paper's floating m1e2
    // for the errors, whose range is wider (0.8 points better than m3e0 errors after 3
    // ResNet-20 epochs, docs/RESULTS.md); A and W rounded to nearest, E stochastically.
    std::string a_format = "m3e0/g3/sample";
    std::string w_format = "m3e0/g3/channel";
    std::string e_format = "m1e2/g3/sample";
    std::string a_rounding = "nearest", w_rounding = "nearest", e_rounding = "stochastic";
    // Layers after a ReLU take the unsigned activation format of the same width (m3e0 -> um4e0).
    bool unsigned_activations = true;
    bool float_first_last = false;  // keep the first convolution and the classifier in float32
    bool quantize_linear = false;   // also run the linear layers on the integer kernels
    int epochs = 30;
    int batch = 128;
    double lr = 0.1;
    double momentum = 0.9;
    bool nesterov = false;
    double weight_decay = 5e-4;
    std::string schedule = "cosine";  // see optim/schedule.h: "cosine+warmup:2", "step:30,60", ...
    bool augment = true;              // random crop (pad 4) and horizontal flip
    uint64_t seed = 1;
    int threads = 2;
    int64_t train_limit = -1;  // use only the first N training images (-1: all)
    int64_t test_limit = -1;
    std::string out;  // run folder; empty: runs/<model>-<precision>-<date>-<time> (see named_run_folder)

    // Throws std::invalid_argument naming the bad field (formats, roundings, ranges).
    void validate() const;
    nn::PrecisionPolicy policy() const;
};

// runs/resnet20-lowbit-20261129-031502: a new folder name for a run whose --out is not given.
std::string named_run_folder(const TrainConfig &c);

nlohmann::json to_json(const TrainConfig &c);
// Fields absent from `j` keep their value in `c`; an unknown key or a value of the wrong type
// throws std::invalid_argument naming the key and `source`.
void update_from_json(TrainConfig &c, const nlohmann::json &j, const std::string &source);
// A JSON (.json) or YAML (.yaml, .yml) file as JSON. Throws std::runtime_error naming the file.
nlohmann::json read_config_file(const std::string &path);

}  // namespace lowbit::train
