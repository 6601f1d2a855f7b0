// Continuous batching over one KV cache: requests arrive (from any thread), wait for a free
// sequence slot, are prefilled together with the decode steps of the sequences already running,
// and free their slot when they finish. generate() and mlkv::Session (the HTTP server's engine)
// both run on this.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mlkv/generation.h"
#include "model/model.h"
#include "sampling/sampler.h"

namespace mlkv {

// Requests and results are the public API's (mlkv/generation.h): mlkv::Request (prompt, budget,
// sampling, stop_at_eos, cancel flag, on_token / on_done callbacks, both called on the
// scheduler's thread) and mlkv::Generation (tokens and finish reason: "eos", "length", "context"
// or "cancelled"; its text is left empty here).

class Scheduler {
 public:
  // n_parallel sequences decode together, each with room for n_ctx tokens.
  Scheduler(Model& model, int n_parallel, int n_ctx, KvCacheType cache_elem = {});

  // Validates and queues a request (thread-safe). Throws mlkv::Error when it can never run
  // (empty prompt, token ids outside the vocabulary, prompt longer than the context).
  void submit(Request r);
  // One engine step: admit waiting requests into free slots, run one forward over every prefill
  // and decode token, sample, retire finished sequences. Returns false when there was no work.
  bool step();
  // Steps until nothing is queued or running (batch generation).
  void run_until_idle();
  // Steps forever, sleeping while idle, until stop() (the server's engine thread).
  void serve_forever();
  void stop();

  int n_ctx() const { return n_ctx_; }
  int n_parallel() const { return n_parallel_; }
  int64_t cache_bytes() const { return cache_.bytes(); }
  // Requests waiting for a slot, sequences decoding and the tokens their cache holds
  // (thread-safe snapshot as of the last step).
  void load(int* queued, int* running, int64_t* cache_tokens = nullptr);

 private:
  struct Active {
    Request req;
    int seq;
    int32_t next;  // token to feed next step; -1 before the prompt is prefilled
    Sampler sampler;
    Generation result;
  };
  void finish(size_t i, const char* reason);

  Model& model_;
  int n_parallel_, n_ctx_;
  KVCache cache_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> pending_;  // guarded by mu_
  bool stopping_ = false;        // guarded by mu_
  int running_ = 0;              // guarded by mu_ (mirror of active_.size())
  int64_t cache_tokens_ = 0;     // guarded by mu_: tokens cached by active_ after the last step
  std::vector<Active> active_;   // scheduler thread only
  std::vector<float> logits_;
  std::vector<size_t> last_row_;  // per active sequence: its last logits row in the step
  std::vector<int32_t> top_idx_;  // scratch of the top-N log-probs
  Batch batch_;
};

}  // namespace mlkv
