// face_compare MODEL.pt2 A.npy B.npy [--threshold T] [--json]
//
// Same person? Two aligned crops (each uint8 [112,112,3] or [1,112,112,3], RGB), embedded as
// tools/model/compare_faces.py embeds them: feature = f(x) + f(mirrored x) in float64, L2-normalised; the
// cosine of the two features is compared with a threshold (a cosine): above it, the same person.
// The threshold is --threshold, else the one stored in the package (tools/model/export.py --threshold),
// else there is no verdict, only the cosine.
#include "cli.h"
#include "face_model.h"

#include <ATen/ATen.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>

using namespace face_deploy;

namespace {

// Rows of float64 [N,D] divided by their L2 norm, as runtime.l2_normalize computes them: rows whose
// norm is below 10 * eps are left unscaled.
at::Tensor l2_normalize(const at::Tensor& features) {
  at::Tensor norms = features.mul(features).sum(1).sqrt();
  norms.masked_fill_(norms < 10 * std::numeric_limits<double>::epsilon(), 1.0);
  return features / norms.unsqueeze(1);
}

std::string json_string(const std::string& text) {
  std::string quoted = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += static_cast<char>(c);
    } else if (c < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      quoted += escaped;
    } else {
      quoted += static_cast<char>(c);
    }
  }
  return quoted + "\"";
}

std::string number(double value, const char* format) {
  char text[64];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

// The shortest text that reads back as `value`, as Python's json writes a float.
std::string shortest(double value) {
  char text[64];
  auto result = std::to_chars(text, text + sizeof text, value);
  return std::string(text, result.ptr);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage = "face_compare MODEL.pt2 A.npy B.npy [--threshold T] [--json]";
  return run_cli("face_compare", usage, [&]() {
    Arguments arguments(argc, argv, {"--json", "--help"}, {"--threshold"});
    if (arguments.flag("--help")) {
      std::cout << "usage: " << usage << "\n"
                << "A.npy, B.npy: one aligned RGB crop each, uint8 [112,112,3] or [1,112,112,3].\n"
                << "--threshold T: a cosine; above it, the same person (default: the one stored in the package).\n";
      return 0;
    }
    if (arguments.positional().size() != 3)
      throw UsageError("expected MODEL.pt2, A.npy and B.npy, got " + std::to_string(arguments.positional().size()) +
                       " positional arguments");
    std::optional<double> threshold = arguments.number("--threshold", -1.0, 1.0);
    const std::string& model_path = arguments.positional()[0];
    const std::string& a_path = arguments.positional()[1];
    const std::string& b_path = arguments.positional()[2];

    NpyReader a = open_crops(a_path, true), b = open_crops(b_path, true);
    at::Tensor crops = at::cat({read_crops(a, 0, 1), read_crops(b, 0, 1)});
    FaceModel model(model_path);
    std::cerr << model.summary() << std::endl;
    std::string source = "given with --threshold";
    if (!threshold && model.stored_threshold()) {
      threshold = model.stored_threshold();
      source = "stored in " + model_path + " by tools/model/export.py --threshold";
    }

    // tools/model/compare_faces.py: l2_normalize(embeddings.astype(float64) + mirrored), then a @ b.
    Embeddings embedded = model.embed_crops(crops, true, 64);
    at::Tensor unit = l2_normalize(embedded.plain.to(at::kDouble) + embedded.mirrored.to(at::kDouble));
    const double cosine = unit[0].dot(unit[1]).item<double>();
    const bool same = threshold && cosine > *threshold;  // strict, as compare_faces.py's

    if (arguments.flag("--json")) {
      std::string pair = "{\"a\": " + json_string(a_path) + ", \"b\": " + json_string(b_path) +
                         ", \"cosine\": " + shortest(cosine);
      if (threshold) pair += std::string(", \"same\": ") + (same ? "true" : "false");
      std::cout << "{\"model\": " << json_string(model_path) << ", \"backbone\": " << json_string(model.backbone())
                << ", \"embedding_size\": " << model.embedding_size()
                << ", \"threshold\": " << (threshold ? shortest(*threshold) : "null")
                << ", \"threshold_source\": " << (threshold ? json_string(source) : "null")
                << ", \"pairs\": [" << pair << "}]}" << std::endl;
    } else if (threshold) {
      std::cout << "threshold: cosine " << number(*threshold, "%.4f") << " (" << source << ")\n"
                << a_path << "  " << b_path << "  cosine " << number(cosine, "%.4f") << ": "
                << (same ? "same person" : "different people") << std::endl;
    } else {
      std::cout << "threshold: none (give --threshold T, a cosine, or store one with tools/model/export.py --threshold)\n"
                << a_path << "  " << b_path << "  cosine " << number(cosine, "%.4f") << std::endl;
    }
    return 0;
  });
}
