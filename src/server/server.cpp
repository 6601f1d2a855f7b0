// `mlkv serve`'s process side (server.h): the Session and its engine thread, the listening socket,
// each connection's keep-alive loop, signals and the drain on shutdown. The routes themselves are
// in routes.cpp.
#include "server.h"  // (this target sees include/mlkv only, not src/)

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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

// A connection's bytes for cpp-httplib's request parser, read ahead in blocks (the parser reads
// lines a byte at a time); reads and writes wait for the socket up to their timeouts and fail
// (-1) after them, as the library's own socket stream does.
class SocketStream : public httplib::Stream {
 public:
  SocketStream(int sock, int read_timeout_ms, int write_timeout_ms)
      : sock_(sock), read_timeout_ms_(read_timeout_ms), write_timeout_ms_(write_timeout_ms) {}

  bool is_readable() const override { return buffered() || wait(POLLIN, read_timeout_ms_); }
  bool is_writable() const override { return wait(POLLOUT, write_timeout_ms_); }
  ssize_t read(char* ptr, size_t size) override {
    if (!buffered()) {
      if (!wait(POLLIN, read_timeout_ms_)) return -1;
      ssize_t n;
      do n = ::recv(sock_, buf_, sizeof buf_, 0);
      while (n < 0 && errno == EINTR);
      if (n <= 0) return n;  // 0: the client closed
      off_ = 0;
      len_ = static_cast<size_t>(n);
    }
    const size_t n = std::min(size, len_ - off_);
    std::memcpy(ptr, buf_ + off_, n);
    off_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!wait(POLLOUT, write_timeout_ms_)) return -1;
    ssize_t n;
    do n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    address(::getpeername, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    address(::getsockname, ip, port);
  }
  socket_t socket() const override { return sock_; }
  // Bytes read from the socket that the parser has not taken yet (a pipelined request).
  bool buffered() const { return off_ < len_; }

 private:
  // True when the socket is ready (or in error: the call that follows says which).
  bool wait(short events, int timeout_ms) const {
    pollfd p{sock_, events, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    return r > 0;
  }
  template <typename Fn>
  void address(Fn name_of, std::string& ip, int& port) const {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    char host[NI_MAXHOST] = {0}, serv[NI_MAXSERV] = {0};
    if (name_of(sock_, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
        getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
      return;
    ip = host;
    port = std::atoi(serv);
  }

  int sock_;
  int read_timeout_ms_, write_timeout_ms_;
  char buf_[4096];
  size_t off_ = 0, len_ = 0;
};

// cpp-httplib's server with mlkv's connection loop: the library's keep-alive loop (up to
// keep_alive_max_count_ requests, each awaited up to keep_alive_timeout_sec_, until the server
// stops), redone here so that the routes know the connection they serve (ConnectionScope: the
// library does not tell handlers). process_and_close_socket is the library's private virtual hook
// for one accepted connection, called on the worker thread that serves it.
class HttpServer : public httplib::Server {
 private:
  bool process_and_close_socket(socket_t sock) override {
    ConnectionScope scope(sock);
    SocketStream strm(sock, timeout_ms(read_timeout_sec_, read_timeout_usec_),
                      timeout_ms(write_timeout_sec_, write_timeout_usec_));
    bool ok = false;
    for (size_t left = keep_alive_max_count_; left > 0 && svr_sock_ != INVALID_SOCKET; --left) {
      if (!strm.buffered() && !next_request(sock)) break;
      bool closed = false;
      ok = process_request(strm, /*close_connection=*/left == 1, closed, nullptr);
      if (!ok || closed) break;
    }
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ok;
  }
  // Waits for the first byte of the connection's next request, up to the keep-alive timeout;
  // false when none came or the server is stopping.
  bool next_request(int sock) const {
    const auto deadline = Clock::now() + std::chrono::seconds(keep_alive_timeout_sec_);
    while (svr_sock_ != INVALID_SOCKET) {
      pollfd p{sock, POLLIN, 0};
      const int r = ::poll(&p, 1, 10);
      if (r > 0) return true;
      if ((r < 0 && errno != EINTR) || Clock::now() > deadline) return false;
    }
    return false;
  }
  static int timeout_ms(time_t sec, time_t usec) {
    return static_cast<int>(sec * 1000 + usec / 1000);
  }
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

  HttpServer srv;
  srv.new_task_queue = [&] {
    return new httplib::ThreadPool(static_cast<size_t>(opt.max_connections));
  };
  install_routes(srv, st);


  // Debian's cpp-httplib is a compiled library that listens with a backlog of 5: a burst of
  // clients overflows the accept queue and, with SYN cookies, some connections are reset (seen
  // with 32 concurrent requests). Keep the listening socket and listen() on it again with a deep
  // queue once bound (Linux updates the backlog; the kernel caps it at net.core.somaxconn).
  // The library's default options also set SO_REUSEPORT, which lets a second server bind the
  // same port and take half its connections: only SO_REUSEADDR (a restart can bind a port whose
  // old connections linger in TIME_WAIT), so that a port in use is refused.
  int listen_fd = -1;  // set by the hook below, which runs inside bind on this thread
  srv.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
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
