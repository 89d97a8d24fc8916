#include "dataset.h"

#include <fmt/format.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

namespace lowbit {

namespace fs = std::filesystem;

int64_t Dataset::image_bytes() const {
    int64_t n = 1;
    for (int64_t e : image_shape) n *= e;
    return n;
}

namespace {

const std::vector<std::string> kFashionMnistClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
const std::vector<std::string> kCifar10Classes = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                  "dog",      "frog",       "horse", "ship", "truck"};

constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarImageBytes = 3 * kCifarSide * kCifarSide;
constexpr int64_t kCifarRecordBytes = 1 + kCifarImageBytes;

// Every label must index a class name; checked once here rather than trusted by the trainer.
void check_labels(const Dataset &d, const std::string &path) {
    for (int64_t i = 0; i < d.size(); i++)
        if (d.labels[size_t(i)] < 0 || d.labels[size_t(i)] >= d.classes)
            throw DataError(
                fmt::format("{}: label {} of item {} is outside [0, {})", path, d.labels[size_t(i)], i, d.classes));
}

// The gzipped name if that file exists, else the plain one (whose absence read_idx reports).
std::string gz_or_plain(const std::string &dir, const std::string &name) {
    const std::string plain = (fs::path(dir) / name).string();
    return fs::exists(plain + ".gz") ? plain + ".gz" : plain;
}

std::string read_whole_file(const std::string &path) {
    std::unique_ptr<FILE, int (*)(FILE *)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) throw DataError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    std::string bytes;
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) bytes.append(buf, n);
    if (std::ferror(f.get())) throw DataError(fmt::format("{}: read error", path));
    return bytes;
}

// Appends at most `limit` records of one CIFAR-10 batch file.
void append_cifar_batch(Dataset &d, const std::string &path, int64_t limit) {
    const std::string bytes = read_whole_file(path);
    if (bytes.empty() || int64_t(bytes.size()) % kCifarRecordBytes != 0)
        throw DataError(fmt::format("{}: truncated or corrupt: {} bytes is not a whole number of {}-byte records", path,
                                    bytes.size(), kCifarRecordBytes));
    const int64_t records = std::min<int64_t>(int64_t(bytes.size()) / kCifarRecordBytes, limit);
    const auto *p = reinterpret_cast<const uint8_t *>(bytes.data());
    for (int64_t r = 0; r < records; r++, p += kCifarRecordBytes) {
        if (p[0] >= d.classes)
            throw DataError(fmt::format("{}: label {} of record {} is outside [0, {})", path, p[0], r, d.classes));
        d.labels.push_back(p[0]);
        // The record already holds the red, green and blue planes in turn: CHW as it is.
        d.images.insert(d.images.end(), p + 1, p + kCifarRecordBytes);
    }
}

// One class name per non-empty line, as CIFAR-10's batches.meta.txt has them.
std::vector<std::string> read_class_names(const std::string &path) {
    std::ifstream in(path);
    std::vector<std::string> names;
    for (std::string line; std::getline(in, line);) {
        while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
        if (!line.empty()) names.push_back(line);
    }
    return names;
}

