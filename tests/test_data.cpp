// Data loading: the Fashion-MNIST, CIFAR-10 and image-folder readers on small files written
// here, the augmentations against hand computation, and the batch loader's coverage and
// determinism.
#include <gtest/gtest.h>
#include <zlib.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <thread>

#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

// A fresh directory per test, under GoogleTest's temporary directory.
fs::path fresh_dir(const std::string &name) {
    const fs::path dir = fs::path(testing::TempDir()) / ("lowbit_test_data_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

void write_file(const fs::path &path, const std::vector<uint8_t> &bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
}

void write_gz(const fs::path &path, const std::vector<uint8_t> &bytes) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
    gzclose(f);
}

std::vector<uint8_t> idx_bytes(const std::vector<uint32_t> &shape, const std::vector<uint8_t> &data) {
    std::vector<uint8_t> b = {0, 0, 0x08, uint8_t(shape.size())};
    for (uint32_t e : shape)
        for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(e >> s));
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

// Pixel values that differ by image, row and column, so any misplacement shows.
uint8_t pixel(int image, int c, int y, int x) { return uint8_t(image * 37 + c * 71 + y * 11 + x * 3 + 1); }

constexpr int kIdxH = 4, kIdxW = 5;

// A Fashion-MNIST-named IDX pair of `n` images with labels i % 10.
void write_idx_pair(const fs::path &dir, const std::string &prefix, int n, bool gz) {
    std::vector<uint8_t> images, labels;
    for (int i = 0; i < n; i++) {
        labels.push_back(uint8_t(i % 10));
        for (int y = 0; y < kIdxH; y++)
            for (int x = 0; x < kIdxW; x++) images.push_back(pixel(i, 0, y, x));
    }
    const std::string suffix = gz ? ".gz" : "";
    const auto img = idx_bytes({uint32_t(n), kIdxH, kIdxW}, images);
    const auto lab = idx_bytes({uint32_t(n)}, labels);
    if (gz) {
        write_gz(dir / (prefix + "-images-idx3-ubyte.gz"), img);
        write_gz(dir / (prefix + "-labels-idx1-ubyte.gz"), lab);
    } else {
        write_file(dir / (prefix + "-images-idx3-ubyte"), img);
        write_file(dir / (prefix + "-labels-idx1-ubyte"), lab);
    }
}

// Expects `f` to throw DataError whose message contains `needle`.
template <typename F>
void expect_data_error(F f, const std::string &needle) {
    try {
        f();
        ADD_FAILURE() << "no DataError; expected one mentioning " << needle;
    } catch (const DataError &e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

void check_idx_images(const Dataset &d, int n) {
    ASSERT_EQ(d.size(), n);
    EXPECT_EQ(d.image_shape, (Shape{1, kIdxH, kIdxW}));
    EXPECT_EQ(d.classes, 10);
    ASSERT_EQ(d.class_names.size(), 10u);
    EXPECT_EQ(d.class_names[0], "T-shirt/top");
    EXPECT_EQ(d.class_names[9], "Ankle boot");
    ASSERT_EQ(d.images.size(), size_t(n * kIdxH * kIdxW));
    for (int i = 0; i < n; i++) {
        EXPECT_EQ(d.labels[size_t(i)], i % 10);
        for (int y = 0; y < kIdxH; y++)
            for (int x = 0; x < kIdxW; x++) ASSERT_EQ(d.image(i)[y * kIdxW + x], pixel(i, 0, y, x));
    }
}

}  // namespace

TEST(FashionMnist, ReadsGzippedAndPlain) {
    const fs::path gz = fresh_dir("idx_gz"), plain = fresh_dir("idx_plain");
    write_idx_pair(gz, "train", 12, true);
    write_idx_pair(gz, "t10k", 3, true);
    write_idx_pair(plain, "train", 12, false);
    check_idx_images(load_fashion_mnist(gz.string(), true), 12);
    check_idx_images(load_fashion_mnist(gz.string(), false), 3);
    check_idx_images(load_fashion_mnist(plain.string(), true), 12);
    check_idx_images(load_fashion_mnist(plain.string(), true, 5), 5);
    check_idx_images(load_dataset(plain.string(), true), 12);
}

TEST(FashionMnist, BadFilesNameTheFile) {
    const fs::path dir = fresh_dir("idx_bad");
    expect_data_error([&] { load_fashion_mnist(dir.string(), true); }, "train-images-idx3-ubyte");

    write_idx_pair(dir, "train", 4, false);
    write_file(dir / "train-labels-idx1-ubyte", idx_bytes({3}, {0, 1, 2}));
    expect_data_error([&] { load_fashion_mnist(dir.string(), true); }, "train-labels-idx1-ubyte");

    write_file(dir / "train-labels-idx1-ubyte", idx_bytes({4}, {0, 1, 10, 2}));
    expect_data_error([&] { load_fashion_mnist(dir.string(), true); }, "train-labels-idx1-ubyte");

    write_idx_pair(dir, "train", 4, false);
    auto truncated = idx_bytes({4, kIdxH, kIdxW}, std::vector<uint8_t>(4 * kIdxH * kIdxW - 1, 7));
    write_file(dir / "train-images-idx3-ubyte", truncated);
    expect_data_error([&] { load_fashion_mnist(dir.string(), true); }, "train-images-idx3-ubyte");

    write_file(dir / "train-images-idx3-ubyte", {'P', 'K', 3, 4, 0, 0, 0, 0});
    expect_data_error([&] { load_fashion_mnist(dir.string(), true); }, "train-images-idx3-ubyte");

    // Labels given as the images file: rank 1 where images need rank 3.
    write_file(dir / "train-images-idx3-ubyte", idx_bytes({4}, {0, 1, 2, 3}));
    expect_data_error([&] { load_fashion_mnist(dir.string(), true); }, "train-images-idx3-ubyte");
}

namespace {

// CIFAR-10 records numbered from `first`, label (first + r) % 10.
std::vector<uint8_t> cifar_records(int first, int n) {
    std::vector<uint8_t> b;
    for (int r = first; r < first + n; r++) {
        b.push_back(uint8_t(r % 10));
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) b.push_back(pixel(r, c, y, x));
    }
    return b;
}

void check_cifar(const Dataset &d, int first, int n) {
    ASSERT_EQ(d.size(), n);
    EXPECT_EQ(d.image_shape, (Shape{3, 32, 32}));
    EXPECT_EQ(d.classes, 10);
    for (int i = 0; i < n; i++) {
        EXPECT_EQ(d.labels[size_t(i)], (first + i) % 10);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) ASSERT_EQ(d.image(i)[(c * 32 + y) * 32 + x], pixel(first + i, c, y, x));
    }
}

}  // namespace

