// libFuzzer target: llama2.c's tokenizer.bin reader (tokenizer/llama2c_tokenizer.cpp) on arbitrary
// bytes, through a file (the reader maps a path). Anything but success or mlkv::Error is a bug. A
// tokenizer that loads must encode any text (here: the input's own bytes) into ids of its
// vocabulary, decode any ids into valid UTF-8, and give the bytes of every id.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/check.h"
#include "tokenizer/detail.h"
#include "tokenizer/utf8.h"

namespace {

// One file per process, rewritten for every input (on tmpfs when there is one).
const std::string& scratch_path() {
  static const std::string p = [] {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(dir) + "/mlkv_tokenizer_bin_fuzz." + std::to_string(getpid()) + ".bin";
  }();
  static const bool cleanup = std::atexit([] { unlink(p.c_str()); }) == 0;
  (void)cleanup;
  return p;
}

void write_all(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) std::abort();
  size_t done = 0;
  while (done < size) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  write_all(path, data, size);
  std::unique_ptr<mlkv::Tokenizer> tok;
  try {
    tok = mlkv::detail::load_llama2c(path);
  } catch (const mlkv::Error&) {
    return 0;
  }
  const int32_t n = tok->n_vocab();
  if (n < 3) std::abort();
  const std::string_view text(reinterpret_cast<const char*>(data), std::min<size_t>(size, 512));
  for (int32_t id : tok->encode(text, true)) {
    if (id < 0 || id >= n) std::abort();
  }
  std::vector<int32_t> all;
  for (int32_t id = 0; id < n && id < 4096; ++id) {
    all.push_back(id);
    tok->token_bytes(id);
    tok->token_piece(id);
  }
  if (!mlkv::utf8::is_valid(tok->decode(all))) std::abort();
  try {
    tok->token_bytes(n);  // one past the vocabulary: an error
    std::abort();
  } catch (const mlkv::Error&) {
  }
  return 0;
}
