// A generation session: continuous batching of requests that arrive over time, over one KV cache
// of n_parallel sequence slots. Requests wait for a free slot, are prefilled together with the
// decode steps of the sequences already running, and free their slot when they finish. A server
// runs serve_forever() on one thread and submits from others; a batch job submits everything and
// calls run_until_idle(). What this is not: an HTTP layer (src/server) or tokenization (prompts
// are token ids; mlkv/tokenizer.h turns text into them).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mlkv/model.h"

namespace mlkv {

class Session {
 public:
  // A session over engine's model; the engine must outlive it and not be used for anything else
  // while the session steps. Allocates the cache: n_parallel * n_ctx * kv_bytes_per_token bytes
  // (pages committed as sequences grow). Throws mlkv::Error for n_parallel <= 0, a bad n_ctx or
  // cache type.
  explicit Session(Engine& engine, const SessionOptions& opt = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Validates and queues a request; thread-safe. Throws mlkv::Error when it can never run: an
  // empty prompt, ids outside the vocabulary, a prompt longer than n_ctx, a negative budget or
  // bad sampling parameters.
  void submit(Request r);
  // One engine step: admit waiting requests into free slots, run one forward pass over every
  // prefill and decode token, sample, retire finished sequences. False when there was no work.
  bool step();
  // Steps until nothing is queued or running.
  void run_until_idle();
  // Steps, sleeping while idle, until stop() (from another thread); then answers everything still
  // queued or running with "cancelled".
  void serve_forever();
  void stop();

  int n_ctx() const;
  int n_parallel() const;
  int64_t cache_bytes() const;  // bytes of the KV cache allocated
  SessionLoad load() const;     // thread-safe snapshot

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlkv
