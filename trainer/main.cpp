// lowbit: low-bit fixed-point training of convolutional networks. The command line.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <exception>

#include "commands/commands.h"
#include "dispatch.h"

int main(int argc, char **argv) {
    CLI::App app{"lowbit: train CNNs with low-bit (2 to 8 bit) fixed-point convolutions"};
    app.require_subcommand(1);
    // Options of the program (--threads, --isa) may also follow the subcommand, as in
    // `lowbit train --threads 2`: subcommands pass what they do not know up to here.
    app.fallthrough();
    std::string isa;
    app.add_option("--isa", isa, "Force a kernel variant: avx512_vnni, avx2 or baseline (default: best for this CPU)");
    int threads = 0;
    app.add_option("--threads", threads, "Threads for the kernels (default: one per core)")
        ->check(CLI::NonNegativeNumber);
    const lowbit::commands::Run formats = lowbit::commands::add_formats(app);
    const lowbit::commands::Run train = lowbit::commands::add_train(app);
    const lowbit::commands::Run eval = lowbit::commands::add_eval(app);
    try {
        app.parse(argc, argv);
        if (!isa.empty()) lowbit::force_isa(lowbit::parse_isa(isa));
        if (threads > 0) lowbit::set_num_threads(threads);
        if (app.got_subcommand("formats")) return formats();
        if (app.got_subcommand("train")) return train();
        if (app.got_subcommand("eval")) return eval();
    } catch (const CLI::ParseError &e) {
        return app.exit(e);
    } catch (const std::exception &e) {
        fmt::print(stderr, "lowbit: error: {}\n", e.what());
        return 1;
    }
    return 0;
}
