// The routes of `mlkv serve` (routes.h): validation through openai.h, one Job per completion
// request whose sequences the backend answers through callbacks, plain and streamed replies, the
// Prometheus metrics.
#include "routes.h"  // (this target sees include/mlkv only, not src/)

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>

namespace mlkv {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using openai::ApiError;

namespace {

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void reply_error(httplib::Response& res, int status, const std::string& msg,
                 const std::string& param = "") {
  res.status = status;
  res.set_content(dump(openai::error_body(status, msg, param)), "application/json");
}

// ---------------------------------------------------------------------------------------------
// Prometheus metrics.

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    ++counts_[i];
    sum_ += v;
    ++n_;
  }
  void write(std::string& out, const char* name, const char* help) const {
    std::lock_guard<std::mutex> lock(mu_);
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " histogram\n";
    uint64_t cum = 0;
    char buf[256];
    for (size_t i = 0; i < bounds_.size(); ++i) {
      cum += counts_[i];
      std::snprintf(buf, sizeof buf, "%s_bucket{le=\"%g\"} %llu\n", name, bounds_[i],
                    static_cast<unsigned long long>(cum));
      out += buf;
    }
    cum += counts_.back();
    std::snprintf(buf, sizeof buf, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
                  static_cast<unsigned long long>(cum), name, sum_, name,
                  static_cast<unsigned long long>(n_));
    out += buf;
  }

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0.0;
  uint64_t n_ = 0;
};

// The route label of a request path: a route of this server or "unknown". Paths come from
// clients, so they never become labels themselves (every distinct path would add a series, and a
// quote or newline in one would break the exposition format).
std::string route_label(const std::string& path) {
  static const char* const kRoutes[] = {"/v1/completions", "/v1/chat/completions", "/v1/models",
                                        "/v1/model", "/health", "/metrics"};
  for (const char* r : kRoutes)
    if (path == r) return r;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/ID";
  return "unknown";
}

}  // namespace

struct Metrics {
  std::mutex mu;
  std::map<std::pair<std::string, int>, uint64_t> requests;  // (route, status) -> count
  std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0}, cancelled{0};
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram itl{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};

  // route: a route_label.
  void count(const std::string& route, int status) {
    std::lock_guard<std::mutex> lock(mu);
    ++requests[{route, status}];
  }
};

namespace {

// ---------------------------------------------------------------------------------------------
// The client's socket, for noticing a disconnect while a request waits on the engine: the one
// this thread serves (ConnectionScope). Only this thread uses it while the request runs.

thread_local int t_connection_socket = -1;

// True when the peer closed or reset the connection (a pipelined request waiting counts as
// alive).
bool client_gone(int fd) {
  if (fd < 0) return false;
  char c;
  const ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r > 0) return false;
  if (r == 0) return true;
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

// ---------------------------------------------------------------------------------------------
// One HTTP request's sequences (prompts x n choices) and what the engine thread sends back.

struct Event {
  int choice;
  bool done;
  int32_t token;
  std::optional<TokenLogprob> logprob;
  Generation result;  // with done
};

struct Choice {
  size_t prompt_index = 0;
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  std::unique_ptr<StreamDecoder> decoder;
  std::unique_ptr<openai::StopMatcher> stop;
  std::string text;                 // text returned so far (or to return)
  std::vector<int32_t> tokens;      // generated ids seen so far
  std::vector<TokenLogprob> logprobs;
  Generation result;                // once done
  bool done = false, stopped = false;
  Clock::time_point last_token;
  bool first_token = true;
};

struct Job {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Event> events;  // guarded by mu
  std::vector<Choice> choices;
  Clock::time_point submitted = Clock::now();

  // The engine's events so far, after waiting up to 10 ms for one (HTTP thread).
  std::deque<Event> take_events() {
    std::deque<Event> evs;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::milliseconds(10), [&] { return !events.empty(); });
    evs.swap(events);
    return evs;
  }
  // Every choice has ended and its end was applied (drain).
  bool all_done() const {
    for (const Choice& ch : choices)
      if (!ch.done) return false;
    return true;
  }
};

// Applies the engine's events to the choices (HTTP thread). emit(choice, new text, logprob or
// null, finished) is called for each token and once when a choice ends.
template <typename Emit>
void drain(Job& job, std::deque<Event>& evs, Emit&& emit) {
  for (Event& e : evs) {
    Choice& ch = job.choices[static_cast<size_t>(e.choice)];
    if (!e.done) {
      if (ch.stopped) continue;  // generated after the stop, before the cancel took effect
      ch.tokens.push_back(e.token);
      if (e.logprob) ch.logprobs.push_back(*e.logprob);
      std::string piece;
      if (ch.decoder) {
        piece = ch.decoder->push(e.token);
        if (ch.stop) {
          piece = ch.stop->push(piece);
          if (ch.stop->stopped()) {
            ch.stopped = true;
            ch.cancel->store(true);
          }
        }
      }
      ch.text += piece;
      emit(ch, piece, e.logprob ? &ch.logprobs.back() : nullptr, false);
    } else {
      ch.result = std::move(e.result);
      ch.done = true;
      std::string tail;
      if (!ch.stopped && ch.decoder) {
        tail = ch.decoder->flush();
        if (ch.stop) {
          tail = ch.stop->push(tail);
          if (ch.stop->stopped()) ch.stopped = true;
          else tail += ch.stop->finish();
        }
      }
      ch.text += tail;
      emit(ch, tail, nullptr, true);
    }
  }
  evs.clear();
}

// Whether an Authorization value carries this key: "Bearer KEY", the scheme in any case (RFC 9110
// 11.1: schemes are case-insensitive), the key exactly.
bool bearer_matches(const std::string& value, const std::string& key) {
  static const char kScheme[] = "bearer ";
  if (value.size() != sizeof kScheme - 1 + key.size()) return false;
  for (size_t i = 0; i + 1 < sizeof kScheme; ++i) {
    if (std::tolower(static_cast<unsigned char>(value[i])) != kScheme[i]) return false;
  }
  return value.compare(sizeof kScheme - 1, std::string::npos, key) == 0;
}

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%08x%08llx", prefix, rd(),
                static_cast<unsigned long long>(counter.fetch_add(1)));
  return buf;
}
}  // namespace

ConnectionScope::ConnectionScope(int fd) {
  t_connection_socket = fd;
}

ConnectionScope::~ConnectionScope() {
  t_connection_socket = -1;
}

int connection_socket() {
  return t_connection_socket;
}

ServeState::ServeState(const ModelInfo& info_, const Tokenizer* tok_, const ServerOptions& opt_,
                       ServeBackend& backend_, int n_ctx_, int64_t cache_bytes_,
                       int64_t kv_bytes_per_token_)
    : info(info_),
      tok(tok_),
      opt(opt_),
      backend(backend_),
      n_ctx(n_ctx_),
      cache_bytes(cache_bytes_),
      kv_bytes_per_token(kv_bytes_per_token_),
      tmpl(opt_.chat_template.empty() ? openai::ChatTemplate::kNone
                                      : openai::chat_template_from_name(opt_.chat_template)),
      started(std::time(nullptr)),
      metrics(std::make_unique<Metrics>()) {
  if (!opt.chat_template.empty() && tmpl == openai::ChatTemplate::kNone)
    throw Error("chat template '" + opt.chat_template +
                "' is not one mlkv applies (chatml, llama-3, llama-2, zephyr)");
  lim.n_ctx = n_ctx;
  lim.n_vocab = info.n_vocab;
  lim.max_prompt_tokens = opt.max_prompt_tokens > 0 ? std::min(opt.max_prompt_tokens, n_ctx) : n_ctx;
  lim.max_tokens = opt.max_tokens > 0 ? std::min(opt.max_tokens, n_ctx) : n_ctx;
  lim.model_id = opt.model_id;
}

