// bench --sweep's naming of sharing configurations and its refusals, without timing anything
// heavy (the sweep itself runs end to end in tests/e2e/test_cli.py).
#include "runtime/bench_sweep.h"

#include <gtest/gtest.h>

#include <string>

#include "core/check.h"

namespace mlkv {
namespace {

// The paper's names on Pythia-160M's 12 layers x 12 heads: the kind, then m x g KV heads.
TEST(BenchSweep, SharingNames) {
  EXPECT_EQ(sharing_name(12, 12, 12, 12), "MHA-144");
  EXPECT_EQ(sharing_name(12, 4, 12, 12), "GQA-48");
  EXPECT_EQ(sharing_name(4, 12, 12, 12), "MLKV-48");
  EXPECT_EQ(sharing_name(12, 1, 12, 12), "MQA-12");
  EXPECT_EQ(sharing_name(6, 1, 12, 12), "MLKV-6");
  EXPECT_EQ(sharing_name(2, 1, 12, 12), "MLKV-2");
  EXPECT_EQ(sharing_name(1, 1, 12, 12), "MLKV-1");
}

std::string error_of(const SweepOptions& o) {
  try {
    run_sweep(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BenchSweep, RefusesWhatTheGeometryCannotHold) {
  SweepOptions o;
  o.geometry = "tiny-neox";  // 4 layers x 4 heads of 16, context 2048
  o.probe = false;
  o.configs = {{4, 3}};
  EXPECT_NE(error_of(o).find("does not fit tiny-neox"), std::string::npos) << error_of(o);
  o.configs = {{0, 1}};
  EXPECT_NE(error_of(o).find("does not fit"), std::string::npos);
  o.configs = {{1, 1}};
  o.contexts = {8};  // not above gen
  EXPECT_NE(error_of(o).find("a context must be in [9, "), std::string::npos) << error_of(o);
  o.contexts = {16};
  o.batches = {};
  EXPECT_NE(error_of(o).find("must not be empty"), std::string::npos);
  o.batches = {1};
  o.cache_types = {"q9"};
  EXPECT_NE(error_of(o).find("--sweep-cache must be one of"), std::string::npos) << error_of(o);
  o.geometry = "pythia-1b";
  EXPECT_NE(error_of(o).find("unknown model geometry"), std::string::npos);
}

TEST(BenchSweep, RowsOfASmallSweep) {
  SweepOptions o;
  o.geometry = "tiny-neox";
  o.probe = false;
  o.configs = {{4, 4}, {2, 1}};
  o.batches = {1, 2};
  o.contexts = {12};
  o.cache_types = {"f32", "f16"};
  o.gen = 2;
  o.reps = 1;
  const SweepResult r = run_sweep(o);
  ASSERT_EQ(r.rows.size(), 8u);
  EXPECT_EQ(r.rows[0].config, "MHA-16");
  EXPECT_EQ(r.rows[7].config, "MLKV-2");
  for (const SweepRow& row : r.rows) {
    const int elem = row.cache_type == "f32" ? 4 : 2;
    EXPECT_EQ(row.kv_bytes_per_token, 2 * row.shape.kv_layers * row.shape.kv_heads * 16 * elem);
    EXPECT_GT(row.r.decode_tok_s, 0);
    EXPECT_EQ(row.bound_steps_s, 0);  // no probes, no bound
  }
  const std::string md = sweep_markdown(r);
  EXPECT_NE(md.find("| MLKV-2 | 2 x 1 | f16 | 128 | 12 | 2 |"), std::string::npos) << md;
}

}  // namespace
}  // namespace mlkv
