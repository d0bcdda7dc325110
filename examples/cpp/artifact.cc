// Reading an fxpress artifact: manifest checks (artifact.py, load.py) and weight decoding (storage.py and the
// modules it calls). Every error says what is wrong and what to do, as the Python loader's do.
#include "artifact.h"

#include <sys/stat.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "sha256.h"

namespace fxpress {
namespace {

namespace ffi = tvm::ffi;
using JObject = ffi::Map<ffi::Any, ffi::Any>;
using JArray = ffi::Array<ffi::Any>;

constexpr const char* kFormat = "fxpress-artifact";
constexpr int kReads[] = {1, 2, 3};  // artifact format versions this loader reads (artifact.py READS)
constexpr const char* kManifest = "manifest.json";
constexpr const char* kLibrary = "model.so";
constexpr const char* kWeights = "weights.safetensors";
constexpr const char* kCodebookSuffix = "::codebook";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ArtifactError("cannot read " + path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool IsFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ---- typed access to parsed JSON (tvm::ffi::json: objects are Map<Any, Any>, arrays Array<Any>) ----

std::optional<ffi::Any> Get(const JObject& object, const std::string& key) {
  return object.Get(ffi::Any(ffi::String(key)));
}

ffi::Any Field(const JObject& object, const std::string& key, const std::string& where) {
  std::optional<ffi::Any> value = Get(object, key);
  if (!value.has_value()) throw ArtifactError(where + " has no '" + key + "'; the artifact is corrupt, recompile it");
  return *value;
}

JObject AsObject(const ffi::Any& value, const std::string& what) {
  if (value.type_index() != ffi::TypeIndex::kTVMFFIMap) throw ArtifactError(what + " is not a JSON object");
  return value.cast<JObject>();
}

JArray AsArray(const ffi::Any& value, const std::string& what) {
  if (value.type_index() != ffi::TypeIndex::kTVMFFIArray) throw ArtifactError(what + " is not a JSON array");
  return value.cast<JArray>();
}

std::string AsString(const ffi::Any& value, const std::string& what) {
  std::optional<ffi::String> s = value.try_cast<ffi::String>();
  if (!s.has_value() || value.type_index() == ffi::TypeIndex::kTVMFFINone)
    throw ArtifactError(what + " is not a string");
  return std::string(*s);
}

int64_t AsInt(const ffi::Any& value, const std::string& what) {
  if (value.type_index() != ffi::TypeIndex::kTVMFFIInt) throw ArtifactError(what + " is not an integer");
  return value.cast<int64_t>();
}

bool AsBool(const ffi::Any& value) {
  return value.type_index() == ffi::TypeIndex::kTVMFFIBool && value.cast<bool>();
}

std::string Text(const ffi::Any& value) {  // a value as the manifest shows it, for messages
  return std::string(ffi::json::Stringify(value));
}

std::vector<std::string> Strings(const ffi::Any& value, const std::string& what) {
  std::vector<std::string> out;
  for (const ffi::Any& item : AsArray(value, what)) out.push_back(AsString(item, what + " item"));
  return out;
}

std::vector<int64_t> Shape(const ffi::Any& value, const std::string& what) {
  std::vector<int64_t> out;
  for (const ffi::Any& d : AsArray(value, what))
    out.push_back(d.type_index() == ffi::TypeIndex::kTVMFFINone ? -1 : AsInt(d, what + " dimension"));
  return out;
}

std::vector<TensorSpec> Specs(const JObject& manifest, const std::string& key) {
  std::vector<TensorSpec> out;
  for (const ffi::Any& item : AsArray(Field(manifest, key, "the manifest"), "manifest '" + key + "'")) {
    JObject spec = AsObject(item, "a manifest '" + key + "' entry");
    out.push_back({AsString(Field(spec, "name", key), key + " name"),
                   &DTypeByName(AsString(Field(spec, "dtype", key), key + " dtype")),
                   Shape(Field(spec, "shape", key), key + " shape")});
  }
  return out;
}

// ---- weights: safetensors, then the format-3 storage tables ----

using Arrays = std::map<std::string, HostArray>;

Arrays ReadSafetensors(const std::string& path) {
  std::string data = ReadFile(path);
  if (data.size() < 8) throw ArtifactError(path + " is not a safetensors file (shorter than its header length)");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(static_cast<uint8_t>(data[i])) << (8 * i);
  if (header_len > data.size() - 8) throw ArtifactError(path + ": its header runs past the end of the file");
  ffi::String error;
  ffi::Any header = ffi::json::Parse(ffi::String(data.substr(8, header_len)), &error);
  if (!error.empty()) throw ArtifactError(path + ": its header is not JSON: " + std::string(error));
  size_t base = 8 + header_len;
  Arrays out;
  for (const auto& [key, value] : AsObject(header, path + " header")) {
    std::string name = AsString(key, "a tensor name");
    if (name == "__metadata__") continue;
    JObject entry = AsObject(value, path + " entry " + name);
    HostArray array;
    array.dtype = &DTypeBySafetensors(AsString(Field(entry, "dtype", name), name + " dtype"));
    array.shape = Shape(Field(entry, "shape", name), name + " shape");
    JArray offsets = AsArray(Field(entry, "data_offsets", name), name + " data_offsets");
    int64_t begin = AsInt(offsets[0], name + " offset"), end = AsInt(offsets[1], name + " offset");
    size_t nbytes = static_cast<size_t>(array.NumElements()) * array.dtype->itemsize;
    if (begin < 0 || end < begin || base + static_cast<size_t>(end) > data.size() ||
        static_cast<size_t>(end - begin) != nbytes)
      throw ArtifactError(path + ": tensor " + name + " has bad data offsets; the artifact is corrupt");
    array.bytes.assign(data.begin() + static_cast<std::ptrdiff_t>(base + begin),
                       data.begin() + static_cast<std::ptrdiff_t>(base + end));
    out.emplace(name, std::move(array));
  }
  return out;
}

// `count` unsigned fields of `bits` bits, field i in the bits i*bits upward of the stream, least significant
// bit first (packing.py pack_fields).
std::vector<uint8_t> UnpackFields(const HostArray& packed, int bits, int64_t count, const std::string& name) {
  if (bits < 1 || bits > 8) throw ArtifactError(name + ": field widths are 1 to 8 bits, got " + std::to_string(bits));
  size_t need = static_cast<size_t>((count * bits + 7) / 8);
  if (packed.dtype->name != "uint8" || packed.shape.size() != 1 || packed.bytes.size() != need)
    throw ArtifactError(name + ": " + packed.Describe() + " cannot hold " + std::to_string(count) + " " +
                        std::to_string(bits) + "-bit fields");
  std::vector<uint8_t> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    unsigned value = 0;
    for (int b = 0; b < bits; ++b) {
      int64_t at = i * bits + b;
      value |= ((packed.bytes[static_cast<size_t>(at >> 3)] >> (at & 7)) & 1u) << b;
    }
    out[static_cast<size_t>(i)] = static_cast<uint8_t>(value);
  }
  return out;
}

// packing.py: int8 values that fit `bits` signed bits, stored as two's-complement fields.
void DecodePacked(Arrays& arrays, const std::string& name, const JObject& entry) {
  if (!arrays.count(name)) throw ArtifactError("packed parameter " + name + " is missing from the weights");
  if (AsString(Field(entry, "dtype", name), name + " dtype") != "int8")
    throw ArtifactError("packed parameter " + name + " has an unknown entry " + Text(ffi::Any(entry)));
  int bits = static_cast<int>(AsInt(Field(entry, "bits", name), name + " bits"));
  if (bits != 2 && bits != 4) throw ArtifactError("packed parameter " + name + ": widths are 2 and 4 bits");
  HostArray out{&DTypeByName("int8"), Shape(Field(entry, "shape", name), name + " shape"), {}};
  std::vector<uint8_t> fields = UnpackFields(arrays[name], bits, out.NumElements(), name);
  out.bytes.resize(fields.size());
  for (size_t i = 0; i < fields.size(); ++i) {
    int v = fields[i] >= (1 << (bits - 1)) ? fields[i] - (1 << bits) : fields[i];  // sign-extend
    out.bytes[i] = static_cast<uint8_t>(static_cast<int8_t>(v));
  }
  arrays[name] = std::move(out);
}

// codebook.py: ceil(log2(entries))-bit indices into a table of distinct values (any dtype, copied by bits).
void DecodeCodebook(Arrays& arrays, const std::string& name, const JObject& entry) {
  std::string table_name = name + kCodebookSuffix;
  if (!arrays.count(name) || !arrays.count(table_name))
    throw ArtifactError("codebook parameter " + name + " lacks its indices or its codebook in the weights");
  const HostArray& table = arrays[table_name];
  int64_t entries = AsInt(Field(entry, "entries", name), name + " entries");
  std::string dtype = AsString(Field(entry, "dtype", name), name + " dtype");
  if (table.shape.size() != 1 || table.shape[0] != entries || table.dtype->name != dtype)
    throw ArtifactError("codebook parameter " + name + ": codebook " + table.Describe() + " != " +
                        Text(ffi::Any(entry)));
  int bits = static_cast<int>(AsInt(Field(entry, "bits", name), name + " bits"));
  int expected_bits = std::max(1, static_cast<int>(std::ceil(std::log2(static_cast<double>(std::max<int64_t>(entries, 1))))));
  if (bits != expected_bits)
    throw ArtifactError("codebook parameter " + name + ": " + std::to_string(bits) + " index bits for " +
                        std::to_string(entries) + " entries");
  HostArray out{table.dtype, Shape(Field(entry, "shape", name), name + " shape"), {}};
  std::vector<uint8_t> indices = UnpackFields(arrays[name], bits, out.NumElements(), name);
  size_t item = table.dtype->itemsize;
  out.bytes.resize(indices.size() * item);
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] >= entries) throw ArtifactError("codebook parameter " + name + ": an index points past its entries");
    std::memcpy(&out.bytes[i * item], &table.bytes[indices[i] * item], item);
  }
  arrays[name] = std::move(out);
  arrays.erase(table_name);
}