TEST(Cifar10, ReadsBatchesInOrder) {
    const fs::path dir = fresh_dir("cifar");
    write_file(dir / "data_batch_1.bin", cifar_records(0, 3));
    write_file(dir / "data_batch_2.bin", cifar_records(3, 2));
    write_file(dir / "test_batch.bin", cifar_records(20, 2));
    Dataset train = load_cifar10(dir.string(), true);
    check_cifar(train, 0, 5);
    EXPECT_EQ(train.class_names[0], "airplane");
    EXPECT_EQ(train.class_names[9], "truck");
    check_cifar(load_cifar10(dir.string(), false), 20, 2);
    check_cifar(load_cifar10(dir.string(), true, 4), 0, 4);
    check_cifar(load_dataset(dir.string(), true), 0, 5);

    std::ofstream(dir / "batches.meta.txt") << "a0\na1\na2\na3\na4\na5\na6\na7\na8\na9\n\n";
    Dataset named = load_cifar10(dir.string(), false);
    ASSERT_EQ(named.class_names.size(), 10u);
    EXPECT_EQ(named.class_names[3], "a3");
}

TEST(Cifar10, BadFilesNameTheFile) {
    const fs::path dir = fresh_dir("cifar_bad");
    expect_data_error([&] { load_cifar10(dir.string(), true); }, "data_batch_1.bin");
    expect_data_error([&] { load_cifar10(dir.string(), false); }, "test_batch.bin");

    write_file(dir / "data_batch_1.bin", cifar_records(0, 2));
    auto truncated = cifar_records(0, 2);
    truncated.resize(truncated.size() - 100);
    write_file(dir / "data_batch_2.bin", truncated);
    expect_data_error([&] { load_cifar10(dir.string(), true); }, "data_batch_2.bin");

    auto bad_label = cifar_records(0, 2);
    bad_label[3073] = 10;
    write_file(dir / "test_batch.bin", bad_label);
    expect_data_error([&] { load_cifar10(dir.string(), false); }, "test_batch.bin");
}

