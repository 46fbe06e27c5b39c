// A face embedding network exported by `tools/model/export.py --format aoti` (an AOTInductor .pt2
// package), the crops it reads and the preprocessing the Python side applies before it.
#pragma once

#include "npy.h"

#include <ATen/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace face_deploy {

constexpr int64_t kCropSize = 112;

// uint8 RGB crops [N,112,112,3] (channels last) -> float32 [N,3,112,112], contiguous: the
// repository's (x/255 - 0.5)/0.5, computed with the operations and in the order of Python's
// dataset.normalize_images (x * (2/255) - 1 in float32), so both sides feed the network the same bits.
at::Tensor to_network_input(const at::Tensor& crops);

// The left-right mirror of float images [N,3,H,W] (torch.flip(images, dims=[3]), as the protocols
// and evaluation/features.py compute it).
at::Tensor mirror(const at::Tensor& images);

// A .npy of aligned crops, checked before any work: uint8, shape [N,112,112,3] with N >= 1; with
// `single`, one crop: [112,112,3] or [1,112,112,3]. Throws DataFormatError naming what is wrong.
NpyReader open_crops(const std::string& path, bool single);

// The number of crops in a file open_crops checked: N, or 1 for a [112,112,3] crop.
int64_t crop_count(const NpyReader& crops);

// Reads crops [first, first + count) of a checked crop file into a uint8 tensor [count,112,112,3].
at::Tensor read_crops(NpyReader& crops, int64_t first, int64_t count);

struct Embeddings {
  at::Tensor plain;     // float32 [N,D], f(x)
  at::Tensor mirrored;  // float32 [N,D], f(mirror x); undefined unless asked for
};

class FaceModel {
 public:
  // Checks the package before loading its code: a readable AOTInductor package written by
  // tools/model/export.py, by the torch version of this libtorch, for this platform, CPU instruction set
  // (a CPU package) or an available GPU (a CUDA package). Throws DataFormatError in one line.
  explicit FaceModel(const std::string& path);
  ~FaceModel();

  const std::string& path() const { return path_; }
  const std::string& backbone() const { return backbone_; }
  int64_t embedding_size() const { return embedding_size_; }
  bool on_cuda() const { return device_ == "cuda"; }
  // A verification threshold (a cosine) stored with tools/model/export.py --threshold, if any.
  std::optional<double> stored_threshold() const { return threshold_; }
  // One line: what was loaded, and the version check's outcome.
  std::string summary() const;

  // float32 network input [N,3,112,112] (any device) -> float32 [N,D] on the CPU.
  at::Tensor run(const at::Tensor& images);
  // Embeddings of uint8 crops [N,112,112,3], `batch_size` at a time, as evaluation/features.py
  // computes them (and those of the mirrored crops with `flip`).
  Embeddings embed_crops(const at::Tensor& crops, bool flip, int64_t batch_size);

 private:
  std::string path_, backbone_, device_, torch_version_, cpu_isa_;
  int64_t embedding_size_ = 0;
  std::optional<double> threshold_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace face_deploy
