// `mlkv serve`: an HTTP/JSON completion server. One engine thread runs the continuous-batching
// Scheduler over a shared KV cache; HTTP worker threads parse requests, submit them and wait for
// (or stream) the tokens. Bad requests get 4xx with {"error": "..."}; a full queue gets 503.
#pragma once

#include <string>

#include "model/model.h"

namespace mlkv {

class Tokenizer;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  int n_parallel = 8;        // sequences decoding together
  int n_ctx = 0;             // per-sequence context (0: the model's)
  DType cache_elem = DType::kF32;
  int max_queue = 256;       // waiting requests beyond this get 503
  size_t max_body_bytes = size_t{1} << 20;  // larger bodies get 413
  int http_threads = 8;
};

// Serves until SIGINT/SIGTERM (or stop_server()). tokenizer may be null: then only token-id
// prompts are accepted. Prints the listening address on stderr once ready.
void run_server(Model& model, const Tokenizer* tokenizer, const ServerOptions& opt);
void stop_server();

}  // namespace mlkv
