// Batches of augmented images, made on a background thread a few batches ahead of the
// training step. Deterministic: the shuffle of each epoch and every augmentation decision
// depend only on (seed, epoch, sample index), never on timing, so two runs with one seed see
// bit-identical batches.
#pragma once

#include "data/augment.h"
#include "data/dataset.h"
#include "tensor.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lowbit {

struct Batch {
    Tensor images;                // N, C, H', W' floats (N = batch size, or less for a last partial batch)
    std::vector<int32_t> labels;  // N
    int64_t epoch = 0;
    int64_t index_in_epoch = 0;  // 0, 1, ... within the epoch
};

// Epochs advance by themselves: next() returns the batches of epoch 0, then false once to mark
// its end, then the batches of epoch 1, and so on; the producer works on into the next epoch
// while the consumer is still on the last one. start_epoch() jumps to an epoch (e.g. to resume).
class BatchLoader {
public:
    // `d` must outlive the loader. Throws std::invalid_argument for batch_size or prefetch < 1
    // or an augmentation that does not fit the data set.
    BatchLoader(const Dataset &d, int batch_size, bool shuffle, bool drop_last, const Augmentation &a, uint64_t seed,
                int prefetch = 2);
    // Stops and joins the producer, whatever it is doing; batches not taken are dropped.
    ~BatchLoader();
    BatchLoader(const BatchLoader &) = delete;
    BatchLoader &operator=(const BatchLoader &) = delete;

    // The next batch of the current epoch; false at its end (the next call starts the following
    // epoch). Re-throws an error of the producer (its later calls throw it again).
    bool next(Batch &out);
    // Drops what was prefetched and continues from the first batch of `epoch`.
    void start_epoch(int64_t epoch);

    int64_t batches_per_epoch() const;
    // (C, H', W') of each image in a batch.
    const Shape &image_shape() const { return image_shape_; }

    // The sample order of an epoch: identity without shuffle, else a permutation seeded by
    // (seed, epoch). Exposed for tests.
    std::vector<int64_t> epoch_order(int64_t epoch) const;

private:
    // An entry of the queue: a batch, an epoch's end, or the producer's error.
    struct Item {
        Batch batch;
        bool end_of_epoch = false;
        std::exception_ptr error;
    };

    void start(int64_t epoch);
    void stop();
    void produce(int64_t epoch);
    Batch make_batch(const std::vector<int64_t> &order, int64_t epoch, int64_t index) const;
    // Queues an item, waiting for room; false when asked to stop.
    bool push(Item item);

    const Dataset &data_;
    const int batch_size_;
    const bool shuffle_, drop_last_;
    const Augmentation augmentation_;
    const uint64_t seed_;
    const size_t prefetch_;
    Shape image_shape_;

    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<Item> queue_;
    bool stopping_ = false;
    std::exception_ptr error_;  // sticky once the consumer has seen it
    std::thread thread_;
};

}  // namespace lowbit
