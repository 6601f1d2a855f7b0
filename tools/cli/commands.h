// Subcommand registration for the `mlkv` binary. Each group lives in its own cmd_*.cpp file and
// adds its subcommands (options + callback) to the app; main.cpp owns error handling and exit codes.
#pragma once

#include <CLI/CLI.hpp>

namespace mlkv::cli {

void add_model_commands(CLI::App& app);      // info, score, generate, bench   (cmd_model.cpp)
void add_tokenizer_commands(CLI::App& app);  // tokenizer {encode,decode,train}, tokenize
void add_train_commands(CLI::App& app);      // train, plot                     (cmd_train.cpp)
void add_eval_commands(CLI::App& app);       // eval                            (cmd_eval.cpp)
void add_convert_commands(CLI::App& app);    // convert                         (cmd_convert.cpp)
void add_serve_commands(CLI::App& app);      // serve                           (cmd_serve.cpp)

// Shared option helpers.
// Parses "1 2 3" or "1,2,3" into ids; throws mlkv::Error naming the bad item.
std::vector<int32_t> parse_id_list(const std::string& s);

}  // namespace mlkv::cli