// hashing.py: SplitMix64's finalizer over i + seed * golden; bucket = high 32 bits mod buckets, sign = bit 0.
uint64_t Mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

template <typename T>
void Expand(const HostArray& buckets, HostArray& out, uint64_t seed) {
  const T* values = reinterpret_cast<const T*>(buckets.bytes.data());
  T* dense = reinterpret_cast<T*>(out.bytes.data());
  uint64_t n = static_cast<uint64_t>(buckets.shape[0]), offset = seed * 0x9E3779B97F4A7C15ull;
  for (uint64_t i = 0, count = static_cast<uint64_t>(out.NumElements()); i < count; ++i) {
    uint64_t mixed = Mix(i + offset);
    T sign = (mixed & 1u) ? T(-1) : T(1);
    dense[i] = values[(mixed >> 32) % n] * sign;
  }
}

void DecodeHashed(Arrays& arrays, const std::string& name, const JObject& entry) {
  if (!arrays.count(name)) throw ArtifactError("hashed parameter " + name + " is missing from the weights");
  const HostArray& buckets = arrays[name];
  int64_t count = AsInt(Field(entry, "buckets", name), name + " buckets");
  std::string dtype = AsString(Field(entry, "dtype", name), name + " dtype");
  if (buckets.shape.size() != 1 || buckets.shape[0] != count || buckets.dtype->name != dtype || count < 1)
    throw ArtifactError("hashed parameter " + name + ": buckets " + buckets.Describe() + " != " + Text(ffi::Any(entry)));
  HostArray out{buckets.dtype, Shape(Field(entry, "shape", name), name + " shape"), {}};
  out.bytes.resize(static_cast<size_t>(out.NumElements()) * out.dtype->itemsize);
  uint64_t seed = static_cast<uint64_t>(AsInt(Field(entry, "seed", name), name + " seed"));
  if (dtype == "float32") {
    Expand<float>(buckets, out, seed);
  } else if (dtype == "float64") {
    Expand<double>(buckets, out, seed);
  } else {
    throw ArtifactError("hashed parameter " + name + " is " + dtype + "; this loader expands float32 and float64");
  }
  arrays[name] = std::move(out);
}

