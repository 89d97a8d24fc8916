// Parsing, printing and enumeration for the LB format family (generators/format.h).
#include "format.h"

#include <fmt/format.h>

#include <cctype>
#include <set>

namespace lowbit {

namespace {

// Reads an unsigned decimal number at text[pos], advancing pos; -1 when there is none.
int read_number(const std::string &text, size_t &pos) {
    size_t start = pos;
    long value = 0;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
        value = value * 10 + (text[pos] - '0');
        if (value > 1000000) return -1;
        pos++;
    }
    return pos == start ? -1 : int(value);
}

[[noreturn]] void bad_format(const std::string &text, const std::string &why) {
    throw std::invalid_argument(
        fmt::format("bad format '{}': {}. Expected [u]m<M>e<E>[d<D>] or an alias (fx2..fx8, sfx3..sfx8, ufx2..ufx8), "
                    "then optionally /none or /g<G>/sample, /g<G>/channel, /g<G>/block<K> "
                    "(see docs/FORMATS.md)",
                    text, why));
}

Format parse_element(const std::string &whole, const std::string &text) {
    for (const FormatAlias &alias : format_aliases()) {
        if (text == alias.name) return parse_element(whole, alias.element);
    }
    Format f;
    size_t pos = 0;
    if (pos < text.size() && text[pos] == 'u') {
        f.has_sign = false;
        pos++;
    }
    if (pos >= text.size() || text[pos++] != 'm')
        bad_format(whole, "element part must start with 'm' or 'um' or be an alias");
    f.mantissa_bits = read_number(text, pos);
    if (f.mantissa_bits < 0) bad_format(whole, "missing mantissa bits after 'm'");
    if (pos >= text.size() || text[pos++] != 'e') bad_format(whole, "missing 'e<E>' after the mantissa bits");
    f.exponent_bits = read_number(text, pos);
    if (f.exponent_bits < 0) bad_format(whole, "missing exponent bits after 'e'");
    f.shift = default_shift(f.exponent_bits);
    if (pos < text.size() && text[pos] == 'd') {
        pos++;
        f.shift = read_number(text, pos);
        if (f.shift < 0) bad_format(whole, "missing shift after 'd'");
        if (f.exponent_bits == 0) bad_format(whole, "a shift d<D> needs exponent bits (E >= 1)");
    }
    if (pos != text.size()) bad_format(whole, fmt::format("unexpected '{}'", text.substr(pos)));
    return f;
}

}  // namespace

const std::vector<FormatAlias> &format_aliases() {
    static const std::vector<FormatAlias> aliases = {
        {"fx2", "m1e0"},   {"fx3", "m2e0"},   {"fx4", "m3e0"},   {"fx5", "m4e0"},   {"fx6", "m5e0"},
        {"fx7", "m6e0"},   {"fx8", "m7e0"},   {"sfx3", "m1e1"},  {"sfx4", "m2e1"},  {"sfx5", "m3e1"},
        {"sfx6", "m4e1"},  {"sfx7", "m5e1"},  {"sfx8", "m6e1"},  {"ufx2", "um2e0"}, {"ufx3", "um3e0"},
        {"ufx4", "um4e0"}, {"ufx5", "um5e0"}, {"ufx6", "um6e0"}, {"ufx7", "um7e0"}, {"ufx8", "um8e0"},
    };
    return aliases;
}

std::string to_string(GroupAxis axis) {
    switch (axis) {
        case GroupAxis::none:
            return "none";
        case GroupAxis::sample:
            return "sample";
        case GroupAxis::channel:
            return "channel";
        case GroupAxis::block:
            return "block";
    }
    return "?";
}

std::string to_string(Rounding rounding) { return rounding == Rounding::nearest ? "nearest" : "stochastic"; }

Rounding parse_rounding(const std::string &text) {
    if (text == "nearest") return Rounding::nearest;
    if (text == "stochastic") return Rounding::stochastic;
    throw std::invalid_argument(fmt::format("bad rounding '{}': expected 'nearest' or 'stochastic'", text));
}

