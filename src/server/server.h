// `mlkv serve`: an OpenAI-compatible HTTP server on the public API. One engine thread runs a
// continuous-batching mlkv::Session over a shared KV cache; HTTP worker threads parse requests
// (src/server/openai.h), submit one sequence per choice and wait for (or stream) the tokens.
//
// Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models[/ID], GET /health,
// GET /metrics (Prometheus text), GET /v1/model (mlkv's own description of the model and cache).
// Errors are OpenAI's error object: 400 bad field (named), 401 missing or wrong key (--api-key),
// 404 unknown route or model, 413 body too large, 429 (Retry-After) queue full, 503 shutting down.
// A client that disconnects, streaming or not, queued or running, has its sequences cancelled
// within a decode step (their KV freed). SIGTERM/SIGINT: refuse new requests, finish the running
// ones (up to drain_timeout_s), then exit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "mlkv/model.h"

namespace mlkv {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  int n_parallel = 8;                       // most sequences decoding together
  int block_size = 16;                      // KV block in tokens; 0: reserve whole contexts
  int64_t kv_budget_bytes = 0;              // paged cache bytes; 0: n_parallel contexts' worth
  int n_ctx = 0;                            // per-sequence context (0: the model's)
  std::string cache_type = "f32";           // as SessionOptions::cache_type
  int max_queue = 256;                      // waiting sequences beyond this get 429
  size_t max_body_bytes = size_t{1} << 20;  // larger bodies get 413
  int max_prompt_tokens = 0;                // longer prompts get 400 (0: the context)
  int max_tokens = 0;                       // larger max_tokens get 400 (0: the context)
  int max_connections = 128;                // connections served at once (HTTP worker threads)
  std::string model_id = "mlkv";            // the name in /v1/models and the "model" field
  std::string api_key;                      // non-empty: /v1/* need "Authorization: Bearer KEY"
  std::string chat_template;                // "chatml", "llama-3", "llama-2", "zephyr" or ""
  double drain_timeout_s = 60.0;            // SIGTERM: longest wait for running requests
};

// Serves until SIGINT/SIGTERM (or stop_server()). Without a tokenizer in the engine only token-id
// prompts are accepted. Prints the listening address on stderr once ready. Throws mlkv::Error
// for bad options or when it cannot listen.
void run_server(Engine& engine, const ServerOptions& opt);
// Starts the same shutdown as SIGTERM (async-signal-safe).
void stop_server();

}  // namespace mlkv
