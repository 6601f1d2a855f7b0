// Placeholder until the eval commands land (replaced by cmd_eval.cpp proper).
#include "commands.h"

namespace mlkv::cli {
void add_eval_commands(CLI::App& app) { (void)app; }
}  // namespace mlkv::cli
