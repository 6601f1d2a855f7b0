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
#include "kv/block_pool.h"
#include "model/model.h"
#include "sampling/sampler.h"

namespace mlkv {

// Requests and results are the public API's (mlkv/generation.h): mlkv::Request (prompt, budget,
// sampling, stop_at_eos, cancel flag, on_token / on_done callbacks, both called on the
// scheduler's thread) and mlkv::Generation (tokens and finish reason: "eos", "length", "context"
// or "cancelled"; its text is left empty here).

// What a scheduler holds at one moment (as of its last step).
struct SchedulerLoad {
  int queued = 0;                     // waiting requests, preempted sequences included
  int running = 0;                    // sequences in the batch
  int64_t cache_tokens = 0;           // tokens their cache holds
  int64_t cache_tokens_capacity = 0;  // tokens the cache can hold
  int blocks_total = 0;               // paged: blocks in the pool (0: not paged)
  int blocks_used = 0;                // held by running sequences
  int blocks_cached = 0;              // in the prefix cache (held or evictable)
  int64_t preemptions = 0;            // sequences that gave their blocks up, so far
  int64_t prefix_tokens_reused = 0;   // prompt tokens not prefilled thanks to the prefix cache
};

class Scheduler {
 public:
  // Up to n_parallel sequences decode together, each with room for n_ctx tokens.
  // block_size 0: each sequence reserves its whole context up front (one block of n_ctx).
  // block_size B > 0: paged. The cache is a pool of n_blocks blocks of B tokens (0: as many as
  // n_parallel whole contexts), handed to sequences as they grow; a request is admitted when the
  // blocks for its prompt are free; when a running sequence needs a block and none is left, the
  // newest sequence is preempted (its blocks freed, recomputed from its prompt and tokens when
  // blocks free up). Full blocks of prompts are kept in a prefix cache: a request whose prompt
  // starts with cached blocks reuses them and prefills only the rest.
  Scheduler(Model& model, int n_parallel, int n_ctx, KvCacheType cache_elem = {},
            int block_size = 0, int n_blocks = 0);

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
  // Thread-safe snapshot as of the last step.
  SchedulerLoad load();
  int block_size() const { return block_size_; }

 private:
  struct Active {
    Request req;
    int seq;
    int32_t next;  // token to feed next step; -1 before `feed` is prefilled
    Sampler sampler;
    Generation result;
    std::vector<int32_t> feed;    // what the prefill feeds: the prompt (+ tokens after preemption)
    std::vector<int32_t> blocks;  // paged: the sequence's block table
    int64_t order = 0;            // admission order of the request (older first)
  };
  void finish(size_t i, const char* reason);
  // Takes a sequence slot and, when paged, blocks for a.feed (prefix-cached ones first). False
  // (nothing taken) when there is no room.
  bool admit(Active& a);
  void release_blocks(Active& a);
  void preempt(size_t i);
  void publish_load();

  Model& model_;
  int n_parallel_, n_ctx_;
  int block_size_;
  KVCache cache_;
  std::unique_ptr<BlockPool> pool_;  // paged only
  std::deque<Active> preempted_;     // scheduler thread only, oldest first
  int64_t next_order_ = 0, preemptions_ = 0, prefix_tokens_reused_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> pending_;  // guarded by mu_
  bool stopping_ = false;        // guarded by mu_
  SchedulerLoad load_;           // guarded by mu_ (as of the last step)
  std::vector<Active> active_;   // scheduler thread only
  std::vector<float> logits_;
  std::vector<size_t> last_row_;  // per active sequence: its last logits row in the step
  std::vector<int32_t> top_idx_;  // scratch of the top-N log-probs
  Batch batch_;
};

}  // namespace mlkv
