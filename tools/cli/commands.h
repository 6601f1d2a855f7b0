// Subcommand registration for the `mlkv` binary. Each group lives in its own cmd_*.cpp file and
// adds its subcommands (options + callback) to the app; main.cpp owns error handling and exit
// codes.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace mlkv::cli {

void add_model_commands(CLI::App& app);      // info, score, generate, bench   (cmd_model.cpp)
void add_tokenizer_commands(CLI::App& app);  // tokenizer {encode,decode,train}, tokenize
void add_train_commands(CLI::App& app);      // train, plot                     (cmd_train.cpp)
void add_eval_commands(CLI::App& app);       // eval                            (cmd_eval.cpp)
void add_convert_commands(CLI::App& app);    // convert                         (cmd_convert.cpp)
void add_serve_commands(CLI::App& app);      // serve                           (cmd_serve.cpp)
void add_reproduce_commands(CLI::App& app);  // reproduce                       (cmd_reproduce.cpp)

// Shared option helpers.
// Parses "1 2 3" or "1,2,3" into ids; throws mlkv::Error naming the bad item.
std::vector<int32_t> parse_id_list(const std::string& s);
// Parses a byte size: a number with an optional unit, K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024),
// KB/MB/GB/TB (powers of 1000), B; "1.5G", "512MiB", "1000000". Throws mlkv::Error naming the text.
int64_t parse_byte_size(const std::string& s, const char* what);
// Ranges of numeric options, for CLI11's ->check(): a value outside the range, or not a finite
// number, is a usage error (exit 2) naming the option and the allowed range, e.g.
// "--warmup: -1 is out of range (allowed: >= 0)". Options whose 0 means "not given" state it in
// their help text, or take at_least(1) so that an explicit 0 is refused.
CLI::Validator at_least(double lo);  // >= lo
// A seed: a whole number in [0, 2^64 - 1], written in decimal (an unsigned 64-bit option alone
// would read -1 as 2^64 - 1 and saturate a larger number at 2^64 - 1).
CLI::Validator seed_value();
CLI::Validator above(double lo);     // > lo
// lo <= v <= hi; lo_open / hi_open make that end strict (< instead of <=).
CLI::Validator interval(double lo, double hi, bool lo_open = false, bool hi_open = false);

// Options that name one of a set of things (a format, a device, a strategy), for ->check(): the
// value goes through `parse` (which throws mlkv::Error naming the option, the value and what is
// allowed) when the command line is read, so a misspelt value is a usage error (exit 2) like an
// out-of-range number, before anything loads; e.g. "--weights: must be f32, f16, bf16 or q8_0
// (got 'q4_0')". An empty value is refused too (it would read as "not given").
CLI::Validator parsed_by(std::function<void(const std::string&)> parse);
// A KV-cache format as --cache-type takes it (parse_cache_type: f16, q8_0/f16, q4_0+hadamard, ...).
CLI::Validator cache_format(const char* what);
// One of `names` exactly: "<what> must be a, b or c (got 'x')".
CLI::Validator one_of(const char* what, std::vector<std::string> names);
// --weights: f32, f16, bf16 or q8_0 (parse_weight_type).
CLI::Validator weight_format();
// --device: cpu, cuda or cuda:N by spelling (whether this build and machine have it is checked
// when the command runs: exit 1).
CLI::Validator device_name();

// --cache-type, --cache-type-k and --cache-type-v into *both, *k, *v, each checked by
// parsed_by (cache_type_arg in runtime/options.h combines them).
void add_cache_type_options(CLI::App* cmd, std::string* both, std::string* k, std::string* v);

// How many sequences of ctx tokens fit a KV-cache budget of the given bytes per token (at most
// 1 << 20); throws when not even one fits.
int sequences_in_budget(int64_t budget, int64_t bytes_per_token, int ctx);

}  // namespace mlkv::cli
