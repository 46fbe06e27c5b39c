// What the command-line tools share: errors a user can fix, told in one line (as the Python tools'
// runtime.run_cli tells them), and the small argument parser.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace face_deploy {

// Bad input rather than a bug: printed as "error: <message>" and exit status 1.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad command line: "<tool>: error: <message>; usage: ..." and exit status 2, as argparse's.
class UsageError : public UserError {
 public:
  using UserError::UserError;
};

// A file that is missing, truncated or not in the format its reader expects: "<path>: <problem>".
class DataFormatError : public UserError {
 public:
  DataFormatError(const std::string& path, const std::string& problem) : UserError(path + ": " + problem) {}
};

// The first line of `text`, without trailing spaces (libtorch's messages carry stack traces).
std::string first_line(const std::string& text);

// Runs `body` and turns every error into one line on stderr and an exit status: UsageError 2,
// UserError 1, anything else (libtorch's c10::Error included) 1 with its first line.
int run_cli(const std::string& tool, const std::string& usage, const std::function<int()>& body);

// A command line of positional arguments and --options (`--name value` or `--name=value`).
class Arguments {
 public:
  // `flags` take no value, `options` take one; anything else starting with "--" is refused.
  Arguments(int argc, char** argv, const std::vector<std::string>& flags, const std::vector<std::string>& options);
  const std::vector<std::string>& positional() const { return positional_; }
  bool flag(const std::string& name) const;
  std::optional<std::string> option(const std::string& name) const;
  // The option as a number, refused unless it parses completely and lies in [low, high].
  std::optional<double> number(const std::string& name, double low, double high) const;
  std::optional<long> integer(const std::string& name, long low, long high) const;

 private:
  std::vector<std::string> positional_;
  std::vector<std::string> flags_set_;
  std::vector<std::pair<std::string, std::string>> values_;
};

// Whether a path names an existing regular file.
bool is_file(const std::string& path);

}  // namespace face_deploy
