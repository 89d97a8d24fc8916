#include "train/trainer.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "atomic_file.h"
#include "checkpoint.h"
#include "dispatch.h"
#include "nn/functional.h"
#include "optim/schedule.h"
#include "optim/sgd.h"

namespace lowbit::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char *kCheckpointName = "checkpoint.ckpt";

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string clock_text(double seconds) {
    const int64_t s = int64_t(seconds + 0.5);
    return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                     : fmt::format("{}:{:02}", s / 60, s % 60);
}

// A bar redrawn in place on a terminal; on a pipe or file, one plain line every ten seconds.
class Progress {
public:
    Progress(bool quiet, int epochs) : quiet_(quiet), tty_(isatty(fileno(stdout)) != 0), epochs_(epochs) {}

    void step(int epoch, int64_t batch, int64_t batches, double loss, double accuracy, double images_per_second) {
        if (quiet_) return;
        const double eta = images_per_second > 0 ? double(batches - batch) * per_batch_images_ / images_per_second : 0;
        const std::string stats = fmt::format("loss {:.4f} acc {:5.1f}% {:6.0f} img/s ETA {}", loss, 100 * accuracy,
                                              images_per_second, clock_text(eta));
        if (tty_) {
            const int width = 24, filled = int(width * batch / std::max<int64_t>(batches, 1));
            fmt::print("\repoch {}/{} [{}{}] {}/{} {}  ", epoch, epochs_, std::string(size_t(filled), '#'),
                       std::string(size_t(width - filled), ' '), batch, batches, stats);
            std::fflush(stdout);
        } else if (seconds_since(last_line_) >= 10.0) {
            fmt::print("epoch {}/{} batch {}/{} {}\n", epoch, epochs_, batch, batches, stats);
            std::fflush(stdout);
            last_line_ = Clock::now();
        }
    }
    void set_batch_images(double n) { per_batch_images_ = n; }
    void epoch_done(const EpochMetrics &m) {
        if (quiet_) return;
        if (tty_) fmt::print("\r{:120}\r", "");
        fmt::print(
            "epoch {}/{}: train loss {:.4f} acc {:.2f}% | test loss {:.4f} acc {:.2f}% | lr {:.4g} | {:.0f} img/s | "
            "{:.1f} s\n",
            m.epoch, epochs_, m.train_loss, 100 * m.train_accuracy, m.test_loss, 100 * m.test_accuracy, m.lr,
            m.images_per_second, m.seconds);
        std::fflush(stdout);
        last_line_ = Clock::now();
    }
    void line(const std::string &text) {
        if (!quiet_) fmt::print("{}\n", text);
    }

private:
    bool quiet_, tty_;
    int epochs_;
    double per_batch_images_ = 1;
    Clock::time_point last_line_ = Clock::now();
};

std::string metrics_csv(const std::vector<EpochMetrics> &rows) {
    std::string s = "epoch,train_loss,train_accuracy,test_loss,test_accuracy,lr,images_per_second,seconds\n";
    for (const EpochMetrics &m : rows) {
        s += fmt::format("{},{:.9g},{:.9g},{:.9g},{:.9g},{:.9g},{:.1f},{:.2f}\n", m.epoch, m.train_loss,
                         m.train_accuracy, m.test_loss, m.test_accuracy, m.lr, m.images_per_second, m.seconds);
    }
    return s;
}

nlohmann::json metrics_json(const EpochMetrics &m) {
    return {{"epoch", m.epoch},
            {"train_loss", m.train_loss},
            {"train_accuracy", m.train_accuracy},
            {"test_loss", m.test_loss},
            {"test_accuracy", m.test_accuracy},
            {"lr", m.lr},
            {"images_per_second", m.images_per_second},
            {"seconds", m.seconds}};
}

EpochMetrics metrics_from_json(const nlohmann::json &j) {
    EpochMetrics m;
    m.epoch = j.at("epoch").get<int>();
    m.train_loss = j.at("train_loss").get<double>();
    m.train_accuracy = j.at("train_accuracy").get<double>();
    m.test_loss = j.at("test_loss").get<double>();
    m.test_accuracy = j.at("test_accuracy").get<double>();
    m.lr = j.at("lr").get<double>();
    m.images_per_second = j.at("images_per_second").get<double>();
    m.seconds = j.at("seconds").get<double>();
    return m;
}

void write_text(const std::string &path, const std::string &text) {
    write_file_atomically(path, {ByteSpan{text.data(), text.size()}});
}