namespace {

constexpr int kPngH = 3, kPngW = 4;

// A BGR image whose RGB value at (y, x) is pixel(image, c, y, x).
void write_png(const fs::path &path, int image, int h = kPngH, int w = kPngW) {
    cv::Mat bgr(h, w, CV_8UC3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) bgr.at<cv::Vec3b>(y, x)[2 - c] = pixel(image, c, y, x);
    ASSERT_TRUE(cv::imwrite(path.string(), bgr));
}

}  // namespace

TEST(ImageFolder, ReadsClassesAndPixels) {
    const fs::path dir = fresh_dir("folder");
    fs::create_directories(dir / "train" / "cat");
    fs::create_directories(dir / "train" / "dog");
    fs::create_directories(dir / "test" / "cat");
    fs::create_directories(dir / "test" / "dog");
    write_png(dir / "train" / "dog" / "b.png", 2);
    write_png(dir / "train" / "dog" / "a.png", 1);
    write_png(dir / "train" / "cat" / "z.png", 0);
    std::ofstream(dir / "train" / "cat" / "notes.txt") << "not an image";
    write_png(dir / "test" / "dog" / "c.png", 3);

    Dataset d = load_image_folder((dir / "train").string());
    ASSERT_EQ(d.size(), 3);
    EXPECT_EQ(d.image_shape, (Shape{3, kPngH, kPngW}));
    EXPECT_EQ(d.classes, 2);
    EXPECT_EQ(d.class_names, (std::vector<std::string>{"cat", "dog"}));
    EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 1, 1}));
    const int expected_image[] = {0, 1, 2};  // cat/z, dog/a, dog/b
    for (int i = 0; i < 3; i++)
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < kPngH; y++)
                for (int x = 0; x < kPngW; x++)
                    ASSERT_EQ(d.image(i)[(c * kPngH + y) * kPngW + x], pixel(expected_image[i], c, y, x));

    EXPECT_EQ(load_image_folder((dir / "train").string(), 2).size(), 2);
    EXPECT_EQ(load_dataset(dir.string(), true).size(), 3);
    Dataset test = load_dataset(dir.string(), false);
    ASSERT_EQ(test.size(), 1);
    EXPECT_EQ(test.labels[0], 1);
}

TEST(ImageFolder, BadFilesNameTheFile) {
    const fs::path dir = fresh_dir("folder_bad");
    fs::create_directories(dir / "a");
    write_png(dir / "a" / "1.png", 0);
    write_png(dir / "a" / "2.png", 1, kPngH + 1, kPngW);
    expect_data_error([&] { load_image_folder(dir.string()); }, "2.png");

    fs::remove(dir / "a" / "2.png");
    std::ofstream(dir / "a" / "3.png") << "not a png at all";
    expect_data_error([&] { load_image_folder(dir.string()); }, "3.png");

    expect_data_error([&] { load_image_folder((dir / "missing").string()); }, "missing");
}

TEST(FashionMnist, SystemCopyIfPresent) {
    if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no /usr/share/datasets/fashion-mnist";
    Dataset d = load_fashion_mnist("/usr/share/datasets/fashion-mnist", false, 100);
    ASSERT_EQ(d.size(), 100);
    EXPECT_EQ(d.image_shape, (Shape{1, 28, 28}));
    EXPECT_EQ(d.images.size(), 100u * 28 * 28);
    std::set<int32_t> seen(d.labels.begin(), d.labels.end());
    EXPECT_GE(*seen.begin(), 0);
    EXPECT_LT(*seen.rbegin(), 10);
    EXPECT_GT(seen.size(), 5u);
}

// --- Augmentation ---

namespace {

// `n` images of C x H x W with pixel(i, c, y, x) values, label i % classes.
Dataset synthetic(int n, int channels, int h, int w, int classes = 10) {
    Dataset d;
    d.image_shape = {channels, h, w};
    d.classes = classes;
    for (int i = 0; i < classes; i++) d.class_names.push_back(std::to_string(i));
    for (int i = 0; i < n; i++) {
        d.labels.push_back(i % classes);
        for (int c = 0; c < channels; c++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) d.images.push_back(pixel(i, c, y, x));
    }
    return d;
}

std::vector<float> augmented(const Dataset &d, int64_t index, const Augmentation &a, uint64_t seed) {
    std::vector<float> out(size_t(shape_numel(output_shape(d, a))));
    std::mt19937_64 rng(seed);
    augment_into(d, index, a, rng, out.data());
    return out;
}

}  // namespace

