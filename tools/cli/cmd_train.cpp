// Placeholder until the train commands land (replaced by cmd_train.cpp proper).
#include "commands.h"

namespace mlkv::cli {
void add_train_commands(CLI::App& app) { (void)app; }
}  // namespace mlkv::cli