// Parameters, momentum and batch-norm statistics, by name.
Checkpoint make_checkpoint(nn::Network &net, const Sgd &sgd, const TrainConfig &config, int epochs_done, int64_t step,
                           const std::vector<EpochMetrics> &rows) {
    Checkpoint c;
    const ParameterStore &store = net.parameters();
    c.arrays["parameters"].assign(store.values(), store.values() + store.total_size());
    c.arrays["momentum"] = sgd.state();
    for (auto &[name, t] : net.state()) c.arrays["state." + name].assign(t.data(), t.data() + t.numel());
    nlohmann::json metrics = nlohmann::json::array();
    for (const EpochMetrics &m : rows) metrics.push_back(metrics_json(m));
    c.meta = {{"config", to_json(config)}, {"epochs_done", epochs_done}, {"step", step},
              {"sgd_steps", sgd.steps()},  {"metrics", metrics},         {"model", net.name()}};
    return c;
}

const std::vector<float> &array_of(const Checkpoint &c, const std::string &name, size_t size, const std::string &path) {
    const auto it = c.arrays.find(name);
    if (it == c.arrays.end()) throw std::runtime_error(fmt::format("{}: no array '{}'", path, name));
    if (it->second.size() != size) {
        throw std::runtime_error(
            fmt::format("{}: array '{}' has {} values, the network needs {}", path, name, it->second.size(), size));
    }
    return it->second;
}

void restore_network(nn::Network &net, const Checkpoint &c, const std::string &path) {
    ParameterStore &store = net.parameters();
    const auto &values = array_of(c, "parameters", size_t(store.total_size()), path);
    std::copy(values.begin(), values.end(), store.values());
    for (auto &[name, t] : net.state()) {
        const auto &v = array_of(c, "state." + name, size_t(t.numel()), path);
        std::copy(v.begin(), v.end(), t.data());
    }
}

}  // namespace

Dataset load_split(const std::string &data, bool train, int64_t limit) {
    Dataset d = load_dataset(data, train);
    if (limit >= 0 && limit < d.size()) {
        d.labels.resize(size_t(limit));
        d.images.resize(size_t(limit * d.image_bytes()));
    }
    return d;
}

// 28x28 images (Fashion-MNIST) padded to 32x32, as the CIFAR ResNets expect; normalized with
// the training split's statistics.
Augmentation test_augmentation(const TrainConfig &, const Dataset &train) {
    Augmentation a;
    if (train.image_shape[1] < 32 || train.image_shape[2] < 32) a.resize_to = 32;
    a.mean = channel_mean(train);
    a.stddev = channel_stddev(train);
    return a;
}

Augmentation train_augmentation(const TrainConfig &config, const Dataset &train) {
    Augmentation a = test_augmentation(config, train);
    if (config.augment) {
        a.pad = 4;
        a.random_crop = true;
        a.horizontal_flip = true;
    }
    return a;
}

EvalResult evaluate(nn::Network &net, BatchLoader &loader, uint64_t seed) {
    nn::StepContext ctx{false, seed, 0};
    EvalResult r;
    double loss_sum = 0;
    int64_t correct = 0;
    Batch batch;
    while (loader.next(batch)) {
        const Tensor logits = net.forward(batch.images, ctx);
        const nn::LossResult l = nn::softmax_cross_entropy(logits, batch.labels, nullptr);
        const int64_t n = int64_t(batch.labels.size());
        loss_sum += l.loss * double(n);
        correct += l.correct;
        r.images += n;
    }
    if (r.images > 0) {
        r.loss = loss_sum / double(r.images);
        r.accuracy = double(correct) / double(r.images);
    }
    return r;
}

int recalibrate_batch_norm(nn::Network &net, BatchLoader &loader, int batches, uint64_t seed) {
    Batch batch;
    int used = 0;
    while (used < batches && loader.next(batch)) {
        used++;
        net.forward(batch.images, nn::StepContext{true, seed, uint64_t(used - 1), uint64_t(used)});
    }
    return used;
}

namespace {
TrainConfig config_of(const Checkpoint &c, const std::string &path) {
    TrainConfig config;
    if (!c.meta.is_object() || !c.meta.contains("config"))
        throw std::runtime_error(fmt::format("{}: not a training checkpoint (no configuration)", path));
    const nlohmann::json &recorded = c.meta.at("config");
    // A checkpoint records every setting, so a missing one predates it: runs before unsigned
    // activations existed trained with signed ones.
    if (recorded.is_object() && !recorded.contains("unsigned_activations")) config.unsigned_activations = false;
    update_from_json(config, recorded, path);
    return config;
}
}  // namespace

