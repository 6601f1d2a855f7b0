// Placeholder until the convert commands land (replaced by cmd_convert.cpp proper).
#include "commands.h"

namespace mlkv::cli {
void add_convert_commands(CLI::App& app) { (void)app; }
}  // namespace mlkv::cli
