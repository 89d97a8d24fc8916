// Small helpers shared by the test files.
#pragma once

#include <stdexcept>
#include <string>

namespace lowbit::test_util {

// The message of the std::invalid_argument that `f` throws, or "" when it throws none.
template <typename F>
std::string invalid_argument_message(F f) {
    try {
        f();
    } catch (const std::invalid_argument &e) {
        return e.what();
    }
    return "";
}

}  // namespace lowbit::test_util