InferenceFormats double_width_formats(const TrainConfig &trained, const std::string &path) {
    if (trained.precision != "lowbit")
        throw std::invalid_argument(
            fmt::format("{}: a {} run has no low-bit formats to widen", path, trained.precision));
    auto widen = [&](const std::string &text, const char *name) {
        Format f = parse_format(text);
        const int bits = 2 * f.bits();
        if (bits > 8)
            throw std::invalid_argument(
                fmt::format("{}: {} {} has {} bits; its double width, {} bits, does not fit the int8 kernels", path,
                            name, text, f.bits(), bits));
        f.has_sign = true;
        f.exponent_bits = 0;
        f.shift = 0;
        f.mantissa_bits = bits - 1;
        return to_string(f);
    };
    return {widen(trained.a_format, "a_format"), widen(trained.w_format, "w_format")};
}

TrainConfig load_model_config(const std::string &path) { return config_of(load_checkpoint(path), path); }

LoadedModel load_model(const std::string &path, const Shape &image_shape, int classes,
                       const InferenceFormats &inference) {
    const Checkpoint c = load_checkpoint(path);
    LoadedModel m;
    m.config = config_of(c, path);
    if (!inference.a_format.empty() || !inference.w_format.empty()) {
        if (m.config.precision != "lowbit")
            throw std::invalid_argument(
                fmt::format("{}: a {} run has no formats to replace", path, m.config.precision));
        if (!inference.a_format.empty()) m.config.a_format = inference.a_format;
        if (!inference.w_format.empty()) m.config.w_format = inference.w_format;
        try {
            m.config.validate();
        } catch (const std::invalid_argument &e) {
            throw std::invalid_argument(fmt::format("{}: inference formats: {}", path, e.what()));
        }
    }
    m.network = std::make_unique<nn::Network>(m.config.model, image_shape, classes, m.config.policy(), m.config.seed);
    restore_network(*m.network, c, path);
    return m;
}

