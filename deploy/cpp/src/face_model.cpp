#include "face_model.h"

#include "cli.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <cstdlib>
#include <sstream>
#include <vector>

namespace face_deploy {

namespace {

const char kPackageMetadataHint[] = "export it with tools/model/export.py --format aoti";

// The torch version without its local part: "2.14.1+cu130" -> "2.14.1". Builds of one release for
// different CUDA versions (or none) share the version of their C++ interface.
std::string public_version(const std::string& version) { return version.substr(0, version.find('+')); }

std::string this_platform() {
#if defined(__linux__)
  return "linux";
#elif defined(__APPLE__)
  return "darwin";
#elif defined(_WIN32)
  return "win32";
#else
  return "unknown";
#endif
}

std::string this_machine() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

// The instruction-set extensions of Inductor's vector ISA names (torch/_inductor/cpu_vec_isa.py,
// the flags each compiles its kernels with) that this CPU lacks. A CPU package is compiled for the
// exporting machine's ISA, recorded in its metadata as e.g. "AVX512 AVX512_VNNI"; run elsewhere,
// its kernels would die on an illegal instruction, not fail with a message.
std::vector<std::string> missing_cpu_features(const std::string& isa) {
  std::vector<std::string> missing;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  auto need = [&missing](bool present, const char* name) {
    if (!present) missing.push_back(name);
  };
  std::istringstream words(isa);
  for (std::string word; words >> word;) {
    if (word == "AVX2") {
      need(__builtin_cpu_supports("avx2"), "avx2");
      need(__builtin_cpu_supports("fma"), "fma");
      need(__builtin_cpu_supports("f16c"), "f16c");
    } else if (word == "AVX512") {
      need(__builtin_cpu_supports("avx512f"), "avx512f");
      need(__builtin_cpu_supports("avx512dq"), "avx512dq");
      need(__builtin_cpu_supports("avx512vl"), "avx512vl");
      need(__builtin_cpu_supports("avx512bw"), "avx512bw");
      need(__builtin_cpu_supports("fma"), "fma");
    } else if (word == "AVX512_VNNI") {
      need(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
    } else if (word == "AMX_TILE") {
      need(__builtin_cpu_supports("amx-tile"), "amx-tile");
      need(__builtin_cpu_supports("amx-bf16"), "amx-bf16");
      need(__builtin_cpu_supports("amx-int8"), "amx-int8");
    }
  }
#else
  (void)isa;
#endif
  return missing;
}

std::string joined(const std::vector<std::string>& words) {
  std::string text;
  for (const auto& word : words) text += (text.empty() ? "" : " ") + word;
  return text;
}

}  // namespace

constexpr int64_t kCropBytes = kCropSize * kCropSize * 3;  // one uint8 crop

at::Tensor to_network_input(const at::Tensor& crops) {
  // Python: images.permute(0, 3, 1, 2).to(float32).mul_(2.0 / 255.0).sub_(1.0); the scalar is a
  // double on both sides and is rounded to float32 by the same kernel.
  return crops.permute({0, 3, 1, 2}).to(at::kFloat).mul_(2.0 / 255.0).sub_(1.0).contiguous();
}

at::Tensor mirror(const at::Tensor& images) { return at::flip(images, {3}).contiguous(); }

NpyReader open_crops(const std::string& path, bool single) {
  NpyReader crops(path);
  const std::string hint = " (tools/data/pack_crops.py writes them)";
  if (crops.descr() != "|u1" && crops.descr() != "<u1" && crops.descr() != "u1")
    throw DataFormatError(path, "dtype " + dtype_name(crops.descr()) +
                                    ", expected uint8 crops (pixel values 0..255, RGB)" + hint);
  const auto& shape = crops.shape();
  const bool one_crop = shape.size() == 3;
  const size_t first_pixel_axis = one_crop ? 0 : 1;
  const bool crop_shape = (shape.size() == 4 || one_crop) && shape[first_pixel_axis] == kCropSize &&
                          shape[first_pixel_axis + 1] == kCropSize && shape[first_pixel_axis + 2] == 3;
  const std::string expected = single ? "(112, 112, 3) or (1, 112, 112, 3): one aligned RGB crop, channels last"
                                      : "(N, 112, 112, 3): N aligned RGB crops of 112x112 pixels, channels last";
  if (!crop_shape || (one_crop && !single))
    throw DataFormatError(path, "shape " + crops.shape_text() + ", expected " + expected + hint);
  const int64_t count = one_crop ? 1 : shape[0];
  if (count == 0) throw DataFormatError(path, "holds no crop (shape " + crops.shape_text() + ")");
  if (single && count != 1)
    throw DataFormatError(path, "holds " + std::to_string(count) + " crops; face_compare compares one crop with one: "
                                    "shape " + expected);
  return crops;
}

int64_t crop_count(const NpyReader& crops) { return crops.data_bytes() / kCropBytes; }

at::Tensor read_crops(NpyReader& crops, int64_t first, int64_t count) {
  at::Tensor batch = at::empty({count, kCropSize, kCropSize, 3}, at::kByte);
  crops.read_bytes(first * kCropBytes, count * kCropBytes, batch.data_ptr());
  return batch;
}

FaceModel::FaceModel(const std::string& path) : path_(path) {
  if (!is_file(path)) throw DataFormatError(path, "model package not found");
  // The metadata first, read from the archive without loading the package's compiled code.
  std::unordered_map<std::string, std::string> metadata;
  try {
    metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (const c10::Error& error) {
    throw DataFormatError(path, "not an AOTInductor .pt2 package, or a damaged one (" +
                                    first_line(error.what_without_backtrace()) + ")");
  } catch (const std::exception& error) {
    throw DataFormatError(path, "not an AOTInductor .pt2 package, or a damaged one (" + first_line(error.what()) + ")");
  }
  auto value = [&metadata](const std::string& key) {
    auto found = metadata.find(key);
    return found == metadata.end() ? std::string() : found->second;
  };
  torch_version_ = value("torch_version");
  if (torch_version_.empty())
    throw DataFormatError(path, std::string("its metadata names no torch_version, so the torch that wrote it cannot be "
                                            "checked against this libtorch ") + TORCH_VERSION + "; " + kPackageMetadataHint);
  if (public_version(torch_version_) != TORCH_VERSION)
    throw DataFormatError(path, "written by torch " + torch_version_ + ", but these tools run libtorch " + TORCH_VERSION +
                                    ", and a .pt2 package loads only into the torch version that wrote it: export it "
                                    "again with torch " + TORCH_VERSION + " (tools/model/export.py --format aoti), or build "
                                    "the tools against torch " + public_version(torch_version_) + " (make cpp in its venv)");
  for (const auto& [key, here] : {std::pair{"AOTI_PLATFORM", this_platform()}, std::pair{"AOTI_MACHINE", this_machine()}}) {
    if (!value(key).empty() && value(key) != here)
      throw DataFormatError(path, std::string("compiled for ") + key + " " + value(key) + ", this machine is " + here +
                                      "; export it on the kind of machine it is to run on");
  }
  device_ = value("AOTI_DEVICE_KEY");
  if (device_ == "cuda") {
    if (!torch::cuda::is_available())
      throw DataFormatError(path, "a CUDA package (exported with --device cuda), and no CUDA GPU is usable here; "
                                  "export a CPU package (--device cpu)");
  } else if (device_ == "cpu") {
    cpu_isa_ = value("AOTI_CPU_ISA");
    auto missing = missing_cpu_features(cpu_isa_);
    if (!missing.empty())
      throw DataFormatError(path, "compiled for the CPU instruction set " + cpu_isa_ + ", and this CPU lacks " +
                                      joined(missing) + "; export it on this machine, or on the oldest CPU kind "
                                      "you deploy to (see docs/deploy-cpp.md)");
  } else {
    throw DataFormatError(path, "a package for device '" + device_ + "' (valid here: cpu, cuda); " + kPackageMetadataHint);
  }
  backbone_ = value("backbone");
  try {
    embedding_size_ = std::stoll(value("embedding_size"));
  } catch (const std::exception&) {
    throw DataFormatError(path, "its metadata has no valid embedding_size ('" + value("embedding_size") + "'); " +
                                    kPackageMetadataHint);
  }
  if (!value("threshold").empty()) {
    try {
      threshold_ = std::stod(value("threshold"));
    } catch (const std::exception&) {
      throw DataFormatError(path, "its metadata holds an invalid threshold '" + value("threshold") + "'");
    }
  }
  try {
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model");
  } catch (const c10::Error& error) {
    throw DataFormatError(path, "cannot be loaded (" + first_line(error.what_without_backtrace()) + ")");
  } catch (const std::exception& error) {
    throw DataFormatError(path, "cannot be loaded (" + first_line(error.what()) + ")");
  }
}

FaceModel::~FaceModel() = default;

std::string FaceModel::summary() const {
  return path_ + ": " + backbone_ + ", " + std::to_string(embedding_size_) + "-d embeddings, " +
         (on_cuda() ? std::string("CUDA package") : "CPU package (" + cpu_isa_ + ")") + ", written by torch " +
         torch_version_ + " = this libtorch " + TORCH_VERSION;
}

at::Tensor FaceModel::run(const at::Tensor& images) {
  c10::InferenceMode guard;
  at::Tensor input = images.to(on_cuda() ? at::Device(at::kCUDA) : at::Device(at::kCPU)).contiguous();
  std::vector<at::Tensor> outputs = loader_->run({input});
  if (outputs.size() != 1 || outputs[0].dim() != 2 || outputs[0].size(0) != images.size(0) ||
      outputs[0].size(1) != embedding_size_)
    throw DataFormatError(path_, "the network returned " + std::to_string(outputs.size()) + " outputs, not one [N," +
                                     std::to_string(embedding_size_) + "] tensor; " + kPackageMetadataHint);
  return outputs[0].to(at::kCPU, at::kFloat).contiguous();
}

Embeddings FaceModel::embed_crops(const at::Tensor& crops, bool flip, int64_t batch_size) {
  std::vector<at::Tensor> plain, mirrored;
  for (int64_t start = 0; start < crops.size(0); start += batch_size) {
    at::Tensor images = to_network_input(crops.narrow(0, start, std::min(batch_size, crops.size(0) - start)));
    plain.push_back(run(images));
    if (flip) mirrored.push_back(run(mirror(images)));
  }
  return {at::cat(plain), flip ? at::cat(mirrored) : at::Tensor()};
}

}  // namespace face_deploy
