#include "parameters.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

namespace lowbit {

float *aligned_zeros(int64_t n) {
    // aligned_alloc wants a size that is a multiple of the alignment, and a non-zero one so
    // that an empty store still has a non-null buffer to wrap.
    const size_t bytes = std::max<size_t>(64, (size_t(n) * sizeof(float) + 63) / 64 * 64);
    auto *p = static_cast<float *>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    return p;
}

void aligned_free(float *p) { std::free(p); }

void ParameterStore::Free::operator()(float *p) const { aligned_free(p); }

size_t ParameterStore::add(const std::string &name, Shape shape, bool decay) {
    if (finalized_) throw std::logic_error(fmt::format("parameter '{}' added after finalize()", name));
    if (name.empty()) throw std::invalid_argument("parameter with an empty name");
    for (const Entry &e : entries_)
        if (e.name == name) throw std::invalid_argument(fmt::format("duplicate parameter name '{}'", name));
    const int64_t numel = shape_numel(shape);  // throws on negative extents
    const int64_t offset = (total_ + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
    entries_.push_back(Entry{name, std::move(shape), decay, offset, numel});
    // The end is rounded up too, so that the buffer is a whole number of 64-byte lines and
    // per-parameter vector loops never read past it.
    total_ = (offset + numel + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
    return entries_.size() - 1;
}

void ParameterStore::finalize() {
    if (finalized_) throw std::logic_error("ParameterStore::finalize() called twice");
    values_.reset(aligned_zeros(total_));
    grads_.reset(aligned_zeros(total_));
    finalized_ = true;
}

const ParameterStore::Entry &ParameterStore::entry(size_t i) const {
    if (i >= entries_.size())
        throw std::out_of_range(fmt::format("parameter index {} out of range (count {})", i, entries_.size()));
    return entries_[i];
}

void ParameterStore::require_finalized(const char *what) const {
    if (!finalized_) throw std::logic_error(fmt::format("ParameterStore::{} before finalize()", what));
}

Tensor ParameterStore::value(size_t i) {
    require_finalized("value()");
    const Entry &e = entry(i);
    return Tensor::wrap(values_.get() + e.offset, e.shape);
}

Tensor ParameterStore::grad(size_t i) {
    require_finalized("grad()");
    const Entry &e = entry(i);
    return Tensor::wrap(grads_.get() + e.offset, e.shape);
}

size_t ParameterStore::index(const std::string &name) const {
    for (size_t i = 0; i < entries_.size(); ++i)
        if (entries_[i].name == name) return i;
    throw std::out_of_range(fmt::format("no parameter named '{}'", name));
}

void ParameterStore::zero_grads() {
    require_finalized("zero_grads()");
    std::memset(grads_.get(), 0, size_t(total_) * sizeof(float));
}

}  // namespace lowbit
