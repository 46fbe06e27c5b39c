#include "npy.h"

#include "cli.h"

#include <bit>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <sstream>

namespace face_deploy {

static_assert(std::endian::native == std::endian::little, "the .npy reader and writer assume a little-endian machine");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLength = 6;
constexpr size_t kArrayAlign = 64;         // NumPy aligns the data to 64 bytes
constexpr size_t kGrowthAxisMaxDigits = 21;  // NumPy leaves room to rewrite shape[0] in place

// The header is a Python dict literal, e.g. {'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }.
// This parser reads exactly that grammar: string keys; values that are strings, True/False, or
// tuples of non-negative integers.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      std::string key = string_literal();
      expect(':');
      skip_space();
      if (key == "descr") {
        descr = string_literal();
        seen_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = boolean();
        seen_order = true;
      } else if (key == "shape") {
        shape = tuple();
        seen_shape = true;
      } else {
        fail("unexpected key '" + key + "' in the header (valid: descr, fortran_order, shape)");
      }
      skip_space();
      if (peek() == ',') ++position_;
    }
    if (!seen_descr || !seen_order || !seen_shape)
      fail("the header lacks one of 'descr', 'fortran_order', 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw DataFormatError(path_, "not a valid .npy header: " + problem);
  }
  char peek() {
    if (position_ >= text_.size()) fail("it ends early");
    return text_[position_];
  }
  void skip_space() {
    while (position_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[position_]))) ++position_;
  }
  void expect(char wanted) {
    skip_space();
    if (peek() != wanted) fail(std::string("expected '") + wanted + "' at byte " + std::to_string(position_));
    ++position_;
  }
  std::string string_literal() {
    skip_space();
    char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string at byte " + std::to_string(position_));
    size_t end = text_.find(quote, position_ + 1);
    if (end == std::string::npos) fail("an unterminated string");
    std::string value = text_.substr(position_ + 1, end - position_ - 1);
    position_ = end + 1;
    return value;
  }
  bool boolean() {
    for (const char* word : {"True", "False"}) {
      if (text_.compare(position_, std::char_traits<char>::length(word), word) == 0) {
        position_ += std::char_traits<char>::length(word);
        return word[0] == 'T';
      }
    }
    fail("fortran_order is neither True nor False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> values;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("a shape entry is not a non-negative integer");
      int64_t value = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (value > (std::numeric_limits<int64_t>::max() - 9) / 10) fail("a shape entry is too large");
        value = value * 10 + (text_[position_++] - '0');
      }
      values.push_back(value);
      skip_space();
      if (peek() == ',') ++position_;
    }
    ++position_;
    return values;
  }

  const std::string& text_;
  const std::string& path_;
  size_t position_ = 0;
};

int64_t item_size_of(const std::string& descr, const std::string& path) {
  // '<f4', '|u1', '>i8', '<U10': an optional byte order, a kind letter, a size (characters for U).
  size_t start = descr.empty() || std::string("<>|=").find(descr[0]) == std::string::npos ? 0 : 1;
  if (descr.size() < start + 2 || !std::isalpha(static_cast<unsigned char>(descr[start])))
    throw DataFormatError(path, "dtype '" + descr + "' is not supported (valid here: uint8 '|u1', float32 '<f4')");
  int64_t size = 0;
  for (size_t i = start + 1; i < descr.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(descr[i])) || size > 1000000)
      throw DataFormatError(path, "dtype '" + descr + "' is not supported (valid here: uint8 '|u1', float32 '<f4')");
    size = size * 10 + (descr[i] - '0');
  }
  return descr[start] == 'U' ? 4 * size : size;
}

}  // namespace

std::string dtype_name(const std::string& descr) {
  static const std::pair<const char*, const char*> names[] = {
      {"|u1", "uint8"}, {"|i1", "int8"}, {"|b1", "bool"}, {"<f2", "float16"}, {"<f4", "float32"}, {"<f8", "float64"},
      {"<i2", "int16"}, {"<i4", "int32"}, {"<i8", "int64"}, {"<u2", "uint16"}, {"<u4", "uint32"}, {"<u8", "uint64"},
      {">f4", "big-endian float32"}, {">f8", "big-endian float64"}};
  for (const auto& [code, name] : names)
    if (descr == code) return name;
  return "'" + descr + "'";
}

