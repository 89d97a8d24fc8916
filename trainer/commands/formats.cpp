// `lowbit formats`:
//   lowbit formats                         every format up to 8 bits: bits, qmax, values
//   lowbit formats m1e2                    one format's bits, qmax and representable values
//   lowbit formats m1e2/g2/sample --input x.npy [--out q.npy] [--rounding stochastic --seed S]
//                                          quantize a float32 .npy tensor, print its errors
//   lowbit formats --sweep [--data DIR]    quantize a batch of Fashion-MNIST test images in
//                                          every int8 format and print the error table
//   lowbit formats --markdown              the table of docs/FORMATS.md
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>

#include "commands.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "dispatch.h"
#include "format.h"
#include "npy.h"
#include "quantize.h"

namespace lowbit::commands {

namespace {

struct Options {
    std::string format;
    std::string input, out;
    std::string rounding = "nearest";
    uint64_t seed = 0;
    bool markdown = false;
    bool sweep = false;
    std::string data = "/usr/share/datasets/fashion-mnist";
    int batch = 128;
};

// Every signed (or unsigned) element format with at most `max_bits` bits that the family
// supports, by bits.
std::vector<Format> element_formats(int max_bits, bool has_sign = true) {
    std::vector<Format> formats;
    for (int bits = 2; bits <= max_bits; bits++) {
        for (int e = 0; e + int(has_sign) + 1 <= bits; e++) {
            Format f;
            f.has_sign = has_sign;
            f.exponent_bits = e;
            f.mantissa_bits = bits - int(has_sign) - e;
            f.shift = default_shift(e);
            try {
                validate(f);
                formats.push_back(f);
            } catch (const std::invalid_argument &) {
                // qmax beyond the family's range (e.g. m1e6): not listed
            }
        }
    }
    return formats;
}

std::string values_text(const Format &f, size_t max_shown) {
    const std::vector<int64_t> v = representable_values(f);
    std::vector<int64_t> nonneg(v.begin() + int64_t(f.has_sign ? v.size() / 2 : 0), v.end());
    const char *sign = f.has_sign ? "±" : "";
    if (nonneg.size() <= max_shown) return fmt::format("{}{{{}}}", sign, fmt::join(nonneg, ", "));
    std::vector<int64_t> head(nonneg.begin(), nonneg.begin() + int64_t(max_shown / 2));
    std::vector<int64_t> tail(nonneg.end() - int64_t(max_shown / 2), nonneg.end());
    return fmt::format("{}{{{}, …, {}}}", sign, fmt::join(head, ", "), fmt::join(tail, ", "));
}

std::string alias_of(const Format &f) {
    for (const FormatAlias &a : format_aliases()) {
        if (parse_format(a.element) == f) return a.name;
    }
    return "";
}

int print_table(bool markdown) {
    if (markdown) {
        fmt::print("| format | alias | bits | M | E | D | qmax | values | int8 kernels | representable magnitudes |\n");
        fmt::print("|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
        fmt::print("{:<8} {:<6} {:>4} {:>12} {:>7} {:>5}  {}\n", "format", "alias", "bits", "qmax", "values", "int8",
                   "magnitudes");
    }
    // The unsigned variants only where the int8 kernels take them: the others are wide
    // formats no layer uses.
    std::vector<Format> formats = element_formats(8);
    for (const Format &f : element_formats(8, /*has_sign=*/false)) {
        if (f.fits_int8()) formats.push_back(f);
    }
    for (const Format &f : formats) {
        const size_t count = representable_values(f).size();
        if (markdown) {
            fmt::print("| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", to_string(f), alias_of(f), f.bits(),
                       f.mantissa_bits, f.exponent_bits, f.exponent_bits ? std::to_string(f.shift) : "-", f.qmax(),
                       count, f.fits_int8() ? "yes" : "no", values_text(f, 24));
        } else {
            fmt::print("{:<8} {:<6} {:>4} {:>12} {:>7} {:>5}  {}\n", to_string(f), alias_of(f), f.bits(), f.qmax(),
                       count, f.fits_int8() ? "yes" : "no", values_text(f, 12));
        }
    }
    return 0;
}

int describe(const Format &f) {
    const std::vector<int64_t> v = representable_values(f);
    fmt::print("format      {}\n", to_string(f));
    fmt::print("element     {} + {} exponent bits + {} mantissa bits = {} bits",
               f.has_sign ? "sign" : "no sign (q >= 0)", f.exponent_bits, f.mantissa_bits, f.bits());
    if (f.exponent_bits > 0) fmt::print(", shift D = {}", f.shift);
    fmt::print("\nqmax        {}\n", f.qmax());
    if (f.axis == GroupAxis::none) {
        fmt::print("groups      none (one tensor scale)\n");
    } else {
        fmt::print("groups      {}{} with {}-bit exponents (0..{})\n", to_string(f.axis),
                   f.axis == GroupAxis::block ? std::to_string(f.block) : "", f.group_bits, f.max_group_exponent());
    }
    fmt::print("int8        {}\n",
               f.fits_int8() ? "yes: runs on the int8 kernels" : "no: qmax > 127 (no 16-bit path yet)");
    fmt::print("values      {} representable: {{{}}}\n", v.size(), fmt::join(v, ", "));
    return 0;
}

int quantize_file(const Format &f, const Options &o) {
    const Rounding rounding = parse_rounding(o.rounding);
    const Tensor x = read_npy(o.input);
    const QuantizedTensor q = quantize(x, f, rounding, o.seed);
    const QuantizationError err = quantization_error(x, q);
    fmt::print("input       {} {}\n", o.input, shape_string(x.shape()));
    fmt::print("format      {} ({} rounding{})\n", to_string(f), to_string(rounding),
               rounding == Rounding::stochastic ? fmt::format(", seed {}", o.seed) : "");
    fmt::print("scale S     {:.9g}\n", q.scale);
    fmt::print("relative L2 error      {:.6f}\n", err.relative_l2);
    fmt::print("max abs error          {:.6g}\n", err.max_abs);
    fmt::print("fraction to zero       {:.6f}\n", err.fraction_zero);
    fmt::print("fraction at qmax       {:.6f}\n", err.fraction_at_qmax);
    if (!o.out.empty()) {
        write_npy(o.out, q.shape, q.values.data());
        fmt::print("wrote q to  {}\n", o.out);
    }
    return 0;
}

// Fashion-MNIST test images, normalized by their own per-channel mean and stddev.
Tensor fashion_mnist_batch(const std::string &dir, int batch) {
    const Dataset d = load_fashion_mnist(dir, /*train=*/false, batch);
    const int64_t n = d.size();
    Tensor x({n, d.image_shape[0], d.image_shape[1], d.image_shape[2]});
    const float mean = channel_mean(d)[0], stddev = channel_stddev(d)[0];
    for (int64_t k = 0; k < x.numel(); k++) x[k] = (d.images[size_t(k)] / 255.0f - mean) / stddev;
    return x;
}

int sweep(const Options &o) {
    const Tensor x = fashion_mnist_batch(o.data, o.batch);
    fmt::print("Fashion-MNIST: {} test images {} from {}, normalized; kernels: {}\n", x.size(0),
               shape_string(x.shape()), o.data, to_string(best_isa()));
    fmt::print("relative L2 error of quantize -> dequantize (nearest; stochastic in the last column)\n\n");
    const char *groups[] = {"", "/g3/sample", "/g4/block16"};
    fmt::print("{:<8} {:<6} {:>4} {:>5} {:>10} {:>12} {:>13} {:>10} {:>14}\n", "format", "alias", "bits", "qmax",
               "/none", "/g3/sample", "/g4/block16", "at zero", "stochastic");
    for (const Format &element : element_formats(8)) {
        if (!element.fits_int8()) continue;
        std::vector<double> errors;
        double zero = 0;
        for (const char *group : groups) {
            const Format f = parse_format(to_string(element) + group);
            const QuantizedTensor q = quantize(x, f, Rounding::nearest);
            const QuantizationError err = quantization_error(x, q);
            errors.push_back(err.relative_l2);
            if (*group == '\0') zero = err.fraction_zero;
        }
        const QuantizedTensor qs = quantize(x, element, Rounding::stochastic, 1);
        fmt::print("{:<8} {:<6} {:>4} {:>5} {:>10.4f} {:>12.4f} {:>13.4f} {:>10.4f} {:>14.4f}\n", to_string(element),
                   alias_of(element), element.bits(), element.qmax(), errors[0], errors[1], errors[2], zero,
                   quantization_error(x, qs).relative_l2);
    }
    return 0;
}

}  // namespace

Run add_formats(CLI::App &app) {
    auto o = std::make_shared<Options>();
    CLI::App *cmd = app.add_subcommand("formats", "Inspect LB number formats and quantize tensors");
    cmd->add_option("format", o->format, "A format, e.g. m3e0, m2e1, m1e2/g2/sample, fx4/g3/channel");
    cmd->add_option("--input", o->input, "Quantize this float32 .npy tensor (axis 0 = sample, axis 1 = channel)");
    cmd->add_option("--out", o->out, "With --input: write the element values q as an int8 .npy file");
    cmd->add_option("--rounding", o->rounding, "nearest or stochastic")
        ->check(CLI::IsMember({"nearest", "stochastic"}));
    cmd->add_option("--seed", o->seed, "Seed of stochastic rounding");
    cmd->add_flag("--markdown", o->markdown, "Print the table of every format up to 8 bits as Markdown");
    cmd->add_flag("--sweep", o->sweep, "Quantize a batch of Fashion-MNIST test images in every int8 format");
    cmd->add_option("--data", o->data, "Fashion-MNIST folder for --sweep")->capture_default_str();
    cmd->add_option("--batch", o->batch, "Images for --sweep")->check(CLI::Range(1, 10000))->capture_default_str();
    return [o, cmd]() -> int {
        if (o->sweep) return sweep(*o);
        if (o->format.empty()) {
            if (!o->input.empty())
                throw CLI::ValidationError("--input",
                                           "needs a format, e.g. `lowbit formats m3e0/g3/sample --input x.npy`");
            return print_table(o->markdown);
        }
        const Format f = parse_format(o->format);
        if (!o->input.empty()) return quantize_file(f, *o);
        if (!o->out.empty()) throw CLI::ValidationError("--out", "needs --input");
        return describe(f);
    };
}

}  // namespace lowbit::commands
