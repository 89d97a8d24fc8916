// `lowbit train` and `lowbit eval`:
//   lowbit train [--config run.yaml] [--model resnet20] [--data fashion-mnist] [--a-format F] ...
//                [--epochs 30] [--batch 128] [--lr 0.1] [--seed 1] [--threads 2] --out runs/NAME
//   lowbit train --out runs/NAME --resume [--epochs 40]
//   lowbit eval --checkpoint runs/NAME/checkpoint.ckpt [--data fashion-mnist]
//               [--double-width | --a-format F --w-format F] [--recalibrate BATCHES]
// Flags override the config file; the file overrides the defaults (train/config.h).
#include <fmt/format.h>

#include <memory>

#include "commands.h"
#include "data/loader.h"
#include "nn/models.h"
#include "train/trainer.h"

namespace lowbit::commands {

namespace {

struct TrainOptions {
    train::TrainConfig config;
    std::string config_file;
    bool resume = false;
    bool quiet = false;
};

}  // namespace

Run add_train(CLI::App &app) {
    auto options = std::make_shared<TrainOptions>();
    CLI::App *cmd = app.add_subcommand("train", "Train a network with low-bit (or float32) convolutions");
    train::TrainConfig &c = options->config;
    // Every flag is named after its configuration key (dashes for underscores), so that a
    // given flag can override the same key of a config file.
    cmd->add_option("--config", options->config_file, "JSON or YAML file of settings (keys as the flags, with _)");
    cmd->add_option("--model", c.model, "resnet20, resnet32, resnet44, resnet56, vgg_small or lenet5");
    cmd->add_option("--data", c.data, "fashion-mnist, or a CIFAR-10 binary / image-folder directory");
    cmd->add_option("--precision", c.precision, "lowbit, or float32 for the same network on float32 kernels");
    cmd->add_option("--a-format", c.a_format, "format of activations (see `lowbit formats`)");
    cmd->add_option("--w-format", c.w_format, "format of weights");
    cmd->add_option("--e-format", c.e_format, "format of errors (output gradients)");
    cmd->add_option("--a-rounding", c.a_rounding, "nearest or stochastic");
    cmd->add_option("--w-rounding", c.w_rounding, "nearest or stochastic");
    cmd->add_option("--e-rounding", c.e_rounding, "nearest or stochastic");
    cmd->add_option("--unsigned-activations", c.unsigned_activations,
                    "after a ReLU, activations drop the sign bit for a mantissa bit: m3e0 becomes um4e0 "
                    "(true/false)");
    cmd->add_flag("--float-first-last", c.float_first_last, "keep the first convolution and the classifier float32");
    cmd->add_flag("--quantize-linear", c.quantize_linear, "run linear layers on the integer kernels too");
    cmd->add_option("--epochs", c.epochs, "epochs to train");
    cmd->add_option("--batch", c.batch, "batch size");
    cmd->add_option("--lr", c.lr, "base learning rate");
    cmd->add_option("--momentum", c.momentum, "SGD momentum");
    cmd->add_flag("--nesterov", c.nesterov, "Nesterov momentum");
    cmd->add_option("--weight-decay", c.weight_decay, "L2 weight decay (not on batch-norm parameters and biases)");
    cmd->add_option("--schedule", c.schedule, "constant, cosine or step:E1,E2 ..., optionally +warmup:E");
    cmd->add_option("--augment", c.augment, "random crop and horizontal flip (true/false)");
    cmd->add_option("--seed", c.seed, "seed of initialization, shuffling, augmentation and stochastic rounding");
    cmd->add_option("--train-limit", c.train_limit, "use only the first N training images");
    cmd->add_option("--test-limit", c.test_limit, "use only the first N test images");
    cmd->add_option("--out", c.out,
                    "run folder for config.json, metrics.csv, checkpoint.ckpt, summary.json (default: a new "
                    "runs/MODEL-PRECISION-DATE-TIME)");
    cmd->add_flag("--resume", options->resume,
                  "continue the run in --out from its checkpoint, with its settings (--epochs may extend it, "
                  "--threads change)");
    cmd->add_flag("--quiet", options->quiet, "no progress output");
    return [options, cmd, &app]() {
        train::TrainConfig config = options->config;
        // The top-level --threads applies to training too.
        if (app.get_option("--threads")->count() > 0) config.threads = app.get_option("--threads")->as<int>();
        if (!options->config_file.empty()) {
            train::TrainConfig from_file;
            train::update_from_json(from_file, train::read_config_file(options->config_file), options->config_file);
            const nlohmann::json given = train::to_json(config);
            nlohmann::json merged = train::to_json(from_file);
            for (const CLI::Option *opt : cmd->get_options()) {
                if (opt->count() == 0) continue;
                std::string key = opt->get_name(false, true);
                while (!key.empty() && key[0] == '-') key.erase(0, 1);
                for (char &ch : key) ch = ch == '-' ? '_' : ch;
                if (given.contains(key)) merged[key] = given[key];
            }
            if (app.get_option("--threads")->count() > 0) merged["threads"] = config.threads;
            config = train::TrainConfig{};
            train::update_from_json(config, merged, options->config_file);
        }
        train::RunOptions run;
        run.quiet = options->quiet;
        // On --resume the checkpoint's settings hold; an explicit --epochs extends the run.
        if (options->resume && cmd->get_option("--epochs")->count() > 0) run.resume_epochs = config.epochs;
        if (options->resume && app.get_option("--threads")->count() > 0) run.resume_threads = config.threads;
        train::run_training(config, options->resume, run);
        return 0;
    };
}

Run add_eval(CLI::App &app) {
    struct EvalOptions {
        std::string checkpoint, data;
        int batch = 0;
        int64_t limit = -1;
        train::InferenceFormats formats;
        bool double_width = false;
        int recalibrate = -1;  // -1: 100 batches where the formats change, else none
    };
    auto options = std::make_shared<EvalOptions>();
    CLI::App *cmd = app.add_subcommand("eval", "Test accuracy of a trained checkpoint");
    cmd->add_option("--checkpoint", options->checkpoint, "checkpoint.ckpt of a run")->required();
    cmd->add_option("--data", options->data, "data set (default: the one it was trained on)");
    cmd->add_option("--batch", options->batch,
                    "batch size (default: the training batch; low-bit results depend on it slightly, since "
                    "a tensor's scale is its max over the batch)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--test-limit", options->limit, "use only the first N test images");
    CLI::Option *a = cmd->add_option("--a-format", options->formats.a_format,
                                     "run inference with this activation format instead of the trained one");
    CLI::Option *w = cmd->add_option("--w-format", options->formats.w_format,
                                     "run inference with this weight format instead of the trained one");
    cmd->add_flag("--double-width", options->double_width,
                  "deploy at twice the trained bits (method.md section 5): b-bit activations and weights become "
                  "2b-bit fixed point with the same groups, e.g. m3e0/g3/sample -> m7e0/g3/sample")
        ->excludes(a)
        ->excludes(w);
    cmd->add_option("--recalibrate", options->recalibrate,
                    "re-estimate the batch-norm statistics on this many training batches first (default: 100 "
                    "where the formats change, since the convolutions' outputs change with them; else 0)")
        ->check(CLI::NonNegativeNumber);
    return [options]() {
        // The data set decides the network's input shape and classes, so read the config first.
        const train::TrainConfig trained = train::load_model_config(options->checkpoint);
        train::InferenceFormats formats = options->formats;
        if (options->double_width) formats = train::double_width_formats(trained, options->checkpoint);
        const std::string data = options->data.empty() ? trained.data : options->data;
        const Dataset train_set = train::load_split(data, true, trained.train_limit);
        const Dataset test_set = train::load_split(data, false, options->limit);
        const int batch = options->batch > 0 ? options->batch : trained.batch;
        BatchLoader loader(test_set, batch, false, false, train::test_augmentation(trained, train_set), trained.seed);
        train::LoadedModel model =
            train::load_model(options->checkpoint, loader.image_shape(), train_set.classes, formats);
        const bool formats_change = !formats.a_format.empty() || !formats.w_format.empty();
        std::string how =
            formats_change ? fmt::format(" with A {} and W {}", model.config.a_format, model.config.w_format) : "";
        const int recalibrate = options->recalibrate >= 0 ? options->recalibrate : formats_change ? 100 : 0;
        if (recalibrate > 0) {
            // Shuffled full batches of the training split as the test sees images (no crops, flips).
            BatchLoader calibration(train_set, batch, true, true, train::test_augmentation(trained, train_set),
                                    trained.seed);
            const int used = train::recalibrate_batch_norm(*model.network, calibration, recalibrate, trained.seed);
            how += fmt::format("{} batch-norm statistics from {} training batches", how.empty() ? " with" : ",", used);
        }
        const train::EvalResult r = train::evaluate(*model.network, loader, trained.seed);
        fmt::print("{} on {} ({} images){}: test loss {:.4f}, accuracy {:.2f}%\n", options->checkpoint, data, r.images,
                   how, r.loss, 100 * r.accuracy);
        return 0;
    };
}

}  // namespace lowbit::commands
