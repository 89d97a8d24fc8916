// The training loop end to end on real data (the Debian Fashion-MNIST package): it learns, in
// float32 and at 4 bits; the same seed gives bit-identical metrics whatever the thread count; resuming
// from a checkpoint continues exactly as the uninterrupted run; run folders and config files
// are checked.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "checkpoint.h"
#include "train/trainer.h"

namespace lowbit::train {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir() {
    std::string templ = (fs::path(::testing::TempDir()) / "lowbit_training_XXXXXX").string();
    const char *made = mkdtemp(templ.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    return made;
}

// LeNet-5 on the first 6400 training images: 300 steps of batch 64.
TrainConfig small_run(const std::string &out, const std::string &precision) {
    TrainConfig c;
    c.model = "lenet5";
    c.precision = precision;
    c.epochs = 3;
    c.batch = 64;
    c.lr = 0.1;
    c.augment = false;
    c.train_limit = 6400;
    c.test_limit = 1000;
    c.threads = 2;
    c.out = out;
    return c;
}

// The columns that must repeat exactly (timings cannot).
void expect_same_learning(const std::vector<EpochMetrics> &a, const std::vector<EpochMetrics> &b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); i++) {
        EXPECT_EQ(a[i].epoch, b[i].epoch);
        EXPECT_EQ(a[i].train_loss, b[i].train_loss) << "epoch " << a[i].epoch;
        EXPECT_EQ(a[i].train_accuracy, b[i].train_accuracy) << "epoch " << a[i].epoch;
        EXPECT_EQ(a[i].test_loss, b[i].test_loss) << "epoch " << a[i].epoch;
        EXPECT_EQ(a[i].test_accuracy, b[i].test_accuracy) << "epoch " << a[i].epoch;
        EXPECT_EQ(a[i].lr, b[i].lr) << "epoch " << a[i].epoch;
    }
}

// Stated accuracy: 77% on 1000 test images after 300 steps (measured 81.3% in float32 and
// 82.8% at 4 bits with the default formats, 81.0% with signed activations; chance is 10%), and
// 4 bits within 3 points of float32.
TEST(Training, LeNetLearnsFashionMnistInFloat32AndAtFourBits) {
    const std::string dir = fresh_dir();
    const TrainResult f = run_training(small_run(dir + "/float32", "float32"), false, {true});
    const TrainResult q = run_training(small_run(dir + "/lowbit", "lowbit"), false, {true});
    const double float_accuracy = f.epochs.back().test_accuracy, lowbit_accuracy = q.epochs.back().test_accuracy;
    std::cout << "float32 " << float_accuracy << ", 4-bit " << lowbit_accuracy << "\n";
    EXPECT_GE(float_accuracy, 0.77);
    EXPECT_GE(lowbit_accuracy, 0.77);
    EXPECT_GE(lowbit_accuracy, float_accuracy - 0.03);
    EXPECT_LT(q.epochs.back().train_loss, 0.6 * q.epochs.front().train_loss) << "the loss did not fall";
    // The run folder holds what the issue promises.
    for (const char *file : {"config.json", "metrics.csv", "checkpoint.ckpt", "summary.json"}) {
        EXPECT_TRUE(fs::exists(fs::path(dir) / "lowbit" / file)) << file;
    }
    std::ifstream csv(fs::path(dir) / "lowbit" / "metrics.csv");
    int lines = 0;
    for (std::string line; std::getline(csv, line);) lines++;
    EXPECT_EQ(lines, 1 + 3);
}

TrainConfig tiny_run(const std::string &out, int epochs) {
    TrainConfig c = small_run(out, "lowbit");  // stochastic rounding of errors: the seeds matter
    c.epochs = epochs;
    c.train_limit = 1000;  // a short last batch (1000 = 15 * 64 + 40), in training and test
    c.test_limit = 250;
    c.augment = true;  // random crops and flips: the loader's seeds matter too
    return c;
}

// The thread count does not enter the arithmetic either: every kernel and layer sums in an
// order fixed by the shapes alone (what data-parallel training will rely on).
TEST(Training, SameSeedGivesBitIdenticalMetricsAndWeightsWhateverTheThreads) {
    const std::string dir = fresh_dir();
    const TrainResult a = run_training(tiny_run(dir + "/a", 2), false, {true});
    TrainConfig one_thread = tiny_run(dir + "/b", 2);
    one_thread.threads = 1;
    const TrainResult b = run_training(one_thread, false, {true});
    expect_same_learning(a.epochs, b.epochs);
    const Checkpoint ca = load_checkpoint(dir + "/a/checkpoint.ckpt"), cb = load_checkpoint(dir + "/b/checkpoint.ckpt");
    EXPECT_EQ(ca.arrays, cb.arrays);
    TrainConfig other = tiny_run(dir + "/c", 2);
    other.seed = 2;
    const TrainResult c = run_training(other, false, {true});
    EXPECT_NE(c.epochs.back().train_loss, a.epochs.back().train_loss) << "the seed changes nothing";
}

