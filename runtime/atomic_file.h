// Whole files in and out. Writes never leave a half-written file under the final name: a crash
// or a failed write leaves either the old file or the new one.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>
#include <vector>

namespace lowbit {

struct ByteSpan {
    const void *data;
    size_t size;
};

// Writes the concatenation of `parts` to `path` + ".tmp", fsyncs it, renames it over `path`, then
// fsyncs the directory so the rename itself survives a crash. On a failure before the rename the
// temporary is removed and an existing `path` is untouched. Throws std::runtime_error whose message
// starts with "PATH: " and names the OS error; should only the final directory sync fail, `path`
// already holds the new contents.
void write_file_atomically(const std::string &path, std::initializer_list<ByteSpan> parts);
// The same, for a number of parts known only at run time (one per array of a checkpoint, say).
void write_file_atomically(const std::string &path, const std::vector<ByteSpan> &parts);

// The whole contents of `path`. Throws std::runtime_error "PATH: cannot open: <OS error>" or
// "PATH: cannot read: <OS error>"; callers re-throw it as their own error type.
std::string read_whole_file(const std::string &path);

}  // namespace lowbit
