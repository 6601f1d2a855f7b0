// libFuzzer target: raw bytes as an HTTP/1.1 connection to `mlkv serve`. The input is fed through
// an in-memory Stream into cpp-httplib's own server request handling (Server::process_request:
// the request line, headers, Content-Length and chunked bodies, keep-alive; up to four pipelined
// requests per input) with mlkv's real routes installed (src/server/routes.h: auth, models,
// health, metrics, /v1/model, completions and chat, plain and streamed, the OpenAI validation of
// the body). The engine behind the routes is a synchronous stand-in that answers each sequence at
// once with a few tokens computed from its prompt and seed (log-probs, prompt log-probs, an
// "error" generation for prompts that start with id 13), so every reply path runs without a model.
//
// Properties besides "no crash, no sanitizer report": every request gets a response; a 500 comes
// only from the stand-in's "error" generation (any other 500 is an exception a handler let
// through); a reply is framed (chunks, or a body of exactly its Content-Length; none for HEAD),
// never cut to a Range (206, Content-Range), a JSON body parses, and a stream is well-formed chunks
// of events that are each JSON, ending with [DONE]; /metrics keeps a bounded set
// of request series, each labelled with one of the server's routes. MLKV_FUZZ_PRINT=1 prints what
// the server wrote. Inputs that carry "Authorization" go to a server with an API key ("Bearer k"),
// the others to one without.
//
// cpp-httplib is Debian's compiled library (libcpp-httplib.so), not built here: its own code has
// no coverage instrumentation, and ASan checks its heap (malloc / free) and the memory calls it
// makes (memcpy, strlen, ...), not its plain loads and stores. Coverage comes from mlkv's
// handlers, this file's stream, and the outcomes of each parse fed back as extra counters below.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "server/routes.h"

namespace {

using mlkv::Generation;
using mlkv::Request;
using mlkv::SessionLoad;
using mlkv::TokenLogprob;

std::string* g_out = nullptr;  // the current connection's output, printed with a broken invariant

void require(bool ok, const char* what) { mlkv::fuzz::require(ok, what, g_out); }

constexpr int kVocab = 300;

// The engine: each sequence is answered inside submit() with up to 6 tokens that depend on its
// prompt and seed only.
class StandIn : public mlkv::ServeBackend {
 public:
  void submit(Request r) override {
    if (r.prompt.empty()) throw mlkv::Error("empty prompt");
    for (int32_t id : r.prompt) require(id >= 0 && id < kVocab, "prompt id outside the vocabulary");
    Generation g;
    if (r.prompt_logprobs && r.logprobs >= 0) {
      for (size_t i = 1; i < r.prompt.size(); ++i)
        g.prompt_logprobs.push_back(logprob(r.prompt[i], r.logprobs, static_cast<int>(i)));
    }
    const bool fail = r.prompt[0] == 13;
    const int n = std::min(r.max_new_tokens, 6);
    g.finish_reason = "length";
    for (int k = 0; k < n; ++k) {
      if (r.cancel && r.cancel->load()) {
        g.finish_reason = "cancelled";
        break;
      }
      if (fail && k == 2) {
        g.finish_reason = "error";
        g.error = "non-finite logits";
        error_ = true;
        break;
      }
      const int32_t t = static_cast<int32_t>(
          (static_cast<uint64_t>(r.prompt.back()) * 31 + k * 7 + r.sampling.seed) % kVocab);
      if (r.logprobs >= 0) {
        g.logprobs.push_back(logprob(t, r.logprobs, k));
        if (r.on_logprob) r.on_logprob(g.logprobs.back());
      }
      g.tokens.push_back(t);
      if (r.on_token) r.on_token(t);
      if (r.stop_at_eos && t == 2) {
        g.finish_reason = "eos";
        break;
      }
    }
    if (r.on_done) r.on_done(g);
  }
  SessionLoad load() const override { return {}; }
  bool take_error() {
    const bool e = error_;
    error_ = false;
    return e;
  }

 private:
  static TokenLogprob logprob(int32_t token, int n_top, int k) {
    TokenLogprob lp;
    lp.token = token;
    lp.logprob = -0.25f * static_cast<float>(k + 1);
    for (int j = 0; j < n_top; ++j)
      lp.top.emplace_back((token + j) % kVocab, -0.25f * static_cast<float>(j + 1));
    return lp;
  }
  bool error_ = false;
};

// The input as the bytes a client sent; what the server writes is kept.
class MemoryStream : public httplib::Stream {
 public:
  MemoryStream(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool is_readable() const override { return true; }
  bool is_writable() const override { return true; }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, size_ - pos_);
    std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    out_.append(ptr, size);
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 40000;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 8080;
  }
  socket_t socket() const override { return INVALID_SOCKET; }
  bool at_end() const { return pos_ >= size_; }
  // The unread input starts with s.
  bool next_is(std::string_view s) const {
    return size_ - pos_ >= s.size() && std::memcmp(data_ + pos_, s.data(), s.size()) == 0;
  }
  std::string& out() { return out_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string out_;
};

// process_request is protected in cpp-httplib's Server; a subclass may call it.
class FuzzServer : public httplib::Server {
 public:
  FuzzServer() {
    // The streamed-reply loop runs while the server is not shutting down, which it judges by its
    // listening socket: give it one that is never used (an fd on /dev/null).
    dummy_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    svr_sock_ = dummy_;
  }
  ~FuzzServer() override {
    svr_sock_ = INVALID_SOCKET;
    ::close(dummy_);
  }
  bool serve_one(MemoryStream& strm, bool close_connection, bool& closed,
                 const std::function<void(httplib::Request&)>& setup) {
    return process_request(strm, close_connection, closed, setup);
  }

