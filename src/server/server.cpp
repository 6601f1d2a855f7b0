// `mlkv serve`'s process side (server.h): the Session and its engine thread, the listening socket,
// signals and the drain on shutdown. The routes themselves are in routes.cpp.
#include "server.h"  // (this target sees include/mlkv only, not src/)

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <thread>

#include "mlkv/session.h"
#include "routes.h"

namespace mlkv {

using Clock = std::chrono::steady_clock;

namespace {

std::atomic<bool> g_shutdown{false};

void on_signal(int) {
  g_shutdown.store(true);
}

// The routes' engine: the continuous-batching Session (submit and load are thread-safe).
class SessionBackend : public ServeBackend {
 public:
  explicit SessionBackend(Session& s) : session_(s) {}
  void submit(Request r) override { session_.submit(std::move(r)); }
  SessionLoad load() const override { return session_.load(); }

 private:
  Session& session_;
};

}  // namespace

void stop_server() {
  on_signal(0);
}

void run_server(Engine& engine, const ServerOptions& opt) {
  const ModelInfo& info = engine.info();
  const Tokenizer* tok = engine.has_tokenizer() ? &engine.tokenizer() : nullptr;
  if (opt.n_parallel <= 0) throw Error("--parallel must be positive");
  if (opt.max_connections <= 0) throw Error("--max-connections must be positive");
  SessionOptions so;
  so.n_parallel = opt.n_parallel;
  so.n_ctx = opt.n_ctx;
  so.cache_type = opt.cache_type;
  so.block_size = opt.block_size;
  so.kv_budget_bytes = opt.kv_budget_bytes;
  Session session(engine, so);
  SessionBackend backend(session);
  ServeState st(info, tok, opt, backend, session.n_ctx(), session.cache_bytes(),
                info.kv_bytes_per_token(opt.cache_type));
  const openai::ChatTemplate tmpl = st.tmpl;
  const int n_ctx = st.n_ctx;
  std::atomic<bool>& draining = st.draining;
  std::atomic<int>& in_flight = st.in_flight;

  g_shutdown.store(false);
  std::thread engine_thread([&] { session.serve_forever(); });

  httplib::Server srv;
  srv.new_task_queue = [&] {
    return new httplib::ThreadPool(static_cast<size_t>(opt.max_connections));
  };
  install_routes(srv, st);


  // Debian's cpp-httplib is a compiled library that listens with a backlog of 5: a burst of
  // clients overflows the accept queue and, with SYN cookies, some connections are reset (seen
  // with 32 concurrent requests). Keep the listening socket and listen() on it again with a deep
  // queue once bound (Linux updates the backlog; the kernel caps it at net.core.somaxconn).
  int listen_fd = -1;  // set by the hook below, which runs inside bind on this thread
  srv.set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = static_cast<int>(sock);
  });

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
    throw Error("cannot listen on " + opt.host + ":" + std::to_string(opt.port) +
                " (port in use or not permitted)");
  }
  // Shutdown: on SIGTERM/SIGINT refuse new requests (503), let the running ones finish (up to
  // drain_timeout_s), then stop listening.
  std::atomic<bool> listening_done{false};
  std::thread watcher([&] {
    while (!g_shutdown.load() && !listening_done.load())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (listening_done.load()) return;
    draining.store(true);
    std::fprintf(stderr, "mlkv: shutting down: finishing %d running request(s)\n",
                 in_flight.load());
    const auto deadline = Clock::now() + std::chrono::duration<double>(opt.drain_timeout_s);
    while (Clock::now() < deadline) {
      const SessionLoad l = session.load();
      if (in_flight.load() == 0 && l.queued == 0 && l.running == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    session.stop();  // whatever is left is answered "cancelled"
    srv.stop();
  });
  std::fprintf(stderr,
               "mlkv: serving %s as '%s' on http://%s:%d (up to %d sequences of %d tokens; KV "
               "cache %.1f MiB%s; chat template %s)\n",
               info.summary.c_str(), opt.model_id.c_str(), opt.host.c_str(), port,
               opt.n_parallel, n_ctx, static_cast<double>(session.cache_bytes()) / (1 << 20),
               opt.block_size > 0
                   ? (" in " + std::to_string(session.load().kv_blocks_total) + " blocks of " +
                      std::to_string(opt.block_size) + " tokens")
                         .c_str()
                   : ", a whole context per sequence",
               openai::chat_template_name(tmpl));
  srv.listen_after_bind();
  listening_done.store(true);
  watcher.join();
  session.stop();
  engine_thread.join();
}

}  // namespace mlkv
