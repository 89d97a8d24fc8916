#include "schedule.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace lowbit {

float LrSchedule::lr(int64_t step) const {
    if (step < 0) throw std::invalid_argument(fmt::format("learning rate asked for a negative step {}", step));
    if (step < warmup_steps) return float(double(base_lr) * double(step + 1) / double(warmup_steps));
    switch (kind) {
        case Kind::constant:
            return base_lr;
        case Kind::step: {
            const auto passed =
                std::count_if(milestones.begin(), milestones.end(), [&](int64_t m) { return m <= step; });
            return float(double(base_lr) * std::pow(double(gamma), double(passed)));
        }
        case Kind::cosine: {
            const int64_t t = step - warmup_steps, T = total_steps - warmup_steps;
            if (T <= 0 || t >= T) return final_lr;
            // In double: at float precision cos(pi * t / T) near t = T/2 loses digits that
            // PyTorch's CosineAnnealingLR (Python floats) keeps.
            const double c = (1.0 + std::cos(M_PI * double(t) / double(T))) / 2.0;
            return float(double(final_lr) + (double(base_lr) - double(final_lr)) * c);
        }
    }
    return base_lr;  // unreachable; keeps compilers quiet
}

namespace {

// A non-negative decimal integer making up all of `text`, or -1.
int64_t parse_count(const std::string &text) {
    if (text.empty() || text.size() > 12) return -1;
    int64_t v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    return v;
}

}  // namespace

LrSchedule parse_lr_schedule(const std::string &spec, float base_lr, int64_t total_steps, int64_t steps_per_epoch) {
    auto bad = [&](const std::string &why) {
        return std::invalid_argument(fmt::format("bad learning-rate schedule '{}': {}", spec, why));
    };
    if (steps_per_epoch < 1) throw bad(fmt::format("steps per epoch {} < 1", steps_per_epoch));

    LrSchedule s;
    s.base_lr = base_lr;
    s.total_steps = total_steps;

    std::string body = spec;
    const size_t plus = spec.find('+');
    if (plus != std::string::npos) {
        body = spec.substr(0, plus);
        const std::string tail = spec.substr(plus + 1);
        const std::string prefix = "warmup:";
        if (tail.compare(0, prefix.size(), prefix) != 0) throw bad(fmt::format("unknown modifier '{}'", tail));
        const int64_t epochs = parse_count(tail.substr(prefix.size()));
        if (epochs < 0) throw bad(fmt::format("warm-up '{}' is not a whole number of epochs", tail));
        s.warmup_steps = epochs * steps_per_epoch;
    }

    if (body == "constant") {
        s.kind = LrSchedule::Kind::constant;
    } else if (body == "cosine") {
        s.kind = LrSchedule::Kind::cosine;
    } else if (body.compare(0, 5, "step:") == 0) {
        s.kind = LrSchedule::Kind::step;
        const std::string list = body.substr(5);
        size_t start = 0;
        while (true) {
            const size_t comma = list.find(',', start);
            const std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
            const int64_t epoch = parse_count(item);
            if (epoch < 0) throw bad(fmt::format("milestone '{}' is not a whole number of epochs", item));
            if (!s.milestones.empty() && epoch * steps_per_epoch <= s.milestones.back())
                throw bad(fmt::format("milestone {} does not increase", item));
            s.milestones.push_back(epoch * steps_per_epoch);
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
    } else if (body == "step") {
        throw bad("'step' needs milestones, e.g. 'step:30,60'");
    } else {
        throw bad(fmt::format("unknown kind '{}' (constant, cosine, step:E1,E2,...)", body));
    }
    return s;
}

}  // namespace lowbit