 private:
  int dummy_ = -1;
};

struct Instance {
  mlkv::ModelInfo info;
  mlkv::fuzz::ByteTokenizer tok{kVocab};
  mlkv::ServerOptions opt;
  StandIn backend;
  std::unique_ptr<mlkv::ServeState> state;
  FuzzServer srv;

  explicit Instance(const std::string& api_key) {
    info.family = "llama";
    info.n_vocab = kVocab;
    info.n_ctx = 256;
    info.summary = "stand-in";
    info.eos_token_ids = {2};
    opt.model_id = "m";
    opt.api_key = api_key;
    opt.max_body_bytes = 4096;
    opt.max_queue = 16;
    opt.chat_template = "chatml";
    state = std::make_unique<mlkv::ServeState>(info, &tok, opt, backend, /*n_ctx=*/256,
                                               /*cache_bytes=*/4096, /*kv_bytes_per_token=*/64);
    mlkv::install_routes(srv, *state);
  }
};

// libFuzzer reads this section as extra coverage counters (cleared before each input). cpp-httplib
// is not instrumented, so what its parser made of the input is fed back here: per request of the
// connection (up to 4), the reply's status, the method, the number of headers, the body framing
// and the route it asked for, one counter each.
__attribute__((used, section("__libfuzzer_extra_counters"))) uint8_t g_outcomes[4][64];

int status_slot(int status) {
  static const int kKnown[] = {100, 200, 206, 400, 401, 404, 405, 413, 414, 416, 429, 500, 503};
  for (int i = 0; i < 13; ++i)
    if (status == kKnown[i]) return i;
  return 15;
}

void note_request(uint8_t* c, const httplib::Request& req) {
  static const char* kMethods[] = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"};
  int m = 7;
  for (int i = 0; i < 7; ++i)
    if (req.method == kMethods[i]) m = i;
  c[16 + m] = 1;
  size_t n = req.headers.size(), b = 0;
  while (n > 1 && b < 7) n >>= 1, ++b;
  c[24 + b] = 1;
  if (req.has_header("Content-Length")) c[32] = 1;
  if (req.get_header_value("Transfer-Encoding") == "chunked") c[33] = 1;
  if (req.has_header("Expect")) c[34] = 1;
  if (req.get_header_value("Connection") == "close") c[35] = 1;
  if (req.version == "HTTP/1.0") c[36] = 1;
  if (!req.ranges.empty()) c[37] = 1;
  if (req.has_header("Authorization")) c[38] = 1;
  static const char* kRoutes[] = {"/v1/completions", "/v1/chat/completions",
                                  "/v1/models",      "/v1/models/m",
                                  "/health",         "/metrics",
                                  "/v1/model"};
  int r = 7;
  for (int i = 0; i < 7; ++i)
    if (req.path == kRoutes[i]) r = i;
  c[40 + r] = 1;
  if (!req.params.empty()) c[48] = 1;
}

// The status of the response written from `at` on, or 0.
int status_of(const std::string& out, size_t at) {
  if (out.size() < at + 12 || out.compare(at, 9, "HTTP/1.1 ") != 0) return 0;
  return std::atoi(out.c_str() + at + 9);
}

}  // namespace

// A chunked reply (a stream: the stand-in finishes every sequence) is well-formed chunks ending in
// the last chunk, carrying server-sent events that are each one JSON object, then "[DONE]".
void check_stream(const std::string& body) {
  std::string data;
  size_t at = 0;
  while (true) {
    const size_t eol = body.find("\r\n", at);
    require(eol != std::string::npos, "a chunk without its size line");
    char* end = nullptr;
    const size_t n = std::strtoull(body.c_str() + at, &end, 16);
    require(end == body.c_str() + eol && eol > at, "a malformed chunk size");
    if (n == 0) {
      require(body.compare(eol, std::string::npos, "\r\n\r\n") == 0, "bytes after the last chunk");
      break;
    }
    require(body.size() >= eol + 2 + n + 2 && body.compare(eol + 2 + n, 2, "\r\n") == 0,
            "a chunk shorter than its size");
    data.append(body, eol + 2, n);
    at = eol + 2 + n + 2;
  }
  bool done = false;
  for (size_t at = 0; at < data.size();) {
    const size_t end = data.find("\n\n", at);
    require(end != std::string::npos && data.compare(at, 6, "data: ") == 0 && !done,
            "a malformed event");
    const std::string payload = data.substr(at + 6, end - at - 6);
    done = payload == "[DONE]";
    require(done || nlohmann::json::accept(payload), "an event that is not JSON");
    at = end + 2;
  }
  require(done, "a stream without [DONE]");
}

