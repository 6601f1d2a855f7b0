#include "server.h"  // (this target sees include/mlkv only, not src/)

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "mlkv/session.h"

namespace mlkv {

using json = nlohmann::json;

namespace {

std::atomic<httplib::Server*> g_server{nullptr};

void on_signal(int) {
  if (httplib::Server* s = g_server.load()) s->stop();
}

// A client error: becomes an HTTP status with {"error": message}.
struct HttpError {
  int status;
  std::string message;
};

void reply_error(httplib::Response& res, int status, const std::string& msg) {
  res.status = status;
  res.set_content(json({{"error", msg}}).dump(), "application/json");
}

// Tokens flowing from the engine thread to one HTTP handler.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int32_t> tokens;
  bool done = false;
  Generation result;
};

struct Parsed {
  Request req;
  bool stream = false;
  bool has_text = false;
};

template <typename T>
T field(const json& j, const char* key, T def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    throw HttpError{400, "field '" + std::string(key) + "' has the wrong type"};
  }
}

Parsed parse_request(const std::string& body, const Tokenizer* tok, const Session& session) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw HttpError{400, std::string("body is not valid JSON: ") + e.what()};
  }
  if (!j.is_object()) throw HttpError{400, "body must be a JSON object"};
  Parsed p;
  if (j.contains("tokens")) {
    if (!j["tokens"].is_array()) throw HttpError{400, "'tokens' must be a list of token ids"};
    for (const auto& t : j["tokens"]) {
      if (!t.is_number_integer()) throw HttpError{400, "'tokens' must be a list of token ids"};
      const auto v = t.get<int64_t>();
      if (v < 0 || v > INT32_MAX)
        throw HttpError{400, "token id " + std::to_string(v) + " is out of range"};
      p.req.prompt.push_back(static_cast<int32_t>(v));
    }
  } else if (j.contains("prompt")) {
    if (!j["prompt"].is_string()) throw HttpError{400, "'prompt' must be a string"};
    if (tok == nullptr)
      throw HttpError{400, "this server has no tokenizer: send 'tokens' instead of 'prompt'"};
    p.req.prompt = tok->encode(j["prompt"].get<std::string>(), field<bool>(j, "add_bos", false));
    p.has_text = true;
  } else {
    throw HttpError{400, "give 'prompt' (text) or 'tokens' (ids)"};
  }
  p.req.max_new_tokens = field<int>(j, "max_tokens", 16);
  if (p.req.max_new_tokens < 0) throw HttpError{400, "'max_tokens' must not be negative"};
  if (static_cast<int64_t>(p.req.prompt.size()) + p.req.max_new_tokens > session.n_ctx()) {
    throw HttpError{400, "prompt (" + std::to_string(p.req.prompt.size()) +
                             " tokens) + max_tokens (" + std::to_string(p.req.max_new_tokens) +
                             ") exceed the context of " + std::to_string(session.n_ctx()) +
                             " tokens"};
  }
  p.req.sampling.temperature = field<float>(j, "temperature", 0.0f);
  p.req.sampling.top_k = field<int>(j, "top_k", 0);
  p.req.sampling.top_p = field<float>(j, "top_p", 1.0f);
  p.req.sampling.seed = field<uint64_t>(j, "seed", 0);
  p.req.stop_at_eos = !field<bool>(j, "ignore_eos", false);
  p.stream = field<bool>(j, "stream", false);
  return p;
}

}  // namespace

void stop_server() {
  on_signal(0);
}