ServeState::~ServeState() = default;

void install_routes(httplib::Server& srv, ServeState& st) {
  // The handlers outlive this call: they capture these references (to st's members) and copies
  // of the two helper closures, never this function's own objects.
  const ModelInfo& info = st.info;
  const Tokenizer* const& tok = st.tok;
  const ServerOptions& opt = st.opt;
  ServeBackend& backend = st.backend;
  const int& n_ctx = st.n_ctx;
  const openai::ChatTemplate& tmpl = st.tmpl;
  const openai::Limits& lim = st.lim;
  const std::time_t& started = st.started;
  Metrics& metrics = *st.metrics;
  std::atomic<bool>& draining = st.draining;
  std::atomic<int>& in_flight = st.in_flight;

  srv.set_payload_max_length(opt.max_body_bytes);

  // Replies are whole documents: a Range header is ignored (RFC 9110 lets a server do so).
  // cpp-httplib 0.11 would otherwise cut every reply to the range, errors too (a 404 with a
  // Content-Range and 6 bytes of its JSON; found by fuzz/http_request_fuzz.cpp). Every request
  // that is routed passes here first, and one refused before routing (a Range the library could
  // not parse: 416) passes the error handler: both drop the ranges before the library applies
  // them to the reply. (The library's Request is not const; only the handlers' view of it is.)
  srv.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    const_cast<httplib::Request&>(req).ranges.clear();
    if (!opt.api_key.empty() && req.path.rfind("/v1/", 0) == 0 &&
        !bearer_matches(req.get_header_value("Authorization"), opt.api_key)) {
      res.status = 401;
      res.set_content(dump(openai::error_body(401, req.has_header("Authorization")
                                                       ? "the API key is wrong"
                                                       : "an API key is required "
                                                         "(Authorization: Bearer KEY)")),
                      "application/json");
      metrics.count(route_label(req.path), 401);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  srv.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
    const_cast<httplib::Request&>(req).ranges.clear();  // (see above)
    if (!res.body.empty()) return;
    std::string msg;
    if (res.status == 404) msg = "no route " + req.method + " " + req.path;
    else if (res.status == 413)
      msg = "the body is larger than " + std::to_string(opt.max_body_bytes) + " bytes";
    else if (res.status == 405) msg = "method " + req.method + " is not allowed on " + req.path;
    else if (res.status == 400) msg = "malformed HTTP request";
    else if (res.status == 414) msg = "the request line is too long";
    else if (res.status == 416) msg = "malformed Range header (replies are always whole)";
    else msg = "HTTP error " + std::to_string(res.status);
    res.set_content(dump(openai::error_body(res.status, msg)), "application/json");
    metrics.count(route_label(req.path), res.status);
  });
  srv.set_exception_handler(
      [&](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          reply_error(res, 500, e.what());
        } catch (...) {
          reply_error(res, 500, "internal error");
        }
        metrics.count(route_label(req.path), 500);
      });

  srv.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(draining.load() ? R"({"status":"draining"})" : R"({"status":"ok"})",
                    "application/json");
  });
  auto model_object = [&] {
    return json{{"id", opt.model_id},
                {"object", "model"},
                {"created", static_cast<int64_t>(started)},
                {"owned_by", "mlkv"},
                {"max_model_len", n_ctx}};
  };
  srv.Get("/v1/models", [&, model_object](const httplib::Request& req, httplib::Response& res) {
    res.set_content(dump({{"object", "list"}, {"data", json::array({model_object()})}}),
                    "application/json");
    metrics.count(route_label(req.path), 200);
  });
  srv.Get(R"(/v1/models/(.+))", [&, model_object](const httplib::Request& req,
                                                  httplib::Response& res) {
    if (req.matches[1] != opt.model_id) {
      reply_error(res, 404, "the model '" + std::string(req.matches[1]) + "' does not exist");
    } else {
      res.status = 200;  // set before counting: the library fills in 200 only after the handler
      res.set_content(dump(model_object()), "application/json");
    }
    metrics.count("/v1/models/ID", res.status);
  });
  srv.Get("/v1/model", [&](const httplib::Request&, httplib::Response& res) {
    const SessionLoad load = backend.load();
    json j = {{"config", info.summary},
              {"kv_source", info.kv_source},
              {"kv_share_rope", info.kv_share_rope},
              {"eos_token_ids", info.eos_token_ids},
              {"n_ctx", n_ctx},
              {"n_parallel", opt.n_parallel},
              {"block_size", opt.block_size},
              {"kv_blocks", load.kv_blocks_total},
              {"kv_cache_bytes", st.cache_bytes},
              {"kv_bytes_per_token", st.kv_bytes_per_token},
              {"queued", load.queued},
              {"running", load.running},
              {"chat_template", openai::chat_template_name(tmpl)},
              {"tokenizer", tok != nullptr}};
    res.set_content(dump(j), "application/json");
  });
  srv.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    const SessionLoad load = backend.load();
    std::string out;
    char buf[256];
    out += "# HELP mlkv_requests_total HTTP requests by route and status.\n"
           "# TYPE mlkv_requests_total counter\n";
    {
      std::lock_guard<std::mutex> lock(metrics.mu);
      for (const auto& [k, v] : metrics.requests) {
        std::snprintf(buf, sizeof buf, "mlkv_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                      k.first.c_str(), k.second, static_cast<unsigned long long>(v));
        out += buf;
      }
    }
    auto line = [&](const char* name, const char* type, const char* help, double v) {
      std::snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name,
                    type, name, v);
      out += buf;
    };
    line("mlkv_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.",
         static_cast<double>(metrics.prompt_tokens.load()));
    line("mlkv_generation_tokens_total", "counter", "Tokens generated.",
         static_cast<double>(metrics.generated_tokens.load()));
    line("mlkv_sequences_cancelled_total", "counter",
         "Sequences cancelled (client gone, stop string).",
         static_cast<double>(metrics.cancelled.load()));
    line("mlkv_queue_depth", "gauge", "Sequences waiting for a KV-cache slot.", load.queued);
    line("mlkv_running_sequences", "gauge", "Sequences decoding.", load.running);
    line("mlkv_kv_cache_tokens_used", "gauge", "Tokens held in the KV cache.",
         static_cast<double>(load.cache_tokens_used));
    line("mlkv_kv_cache_tokens_capacity", "gauge", "Tokens the KV cache holds (slots x context).",
         static_cast<double>(load.cache_tokens_capacity));
    line("mlkv_kv_cache_bytes", "gauge", "Bytes of the KV cache (owner layers only).",
         static_cast<double>(st.cache_bytes));
    line("mlkv_kv_blocks_used", "gauge", "KV blocks held by running sequences (paged cache).",
         load.kv_blocks_used);
    line("mlkv_kv_blocks_free", "gauge",
         "KV blocks a new sequence could take (free or evictable prefix-cache blocks).",
         load.kv_blocks_total - load.kv_blocks_used);
    line("mlkv_kv_blocks_cached", "gauge", "KV blocks in the prefix cache.",
         load.kv_blocks_cached);
    line("mlkv_preemptions_total", "counter",
         "Sequences that gave their KV blocks up to others (recomputed later).",
         static_cast<double>(load.preemptions));
    line("mlkv_prefix_cache_tokens_total", "counter",
         "Prompt tokens not prefilled because their KV blocks were cached.",
         static_cast<double>(load.prefix_tokens_reused));
    metrics.ttft.write(out, "mlkv_time_to_first_token_seconds",
                       "From submit to the first generated token.");
    metrics.itl.write(out, "mlkv_inter_token_latency_seconds",
                      "Between consecutive tokens of a sequence.");
    res.set_content(out, "text/plain; version=0.0.4");
  });

  auto completion = [&](bool chat, const httplib::Request& http_req, httplib::Response& res) {
    const std::string route = chat ? "/v1/chat/completions" : "/v1/completions";
    openai::Completion c;
    try {
      if (draining.load()) throw ApiError(503, "the server is shutting down");
      c = openai::parse_completion(http_req.body, chat, tok, tmpl, lim);
      const int n_seq = static_cast<int>(c.prompts.size()) * c.n;
      // More sequences than the queue holds: retrying can never help.
      if (n_seq > opt.max_queue) {
        throw ApiError(400,
                       "the request asks for " + std::to_string(n_seq) +
                           " sequences (prompts x n) and the server queues at most " +
                           std::to_string(opt.max_queue) + " (--max-queue)",
                       c.n > 1 ? "n" : "prompt");
      }
      if (backend.load().queued + n_seq > opt.max_queue) {
        res.set_header("Retry-After", "1");
        throw ApiError(429, "the request queue is full; retry later");
      }
    } catch (const ApiError& e) {
      reply_error(res, e.status, e.what(), e.param);
      metrics.count(route, e.status);
      return;
    } catch (const Error& e) {
      reply_error(res, 400, e.what());
      metrics.count(route, 400);
      return;
    }
    const int fd = connection_socket();
    auto job = std::make_shared<Job>();
    const uint64_t seed0 = c.seed_given ? c.sampling.seed : std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}();
    size_t n_prompt_tokens = 0;
    for (const auto& p : c.prompts) n_prompt_tokens += p.size();
    job->choices.resize(c.prompts.size() * static_cast<size_t>(c.n));
    for (size_t i = 0; i < job->choices.size(); ++i) {
      Choice& ch = job->choices[i];
      ch.prompt_index = i / static_cast<size_t>(c.n);
      if (tok != nullptr) {
        // The text continues the prompt's (" there" after "once upon a time", as decoding the
        // whole sequence gives it; a chat reply continues its rendered prompt the same way).
        ch.decoder = std::make_unique<StreamDecoder>(*tok, starts_text(*tok, c.prompts[ch.prompt_index]));
        if (!c.stop.empty()) ch.stop = std::make_unique<openai::StopMatcher>(c.stop);
      }
    }
    struct InFlight {
      explicit InFlight(std::atomic<int>& c) : n(c) { n.fetch_add(1); }
      ~InFlight() { n.fetch_sub(1); }
      InFlight(const InFlight&) = delete;
      std::atomic<int>& n;
    };
    auto guard = std::make_shared<InFlight>(in_flight);
    try {
      for (size_t i = 0; i < job->choices.size(); ++i) {
        Choice& ch = job->choices[i];
        Request r;
        r.prompt = c.prompts[ch.prompt_index];
        r.max_new_tokens = c.max_tokens;
        r.sampling = c.sampling;
        r.sampling.seed = seed0 + i;
        r.stop_at_eos = c.stop_at_eos;
        r.cancel = ch.cancel;
        r.logprobs = c.logprobs;
        r.prompt_logprobs = c.echo && c.logprobs >= 0;
        const int idx = static_cast<int>(i);
        std::weak_ptr<Job> wj = job;
        Metrics* m = &metrics;
        auto pending_lp = std::make_shared<std::optional<TokenLogprob>>();
        r.on_logprob = [pending_lp](const TokenLogprob& lp) { *pending_lp = lp; };
        r.on_token = [wj, idx, m, pending_lp](int32_t t) {
          auto j = wj.lock();
          if (!j) return;
          const auto now = Clock::now();
          Choice& ch2 = j->choices[static_cast<size_t>(idx)];  // timing fields: engine thread only
          m->generated_tokens.fetch_add(1);
          if (ch2.first_token) {
            m->ttft.observe(std::chrono::duration<double>(now - j->submitted).count());
            ch2.first_token = false;
          } else {
            m->itl.observe(std::chrono::duration<double>(now - ch2.last_token).count());
          }
          ch2.last_token = now;
          std::lock_guard<std::mutex> lock(j->mu);
          j->events.push_back({idx, false, t, std::move(*pending_lp), {}});
          pending_lp->reset();
          j->cv.notify_all();
        };
        r.on_done = [wj, idx, m](const Generation& g) {
          // Counted before the job is looked up: the job of a client that left is gone by now.
          if (g.finish_reason == "cancelled") m->cancelled.fetch_add(1);
          auto j = wj.lock();
          if (!j) return;
          std::lock_guard<std::mutex> lock(j->mu);
          j->events.push_back({idx, true, -1, std::nullopt, g});
          j->cv.notify_all();
        };
        backend.submit(std::move(r));
      }
    } catch (const Error& e) {
      for (Choice& ch : job->choices) ch.cancel->store(true);
      reply_error(res, 400, e.what());
      metrics.count(route, 400);
      return;
    }
    metrics.prompt_tokens.fetch_add(n_prompt_tokens);
    const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    const size_t n_choices = job->choices.size();
    auto cancel_all = [job] {
      for (Choice& ch : job->choices) ch.cancel->store(true);
    };
    auto usage = [job, n_prompt_tokens] {
      size_t gen = 0;
      for (const Choice& ch : job->choices) gen += ch.result.tokens.size();
      return json{{"prompt_tokens", n_prompt_tokens},
                  {"completion_tokens", gen},
                  {"total_tokens", n_prompt_tokens + gen}};
    };

    if (!c.stream) {
      // Wait for every choice, applying stop strings as tokens arrive and watching the socket.
      while (true) {
        std::deque<Event> evs = job->take_events();
        drain(*job, evs, [](Choice&, const std::string&, const TokenLogprob*, bool) {});
        if (job->all_done()) break;
        if (client_gone(fd)) {
          cancel_all();
          // Answered nowhere; the sequences end at the next step (their on_done finds the job).
          metrics.count(route, 499);
          return;
        }
      }
      json choices = json::array();
      bool failed = false;
      std::string error;
      for (size_t i = 0; i < n_choices; ++i) {
        Choice& ch = job->choices[i];
        const auto& prompt = c.prompts[ch.prompt_index];
        if (ch.result.finish_reason == "error") {
          failed = true;
          error = ch.result.error;
        }
        const char* fr = openai::finish_reason(ch.result.finish_reason, ch.stopped);
        if (chat) {
          json choice = {{"index", i},
                         {"message", {{"role", "assistant"}, {"content", ch.text}}},
                         {"logprobs", nullptr},
                         {"finish_reason", fr}};
          if (c.logprobs >= 0)
            choice["logprobs"] = openai::chat_logprobs(ch.result.logprobs, ch.tokens.size(), tok);
          choices.push_back(choice);
        } else {
          std::string text = ch.text;
          std::string prompt_text;
          if (c.echo && tok != nullptr) prompt_text = tok->decode(prompt);
          json choice = {{"index", i},
                         {"text", prompt_text + text},
                         {"logprobs", nullptr},
                         {"finish_reason", fr},
                         {"tokens", ch.tokens}};
          if (c.logprobs >= 0) {
            choice["logprobs"] = openai::completion_logprobs(
                prompt, ch.result, c.echo, ch.tokens.size(), tok,
                c.echo ? 0 : (tok != nullptr ? tok->decode(prompt).size() : 0));
          }
          choices.push_back(choice);
        }
      }
      json j = {{"id", id},
                {"object", chat ? "chat.completion" : "text_completion"},
                {"created", created},
                {"model", opt.model_id},
                {"choices", choices},
                {"usage", usage()}};
      res.status = 200;  // set before counting: the library fills in 200 only after the handler
      if (failed) {
        res.status = 500;
        j["error"] = openai::error_body(500, "generation failed: " + error)["error"];
      }
      res.set_content(dump(j), "application/json");
      metrics.count(route, res.status);
      return;
    }

    // Server-sent events in OpenAI's chunk format, then "data: [DONE]".
    metrics.count(route, 200);
    auto first_delta = std::make_shared<std::vector<bool>>(n_choices, true);
    const bool include_usage = c.include_usage;
    const int n_lp = c.logprobs;
    const std::string model_id = opt.model_id;
    auto chunk = [=](json choices) {
      json j = {{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model_id},
                {"choices", std::move(choices)}};
      if (include_usage) j["usage"] = nullptr;
      return j;
    };
    // The provider runs on the HTTP thread, outside any handler's try: an exception in it (a
    // decoder's, a JSON dump's) would end the process. It ends this stream with an error event.
    auto provide = [=](httplib::DataSink& sink) {
      std::deque<Event> evs = job->take_events();
      if (evs.empty()) {
        if (client_gone(fd)) {
          cancel_all();
          return false;
        }
        return true;
      }
      std::string out;
      drain(*job, evs,
            [&](Choice& ch, const std::string& piece, const TokenLogprob* lp, bool finished) {
              const size_t i = static_cast<size_t>(&ch - job->choices.data());
              json choice = {{"index", i}};
              const char* fr = finished
                                   ? openai::finish_reason(ch.result.finish_reason, ch.stopped)
                                   : nullptr;
              if (chat) {
                json delta = json::object();
                if ((*first_delta)[i]) {
                  delta["role"] = "assistant";
                  (*first_delta)[i] = false;
                }
                if (!piece.empty() || !finished) delta["content"] = piece;
                choice["delta"] = delta;
                choice["logprobs"] = nullptr;
                if (lp != nullptr && n_lp >= 0) {
                  choice["logprobs"] = openai::chat_logprobs({*lp}, 1, tok);
                }
              } else {
                choice["text"] = piece;
                choice["logprobs"] = nullptr;
                if (lp != nullptr && n_lp >= 0) {
                  Generation one;
                  one.tokens = {lp->token};
                  one.logprobs = {*lp};
                  choice["logprobs"] = openai::completion_logprobs({}, one, false, 1, tok, 0);
                }
                if (!finished) choice["tokens"] = json::array({ch.tokens.back()});
              }
              choice["finish_reason"] = fr == nullptr ? json(nullptr) : json(fr);
              if (finished && ch.result.finish_reason == "error")
                choice["error"] = "generation failed: " + ch.result.error;
              if (finished && ch.result.finish_reason == "cancelled" && !ch.stopped) return;
              out += "data: " + dump(chunk(json::array({choice}))) + "\n\n";
            });
      const bool all = job->all_done();
      if (all) {
        if (include_usage) {
          json u = chunk(json::array());
          u["usage"] = usage();
          out += "data: " + dump(u) + "\n\n";
        }
        out += "data: [DONE]\n\n";
      }
      if (!out.empty() && !sink.write(out.data(), out.size())) {
        cancel_all();  // the client went away
        return false;
      }
      if (all) sink.done();
      return true;
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [provide, cancel_all](size_t, httplib::DataSink& sink) {
          try {
            return provide(sink);
          } catch (const std::exception& e) {
            cancel_all();
            const std::string out =
                "data: " + dump(openai::error_body(500, std::string("generation failed: ") + e.what())) +
                "\n\ndata: [DONE]\n\n";
            if (sink.write(out.data(), out.size())) sink.done();
            return true;
          }
        },
        [cancel_all, guard](bool success) {
          if (!success) cancel_all();
        });
  };
  srv.Post("/v1/completions", [completion](const httplib::Request& req, httplib::Response& res) {
    completion(false, req, res);
  });
  srv.Post("/v1/chat/completions", [completion](const httplib::Request& req,
                                                 httplib::Response& res) {
    completion(true, req, res);
  });
}

}  // namespace mlkv
