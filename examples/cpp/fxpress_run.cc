// fxpress_run: run an fxpress artifact on .npy inputs with the TVM runtime alone (no Python, no PyTorch).
//
//   fxpress_run ARTIFACT_DIR INPUT.npy [INPUT.npy ...] -o OUTPUT.npy [--threads N]
//
// One .npy per model input, in the manifest's order. A model with one output writes it to OUTPUT.npy; one with
// several writes DIR/output0.npy, DIR/output1.npy, ... into the directory -o names. The steps are those of
// fxpress.load and CompiledModule.__call__ (fxpress/runtime/load.py, module.py):
//
//   1. check the artifact (artifact.cc): format and version, every file's sha256, a target this CPU runs;
//   2. load model.so (tvm::ffi::Module::LoadFromFile), make its Relax VM ("vm_load_executable", then
//      "vm_initialization" for the CPU with the pooled allocator), size TVM's thread pool as the manifest says;
//   3. read and decode the weights; weights stored before the compile-time transform (weights_stage raw:
//      HashedNets) go through the library's own "main_transform_params" once;
//   4. call "main"(inputs..., params...) and write the outputs.
//
// Exit status: 0 done, 2 a bad artifact or input (the message says what to do), 3 an error inside TVM.
#include <dlpack/dlpack.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sched.h>
#include <string>
#include <vector>

#include "artifact.h"
#include "host_array.h"

namespace ffi = tvm::ffi;
using fxpress::ArtifactError;
using fxpress::HostArray;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR, Python's default

struct Args {
  std::string artifact, output;
  std::vector<std::string> inputs;
  int threads = 0;  // 0: the manifest's
};

Args ParseArgs(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "-o" || a == "--output") && i + 1 < argc) {
      args.output = argv[++i];
    } else if (a == "--threads" && i + 1 < argc) {
      args.threads = std::atoi(argv[++i]);
    } else if (a == "-h" || a == "--help" || a.rfind("-", 0) == 0) {
      throw ArtifactError("usage: fxpress_run ARTIFACT_DIR INPUT.npy [INPUT.npy ...] -o OUTPUT.npy [--threads N]");
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2 || args.output.empty())
    throw ArtifactError("usage: fxpress_run ARTIFACT_DIR INPUT.npy [INPUT.npy ...] -o OUTPUT.npy [--threads N]");
  args.artifact = positional[0];
  args.inputs.assign(positional.begin() + 1, positional.end());
  return args;
}

// Host memory for TVM tensors, 64-byte aligned (compiled kernels may assume it).
struct AlignedAlloc {
  void AllocData(DLTensor* tensor) {
    size_t size = (ffi::GetDataSize(*tensor) + 63) / 64 * 64;
    tensor->data = std::aligned_alloc(64, size == 0 ? 64 : size);
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

ffi::Tensor ToTensor(const HostArray& array) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(array.shape.data(), array.shape.size()),
                                           array.dtype->dl, DLDevice{kDLCPU, 0});
  std::memcpy(t.data_ptr(), array.bytes.data(), array.bytes.size());
  return t;
}

HostArray ToHost(const ffi::Tensor& t) {
  if (t.device().device_type != kDLCPU || !t.IsContiguous())
    throw ArtifactError("the model returned a tensor that is not a compact CPU array");
  HostArray out;
  out.dtype = &fxpress::DTypeByDL(t.dtype());
  out.shape.assign(t.shape().begin(), t.shape().end());
  const uint8_t* data = static_cast<const uint8_t*>(t.data_ptr()) + t.byte_offset();
  out.bytes.assign(data, data + static_cast<size_t>(out.NumElements()) * out.dtype->itemsize);
  return out;
}

ffi::Function Required(const ffi::Module& module, const std::string& name) {
  ffi::Optional<ffi::Function> f = module->GetFunction(name);
  if (!f.has_value()) throw ArtifactError("model.so has no function '" + name + "'; it is not an fxpress build");
  return *f;
}

// AMX kernels need the kernel's permission for the tile state before their first instruction (amx.py).
void RequestAmxPermission() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    throw ArtifactError(std::string("this artifact uses AMX, and Linux refused the tile state (arch_prctl: ") +
                        std::strerror(errno) + "); recompile it with target 'x86-vnni' or 'x86-avx2'");
}

