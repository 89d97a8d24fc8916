// The median of a sample (the mean of the middle two for an even count), for the benchmarks'
// summaries over repetitions and rounds.
#pragma once

#include <algorithm>
#include <vector>

namespace lowbit {

inline double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t mid = v.size() / 2;
    return v.size() % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

}  // namespace lowbit