NpyReader::NpyReader(const std::string& path) : path_(path) {
  if (!is_file(path)) throw DataFormatError(path, "file not found");
  file_.open(path, std::ios::binary);
  if (!file_) throw DataFormatError(path, "cannot open the file for reading");
  char prefix[kMagicLength + 2] = {};
  file_.read(prefix, sizeof prefix);
  if (file_.gcount() != sizeof prefix || std::string(prefix, kMagicLength) != std::string(kMagic, kMagicLength))
    throw DataFormatError(path, "not a .npy file (it does not start with \\x93NUMPY; write it with numpy.save)");
  const int major = static_cast<unsigned char>(prefix[kMagicLength]);
  uint32_t header_length = 0;
  size_t length_bytes = 0;
  if (major == 1) {
    length_bytes = 2;
  } else if (major == 2 || major == 3) {
    length_bytes = 4;
  } else {
    throw DataFormatError(path, ".npy format version " + std::to_string(major) + " is not supported (valid: 1, 2, 3)");
  }
  unsigned char length[4] = {};
  file_.read(reinterpret_cast<char*>(length), static_cast<std::streamsize>(length_bytes));
  if (file_.gcount() != static_cast<std::streamsize>(length_bytes)) throw DataFormatError(path, "truncated in its header");
  for (size_t i = 0; i < length_bytes; ++i) header_length |= static_cast<uint32_t>(length[i]) << (8 * i);
  std::string header(header_length, '\0');
  file_.read(header.data(), header_length);
  if (file_.gcount() != static_cast<std::streamsize>(header_length)) throw DataFormatError(path, "truncated in its header");
  data_offset_ = static_cast<int64_t>(kMagicLength + 2 + length_bytes + header_length);

  bool fortran_order = false;
  HeaderParser(header, path).parse(descr_, fortran_order, shape_);
  item_size_ = item_size_of(descr_, path);
  if (fortran_order && shape_.size() > 1)
    throw DataFormatError(path, "stored in Fortran order; save a C-order array (numpy.ascontiguousarray)");

  int64_t expected = item_size_;
  for (int64_t size : shape_) {
    if (size != 0 && expected > std::numeric_limits<int64_t>::max() / size)
      throw DataFormatError(path, "shape " + shape_text() + " is too large");
    expected *= size;
  }
  std::error_code error;
  const auto file_size = static_cast<int64_t>(std::filesystem::file_size(path, error));
  if (error) throw DataFormatError(path, "cannot read its size (" + error.message() + ")");
  const int64_t actual = file_size - data_offset_;
  if (actual < expected)
    throw DataFormatError(path, "truncated: its header promises " + std::to_string(expected) + " bytes of data (" +
                                    dtype_name(descr_) + " " + shape_text() + "), the file holds " + std::to_string(actual));
  if (actual > expected)
    throw DataFormatError(path, std::to_string(actual - expected) + " bytes after the data its header describes (" +
                                    dtype_name(descr_) + " " + shape_text() + "): not a file numpy.save wrote");
  data_bytes_ = expected;
}

std::string NpyReader::shape_text() const {
  std::string text = "(";
  for (size_t i = 0; i < shape_.size(); ++i) text += (i ? ", " : "") + std::to_string(shape_[i]);
  return text + (shape_.size() == 1 ? ",)" : ")");
}

void NpyReader::read_bytes(int64_t first, int64_t count, void* destination) {
  if (first < 0 || count < 0 || first + count > data_bytes_)
    throw std::out_of_range("bytes " + std::to_string(first) + "+" + std::to_string(count) + " of " +
                            std::to_string(data_bytes_));
  file_.seekg(data_offset_ + first);
  file_.read(static_cast<char*>(destination), static_cast<std::streamsize>(count));
  if (file_.gcount() != static_cast<std::streamsize>(count))
    throw DataFormatError(path_, "could not read its data (changed while being read?)");
}

std::string npy_header_float32(const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict += (i ? ", " : "") + std::to_string(shape[i]);
  dict += shape.size() == 1 ? ",), }" : "), }";
  if (!shape.empty()) dict += std::string(kGrowthAxisMaxDigits - std::to_string(shape[0]).size(), ' ');
  const size_t length_with_newline = dict.size() + 1;
  const size_t padding = kArrayAlign - (kMagicLength + 2 + 2 + length_with_newline) % kArrayAlign;
  const size_t header_length = length_with_newline + padding;
  std::string bytes(kMagic, kMagicLength);
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(header_length & 0xff);
  bytes += static_cast<char>((header_length >> 8) & 0xff);
  return bytes + dict + std::string(padding, ' ') + '\n';
}

void write_npy_float32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path folder = fs::absolute(fs::path(path), error).parent_path();
  fs::create_directories(folder, error);
  if (error) throw DataFormatError(folder.string(), "cannot create the output folder (" + error.message() + ")");
  int64_t count = 1;
  for (int64_t size : shape) count *= size;
  const std::string partial = path + ".partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    if (!out) throw DataFormatError(path, "cannot open it for writing");
    const std::string header = npy_header_float32(shape);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
    out.flush();
    if (!out) {
      out.close();
      fs::remove(partial, error);
      throw DataFormatError(path, "writing failed (disk full?)");
    }
  }
  fs::rename(partial, path, error);
  if (error) throw DataFormatError(path, "cannot move the written file into place (" + error.message() + ")");
}

}  // namespace face_deploy
