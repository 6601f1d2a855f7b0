// `mlkv serve`: an HTTP/JSON completion server on the public API. One engine thread runs a
// continuous-batching mlkv::Session over a shared KV cache; HTTP worker threads parse requests,
// submit them and wait for (or stream) the tokens. Bad requests get 4xx with {"error": "..."}; a
// full queue gets 503. What this is not: the batching itself (mlkv/session.h).
#pragma once

#include <cstddef>
#include <string>

#include "mlkv/model.h"

namespace mlkv {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  int n_parallel = 8;                       // sequences decoding together
  int n_ctx = 0;                            // per-sequence context (0: the model's)
  std::string cache_type = "f32";           // "f32" or "f16"
  int max_queue = 256;                      // waiting requests beyond this get 503
  size_t max_body_bytes = size_t{1} << 20;  // larger bodies get 413
  int http_threads = 8;
};

// Serves until SIGINT/SIGTERM (or stop_server()). Without a tokenizer in the engine only token-id
// prompts are accepted. Prints the listening address on stderr once ready. Throws mlkv::Error
// for bad options or when it cannot listen.
void run_server(Engine& engine, const ServerOptions& opt);
void stop_server();

}  // namespace mlkv
