// Host arrays (dtype, shape, bytes), their dtypes under every name the artifact uses, and .npy files.
//
//   numpy "float32"  <->  .npy descr "<f4"  <->  safetensors "F32"  <->  DLDataType {kDLFloat, 32, 1}
#pragma once

#include <dlpack/dlpack.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fxpress {

struct DType {
  std::string name;         // numpy's name: "float32"
  std::string npy;          // .npy descr: "<f4"
  std::string safetensors;  // safetensors' code: "F32"
  DLDataType dl;
  size_t itemsize;
};

// The dtype of numpy name `name` ("float32", "int8", ...); throws std::runtime_error for one it does not know.
const DType& DTypeByName(const std::string& name);
// The dtype of safetensors code `code` ("F32", "I8", ...).
const DType& DTypeBySafetensors(const std::string& code);
// The dtype of a DLPack type (an output's).
const DType& DTypeByDL(DLDataType dl);

struct HostArray {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // C order

  int64_t NumElements() const;
  std::string Describe() const;  // "float32[4, 16]"
};

// Read a C-ordered, little-endian .npy file (format 1.0 to 3.0); throws std::runtime_error naming the problem.
HostArray ReadNpy(const std::string& path);
// Write `array` as a format 1.0 .npy file.
void WriteNpy(const std::string& path, const HostArray& array);

}  // namespace fxpress
