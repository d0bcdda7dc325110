// An fxpress artifact directory read without Python: the manifest's checks, and its weights decoded.
//
//   DIR/manifest.json        format, version, sha256 of every file, target, inputs/outputs, parameter order,
//                            how each weight is stored (format 3: packed / codebook / hashed, weights_stage)
//   DIR/model.so             the compiled TVM library (a Relax VM executable)
//   DIR/weights.safetensors  the parameters, each in its smallest lossless form
//
// Mirrors fxpress/runtime/{artifact,load,storage,packing,codebook,hashing}.py: the same checks in the same
// order (format, version, file list, hashes, target, CPU flags), and decoded weights bit for bit the same.
#pragma once

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/map.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "host_array.h"

namespace fxpress {

// What is wrong with an artifact (or an input), and what to do about it.
class ArtifactError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorSpec {
  std::string name;
  const DType* dtype;
  std::vector<int64_t> shape;  // -1: dynamic
};

struct Artifact {
  std::string dir;
  tvm::ffi::Map<tvm::ffi::Any, tvm::ffi::Any> manifest;
  std::vector<TensorSpec> inputs, outputs;
  bool single_output = true;
  int num_threads = 0;    // 0: TVM's default
  std::string isa;        // "x86-amx", ... ("" for older manifests)
  bool raw_stage = false;  // weights stored before the compile-time transform (run main_transform_params)
  std::vector<std::string> param_names;  // as the library's "main" takes them, or its transform when raw_stage
};

// Read DIR/manifest.json and check it as fxpress.load does: format and version, every file present with the
// sha256 the manifest gives, a target that runs here (host_runnable, CPU device, the CPU flags it requires).
Artifact ReadArtifact(const std::string& dir);

// The parameters `artifact.param_names` names, decoded from DIR/weights.safetensors (packed sub-8-bit int8,
// codebook indices, HashedNets buckets), in order.
std::vector<HostArray> ReadParams(const Artifact& artifact);

// Check `input` against input spec `spec` (dtype, rank, static sizes).
void CheckInput(const TensorSpec& spec, const HostArray& input, const std::string& source);

// This CPU's flags (/proc/cpuinfo), for the target check.
std::vector<std::string> HostCpuFlags();

}  // namespace fxpress