TrainResult run_training(const TrainConfig &requested, bool resume, const RunOptions &run_options) {
    TrainConfig config = requested;
    if (config.out.empty()) {
        if (resume) throw std::invalid_argument("--resume needs the run folder (--out) to continue");
        config.out = named_run_folder(config);
    }
    const fs::path folder(config.out);
    const std::string checkpoint_path = (folder / kCheckpointName).string();
    Checkpoint resumed;
    if (resume) {
        resumed = load_checkpoint(checkpoint_path);
        config = config_of(resumed, checkpoint_path);
        if (run_options.resume_epochs > 0) config.epochs = run_options.resume_epochs;
        if (run_options.resume_threads > 0) config.threads = run_options.resume_threads;
        config.out = folder.string();
    } else if (fs::exists(folder / kCheckpointName) || fs::exists(folder / "metrics.csv")) {
        throw std::runtime_error(
            fmt::format("{}: already holds a run; pass --resume to continue it or choose another --out", config.out));
    }
    config.validate();
    if (config.threads > 0) set_num_threads(config.threads);

    Progress progress(run_options.quiet, config.epochs);
    const Dataset train_set = load_split(config.data, true, config.train_limit);
    const Dataset test_set = load_split(config.data, false, config.test_limit);
    if (train_set.size() == 0 || test_set.size() == 0) throw std::runtime_error(config.data + ": an empty split");
    BatchLoader train_loader(train_set, config.batch, true, false, train_augmentation(config, train_set), config.seed);
    BatchLoader test_loader(test_set, config.batch, false, false, test_augmentation(config, train_set), config.seed);

    nn::Network net(config.model, train_loader.image_shape(), train_set.classes, config.policy(), config.seed);
    SgdOptions sgd_options;
    sgd_options.lr = float(config.lr);
    sgd_options.momentum = float(config.momentum);
    sgd_options.nesterov = config.nesterov;
    sgd_options.weight_decay = float(config.weight_decay);
    Sgd sgd(net.parameters(), sgd_options);
    const int64_t steps_per_epoch = train_loader.batches_per_epoch();
    const LrSchedule schedule =
        parse_lr_schedule(config.schedule, float(config.lr), steps_per_epoch * config.epochs, steps_per_epoch);

    TrainResult result;
    int start_epoch = 0;
    int64_t step = 0;
    if (resume) {
        restore_network(net, resumed, checkpoint_path);
        const auto &momentum = array_of(resumed, "momentum", size_t(net.parameters().total_size()), checkpoint_path);
        sgd.load_state(momentum, resumed.meta.at("sgd_steps").get<int64_t>());
        start_epoch = resumed.meta.at("epochs_done").get<int>();
        step = resumed.meta.at("step").get<int64_t>();
        for (const auto &m : resumed.meta.at("metrics")) result.epochs.push_back(metrics_from_json(m));
        train_loader.start_epoch(start_epoch);
        progress.line(fmt::format("resuming {} after epoch {} (step {})", checkpoint_path, start_epoch, step));
    }
    // Only now, with data and network built, does the run folder appear: a bad setting leaves
    // nothing behind.
    fs::create_directories(folder);
    write_text((folder / "config.json").string(), to_json(config).dump(2) + "\n");
    progress.line(fmt::format("{}: {} parameters, {:.1f} M multiply-adds per image, {} on {} ({} train / {} test)",
                              config.model, net.parameters().total_size(), double(net.multiply_adds()) / 1e6,
                              describe(config.policy()), config.data, train_set.size(), test_set.size()));
    progress.set_batch_images(double(config.batch));

    const auto start = Clock::now();
    Tensor grad_logits;
    const int end_epoch = run_options.stop_after_epochs >= 0
                              ? std::min(config.epochs, start_epoch + run_options.stop_after_epochs)
                              : config.epochs;
    for (int epoch = start_epoch; epoch < end_epoch; epoch++) {
        const auto epoch_start = Clock::now();
        double loss_sum = 0;
        int64_t correct = 0, images = 0, batch_index = 0;
        Batch batch;
        while (train_loader.next(batch)) {
            const nn::StepContext ctx{true, config.seed, uint64_t(step)};
            const Tensor logits = net.forward(batch.images, ctx);
            if (grad_logits.shape() != logits.shape()) grad_logits = Tensor();  // the last batch may be short
            const nn::LossResult loss = nn::softmax_cross_entropy(logits, batch.labels, &grad_logits);
            if (!std::isfinite(loss.loss)) {
                throw std::runtime_error(fmt::format(
                    "epoch {} step {}: the loss is {}; lower --lr or widen the formats", epoch + 1, step, loss.loss));
            }
            net.backward(grad_logits, ctx);
            sgd.step(schedule.lr(step));
            const int64_t n = int64_t(batch.labels.size());
            loss_sum += loss.loss * double(n);
            correct += loss.correct;
            images += n;
            step++;
            batch_index++;
            progress.step(epoch + 1, batch_index, steps_per_epoch, loss_sum / double(images),
                          double(correct) / double(images), double(images) / seconds_since(epoch_start));
        }
        const double train_seconds = seconds_since(epoch_start);
        const EvalResult test = evaluate(net, test_loader, config.seed);
        EpochMetrics m;
        m.epoch = epoch + 1;
        m.train_loss = loss_sum / double(std::max<int64_t>(images, 1));
        m.train_accuracy = double(correct) / double(std::max<int64_t>(images, 1));
        m.test_loss = test.loss;
        m.test_accuracy = test.accuracy;
        m.lr = schedule.lr(std::max<int64_t>(step - 1, 0));
        m.images_per_second = double(images) / train_seconds;
        m.seconds = seconds_since(epoch_start);
        result.epochs.push_back(m);
        // The metrics first, then the checkpoint that claims them: a crash between the two
        // leaves a checkpoint one epoch behind, and resuming redoes that epoch exactly.
        write_text((folder / "metrics.csv").string(), metrics_csv(result.epochs));
        save_checkpoint(checkpoint_path, make_checkpoint(net, sgd, config, epoch + 1, step, result.epochs));
        progress.epoch_done(m);
    }
    result.wall_seconds = seconds_since(start);
    if (result.epochs.empty() || result.epochs.back().epoch < config.epochs) return result;  // stopped early

    double train_seconds = 0, train_images_per_second = 0;
    for (const EpochMetrics &m : result.epochs) train_seconds += m.seconds;
    if (!result.epochs.empty()) train_images_per_second = result.epochs.back().images_per_second;
    const EpochMetrics &last = result.epochs.back();
    const nlohmann::json summary = {{"model", config.model},
                                    {"data", config.data},
                                    {"precision", describe(config.policy())},
                                    {"epochs", config.epochs},
                                    {"test_accuracy", last.test_accuracy},
                                    {"test_loss", last.test_loss},
                                    {"train_accuracy", last.train_accuracy},
                                    {"wall_seconds", train_seconds},
                                    {"images_per_second", train_images_per_second},
                                    {"threads", config.threads},
                                    {"isa", to_string(forced_isa().value_or(best_isa()))}};
    write_text((folder / "summary.json").string(), summary.dump(2) + "\n");
    progress.line(fmt::format("test accuracy {:.2f}% after {} epochs, {} ({})", 100 * last.test_accuracy, config.epochs,
                              clock_text(train_seconds), (folder / "summary.json").string()));
    return result;
}

}  // namespace lowbit::train