TEST(Augment, PlainIsScaledCopy) {
    const Dataset d = synthetic(2, 3, 5, 6);
    const std::vector<float> out = augmented(d, 1, Augmentation{}, 0);
    ASSERT_EQ(out.size(), 3u * 5 * 6);
    for (size_t i = 0; i < out.size(); i++) EXPECT_EQ(out[i], float(d.image(1)[i]) / 255.0f);
}

TEST(Augment, FlipIsExactMirror) {
    const Dataset d = synthetic(1, 2, 3, 5);
    const int H = 3, W = 5;
    Augmentation a;
    a.horizontal_flip = true;
    int flipped = 0, kept = 0;
    for (uint64_t seed = 0; seed < 64; seed++) {
        const std::vector<float> out = augmented(d, 0, a, seed);
        bool is_copy = true, is_mirror = true;
        for (int c = 0; c < 2; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    const float v = out[size_t((c * H + y) * W + x)];
                    is_copy &= v == float(pixel(0, c, y, x)) / 255.0f;
                    is_mirror &= v == float(pixel(0, c, y, W - 1 - x)) / 255.0f;
                }
        ASSERT_TRUE(is_copy || is_mirror) << "seed " << seed;
        (is_mirror ? flipped : kept)++;
    }
    EXPECT_GT(flipped, 10);
    EXPECT_GT(kept, 10);
}

TEST(Augment, CropOffsetsStayWithinPad) {
    const int H = 6, W = 7, pad = 2;
    const Dataset d = synthetic(1, 1, H, W);
    Augmentation a;
    a.pad = pad;
    a.random_crop = true;
    std::set<std::pair<int, int>> offsets;
    for (uint64_t seed = 0; seed < 200; seed++) {
        const std::vector<float> out = augmented(d, 0, a, seed);
        int matches = 0;
        // The output must be the zero-padded image seen through a window at some (oy, ox).
        for (int oy = 0; oy <= 2 * pad; oy++)
            for (int ox = 0; ox <= 2 * pad; ox++) {
                bool same = true;
                for (int y = 0; y < H && same; y++)
                    for (int x = 0; x < W && same; x++) {
                        const int sy = y + oy - pad, sx = x + ox - pad;
                        const bool inside = sy >= 0 && sy < H && sx >= 0 && sx < W;
                        same = out[size_t(y * W + x)] == (inside ? float(pixel(0, 0, sy, sx)) / 255.0f : 0.0f);
                    }
                if (same) {
                    matches++;
                    offsets.insert({oy, ox});
                }
            }
        ASSERT_EQ(matches, 1) << "seed " << seed;
    }
    EXPECT_EQ(offsets.size(), size_t((2 * pad + 1) * (2 * pad + 1)));  // every offset reachable

    a.random_crop = false;  // padding without cropping gives the image back
    EXPECT_EQ(augmented(d, 0, a, 1), augmented(d, 0, Augmentation{}, 1));
}

TEST(Augment, ResizePadsCentered) {
    const Dataset d = synthetic(1, 1, 28, 28);
    Augmentation a;
    a.resize_to = 32;
    EXPECT_EQ(output_shape(d, a), (Shape{1, 32, 32}));
    const std::vector<float> out = augmented(d, 0, a, 0);
    ASSERT_EQ(out.size(), 32u * 32);
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            const bool inside = y >= 2 && y < 30 && x >= 2 && x < 30;
            ASSERT_EQ(out[size_t(y * 32 + x)], inside ? float(pixel(0, 0, y - 2, x - 2)) / 255.0f : 0.0f)
                << y << "," << x;
        }
}

