#include "cli.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>

namespace face_deploy {

std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == '\t')) line.pop_back();
  return line;
}

int run_cli(const std::string& tool, const std::string& usage, const std::function<int()>& body) {
  try {
    return body();
  } catch (const UsageError& error) {
    std::cerr << tool << ": error: " << error.what() << "; usage: " << usage << std::endl;
    return 2;
  } catch (const UserError& error) {
    std::cerr << "error: " << error.what() << std::endl;
    return 1;
  } catch (const c10::Error& error) {  // a libtorch failure nothing above anticipated
    std::cerr << "error: libtorch: " << first_line(error.what_without_backtrace()) << std::endl;
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "error: " << first_line(error.what()) << std::endl;
    return 1;
  }
}

Arguments::Arguments(int argc, char** argv, const std::vector<std::string>& flags,
                     const std::vector<std::string>& options) {
  auto known = [](const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    if (word.rfind("--", 0) != 0 || word == "--") {
      positional_.push_back(word);
      continue;
    }
    std::string name = word, value;
    bool has_value = false;
    if (auto equals = word.find('='); equals != std::string::npos) {
      name = word.substr(0, equals);
      value = word.substr(equals + 1);
      has_value = true;
    }
    if (known(flags, name)) {
      if (has_value) throw UsageError(name + " takes no value");
      flags_set_.push_back(name);
    } else if (known(options, name)) {
      if (!has_value) {
        if (i + 1 >= argc) throw UsageError(name + " needs a value");
        value = argv[++i];
      }
      values_.emplace_back(name, value);
    } else {
      std::string valid;
      for (const auto& list : {flags, options})
        for (const auto& option : list) valid += (valid.empty() ? "" : ", ") + option;
      throw UsageError("unknown option " + name + " (valid: " + valid + ")");
    }
  }
}

bool Arguments::flag(const std::string& name) const {
  return std::find(flags_set_.begin(), flags_set_.end(), name) != flags_set_.end();
}

std::optional<std::string> Arguments::option(const std::string& name) const {
  std::optional<std::string> found;
  for (const auto& [key, value] : values_)
    if (key == name) found = value;  // a later one wins, as with argparse
  return found;
}

static std::string shortest(double value) {
  std::ostringstream text;
  text << value;  // "-1", "0.5": as short as Python prints it
  return text.str();
}

std::optional<double> Arguments::number(const std::string& name, double low, double high) const {
  auto text = option(name);
  if (!text) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(text->c_str(), &end);
  if (text->empty() || *end != '\0' || errno != 0 || !std::isfinite(value))
    throw UsageError(name + " " + *text + ": not a number");
  if (value < low || value > high)
    throw UsageError(name + " " + *text + ": must lie in [" + shortest(low) + ", " + shortest(high) + "]");
  return value;
}

std::optional<long> Arguments::integer(const std::string& name, long low, long high) const {
  auto text = option(name);
  if (!text) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long value = std::strtol(text->c_str(), &end, 10);
  if (text->empty() || *end != '\0' || errno != 0) throw UsageError(name + " " + *text + ": not an integer");
  if (value < low || value > high)
    throw UsageError(name + " " + *text + ": must be in " + std::to_string(low) + ".." + std::to_string(high));
  return value;
}

bool is_file(const std::string& path) {
  std::error_code error;
  return std::filesystem::is_regular_file(path, error);
}

}  // namespace face_deploy
