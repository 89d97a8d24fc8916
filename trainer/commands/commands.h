// The `lowbit` command line: each subcommand registers its options on the CLI11 app and
// returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace lowbit::commands {

using Run = std::function<int()>;

// `lowbit formats`: inspect LB formats, quantize .npy tensors, sweep formats on data.
Run add_formats(CLI::App &app);
// `lowbit train`: train a network, `lowbit eval`: test a checkpoint.
Run add_train(CLI::App &app);
Run add_eval(CLI::App &app);

}  // namespace lowbit::commands
