// The HTTP side of `mlkv serve` (server.h): every route, the jobs of the completion requests
// (plain and streamed replies, stop strings, clients that go away), the error objects and the
// metrics, installed on a cpp-httplib Server. The routes reach the engine through a ServeBackend:
// the continuous-batching Session in run_server (server.cpp), a synchronous stand-in in the HTTP
// fuzzer (fuzz/http_request_fuzz.cpp). What this is not: listening, signals, the engine thread
// and shutdown (server.cpp), or the wire format's rules (openai.h).
#pragma once

#include <httplib.h>

#include <atomic>
#include <cstdint>
#include <ctime>
#include <memory>

#include "mlkv/generation.h"
#include "mlkv/model.h"
#include "mlkv/tokenizer.h"
#include "openai.h"
#include "server.h"

namespace mlkv {

// What the routes ask of the engine. Both calls are made from HTTP worker threads, concurrently.
class ServeBackend {
 public:
  virtual ~ServeBackend() = default;
  // Queues one sequence; its callbacks run on whichever thread steps the engine (the engine
  // thread of a Session; the caller, in a stand-in). Throws mlkv::Error for one that can never
  // run.
  virtual void submit(Request r) = 0;
  virtual SessionLoad load() const = 0;
};

// The client connection the calling thread serves, for noticing a client that leaves while its
// request waits on the engine: set by `mlkv serve`'s connection loop (server.cpp) for as long as
// it serves a connection, -1 elsewhere (the fuzzer: no socket). cpp-httplib does not hand the
// socket to handlers, and finding it among the process's sockets would touch the connections
// other threads serve.
class ConnectionScope {
 public:
  explicit ConnectionScope(int fd);
  ~ConnectionScope();
  ConnectionScope(const ConnectionScope&) = delete;
  ConnectionScope& operator=(const ConnectionScope&) = delete;
};
int connection_socket();

struct Metrics;

// What the routes share. Must outlive the Server they are installed on (and every request it is
// still answering).
struct ServeState {
  // Throws mlkv::Error for a chat template mlkv does not apply. n_ctx: the session's context;
  // cache_bytes, kv_bytes_per_token: the KV cache's, for /v1/model and /metrics.
  ServeState(const ModelInfo& info, const Tokenizer* tok, const ServerOptions& opt,
             ServeBackend& backend, int n_ctx, int64_t cache_bytes, int64_t kv_bytes_per_token);
  ~ServeState();
  ServeState(const ServeState&) = delete;
  ServeState& operator=(const ServeState&) = delete;

  const ModelInfo& info;
  const Tokenizer* tok;  // null: token-id prompts only
  const ServerOptions& opt;
  ServeBackend& backend;
  const int n_ctx;
  const int64_t cache_bytes;
  const int64_t kv_bytes_per_token;
  const openai::ChatTemplate tmpl;
  openai::Limits lim;
  const std::time_t started;
  std::atomic<bool> draining{false};  // shutting down: new completions get 503
  std::atomic<int> in_flight{0};      // completion requests between submit and their last byte
  std::unique_ptr<Metrics> metrics;
};

// Installs every route, the pre-routing (API key), error and exception handlers and the body
// size limit on srv.
void install_routes(httplib::Server& srv, ServeState& st);

}  // namespace mlkv