// TVM sizes its pool by physical cores unless TVM_NUM_THREADS says otherwise (module.py does the same).
void AllowEveryCpu() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    setenv("TVM_NUM_THREADS", std::to_string(CPU_COUNT(&set)).c_str(), /*overwrite=*/0);
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "10000", 0);
}

void SetThreads(int n) {
  cpu_set_t saved;
  bool have = sched_getaffinity(0, sizeof(saved), &saved) == 0;
  ffi::Function::GetGlobalRequired("runtime.config_threadpool")(1, n);
  if (have) sched_setaffinity(0, sizeof(saved), &saved);  // TVM pins the calling thread; undo it
}

std::vector<ffi::Tensor> TransformParams(const ffi::Module& vm, const std::vector<ffi::Tensor>& raw) {
  ffi::Array<ffi::Tensor> in(raw.begin(), raw.end());
  ffi::Any out = Required(vm, "main_transform_params")(in);
  std::vector<ffi::Tensor> params;
  for (const ffi::Any& t : out.cast<ffi::Array<ffi::Any>>()) params.push_back(t.cast<ffi::Tensor>());
  return params;
}

int Run(const Args& args) {
  fxpress::Artifact artifact = fxpress::ReadArtifact(args.artifact);
  if (args.inputs.size() != artifact.inputs.size())
    throw ArtifactError("the model takes " + std::to_string(artifact.inputs.size()) + " input(s), got " +
                        std::to_string(args.inputs.size()) + " .npy file(s)");
  std::vector<ffi::Tensor> inputs;
  for (size_t i = 0; i < args.inputs.size(); ++i) {
    HostArray x = fxpress::ReadNpy(args.inputs[i]);
    fxpress::CheckInput(artifact.inputs[i], x, args.inputs[i]);
    inputs.push_back(ToTensor(x));
  }
  std::vector<HostArray> weights = fxpress::ReadParams(artifact);
  if (artifact.isa == "x86-amx") RequestAmxPermission();
  AllowEveryCpu();

  ffi::Module library = ffi::Module::LoadFromFile(artifact.dir + "/model.so");
  ffi::Module vm = Required(library, "vm_load_executable")().cast<ffi::Module>();
  Required(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  int threads = args.threads > 0 ? args.threads : artifact.num_threads;
  if (threads > 0) SetThreads(threads);

  std::vector<ffi::Tensor> params;
  for (const HostArray& w : weights) params.push_back(ToTensor(w));
  if (artifact.raw_stage) params = TransformParams(vm, params);

  std::vector<ffi::AnyView> call;
  for (const ffi::Tensor& t : inputs) call.emplace_back(t);
  for (const ffi::Tensor& t : params) call.emplace_back(t);
  ffi::Any result;
  Required(vm, "main").CallPacked(call.data(), static_cast<int32_t>(call.size()), &result);

  std::vector<HostArray> outputs;
  if (auto tensor = result.try_cast<ffi::Tensor>(); tensor.has_value()) {
    outputs.push_back(ToHost(*tensor));
  } else {
    for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) outputs.push_back(ToHost(item.cast<ffi::Tensor>()));
  }
  if (outputs.size() == 1) {
    fxpress::WriteNpy(args.output, outputs[0]);
  } else {
    if (mkdir(args.output.c_str(), 0777) != 0 && errno != EEXIST) throw ArtifactError("cannot create " + args.output);
    for (size_t i = 0; i < outputs.size(); ++i)
      fxpress::WriteNpy(args.output + "/output" + std::to_string(i) + ".npy", outputs[i]);
  }
  std::cerr << "fxpress_run: " << artifact.dir << " -> " << outputs.size() << " output(s), first "
            << outputs[0].Describe() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const ArtifactError& e) {
    std::cerr << "fxpress_run: error: " << e.what() << "\n";
    return 2;
  } catch (const ffi::Error& e) {
    std::cerr << "fxpress_run: TVM runtime error: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "fxpress_run: error: " << e.what() << "\n";
    return 2;
  }
}
