// et_run: run a .pte on the ExecuTorch runtime for parity and instruction counts under emulation.
// Usage: et_run MODEL.pte INPUT.f32 OUTPUT.f32 SIZE [REPEAT]
// INPUT.f32 holds N images, raw float32, each 1x3xSIZExSIZE (NCHW, contiguous). Every image is run
// once and its float32 outputs are appended to OUTPUT.f32; with REPEAT > 1 the first image is run
// REPEAT times instead (for counting instructions per inference). One thread, so counts repeat.
// Exit codes: 0 ok, 2 usage, 3 input/output file, 4 load, 5 forward, 6 unexpected output.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

// The wheel ships libexecutorch_threadpool.so but not its header; declare the two calls we need.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::module::Module;

static int fail(int code, const char* what, const char* detail) {
  std::fprintf(stderr, "et_run: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  return code;
}

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6) return fail(2, "usage: et_run MODEL.pte INPUT.f32 OUTPUT.f32 SIZE [REPEAT]", nullptr);
  const int size = std::atoi(argv[4]);
  const int repeat = argc == 6 ? std::atoi(argv[5]) : 1;
  if (size <= 0 || repeat <= 0) return fail(2, "SIZE and REPEAT must be positive integers", nullptr);

  std::ifstream in(argv[2], std::ios::binary | std::ios::ate);
  if (!in) return fail(3, "cannot read input", argv[2]);
  const size_t image_floats = size_t(3) * size * size;
  const size_t bytes = size_t(in.tellg());
  if (bytes == 0 || bytes % (image_floats * sizeof(float)) != 0)
    return fail(3, "input size is not a whole number of 1x3xSIZExSIZE float32 images", argv[2]);
  std::vector<float> images(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(images.data()), std::streamsize(bytes));
  const size_t count = images.size() / image_floats;

  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool != nullptr) pool->_unsafe_reset_threadpool(1);

  Module module(argv[1], Module::LoadMode::File);
  if (module.load_method("forward") != executorch::runtime::Error::Ok) return fail(4, "cannot load method forward", argv[1]);

  std::ofstream out(argv[3], std::ios::binary | std::ios::trunc);
  if (!out) return fail(3, "cannot write output", argv[3]);
  const size_t runs = repeat > 1 ? size_t(repeat) : count;
  for (size_t run = 0; run < runs; ++run) {
    float* image = images.data() + (repeat > 1 ? 0 : run * image_floats);
    auto input = from_blob(image, {1, 3, size, size});
    auto result = module.forward(input);
    if (!result.ok()) return fail(5, "forward failed", argv[1]);
    for (const auto& value : result.get()) {
      if (!value.isTensor() || value.toTensor().scalar_type() != ScalarType::Float)
        return fail(6, "an output is not a float32 tensor", nullptr);
      const auto& tensor = value.toTensor();
      if (repeat == 1 || run == 0)
        out.write(reinterpret_cast<const char*>(tensor.const_data_ptr<float>()), std::streamsize(tensor.nbytes()));
    }
  }
  out.close();
  if (!out) return fail(3, "cannot write output", argv[3]);
  return 0;
}
