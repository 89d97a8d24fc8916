#include "atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace lowbit {

namespace {

[[noreturn]] void fail(const std::string &path, const std::string &what, int err) {
    throw std::runtime_error(path + ": " + what + ": " + std::strerror(err));
}

// The directory holding `path`, for opening it to sync the rename.
std::string parent_directory(const std::string &path) {
    const size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

void write_parts(const std::string &path, const ByteSpan *parts, size_t count) {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    // Nothing was created, so there is nothing to remove (".tmp" may even be someone's directory).
    if (fd < 0) fail(path, "cannot create " + tmp, errno);
    int err = 0;
    for (size_t i = 0; i < count && err == 0; i++) {
        const char *p = static_cast<const char *>(parts[i].data);
        size_t left = parts[i].size;
        while (left > 0) {
            const ssize_t n = ::write(fd, p, left);
            if (n < 0) {
                if (errno == EINTR) continue;
                err = errno;
                break;
            }
            p += n;
            left -= size_t(n);
        }
    }
    // The data must be on disk before the rename makes it visible under `path`.
    if (err == 0 && ::fsync(fd) != 0) err = errno;
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err != 0) {
        ::unlink(tmp.c_str());
        fail(path, "cannot write", err);
    }
    // Without this the rename may be lost in a crash, bringing back the old file (or none).
    const std::string dir = parent_directory(path);
    const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) fail(path, "written, but cannot open its directory " + dir + " to sync it", errno);
    // EINVAL: the file system cannot sync a directory at all; nothing more can be done there.
    if (::fsync(dir_fd) != 0 && errno != EINVAL) {
        err = errno;
        ::close(dir_fd);
        fail(path, "written, but cannot sync its directory " + dir, err);
    }
    ::close(dir_fd);
}

}  // namespace

void write_file_atomically(const std::string &path, std::initializer_list<ByteSpan> parts) {
    write_parts(path, parts.begin(), parts.size());
}

void write_file_atomically(const std::string &path, const std::vector<ByteSpan> &parts) {
    write_parts(path, parts.data(), parts.size());
}

std::string read_whole_file(const std::string &path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    // One byte beyond the size fstat reports, so a regular file is read without regrowing.
    struct stat st;
    const bool sized = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    std::string bytes(sized ? size_t(st.st_size) + 1 : size_t(4096), '\0');
    size_t got = 0;
    for (;;) {
        if (got == bytes.size()) bytes.resize(2 * bytes.size());
        const ssize_t n = ::read(fd, &bytes[got], bytes.size() - got);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            ::close(fd);
            throw std::runtime_error(path + ": cannot read: " + std::strerror(err));
        }
        got += size_t(n);
    }
    ::close(fd);
    bytes.resize(got);
    return bytes;
}

}  // namespace lowbit
