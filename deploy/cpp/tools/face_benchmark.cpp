// face_benchmark MODEL.pt2 [--batch-size B] [--warmup W] [--runs R]
//
// The network's own time in C++, for tools/bench/benchmark_deploy.py: one batch of B random crops is
// preprocessed once, then run W times untimed and R times timed. Prints one JSON line with the
// seconds of every timed run (CUDA runs are synchronised before each clock reading).
#include "cli.h"
#include "face_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstdio>
#include <iostream>

using namespace face_deploy;

int main(int argc, char** argv) {
  const std::string usage = "face_benchmark MODEL.pt2 [--batch-size B] [--warmup W] [--runs R]";
  return run_cli("face_benchmark", usage, [&]() {
    Arguments arguments(argc, argv, {}, {"--batch-size", "--warmup", "--runs"});
    if (arguments.positional().size() != 1)
      throw UsageError("expected MODEL.pt2, got " + std::to_string(arguments.positional().size()) +
                       " positional arguments");
    const int64_t batch_size = arguments.integer("--batch-size", 1, 65536).value_or(1);
    const long warmup = arguments.integer("--warmup", 0, 1000000).value_or(5);
    const long runs = arguments.integer("--runs", 1, 1000000).value_or(20);
    FaceModel model(arguments.positional()[0]);
    std::cerr << model.summary() << std::endl;

    at::manual_seed(0);
    at::Tensor crops = at::randint(0, 256, {batch_size, kCropSize, kCropSize, 3}, at::kByte);
    at::Tensor images = to_network_input(crops);
    if (model.on_cuda()) images = images.to(at::kCUDA);
    auto synchronise = [&model]() {
      if (model.on_cuda()) torch::cuda::synchronize();
    };
    for (long i = 0; i < warmup; ++i) model.run(images);
    std::string seconds;
    for (long i = 0; i < runs; ++i) {
      synchronise();
      const auto start = std::chrono::steady_clock::now();
      model.run(images);  // returns the embeddings on the CPU: a CUDA run has finished here
      synchronise();
      const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
      char text[32];
      std::snprintf(text, sizeof text, "%.9g", took.count());
      seconds += (i ? ", " : "") + std::string(text);
    }
    std::cout << "{\"batch_size\": " << batch_size << ", \"warmup\": " << warmup << ", \"runs\": " << runs
              << ", \"threads\": " << at::get_num_threads() << ", \"device\": \"" << (model.on_cuda() ? "cuda" : "cpu")
              << "\", \"seconds\": [" << seconds << "]}" << std::endl;
    return 0;
  });
}
