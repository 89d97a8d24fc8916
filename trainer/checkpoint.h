// Training checkpoints: free-form JSON metadata plus named float32 arrays, in one file.
//
// Layout (all integers little-endian):
//   bytes 0..7    magic "LOWBITCK"
//   bytes 8..11   uint32 format version, 1
//   bytes 12..19  uint64 length L of the JSON header
//   bytes 20..    the UTF-8 JSON header, L bytes:
//                   {"meta": <meta>, "arrays": [{"name": N, "count": C, "offset": O}, ...]}
//                 arrays in std::map (name) order; O is in bytes from the start of the data section
//   zero padding up to a multiple of 64 bytes from the file start, where the data section begins
//   the raw little-endian float32 elements of each array (C * 4 bytes at O)
//   uint32 CRC-32 (zlib's crc32) of every preceding byte
//
// Arrays may not overlap nor run past the data section (which ends at the CRC). NaN and Inf are
// ordinary values, kept bit for bit. Meta is plain JSON, so a NaN or Inf number in it is saved as
// null. Every error is a CheckpointError whose message starts with "PATH: ".
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {

class CheckpointError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct Checkpoint {
    nlohmann::json meta;                               // config, epoch, step, ...
    std::map<std::string, std::vector<float>> arrays;  // parameters, momentum, BN statistics
};

// Atomic: on failure an existing file at `path` is left as it was (see atomic_file.h).
void save_checkpoint(const std::string &path, const Checkpoint &checkpoint);
// Reads the whole file into memory; checks the CRC before trusting any array.
Checkpoint load_checkpoint(const std::string &path);

}  // namespace lowbit