void validate(const Format &f) {
    const std::string name = to_string(f);
    if (f.mantissa_bits < 1) throw std::invalid_argument(fmt::format("format {}: M must be at least 1", name));
    if (f.exponent_bits < 0 || f.bits() > 16)
        throw std::invalid_argument(fmt::format("format {}: {}E + M = {} bits, at most 16 supported", name,
                                                f.has_sign ? "1 + " : "", f.bits()));
    if (f.exponent_bits > 0 && f.shift < 1)
        throw std::invalid_argument(fmt::format("format {}: the shift D must be at least 1", name));
    if (f.mantissa_bits + int64_t(f.shift) * f.exponent_steps() > 52)
        throw std::invalid_argument(
            fmt::format("format {}: qmax = (2^M - 1) * 2^(D (2^E - 1)) needs {} bits, at most 52 supported", name,
                        f.mantissa_bits + int64_t(f.shift) * f.exponent_steps()));
    if (f.group_bits < 0 || f.group_bits > kMaxGroupBits)
        throw std::invalid_argument(
            fmt::format("format {}: G = {} is outside [0, {}]", name, f.group_bits, kMaxGroupBits));
    if (f.axis == GroupAxis::block && f.block < 1)
        throw std::invalid_argument(fmt::format("format {}: block size must be at least 1", name));
    if (f.axis == GroupAxis::none && f.group_bits != 0)
        throw std::invalid_argument(fmt::format("format {}: a format without groups has G = 0", name));
}

Format parse_format(const std::string &text) {
    const size_t slash = text.find('/');
    Format f = parse_element(text, text.substr(0, slash));
    if (slash != std::string::npos) {
        const std::string group = text.substr(slash + 1);
        if (group == "none") {
            // the default: one group
        } else {
            size_t pos = 0;
            if (group.empty() || group[pos++] != 'g')
                bad_format(text, "group part must be 'none' or start with 'g<G>/'");
            f.group_bits = read_number(group, pos);
            if (f.group_bits < 0) bad_format(text, "missing group exponent bits after 'g'");
            if (pos >= group.size() || group[pos++] != '/') bad_format(text, "missing '/<axis>' after the group bits");
            const std::string axis = group.substr(pos);
            if (axis == "sample") {
                f.axis = GroupAxis::sample;
            } else if (axis == "channel") {
                f.axis = GroupAxis::channel;
            } else if (axis.rfind("block", 0) == 0) {
                size_t bpos = 5;
                f.axis = GroupAxis::block;
                f.block = read_number(axis, bpos);
                if (f.block < 1 || bpos != axis.size())
                    bad_format(text, "block groups are written block<K> with K >= 1");
            } else {
                bad_format(text, fmt::format("unknown group axis '{}'", axis));
            }
        }
    }
    try {
        validate(f);
    } catch (const std::invalid_argument &e) {
        bad_format(text, e.what());
    }
    return f;
}

std::string to_string(const Format &f) {
    std::string s = fmt::format("{}m{}e{}", f.has_sign ? "" : "u", f.mantissa_bits, f.exponent_bits);
    if (f.exponent_bits > 0 && f.shift != default_shift(f.exponent_bits)) s += fmt::format("d{}", f.shift);
    switch (f.axis) {
        case GroupAxis::none:
            break;
        case GroupAxis::block:
            s += fmt::format("/g{}/block{}", f.group_bits, f.block);
            break;
        default:
            s += fmt::format("/g{}/{}", f.group_bits, to_string(f.axis));
            break;
    }
    return s;
}

std::vector<int64_t> representable_values(const Format &f) {
    std::set<int64_t> magnitudes;
    for (int x = 0; x <= f.exponent_steps(); x++) {
        for (int64_t m = 0; m <= f.mantissa_max(); m++) magnitudes.insert(m << (f.shift * x));
    }
    std::vector<int64_t> values;
    if (f.has_sign) {
        for (auto it = magnitudes.rbegin(); it != magnitudes.rend(); ++it) {
            if (*it != 0) values.push_back(-*it);
        }
    }
    values.insert(values.end(), magnitudes.begin(), magnitudes.end());
    return values;
}

}  // namespace lowbit