bool is_image_file(const fs::path &p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

std::vector<fs::path> sorted_entries(const fs::path &dir, bool directories) {
    std::vector<fs::path> out;
    for (const auto &e : fs::directory_iterator(dir))
        if (directories ? e.is_directory() : (e.is_regular_file() && is_image_file(e.path()))) out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

// Decodes one image file to HWC RGB bytes; the first image fixes the size all others must have.
void append_image(Dataset &d, const fs::path &file, int32_t label) {
    const std::string path = file.string();
    const cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
    if (bgr.empty()) throw DataError(fmt::format("{}: cannot decode the image", path));
    if (d.image_shape.empty()) d.image_shape = {3, bgr.rows, bgr.cols};
    if (bgr.rows != d.image_shape[1] || bgr.cols != d.image_shape[2])
        throw DataError(fmt::format("{}: image is {}x{}, unlike the {}x{} of the images before it", path, bgr.cols,
                                    bgr.rows, d.image_shape[2], d.image_shape[1]));
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    // OpenCV interleaves channels (HWC); the data set stores planes (CHW).
    const int64_t plane = int64_t(rgb.rows) * rgb.cols;
    const size_t base = d.images.size();
    d.images.resize(base + size_t(3 * plane));
    for (int y = 0; y < rgb.rows; y++) {
        const uint8_t *row = rgb.ptr<uint8_t>(y);
        for (int x = 0; x < rgb.cols; x++)
            for (int c = 0; c < 3; c++) d.images[base + size_t(c * plane + int64_t(y) * rgb.cols + x)] = row[3 * x + c];
    }
    d.labels.push_back(label);
}

}  // namespace

Dataset load_fashion_mnist(const std::string &dir, bool train, int64_t max_items) {
    const std::string prefix = train ? "train" : "t10k";
    const std::string images_path = gz_or_plain(dir, prefix + "-images-idx3-ubyte");
    const std::string labels_path = gz_or_plain(dir, prefix + "-labels-idx1-ubyte");
    IdxArray images = read_idx(images_path, max_items);
    IdxArray labels = read_idx(labels_path, max_items);
    if (images.shape.size() != 3)
        throw DataError(
            fmt::format("{}: expected a rank-3 IDX array of images, got rank {}", images_path, images.shape.size()));
    if (labels.shape.size() != 1)
        throw DataError(
            fmt::format("{}: expected a rank-1 IDX array of labels, got rank {}", labels_path, labels.shape.size()));
    if (labels.shape[0] != images.shape[0])
        throw DataError(fmt::format("{}: {} labels for the {} images of {}", labels_path, labels.shape[0],
                                    images.shape[0], images_path));
    Dataset d;
    d.image_shape = {1, images.shape[1], images.shape[2]};
    d.classes = int(kFashionMnistClasses.size());
    d.class_names = kFashionMnistClasses;
    d.images = std::move(images.data);
    d.labels.assign(labels.data.begin(), labels.data.end());
    check_labels(d, labels_path);
    return d;
}

Dataset load_cifar10(const std::string &dir, bool train, int64_t max_items) {
    std::vector<std::string> files;
    if (train) {
        for (int i = 1; i <= 5; i++) {
            const std::string path = (fs::path(dir) / fmt::format("data_batch_{}.bin", i)).string();
            if (fs::exists(path)) files.push_back(path);
        }
        if (files.empty())
            throw DataError(fmt::format("{}: no CIFAR-10 training batch (data_batch_1.bin ... data_batch_5.bin)",
                                        (fs::path(dir) / "data_batch_1.bin").string()));
    } else {
        files.push_back((fs::path(dir) / "test_batch.bin").string());
    }
    Dataset d;
    d.image_shape = {3, kCifarSide, kCifarSide};
    d.class_names = kCifar10Classes;
    const std::string meta = (fs::path(dir) / "batches.meta.txt").string();
    if (fs::exists(meta)) {
        std::vector<std::string> names = read_class_names(meta);
        if (names.size() != kCifar10Classes.size())
            throw DataError(fmt::format("{}: {} class names, expected {}", meta, names.size(), kCifar10Classes.size()));
        d.class_names = std::move(names);
    }
    d.classes = int(d.class_names.size());
    const int64_t limit = max_items < 0 ? INT64_MAX : max_items;
    for (const std::string &path : files) {
        if (d.size() >= limit) break;
        append_cifar_batch(d, path, limit - d.size());
    }
    return d;
}

Dataset load_image_folder(const std::string &dir, int64_t max_items) {
    if (!fs::is_directory(dir)) throw DataError(fmt::format("{}: not a directory", dir));
    Dataset d;
    const int64_t limit = max_items < 0 ? INT64_MAX : max_items;
    for (const fs::path &class_dir : sorted_entries(dir, true)) {
        const int32_t label = int32_t(d.class_names.size());
        d.class_names.push_back(class_dir.filename().string());
        for (const fs::path &file : sorted_entries(class_dir, false)) {
            if (d.size() >= limit) break;
            append_image(d, file, label);
        }
    }
    d.classes = int(d.class_names.size());
    if (d.classes == 0) throw DataError(fmt::format("{}: no class subfolders", dir));
    if (d.size() == 0 && limit > 0) throw DataError(fmt::format("{}: no PNG or JPEG images in the class folders", dir));
    return d;
}

Dataset load_dataset(const std::string &name_or_path, bool train) {
    const fs::path dir =
        name_or_path == "fashion-mnist" ? fs::path("/usr/share/datasets/fashion-mnist") : fs::path(name_or_path);
    if (!fs::is_directory(dir)) throw DataError(fmt::format("{}: no such data set directory", dir.string()));
    auto has = [&](const char *name) { return fs::exists(dir / name); };
    if (has("data_batch_1.bin") || has("test_batch.bin")) return load_cifar10(dir.string(), train);
    if (has("train-images-idx3-ubyte.gz") || has("train-images-idx3-ubyte") || has("t10k-images-idx3-ubyte.gz") ||
        has("t10k-images-idx3-ubyte"))
        return load_fashion_mnist(dir.string(), train);
    // A folder split into train/ and test/ holds classes one level down; a missing split is an error
    // (from load_image_folder) rather than the other split's folders mistaken for classes.
    if (fs::is_directory(dir / "train") || fs::is_directory(dir / "test"))
        return load_image_folder((dir / (train ? "train" : "test")).string());
    return load_image_folder(dir.string());
}

}  // namespace lowbit