TEST(Augment, NormalizesPerChannel) {
    const Dataset d = synthetic(1, 3, 2, 3);
    Augmentation a;
    a.mean = {0.5f, 0.25f, 0.125f};
    a.stddev = {0.5f, 2.0f, 0.3f};
    const std::vector<float> out = augmented(d, 0, a, 0);
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 6; p++) {
            const float v = float(d.image(0)[c * 6 + p]);
            EXPECT_FLOAT_EQ(out[size_t(c * 6 + p)], (v / 255.0f - a.mean[size_t(c)]) / a.stddev[size_t(c)]);
        }
    a.mean = {0.5f};
    EXPECT_THROW(output_shape(d, a), std::invalid_argument);
    a.mean = {0.5f, 0.25f, 0.125f};
    a.stddev = {1.0f, 0.0f, 1.0f};
    EXPECT_THROW(output_shape(d, a), std::invalid_argument);
}

TEST(Augment, ChannelStatistics) {
    Dataset d;
    d.image_shape = {2, 1, 2};
    d.classes = 1;
    d.labels = {0, 0};
    d.images = {0, 255, 51, 51, /* image 1 */ 255, 0, 102, 102};
    const std::vector<float> mean = channel_mean(d), stddev = channel_stddev(d);
    ASSERT_EQ(mean.size(), 2u);
    EXPECT_FLOAT_EQ(mean[0], 0.5f);
    EXPECT_FLOAT_EQ(stddev[0], 0.5f);
    EXPECT_FLOAT_EQ(mean[1], 0.3f);
    EXPECT_FLOAT_EQ(stddev[1], 0.1f);
}

// --- BatchLoader ---

namespace {

// Every pixel of sample i is i, so a batch image tells which sample it came from.
Dataset numbered(int n) {
    Dataset d;
    d.image_shape = {1, 2, 2};
    d.classes = n;
    for (int i = 0; i < n; i++) {
        d.class_names.push_back(std::to_string(i));
        d.labels.push_back(i);
        for (int p = 0; p < 4; p++) d.images.push_back(uint8_t(i));
    }
    return d;
}

// The batches of `epochs` epochs, checking the end-of-epoch markers on the way.
std::vector<Batch> take_epochs(BatchLoader &loader, int epochs) {
    std::vector<Batch> out;
    for (int e = 0; e < epochs; e++) {
        Batch b;
        int64_t index = 0;
        while (loader.next(b)) {
            EXPECT_EQ(b.index_in_epoch, index++);
            out.push_back(std::move(b));
        }
        EXPECT_EQ(index, loader.batches_per_epoch());
    }
    return out;
}

bool identical(const std::vector<Batch> &a, const std::vector<Batch> &b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++) {
        if (a[i].labels != b[i].labels || a[i].epoch != b[i].epoch || a[i].images.shape() != b[i].images.shape() ||
            std::memcmp(a[i].images.data(), b[i].images.data(), size_t(a[i].images.numel()) * sizeof(float)) != 0)
            return false;
    }
    return true;
}

}  // namespace

TEST(BatchLoader, CoversEachSampleOncePerEpoch) {
    const int n = 10, batch = 3;
    const Dataset d = numbered(n);
    for (bool shuffle : {false, true})
        for (bool drop_last : {false, true}) {
            SCOPED_TRACE(testing::Message() << "shuffle " << shuffle << " drop_last " << drop_last);
            BatchLoader loader(d, batch, shuffle, drop_last, Augmentation{}, 42);
            EXPECT_EQ(loader.batches_per_epoch(), drop_last ? 3 : 4);
            const std::vector<Batch> batches = take_epochs(loader, 3);
            std::vector<std::vector<int32_t>> orders(3);
            for (const Batch &b : batches) {
                ASSERT_EQ(b.images.shape()[0], int64_t(b.labels.size()));
                EXPECT_EQ(b.images.shape(), (Shape{int64_t(b.labels.size()), 1, 2, 2}));
                EXPECT_EQ(int(b.labels.size()), b.index_in_epoch == 3 ? 1 : batch);
                for (size_t i = 0; i < b.labels.size(); i++) {
                    EXPECT_EQ(b.images[int64_t(4 * i)], float(b.labels[i]) / 255.0f);  // image matches label
                    orders[size_t(b.epoch)].push_back(b.labels[i]);
                }
            }
            for (const auto &order : orders) {
                const std::set<int32_t> distinct(order.begin(), order.end());
                EXPECT_EQ(distinct.size(), order.size());  // nothing twice
                EXPECT_EQ(order.size(), size_t(drop_last ? 9 : 10));
            }
            if (!shuffle) {
                std::vector<int32_t> in_order(drop_last ? 9 : 10);
                std::iota(in_order.begin(), in_order.end(), 0);
                EXPECT_EQ(orders[0], in_order);
                EXPECT_EQ(orders[1], in_order);
            } else {
                EXPECT_NE(orders[0], orders[1]);  // a new order each epoch
            }
        }
}