// Every 1000 inputs: /metrics has a bounded set of request series, each a known route.
void check_metrics(Instance& inst) {
  static const char kGet[] = "GET /metrics HTTP/1.1\r\n\r\n";
  MemoryStream strm(reinterpret_cast<const uint8_t*>(kGet), sizeof kGet - 1);
  bool closed = false;
  require(inst.srv.serve_one(strm, true, closed, nullptr), "GET /metrics failed");
  const std::string& out = strm.out();
  int series = 0;
  for (size_t at = out.find("\nmlkv_requests_total{"); at != std::string::npos;
       at = out.find("\nmlkv_requests_total{", at + 1)) {
    ++series;
    const std::string line = out.substr(at + 1, out.find('\n', at + 1) - at - 1);
    bool known = false;
    for (const char* r : {"/v1/completions\"", "/v1/chat/completions\"", "/v1/models\"",
                          "/v1/models/ID\"", "/v1/model\"", "/health\"", "/metrics\"", "unknown\""})
      known = known || line.rfind(std::string("mlkv_requests_total{route=\"") + r, 0) == 0;
    require(known, "a request series whose route is not one of the server's");
  }
  require(series <= 8 * 16, "unbounded request series in /metrics");
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Instance open_server("");
  static Instance keyed_server("k");
  const bool keyed = memmem(data, size, "Authorization", 13) != nullptr;
  Instance& inst = keyed ? keyed_server : open_server;

  MemoryStream strm(data, size);
  g_out = &strm.out();
  for (int i = 0; i < 4 && !strm.at_end(); ++i) {
    uint8_t* counters = g_outcomes[i];
    size_t at = strm.out().size();
    bool closed = false;
    const bool ok =
        inst.srv.serve_one(strm, /*close_connection=*/i == 3, closed,
                           [counters](httplib::Request& req) { note_request(counters, req); });
    const bool error_generation = inst.backend.take_error();
    if (strm.out().size() == at) {  // nothing parsed: the connection ended
      require(!ok, "a request was handled without a response");
      break;
    }
    int status = status_of(strm.out(), at);
    size_t head_end = strm.out().find("\r\n\r\n", at);
    if (status == 100 && head_end != std::string::npos) {  // "Expect: 100-continue" answered first
      counters[status_slot(100)] = 1;
      at = head_end + 4;
      status = status_of(strm.out(), at);
      head_end = strm.out().find("\r\n\r\n", at);
    }
    require(status >= 100 && status < 600, "malformed status line");
    require(head_end != std::string::npos, "no end of headers");
    counters[status_slot(status)] = 1;
    // A 500 is the stand-in's failed generation; any other is an exception a handler let out.
    require(status != 500 || error_generation, "500 without a failed generation");
    // Replies are whole (Range is ignored) and framed: a length or chunks.
    const std::string headers = strm.out().substr(at, head_end - at);
    require(status != 206 && headers.find("Content-Range") == std::string::npos,
            "a reply cut to a Range");
    const size_t length_at = headers.find("\r\nContent-Length: ");
    const bool chunked = headers.find("\r\nTransfer-Encoding: chunked") != std::string::npos;
    require(length_at != std::string::npos || chunked, "a reply without a length");
    // A reply to HEAD (the library marks it with Accept-Ranges, which mlkv never sets) has no
    // body; any other has exactly Content-Length bytes, and a JSON one is one JSON document (mlkv's
    // replies and errors).
    const std::string body = strm.out().substr(head_end + 4);
    if (headers.find("\r\nAccept-Ranges: bytes") != std::string::npos) {
      require(body.empty(), "a reply to HEAD with a body");
    } else if (!chunked) {
      const size_t length = std::strtoull(headers.c_str() + length_at + 18, nullptr, 10);
      require(body.size() == length, "a body that is not Content-Length bytes");
      if (headers.find("\r\nContent-Type: application/json") != std::string::npos)
        require(nlohmann::json::accept(body), "a JSON reply that does not parse");
    } else {
      check_stream(body);
    }
    if (closed || !ok) break;
  }
  static uint64_t n_inputs = 0;
  if (++n_inputs % 1000 == 0) check_metrics(inst);
  static const bool print =
      std::getenv("MLKV_FUZZ_PRINT") != nullptr;  // to read one input's replies
  if (print) std::fprintf(stderr, "%s\n", strm.out().c_str());
  g_out = nullptr;
  return 0;
}
