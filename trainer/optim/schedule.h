// Learning-rate schedules as pure functions of the global step (0-based, one step per batch),
// so that a resumed run gets its rate from the step count alone, with no scheduler state to
// checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

// lr(step):
//   step < warmup_steps: base_lr * (step + 1) / warmup_steps — a linear ramp whose last warm-up
//                        step already reaches base_lr (no step runs at rate 0);
//   afterwards, by kind:
//     constant: base_lr
//     step:     base_lr * gamma^(number of milestones <= step)   (milestones in steps, absolute)
//     cosine:   final_lr + (base_lr - final_lr) * (1 + cos(pi * t / T)) / 2 with
//               t = step - warmup_steps, T = total_steps - warmup_steps; base_lr at t = 0,
//               final_lr at t >= T (held there past the end, and whenever T <= 0).
struct LrSchedule {
    enum class Kind { constant, step, cosine };
    Kind kind = Kind::constant;
    float base_lr = 0.1f;
    int64_t total_steps = 0;          // cosine only
    int64_t warmup_steps = 0;         // 0: no warm-up
    std::vector<int64_t> milestones;  // step only
    float gamma = 0.1f;               // step only
    float final_lr = 0.0f;            // cosine only

    // Throws std::invalid_argument on a negative step.
    float lr(int64_t step) const;
};

// A schedule from a command-line spec: "constant", "cosine" or "step:E1,E2,..." (milestones in
// epochs, increasing), optionally followed by "+warmup:E" (E epochs of warm-up), e.g.
// "cosine+warmup:2" or "step:30,60+warmup:5". Epochs become steps through steps_per_epoch.
// Throws std::invalid_argument naming the spec when it cannot be read or steps_per_epoch < 1.
LrSchedule parse_lr_schedule(const std::string &spec, float base_lr, int64_t total_steps, int64_t steps_per_epoch);

}  // namespace lowbit
