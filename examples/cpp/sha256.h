// SHA-256 (FIPS 180-4) of a file, as lowercase hex: the artifact manifest's "files" hashes.
#pragma once

#include <string>

namespace fxpress {

// The sha256 of the file at `path` as 64 lowercase hex digits; throws std::runtime_error if it cannot be read.
std::string Sha256File(const std::string& path);

// The sha256 of `size` bytes at `data` (for the self-test: Sha256Hex("abc", 3) starts with "ba7816bf").
std::string Sha256Hex(const void* data, size_t size);

}  // namespace fxpress