void DecodeTable(Arrays& arrays, const JObject& manifest, const std::string& table,
                 void (*decode)(Arrays&, const std::string&, const JObject&)) {
  std::optional<ffi::Any> entries = Get(manifest, table);
  if (!entries.has_value()) return;
  for (const auto& [key, value] : AsObject(*entries, "manifest '" + table + "'")) {
    std::string name = AsString(key, table + " name");
    decode(arrays, name, AsObject(value, table + " entry " + name));
  }
}

}  // namespace

std::vector<std::string> HostCpuFlags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    return {std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
  }
  return {};
}

Artifact ReadArtifact(const std::string& dir) {
  if (!IsDir(dir)) throw ArtifactError("no artifact at " + dir + ": not a directory (write one with `fxpress compile ... -o DIR`)");
  std::string path = dir + "/" + kManifest;
  if (!IsFile(path)) throw ArtifactError(dir + " is not an fxpress artifact: " + kManifest + " is missing (recompile it)");
  ffi::String error;
  ffi::Any parsed = ffi::json::Parse(ffi::String(ReadFile(path)), &error);
  if (!error.empty()) throw ArtifactError(path + " is not valid JSON (" + std::string(error) + "); the artifact is corrupt, recompile it");
  if (parsed.type_index() != ffi::TypeIndex::kTVMFFIMap) throw ArtifactError(path + " is not an fxpress manifest");
  Artifact a;
  a.dir = dir;
  a.manifest = parsed.cast<JObject>();
  std::optional<ffi::Any> format = Get(a.manifest, "format");
  if (!format.has_value() || format->type_index() == ffi::TypeIndex::kTVMFFINone ||
      AsString(*format, "format") != kFormat)
    throw ArtifactError(path + " is not an fxpress manifest (no format '" + kFormat + "')");
  ffi::Any version = Field(a.manifest, "format_version", path);
  if (version.type_index() != ffi::TypeIndex::kTVMFFIInt ||
      std::find(std::begin(kReads), std::end(kReads), version.cast<int64_t>()) == std::end(kReads))
    throw ArtifactError(dir + " has artifact format version " + Text(version) +
                        "; this loader reads versions [1, 2, 3]: recompile it, or rebuild this loader from a newer fxpress");
  // every file with the hash the manifest gives, before anything is loaded
  JObject files = AsObject(Field(a.manifest, "files", path), path + " 'files'");
  if (!Get(files, kLibrary).has_value() || !Get(files, kWeights).has_value())
    throw ArtifactError(path + " does not list " + kLibrary + " and " + kWeights + " with their hashes; the artifact is corrupt");
  for (const auto& [key, value] : files) {
    std::string name = AsString(key, "a file name"), expected = AsString(value, "the sha256 of " + name);
    if (name.find('/') != std::string::npos || !IsFile(dir + "/" + name))
      throw ArtifactError("artifact " + dir + " is incomplete: " + name + " is missing");
    std::string actual = Sha256File(dir + "/" + name);
    if (actual != expected)
      throw ArtifactError("artifact " + dir + ": " + name + " has sha256 " + actual.substr(0, 16) + "..., the manifest says " +
                          expected.substr(0, 16) + "...: the file was changed or corrupted after it was written; recompile the artifact");
  }
  // a target this machine runs
  JObject target = AsObject(Field(a.manifest, "target", path), "manifest 'target'");
  std::string target_name = Text(Field(target, "name", "target"));
  if (!AsBool(Get(target, "host_runnable").value_or(ffi::Any(false))))
    throw ArtifactError("artifact " + dir + " was built for target " + target_name +
                        "; it does not run on this machine (run it on the device it was built for)");
  std::optional<ffi::Any> device = Get(target, "device");
  if (device.has_value() && AsString(*device, "target device") != "cpu")
    throw ArtifactError("artifact " + dir + " runs on a " + AsString(*device, "target device") +
                        " device; this example runs CPU artifacts only");
  std::vector<std::string> flags = HostCpuFlags(), lacking;
  if (std::optional<ffi::Any> required = Get(target, "requires"); required.has_value())
    for (const std::string& f : Strings(*required, "target 'requires'"))
      if (std::find(flags.begin(), flags.end(), f) == flags.end()) lacking.push_back(f);
  if (!lacking.empty()) {
    std::string list;
    for (const std::string& f : lacking) list += (list.empty() ? "" : ", ") + f;
    throw ArtifactError("artifact " + dir + " was built for target " + target_name + " and needs CPU features [" + list +
                        "] that this machine lacks; recompile it with target 'x86' on this machine");
  }
  if (std::optional<ffi::Any> isa = Get(target, "isa"); isa.has_value()) a.isa = AsString(*isa, "target isa");
  a.inputs = Specs(a.manifest, "inputs");
  a.outputs = Specs(a.manifest, "outputs");
  a.single_output = AsBool(Get(a.manifest, "single_output").value_or(ffi::Any(true)));
  if (std::optional<ffi::Any> threads = Get(a.manifest, "num_threads");
      threads.has_value() && threads->type_index() == ffi::TypeIndex::kTVMFFIInt)
    a.num_threads = static_cast<int>(threads->cast<int64_t>());
  std::optional<ffi::Any> stage = Get(a.manifest, "weights_stage");
  if (stage.has_value() && stage->type_index() != ffi::TypeIndex::kTVMFFINone) {
    if (AsString(*stage, "weights_stage") != "raw")
      throw ArtifactError("artifact " + dir + " stores its weights at stage " + Text(*stage) +
                          ", which this loader does not know; use fxpress.load, or a newer example");
    a.raw_stage = true;
  }
  a.param_names = Strings(Field(a.manifest, a.raw_stage ? "raw_params" : "params", path), "manifest params");
  return a;
}