void run_server(Engine& engine, const ServerOptions& opt) {
  const ModelInfo& info = engine.info();
  const Tokenizer* tok = engine.has_tokenizer() ? &engine.tokenizer() : nullptr;
  if (opt.n_parallel <= 0) throw Error("--parallel must be positive");
  SessionOptions so;
  so.n_parallel = opt.n_parallel;
  so.n_ctx = opt.n_ctx;
  so.cache_type = opt.cache_type;
  Session session(engine, so);
  const int n_ctx = session.n_ctx();
  std::thread engine_thread([&] { session.serve_forever(); });

  httplib::Server srv;
  srv.new_task_queue = [&] {
    return new httplib::ThreadPool(static_cast<size_t>(opt.http_threads));
  };
  srv.set_payload_max_length(opt.max_body_bytes);

  srv.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  srv.Get("/v1/model", [&](const httplib::Request&, httplib::Response& res) {
    const SessionLoad load = session.load();
    json j = {{"config", info.summary},
              {"kv_source", info.kv_source},
              {"kv_share_rope", info.kv_share_rope},
              {"eos_token_ids", info.eos_token_ids},
              {"n_ctx", n_ctx},
              {"n_parallel", opt.n_parallel},
              {"kv_cache_bytes", session.cache_bytes()},
              {"kv_bytes_per_token", info.kv_bytes_per_token(opt.cache_type)},
              {"queued", load.queued},
              {"running", load.running},
              {"tokenizer", tok != nullptr}};
    res.set_content(j.dump(), "application/json");
  });
  srv.Post("/v1/completions", [&](const httplib::Request& http_req, httplib::Response& res) {
    Parsed p;
    try {
      p = parse_request(http_req.body, tok, session);
      if (session.load().queued >= opt.max_queue)
        throw HttpError{503, "the request queue is full; retry later"};
    } catch (const HttpError& e) {
      return reply_error(res, e.status, e.message);
    } catch (const Error& e) {
      return reply_error(res, 400, e.what());
    }
    auto ch = std::make_shared<Channel>();
    auto cancel = std::make_shared<std::atomic<bool>>(false);
    const size_t n_prompt = p.req.prompt.size();
    p.req.cancel = cancel;
    p.req.on_token = [ch](int32_t t) {
      std::lock_guard<std::mutex> lock(ch->mu);
      ch->tokens.push_back(t);
      ch->cv.notify_all();
    };
    p.req.on_done = [ch](const Generation& r) {
      std::lock_guard<std::mutex> lock(ch->mu);
      ch->done = true;
      ch->result = r;
      ch->cv.notify_all();
    };
    try {
      session.submit(std::move(p.req));
    } catch (const Error& e) {
      return reply_error(res, 400, e.what());
    }
    const bool text = p.has_text && tok != nullptr;
    if (!p.stream) {
      std::unique_lock<std::mutex> lock(ch->mu);
      ch->cv.wait(lock, [&] { return ch->done; });
      json j = {{"tokens", ch->result.tokens},
                {"finish_reason", ch->result.finish_reason},
                {"usage",
                 {{"prompt_tokens", n_prompt}, {"completion_tokens", ch->result.tokens.size()}}}};
      if (text) j["text"] = tok->decode(ch->result.tokens);
      if (ch->result.finish_reason == "error") {
        // The generation broke down (non-finite logits): not a completion. A 500 with the error
        // text first, the tokens that came before it kept for the curious.
        j["error"] = "generation failed: " + ch->result.error;
        res.status = 500;
      }
      res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
      return;
    }
    // Server-sent events: one event per token, then a final one with the finish reason.
    auto decoder = text ? std::make_shared<StreamDecoder>(*tok) : nullptr;
    res.set_chunked_content_provider(
        "text/event-stream",
        [ch, decoder, cancel](size_t, httplib::DataSink& sink) {
          std::unique_lock<std::mutex> lock(ch->mu);
          ch->cv.wait(lock, [&] { return ch->done || !ch->tokens.empty(); });
          while (!ch->tokens.empty()) {
            const int32_t t = ch->tokens.front();
            ch->tokens.pop_front();
            json ev = {{"token", t}};
            if (decoder) ev["text"] = decoder->push(t);
            const std::string line =
                "data: " + ev.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
            if (!sink.write(line.data(), line.size())) {
              cancel->store(true);  // the client went away
              return false;
            }
          }
          if (ch->done) {
            json ev = {{"finish_reason", ch->result.finish_reason},
                       {"completion_tokens", ch->result.tokens.size()}};
            // The status (200) went out with the first event: a failed generation says so in
            // its last one.
            if (ch->result.finish_reason == "error")
              ev["error"] = "generation failed: " + ch->result.error;
            if (decoder) ev["text"] = decoder->flush();
            const std::string line =
                "data: " + ev.dump(-1, ' ', false, json::error_handler_t::replace) +
                "\n\ndata: [DONE]\n\n";
            sink.write(line.data(), line.size());
            sink.done();
          }
          return true;
        },
        [cancel](bool success) {
          if (!success) cancel->store(true);
        });
  });
  srv.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          reply_error(res, 500, e.what());
        } catch (...) {
          reply_error(res, 500, "internal error");
        }
      });

  // Debian's cpp-httplib is a compiled library that listens with a backlog of 5: a burst of
  // clients overflows the accept queue and, with SYN cookies, some connections are reset (seen
  // with 32 concurrent requests). Keep the listening socket and listen() on it again with a deep
  // queue once bound (Linux updates the backlog; the kernel caps it at net.core.somaxconn).
  int listen_fd = -1;  // set by the hook below, which runs inside bind on this thread
  srv.set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = static_cast<int>(sock);
  });

  g_server.store(&srv);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  // Port 0: any free port (printed below), for tests and scripts.
  const int port = opt.port == 0 ? srv.bind_to_any_port(opt.host.c_str())
                                 : (srv.bind_to_port(opt.host.c_str(), opt.port) ? opt.port : -1);
  if (port > 0 && listen_fd >= 0 && ::listen(listen_fd, 1024) != 0) {
    std::fprintf(stderr, "mlkv: warning: could not deepen the listen queue: %s\n",
                 std::strerror(errno));
  }
  if (port <= 0) {
    session.stop();
    engine_thread.join();
    g_server.store(nullptr);
    throw Error("cannot listen on " + opt.host + ":" + std::to_string(opt.port) +
                " (port in use or not permitted)");
  }
  std::fprintf(
      stderr,
      "mlkv: serving %s on http://%s:%d (%d parallel sequences x %d tokens, KV cache %.1f MiB)\n",
      info.summary.c_str(), opt.host.c_str(), port, opt.n_parallel, n_ctx,
      static_cast<double>(session.cache_bytes()) / (1 << 20));
  srv.listen_after_bind();
  g_server.store(nullptr);
  session.stop();
  engine_thread.join();
}

}  // namespace mlkv
