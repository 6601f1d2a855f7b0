// Safetensors reader/writer: round trip in every dtype, and corrupt files rejected with errors
// that name the problem.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "io/safetensors.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;

std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / "mlkv_safetensors_test";
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

// Expects opening `path` to throw an Error whose message contains `needle`.
void expect_error(const std::string& path, const std::string& needle) {
  try {
    SafeTensorsFile f(path);
    FAIL() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(SafeTensors, RoundTripAllDtypes) {
  std::vector<float> a = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 7.0f};
  std::vector<float> b = {0.5f, 0.25f};
  const std::string path = tmp_path("rt.safetensors");
  write_safetensors(path, {{"a", {2, 3}, a.data(), DType::kF32},
                           {"b16", {2}, b.data(), DType::kF16},
                           {"bb", {2}, b.data(), DType::kBF16}},
                    {{"k", "v"}});
  SafeTensorsFile f(path);
  ASSERT_NE(f.find("a"), nullptr);
  EXPECT_EQ(f.find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.metadata().at("k"), "v");
  std::vector<float> got(6);
  entry_to_f32(*f.find("a"), got.data());
  EXPECT_EQ(got, a);
  std::vector<float> got2(2);
  entry_to_f32(*f.find("b16"), got2.data());
  EXPECT_EQ(got2, b);
  entry_to_f32(*f.find("bb"), got2.data());
  EXPECT_EQ(got2, b);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(SafeTensors, Truncated) {
  std::vector<float> a(100, 1.0f);
  const std::string good = tmp_path("good.safetensors");
  write_safetensors(good, {{"a", {100}, a.data(), DType::kF32}});
  const auto size = fs::file_size(good);
  const std::string bad = tmp_path("trunc.safetensors");
  fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
  fs::resize_file(bad, size - 8);
  expect_error(bad, "outside the data buffer");
  fs::resize_file(bad, 4);
  expect_error(bad, "shorter than the 8-byte header");
  fs::resize_file(bad, 20);
  expect_error(bad, "truncated");
}

TEST(SafeTensors, LyingHeaders) {
  const std::string p = tmp_path("lie.safetensors");
  const std::string data(16, '\0');
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", data);
  expect_error(p, "outside the data buffer");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", data);
  expect_error(p, "needs 20");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}})", data);
  expect_error(p, "outside the data buffer");
  write_raw(p, R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", data);
  expect_error(p, "unknown dtype 'Q4'");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data);
  expect_error(p, "bad dimension");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4]}})", data);
  expect_error(p, "lacks dtype, shape or data_offsets");
  write_raw(p, R"({"a": not json)", data);
  expect_error(p, "not valid JSON");
  write_raw(p, R"([1,2,3])", data);
  expect_error(p, "not a JSON object");
  // Header length field larger than the file.
  {
    std::ofstream f(p, std::ios::binary);
    const uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << "{}";
  }
  expect_error(p, "truncated");
  expect_error(tmp_path("does_not_exist.safetensors"), "cannot open");
}

}  // namespace
}  // namespace mlkv