std::vector<HostArray> ReadParams(const Artifact& artifact) {
  std::string path = artifact.dir + "/" + kWeights;
  Arrays arrays;
  try {
    arrays = ReadSafetensors(path);
    DecodeTable(arrays, artifact.manifest, "packed", DecodePacked);
    DecodeTable(arrays, artifact.manifest, "codebook", DecodeCodebook);
    DecodeTable(arrays, artifact.manifest, "hashed", DecodeHashed);
  } catch (const std::exception& e) {
    throw ArtifactError("artifact " + artifact.dir + " could not be loaded: " + e.what());
  }
  std::vector<std::string> missing;
  std::vector<HostArray> out;
  for (const std::string& name : artifact.param_names) {
    auto it = arrays.find(name);
    if (it == arrays.end()) {
      missing.push_back(name);
      continue;
    }
    out.push_back(std::move(it->second));
  }
  if (!missing.empty())
    throw ArtifactError("artifact " + artifact.dir + ": " + kWeights + " lacks parameters (first: " + missing[0] +
                        "); recompile it");
  return out;
}

void CheckInput(const TensorSpec& spec, const HostArray& input, const std::string& source) {
  if (input.dtype != spec.dtype)
    throw ArtifactError("input '" + spec.name + "' (" + source + ") must have dtype " + spec.dtype->name + ", got " +
                        input.dtype->name);
  bool ok = input.shape.size() == spec.shape.size();
  for (size_t i = 0; ok && i < spec.shape.size(); ++i) ok = spec.shape[i] < 0 || spec.shape[i] == input.shape[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < spec.shape.size(); ++i)
      want += (i ? ", " : "") + (spec.shape[i] < 0 ? std::string("?") : std::to_string(spec.shape[i]));
    throw ArtifactError("input '" + spec.name + "' (" + source + ") must have shape " + want + "], got " +
                        input.Describe());
  }
}

}  // namespace fxpress
