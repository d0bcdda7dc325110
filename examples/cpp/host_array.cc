// Host arrays and .npy files (the format numpy.save writes: magic, version, a Python-dict header, raw data).
#include "host_array.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

namespace fxpress {
namespace {

const std::vector<DType>& DTypes() {
  static const std::vector<DType> kTypes = {
      {"float32", "<f4", "F32", {kDLFloat, 32, 1}, 4},  {"float64", "<f8", "F64", {kDLFloat, 64, 1}, 8},
      {"float16", "<f2", "F16", {kDLFloat, 16, 1}, 2},  {"int8", "|i1", "I8", {kDLInt, 8, 1}, 1},
      {"uint8", "|u1", "U8", {kDLUInt, 8, 1}, 1},       {"int16", "<i2", "I16", {kDLInt, 16, 1}, 2},
      {"int32", "<i4", "I32", {kDLInt, 32, 1}, 4},      {"int64", "<i8", "I64", {kDLInt, 64, 1}, 8},
      {"uint16", "<u2", "U16", {kDLUInt, 16, 1}, 2},    {"uint32", "<u4", "U32", {kDLUInt, 32, 1}, 4},
      {"uint64", "<u8", "U64", {kDLUInt, 64, 1}, 8},    {"bool", "|b1", "BOOL", {kDLBool, 8, 1}, 1},
  };
  return kTypes;
}

template <typename Match>
const DType& Find(Match match, const std::string& what) {
  for (const DType& t : DTypes())
    if (match(t)) return t;
  throw std::runtime_error("unsupported dtype " + what);
}

// The value of 'key' in a .npy header dict, e.g. "'descr': '<f4', 'fortran_order': False, 'shape': (4, 16), }".
std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error("its header has no '" + key + "'");
  at = header.find(':', at) + 1;
  while (header[at] == ' ') ++at;
  size_t end = header[at] == '(' ? header.find(')', at) + 1 : header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

}  // namespace

const DType& DTypeByName(const std::string& name) {
  return Find([&](const DType& t) { return t.name == name; }, "'" + name + "'");
}

const DType& DTypeBySafetensors(const std::string& code) {
  return Find([&](const DType& t) { return t.safetensors == code; }, "'" + code + "' (safetensors)");
}

const DType& DTypeByDL(DLDataType dl) {
  return Find([&](const DType& t) { return t.dl.code == dl.code && t.dl.bits == dl.bits && t.dl.lanes == dl.lanes; },
              "code " + std::to_string(dl.code) + " bits " + std::to_string(dl.bits));
}

int64_t HostArray::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string HostArray::Describe() const {
  std::ostringstream os;
  os << (dtype ? dtype->name : "?") << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

HostArray ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 10 || data.compare(0, 6, "\x93NUMPY") != 0)
    throw std::runtime_error(path + " is not a .npy file (write it with numpy.save)");
  int major = static_cast<uint8_t>(data[6]);
  size_t length_bytes = major == 1 ? 2 : 4, start = 8 + length_bytes;
  size_t header_len = 0;
  for (size_t i = 0; i < length_bytes; ++i) header_len |= size_t(static_cast<uint8_t>(data[8 + i])) << (8 * i);
  if (start + header_len > data.size()) throw std::runtime_error(path + ": truncated .npy header");
  std::string header = data.substr(start, header_len);
  HostArray out;
  try {
    std::string descr = HeaderValue(header, "descr");
    descr = descr.substr(1, descr.size() - 2);  // drop the quotes
    if (HeaderValue(header, "fortran_order") != "False")
      throw std::runtime_error("it is Fortran-ordered; save numpy.ascontiguousarray(x)");
    out.dtype = &Find([&](const DType& t) { return t.npy == descr || (t.itemsize == 1 && t.npy.substr(1) == descr.substr(1)); },
                      "'" + descr + "' (.npy; big-endian arrays are not read)");
    std::string shape = HeaderValue(header, "shape");
    std::istringstream dims(shape.substr(1, shape.size() - 2));
    std::string dim;
    while (std::getline(dims, dim, ','))
      if (dim.find_first_not_of(' ') != std::string::npos) out.shape.push_back(std::stoll(dim));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  size_t expected = static_cast<size_t>(out.NumElements()) * out.dtype->itemsize;
  if (data.size() - start - header_len != expected)
    throw std::runtime_error(path + ": " + std::to_string(data.size() - start - header_len) + " data bytes for " +
                             out.Describe() + " (" + std::to_string(expected) + " expected)");
  out.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(start + header_len), data.end());
  return out;
}

void WriteNpy(const std::string& path, const HostArray& array) {
  std::string shape = "(";
  for (size_t i = 0; i < array.shape.size(); ++i) shape += std::to_string(array.shape[i]) + ", ";
  if (array.shape.size() > 1) shape.resize(shape.size() - 2);
  if (array.shape.size() == 1) shape.resize(shape.size() - 1);  // "(4,)"
  shape += ")";
  std::string header = "{'descr': '" + array.dtype->npy + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
  out << header;
  out.write(reinterpret_cast<const char*>(array.bytes.data()), static_cast<std::streamsize>(array.bytes.size()));
  if (!out) throw std::runtime_error("error writing " + path);
}

}  // namespace fxpress