TEST(Training, ResumingContinuesExactlyAsTheUninterruptedRun) {
    const std::string dir = fresh_dir();
    const TrainResult whole = run_training(tiny_run(dir + "/whole", 3), false, {true});
    run_training(tiny_run(dir + "/parts", 3), false, {true, /*stop_after_epochs=*/1});
    EXPECT_FALSE(fs::exists(dir + "/parts/summary.json")) << "an interrupted run has no summary";
    // The settings come from the checkpoint: what the resuming call asks for does not matter.
    TrainConfig asked = tiny_run(dir + "/parts", 30);
    asked.lr = 7;
    RunOptions one_thread{true};
    one_thread.resume_threads = 1;  // allowed to change, and exact
    const TrainResult resumed = run_training(asked, true, one_thread);
    expect_same_learning(whole.epochs, resumed.epochs);
    EXPECT_EQ(load_checkpoint(dir + "/whole/checkpoint.ckpt").arrays,
              load_checkpoint(dir + "/parts/checkpoint.ckpt").arrays);
}

// A checkpoint written before a setting existed means that setting's old behaviour: runs from
// before unsigned activations trained with signed ones, so eval and resume must use those.
TEST(Training, CheckpointsWithoutUnsignedActivationsMeanSigned) {
    const std::string dir = fresh_dir();
    run_training(tiny_run(dir + "/run", 1), false, {true});
    const std::string path = dir + "/run/checkpoint.ckpt";
    EXPECT_TRUE(load_model_config(path).unsigned_activations);
    Checkpoint c = load_checkpoint(path);
    c.meta["config"].erase("unsigned_activations");
    save_checkpoint(path, c);
    EXPECT_FALSE(load_model_config(path).unsigned_activations);
    EXPECT_EQ(load_model_config(path).epochs, 1);  // the rest as recorded
}

// lowbit eval's path: the checkpoint restores weights and batch-norm statistics exactly, so
// evaluating it at the training batch size reproduces the last epoch's test figures bit for
// bit. (At another batch size they move slightly: a tensor's scale S is its max over the
// whole batch, so a sample's quantization depends on its batch, as method.md defines.)
TEST(Training, EvaluatingTheCheckpointReproducesTheLastTestAccuracy) {
    const std::string dir = fresh_dir();
    const TrainConfig config = tiny_run(dir + "/run", 1);
    const TrainResult r = run_training(config, false, {true});
    const Dataset train = load_split(config.data, true, config.train_limit);
    const Dataset test = load_split(config.data, false, config.test_limit);
    BatchLoader loader(test, config.batch, false, false, test_augmentation(config, train), 1);
    LoadedModel m = load_model(dir + "/run/checkpoint.ckpt", loader.image_shape(), train.classes);
    EXPECT_EQ(to_json(m.config), to_json(config));
    const EvalResult e = evaluate(*m.network, loader, config.seed);
    EXPECT_EQ(e.images, config.test_limit);
    EXPECT_EQ(e.accuracy, r.epochs.back().test_accuracy);
    EXPECT_EQ(e.loss, r.epochs.back().test_loss);
}

