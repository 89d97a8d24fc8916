#include "loader.h"

#include <fmt/format.h>

#include <numeric>
#include <random>
#include <stdexcept>

namespace lowbit {

namespace {

// SplitMix64's finalizer: neighbouring inputs give unrelated outputs.
uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t hash3(uint64_t seed, int64_t epoch, int64_t index) {
    return mix(mix(mix(seed) ^ uint64_t(epoch)) ^ uint64_t(index));
}

// The stream a sample's augmentation draws from; the shuffle uses the index -1, which no
// sample has.
constexpr int64_t kShuffleStream = -1;

}  // namespace

BatchLoader::BatchLoader(const Dataset &d, int batch_size, bool shuffle, bool drop_last, const Augmentation &a,
                         uint64_t seed, int prefetch)
    : data_(d),
      batch_size_(batch_size),
      shuffle_(shuffle),
      drop_last_(drop_last),
      augmentation_(a),
      seed_(seed),
      prefetch_(size_t(std::max(prefetch, 1))),
      image_shape_(output_shape(d, a)) {
    if (batch_size < 1) throw std::invalid_argument(fmt::format("batch size {} is not positive", batch_size));
    if (prefetch < 1) throw std::invalid_argument(fmt::format("prefetch {} is not positive", prefetch));
    start(0);
}

BatchLoader::~BatchLoader() { stop(); }

int64_t BatchLoader::batches_per_epoch() const {
    const int64_t n = data_.size();
    return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

std::vector<int64_t> BatchLoader::epoch_order(int64_t epoch) const {
    std::vector<int64_t> order(size_t(data_.size()));
    std::iota(order.begin(), order.end(), int64_t(0));
    if (!shuffle_) return order;
    // Fisher-Yates by hand: std::shuffle's algorithm differs between standard libraries.
    std::mt19937_64 rng(hash3(seed_, epoch, kShuffleStream));
    for (size_t i = order.size(); i > 1; i--) std::swap(order[i - 1], order[size_t(rng() % i)]);
    return order;
}

bool BatchLoader::next(Batch &out) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    changed_.wait(lock, [&] { return !queue_.empty(); });
    Item item = std::move(queue_.front());
    queue_.pop_front();
    changed_.notify_all();
    if (item.error) {
        error_ = item.error;
        std::rethrow_exception(error_);
    }
    if (item.end_of_epoch) return false;
    out = std::move(item.batch);
    return true;
}

void BatchLoader::start_epoch(int64_t epoch) {
    stop();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.clear();
        stopping_ = false;
        error_ = nullptr;
    }
    start(epoch);
}

void BatchLoader::start(int64_t epoch) {
    thread_ = std::thread([this, epoch] { produce(epoch); });
}

void BatchLoader::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
}

bool BatchLoader::push(Item item) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return stopping_ || queue_.size() < prefetch_; });
    if (stopping_) return false;
    queue_.push_back(std::move(item));
    changed_.notify_all();
    return true;
}

void BatchLoader::produce(int64_t epoch) {
    try {
        for (;; epoch++) {
            const std::vector<int64_t> order = epoch_order(epoch);
            const int64_t batches = batches_per_epoch();
            for (int64_t b = 0; b < batches; b++)
                if (!push(Item{make_batch(order, epoch, b), false, nullptr})) return;
            if (!push(Item{Batch{}, true, nullptr})) return;
        }
    } catch (...) {
        // After an error the producer ends; the consumer sees it at its next call.
        push(Item{Batch{}, false, std::current_exception()});
    }
}

Batch BatchLoader::make_batch(const std::vector<int64_t> &order, int64_t epoch, int64_t index) const {
    const int64_t first = index * batch_size_;
    const int64_t n = std::min<int64_t>(batch_size_, int64_t(order.size()) - first);
    Shape shape{n};
    shape.insert(shape.end(), image_shape_.begin(), image_shape_.end());
    Batch batch;
    batch.images = Tensor::uninitialized(shape);
    batch.epoch = epoch;
    batch.index_in_epoch = index;
    const int64_t image_size = shape_numel(image_shape_);
    for (int64_t i = 0; i < n; i++) {
        const int64_t sample = order[size_t(first + i)];
        // Seeded per sample, so a sample's augmentation does not depend on which batch or
        // thread makes it.
        std::mt19937_64 rng(hash3(seed_, epoch, sample));
        augment_into(data_, sample, augmentation_, rng, batch.images.data() + i * image_size);
        batch.labels.push_back(data_.labels[size_t(sample)]);
    }
    return batch;
}

}  // namespace lowbit