TEST(BatchLoader, SameSeedSameBatches) {
    const Dataset d = synthetic(23, 3, 8, 8);
    Augmentation a;
    a.pad = 2;
    a.random_crop = true;
    a.horizontal_flip = true;
    a.mean = {0.5f, 0.4f, 0.3f};
    a.stddev = {0.2f, 0.25f, 0.3f};
    // Different prefetch depths and a slow consumer change the timing, never the result.
    BatchLoader fast(d, 4, true, false, a, 7, 8);
    BatchLoader slow(d, 4, true, false, a, 7, 1);
    const std::vector<Batch> x = take_epochs(fast, 3);
    std::vector<Batch> y;
    for (int e = 0; e < 3; e++) {
        Batch b;
        while (slow.next(b)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            y.push_back(std::move(b));
        }
    }
    EXPECT_TRUE(identical(x, y));

    BatchLoader other(d, 4, true, false, a, 8);
    EXPECT_FALSE(identical(x, take_epochs(other, 3)));

    // The per-sample augmentation differs between epochs too: not just the order.
    BatchLoader fixed(d, 23, false, false, a, 7);
    const std::vector<Batch> two = take_epochs(fixed, 2);
    ASSERT_EQ(two.size(), 2u);
    EXPECT_NE(std::memcmp(two[0].images.data(), two[1].images.data(), size_t(two[0].images.numel()) * sizeof(float)),
              0);
}

TEST(BatchLoader, StartEpochMatchesRunningThrough) {
    const Dataset d = synthetic(10, 1, 4, 4);
    Augmentation a;
    a.pad = 1;
    a.random_crop = true;
    a.horizontal_flip = true;
    BatchLoader through(d, 4, true, true, a, 3);
    const std::vector<Batch> all = take_epochs(through, 3);
    BatchLoader jump(d, 4, true, true, a, 3);
    Batch b;
    ASSERT_TRUE(jump.next(b));  // something prefetched, then dropped
    jump.start_epoch(2);
    const std::vector<Batch> last = take_epochs(jump, 1);
    ASSERT_EQ(last.size(), 2u);
    EXPECT_EQ(last[0].epoch, 2);
    EXPECT_TRUE(identical(last, std::vector<Batch>(all.end() - 2, all.end())));
}

TEST(BatchLoader, ConsumerMayStopEarly) {
    const Dataset d = synthetic(50, 3, 8, 8);
    // Each loader's destructor must return, whether or not anything was taken.
    for (int taken = 0; taken < 3; taken++) {
        BatchLoader loader(d, 5, true, false, Augmentation{}, 1, 2);
        Batch b;
        for (int i = 0; i < taken; i++) ASSERT_TRUE(loader.next(b));
        if (taken == 2) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // queue full, producer waiting
    }
}

TEST(BatchLoader, ProducerErrorsReachTheConsumer) {
    Dataset d = synthetic(4, 1, 2, 2);
    d.images.resize(2 * 4);  // images 2 and 3 are missing
    BatchLoader loader(d, 2, false, false, Augmentation{}, 0);
    Batch b;
    ASSERT_TRUE(loader.next(b));
    EXPECT_THROW(loader.next(b), std::invalid_argument);
    EXPECT_THROW(loader.next(b), std::invalid_argument);  // and again, not a hang
}

TEST(BatchLoader, RejectsBadArguments) {
    const Dataset d = synthetic(4, 1, 2, 2);
    EXPECT_THROW(BatchLoader(d, 0, false, false, Augmentation{}, 0), std::invalid_argument);
    EXPECT_THROW(BatchLoader(d, 2, false, false, Augmentation{}, 0, 0), std::invalid_argument);
    Augmentation a;
    a.mean = {0.1f, 0.2f};
    EXPECT_THROW(BatchLoader(d, 2, false, false, a, 0), std::invalid_argument);
}