// Double-width deployment (method.md section 5): the trained parameters run inference with
// 2b-bit fixed-point activations and weights, the groups kept. Checked against a network built
// directly with those formats and given the checkpoint's parameters and statistics.
TEST(Training, DoubleWidthDeploymentRunsTheTrainedNetworkAtTwiceTheBits) {
    const std::string dir = fresh_dir();
    const TrainConfig config = tiny_run(dir + "/run", 1);
    run_training(config, false, {true});
    const std::string path = dir + "/run/checkpoint.ckpt";
    const InferenceFormats wide = double_width_formats(config, path);
    EXPECT_EQ(wide.a_format, "m7e0/g3/sample");  // from m3e0/g3/sample (um4e0 after ReLUs)
    EXPECT_EQ(wide.w_format, "m7e0/g3/channel");

    const Dataset train = load_split(config.data, true, config.train_limit);
    const Dataset test = load_split(config.data, false, config.test_limit);
    BatchLoader loader(test, config.batch, false, false, test_augmentation(config, train), 1);
    LoadedModel trained = load_model(path, loader.image_shape(), train.classes);
    LoadedModel deployed = load_model(path, loader.image_shape(), train.classes, wide);
    EXPECT_EQ(deployed.config.a_format, wide.a_format);
    EXPECT_EQ(deployed.config.w_format, wide.w_format);
    EXPECT_EQ(deployed.config.e_format, config.e_format);

    TrainConfig eight_bit = config;
    eight_bit.a_format = "m7e0/g3/sample";
    eight_bit.w_format = "m7e0/g3/channel";
    nn::Network direct(config.model, loader.image_shape(), train.classes, eight_bit.policy(), 99);
    ParameterStore &from = trained.network->parameters();
    std::copy(from.values(), from.values() + from.total_size(), direct.parameters().values());
    auto state = direct.state();
    for (auto &[name, t] : trained.network->state()) {
        for (auto &[other, u] : state) {
            if (other == name) std::copy(t.data(), t.data() + t.numel(), u.data());
        }
    }
    const EvalResult at_eight = evaluate(*deployed.network, loader, config.seed);
    const EvalResult expected = evaluate(direct, loader, config.seed);
    EXPECT_EQ(at_eight.loss, expected.loss);
    EXPECT_EQ(at_eight.accuracy, expected.accuracy);
    EXPECT_NE(at_eight.loss, evaluate(*trained.network, loader, config.seed).loss);  // the formats did change

    // Recalibration re-estimates the statistics only: the parameters stay; it stops where the
    // loader's epoch of full batches ends (1000 images: 15 batches of 64).
    const std::vector<float> parameters(from.values(), from.values() + from.total_size());
    BatchLoader calibration(train, config.batch, true, true, test_augmentation(config, train), 1);
    EXPECT_EQ(recalibrate_batch_norm(*deployed.network, calibration, 100, config.seed), 15);
    ParameterStore &after = deployed.network->parameters();
    EXPECT_EQ(std::vector<float>(after.values(), after.values() + after.total_size()), parameters);
    EXPECT_NE(evaluate(*deployed.network, loader, config.seed).loss, at_eight.loss);

    // Floating formats widen to fixed point too; a float32 run or 5-bit formats cannot.
    TrainConfig floating = config;
    floating.a_format = "m1e2/g2/sample";
    EXPECT_EQ(double_width_formats(floating, path).a_format, "m7e0/g2/sample");
    TrainConfig five_bits = config;
    five_bits.w_format = "m4e0/g3/channel";
    try {
        double_width_formats(five_bits, path);
        FAIL() << "a 5-bit format widened to 10 bits";
    } catch (const std::invalid_argument &e) {
        EXPECT_NE(std::string(e.what()).find("m4e0/g3/channel"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    TrainConfig float32 = config;
    float32.precision = "float32";
    EXPECT_THROW(double_width_formats(float32, path), std::invalid_argument);
    try {
        load_model(path, loader.image_shape(), train.classes, {"m9e0/g3/sample", ""});
        FAIL() << "a 10-bit inference format was accepted";
    } catch (const std::invalid_argument &e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("m9e0/g3/sample"), std::string::npos) << e.what();
    }
}

TEST(Training, RefusesToOverwriteARunAndResumesOnlyARun) {
    const std::string dir = fresh_dir();
    run_training(tiny_run(dir + "/run", 1), false, {true});
    const auto before = fs::last_write_time(dir + "/run/checkpoint.ckpt");
    try {
        run_training(tiny_run(dir + "/run", 1), false, {true});
        FAIL() << "a second run into the same folder was accepted";
    } catch (const std::runtime_error &e) {
        EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
    }
    EXPECT_EQ(fs::last_write_time(dir + "/run/checkpoint.ckpt"), before);
    EXPECT_THROW(run_training(tiny_run(dir + "/empty", 1), true, {true}), CheckpointError);
}

TEST(TrainConfig, JsonAndYamlFilesReadAlike) {
    const std::string dir = fresh_dir();
    std::ofstream(dir + "/a.json") << R"({"model": "resnet32", "epochs": 5, "lr": 0.05, "nesterov": true,
                                         "a_format": "m1e2/g3/sample"})";
    std::ofstream(dir + "/a.yaml")
        << "model: resnet32\nepochs: 5\nlr: 0.05\nnesterov: true\na_format: m1e2/g3/sample\n";
    TrainConfig from_json, from_yaml;
    update_from_json(from_json, read_config_file(dir + "/a.json"), "a.json");
    update_from_json(from_yaml, read_config_file(dir + "/a.yaml"), "a.yaml");
    EXPECT_EQ(to_json(from_json), to_json(from_yaml));
    EXPECT_EQ(from_yaml.model, "resnet32");
    EXPECT_EQ(from_yaml.epochs, 5);
    EXPECT_TRUE(from_yaml.nesterov);
    EXPECT_EQ(from_yaml.a_format, "m1e2/g3/sample");
    EXPECT_EQ(from_yaml.batch, TrainConfig{}.batch) << "absent keys keep their defaults";
}

TEST(TrainConfig, BadSettingsAreNamed) {
    TrainConfig c;
    auto message = [&](const nlohmann::json &j) {
        try {
            TrainConfig copy = c;
            update_from_json(copy, j, "run.json");
            copy.validate();
        } catch (const std::exception &e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    EXPECT_NE(message({{"epoch", 3}}).find("unknown setting 'epoch'"), std::string::npos);
    EXPECT_NE(message({{"epochs", "three"}}).find("'epochs' has the wrong type"), std::string::npos);
    EXPECT_NE(message({{"a_format", "m3x0"}}).find("a_format"), std::string::npos);
    EXPECT_NE(message({{"w_format", "m7e1"}}).find("qmax"), std::string::npos);
    EXPECT_NE(message({{"precision", "int4"}}).find("precision 'int4'"), std::string::npos);
    EXPECT_NE(message({{"batch", 0}}).find("batch 0"), std::string::npos);
    EXPECT_THROW(read_config_file("/nonexistent/run.yaml"), std::runtime_error);
}

}  // namespace
}  // namespace lowbit::train
