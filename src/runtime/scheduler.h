// Continuous batching over one KV cache: requests arrive (from any thread), wait for a free
// sequence slot, are prefilled together with the decode steps of the sequences already running,
// and free their slot when they finish. generate() and the HTTP server both run on this.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "model/model.h"
#include "sampling/sampler.h"

namespace mlkv {

struct SeqResult {
  std::vector<int32_t> tokens;  // generated ids (prompt excluded)
  std::string finish_reason;    // "eos", "length", "context" or "cancelled"
};

struct SeqRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 32;
  SamplerParams sampling;
  bool stop_at_eos = true;
  // Set to true (from any thread) to stop the sequence at the next step ("cancelled").
  std::shared_ptr<std::atomic<bool>> cancel;
  // Called on the scheduler's thread: each generated token, then once at the end.
  std::function<void(int32_t)> on_token;
  std::function<void(const SeqResult&)> on_done;
};

class Scheduler {
 public:
  // n_parallel sequences decode together, each with room for n_ctx tokens.
  Scheduler(Model& model, int n_parallel, int n_ctx, DType cache_elem = DType::kF32);

  // Validates and queues a request (thread-safe). Throws mlkv::Error when it can never run
  // (empty prompt, token ids outside the vocabulary, prompt longer than the context).
  void submit(SeqRequest r);
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
  // Requests waiting for a slot and sequences decoding (thread-safe snapshot).
  void load(int* queued, int* running);

 private:
  struct Active {
    SeqRequest req;
    int seq;
    int32_t next;  // token to feed next step; -1 before the prompt is prefilled
    Sampler sampler;
    SeqResult result;
  };
  void finish(size_t i, const char* reason);

  Model& model_;
  int n_parallel_, n_ctx_;
  KVCache cache_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SeqRequest> pending_;  // guarded by mu_
  bool stopping_ = false;           // guarded by mu_
  int running_ = 0;                 // guarded by mu_ (mirror of active_.size())
  std::vector<Active> active_;      // scheduler thread only
  std::vector<float> logits_;
  Batch batch_;
};

}  // namespace mlkv
