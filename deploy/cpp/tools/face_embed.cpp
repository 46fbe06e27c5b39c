// face_embed MODEL.pt2 CROPS.npy --out EMB.npy [--flip] [--batch-size B]
//
// Embeds aligned crops (uint8 [N,112,112,3], RGB) with a package of `tools/model/export.py --format aoti`
// and writes float32 [N,D] in input order, the embeddings as the network returns them (not
// L2-normalised). With --flip each row is f(crop) + f(mirrored crop), summed in float32: the
// feature the verification protocols compare.
#include "cli.h"
#include "face_model.h"

#include <ATen/ATen.h>

#include <iostream>

using namespace face_deploy;

int main(int argc, char** argv) {
  const std::string usage = "face_embed MODEL.pt2 CROPS.npy --out EMB.npy [--flip] [--batch-size B]";
  return run_cli("face_embed", usage, [&]() {
    Arguments arguments(argc, argv, {"--flip", "--help"}, {"--out", "--batch-size"});
    if (arguments.flag("--help")) {
      std::cout << "usage: " << usage << "\n"
                << "CROPS.npy: uint8 [N,112,112,3], aligned RGB crops (tools/data/pack_crops.py writes it).\n"
                << "EMB.npy: float32 [N,D], in input order; with --flip f(x) + f(mirrored x).\n";
      return 0;
    }
    if (arguments.positional().size() != 2)
      throw UsageError("expected MODEL.pt2 and CROPS.npy, got " + std::to_string(arguments.positional().size()) +
                       " positional arguments");
    auto out = arguments.option("--out");
    if (!out || out->empty()) throw UsageError("--out EMB.npy is required");
    const int64_t batch_size = arguments.integer("--batch-size", 1, 65536).value_or(64);
    const bool flip = arguments.flag("--flip");
    const std::string& model_path = arguments.positional()[0];
    const std::string& crops_path = arguments.positional()[1];

    NpyReader crops = open_crops(crops_path, false);  // the input's problems show before the model loads
    FaceModel model(model_path);
    std::cerr << model.summary() << std::endl;
    std::vector<at::Tensor> rows;
    const int64_t count_all = crop_count(crops);
    for (int64_t start = 0; start < count_all; start += batch_size) {
      const int64_t count = std::min(batch_size, count_all - start);
      Embeddings batch = model.embed_crops(read_crops(crops, start, count), flip, batch_size);
      rows.push_back(flip ? batch.plain + batch.mirrored : batch.plain);
    }
    at::Tensor embeddings = at::cat(rows).contiguous();
    write_npy_float32(*out, {embeddings.size(0), embeddings.size(1)}, embeddings.data_ptr<float>());
    std::cout << *out << ": float32 [" << embeddings.size(0) << "," << embeddings.size(1) << "] "
              << (flip ? "f(x) + f(mirrored x)" : "f(x)") << " of " << crops_path << std::endl;
    return 0;
  });
}
