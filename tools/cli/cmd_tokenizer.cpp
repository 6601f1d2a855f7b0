// Placeholder until the tokenizer commands land.
#include "commands.h"

namespace mlkv::cli {
void add_tokenizer_commands(CLI::App& app) { (void)app; }
}  // namespace mlkv::cli
