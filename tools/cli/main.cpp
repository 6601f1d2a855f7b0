// Entry point of the `mlkv` tool: builds the subcommand tree, runs the chosen command and turns
// errors into messages and exit codes: 0 success, 1 a failure the user can fix (bad file, bad
// input: the message says what), 2 bad command-line usage.
#include <cstdio>
#include <exception>
#include <new>

#include "commands.h"
#include "kernels/blas/blas.h"
#include "core/check.h"

int main(int argc, char** argv) {
  mlkv::blas::ensure_good_kernels(argc, argv);
  CLI::App app{"mlkv: transformer decoding, training and evaluation with multi-layer KV sharing"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mlkv 0.1.0");
  mlkv::cli::add_model_commands(app);
  mlkv::cli::add_tokenizer_commands(app);
  mlkv::cli::add_train_commands(app);
  mlkv::cli::add_eval_commands(app);
  mlkv::cli::add_convert_commands(app);
  mlkv::cli::add_serve_commands(app);
  mlkv::cli::add_reproduce_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, version or the usage error
    return code == 0 ? 0 : 2;
  } catch (const mlkv::Error& e) {
    std::fprintf(stderr, "mlkv: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mlkv: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
