// NumPy's .npy files (format 1.0, 2.0 and 3.0: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html),
// read a batch of rows at a time and written as np.save writes them. Only what the tools need:
// C-order arrays of uint8 (the crops) and float32 (the embeddings), on a little-endian machine.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace face_deploy {

// An open .npy file whose header has been checked against the file's size.
class NpyReader {
 public:
  explicit NpyReader(const std::string& path);  // throws DataFormatError

  const std::string& path() const { return path_; }
  const std::string& descr() const { return descr_; }  // e.g. "|u1", "<f4"
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t item_size() const { return item_size_; }
  int64_t data_bytes() const { return data_bytes_; }
  // "(2, 112, 112, 3)", as NumPy prints a shape
  std::string shape_text() const;
  // Reads `count` bytes of the data, from byte `first` of the data on, into `destination`.
  void read_bytes(int64_t first, int64_t count, void* destination);

 private:
  std::string path_;
  std::ifstream file_;
  std::string descr_;
  std::vector<int64_t> shape_;
  int64_t item_size_ = 0;
  int64_t data_offset_ = 0;
  int64_t data_bytes_ = 0;
};

// NumPy's name of a dtype code: "uint8" for "|u1", "float32" for "<f4"; others quoted as they are.
std::string dtype_name(const std::string& descr);

// The bytes np.save writes for a C-order little-endian float32 array of `shape` (format 1.0, the
// header padded as NumPy pads it), so that the file is identical to NumPy's.
std::string npy_header_float32(const std::vector<int64_t>& shape);

// Writes a float32 array of `shape` through "<path>.partial" and a rename (a crash never leaves a
// half-written file under `path`); creates the folder if needed. Throws DataFormatError.
void write_npy_float32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace face_deploy
