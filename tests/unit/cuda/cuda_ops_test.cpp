// Every op of Backend<float> on the CUDA backend against the CPU backend, forward and backward, on
// random inputs of realistic odd sizes (rows that are not multiples of 32, widths of 96, 100,
// 1000): linear (f32, f16 and bf16 weights), the norms, rotary, the activations, embedding,
// cross-entropy, training attention (MHA, GQA, MQA; head sizes 64 and 128; contexts that are not
// multiples of 64), AdamW, sum of squares and the memory helpers. The KV-cache ops are in
// cuda_kv_test.cpp. Skipped (not passed) without a CUDA build or a GPU.
//
// Tolerances (normalised error, cuda_test_util.h): 1e-4 for f32 arithmetic in another order;
// linear with f16 weights 2e-3 (the GPU may round activations to f16 for tensor cores); with bf16
// weights 1e-2 (bf16 GEMMs round activations to bf16 too: 8 bits of mantissa); element-wise ops
// 1e-5 (erf/exp implementations differ by a few ulp); copies and gathers exact.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/types.h"

namespace mlkv::cuda_test {
namespace {

constexpr double kElemTol = 1e-5;

TEST_F(CudaTest, Identity) {
  EXPECT_EQ(gpu().device(), gpu_device());
  EXPECT_FALSE(gpu().name().empty());
  std::printf("  cuda backend: %s\n", gpu().name().c_str());
  // A tensor on the device round-trips exactly.
  const auto v = randn(1001, 1);
  EXPECT_EQ(values(on(gpu_device(), v)), v);
}

// ---- linear ----

struct LinearShape {
  int n, K, N;
};
const LinearShape kLinearShapes[] = {{1, 96, 100}, {3, 100, 96}, {37, 96, 100},
                                     {100, 100, 257}, {129, 257, 96}};

// y = x w^T + b with w in f32, f16 or bf16; with and without bias; writing and accumulating. The
// CPU reference runs on the weights the GPU sees (rounded to f16 / bf16), and for bf16 on
// activations rounded to bf16 too.
class CudaLinear : public CudaParamTest<DType> {};

TEST_P(CudaLinear, Forward) {
  const DType wt = GetParam();
  if (self_check_on_cpu() && wt == DType::kBF16) {
    GTEST_SKIP() << "self-check on the CPU: the CPU backend has no bf16 weights";
  }
  const double tol = wt == DType::kF32 ? kF32Tol : wt == DType::kF16 ? 2e-3 : 1e-2;
  for (const auto& s : kLinearShapes) {
    const auto x = randn(size_t(s.n) * s.K, 10 + s.n), w = randn(size_t(s.N) * s.K, 11 + s.K),
               b = randn(size_t(s.N), 12), y0 = randn(size_t(s.n) * s.N, 13);
    const Tensor w_host = host_tensor(w, {s.N, s.K});
    const Tensor w_dev = wt == DType::kF32 ? w_host.to(gpu_device())
                                           : w_host.to(wt).to(gpu_device());
    ASSERT_EQ(w_dev.dtype(), wt);
    // The reference: f32 weights with the values the GPU holds; the CPU backend reads f16 weights
    // directly, bf16 ones it has no kernel for.
    const Tensor w_ref = wt == DType::kF16 ? w_host.to(DType::kF16)
                         : wt == DType::kBF16 ? host_tensor(rounded(w, wt), {s.N, s.K})
                                              : w_host;
    const auto x_ref = wt == DType::kBF16 ? rounded(x, wt) : x;
    Pair X(x), Xr(x_ref), B(b);
    for (bool bias : {true, false}) {
      for (bool acc : {false, true}) {
        Pair Y = acc ? Pair(y0) : Pair::zeros(int64_t(s.n) * s.N);
        const Tensor bt_c = bias ? B.c : Tensor(), bt_g = bias ? B.g : Tensor();
        cpu().linear_forward(Xr.cp(), w_ref, bt_c, Y.cp(), s.n, s.K, s.N, acc);
        gpu().linear_forward(X.gp(), w_dev, bt_g, Y.gp(), s.n, s.K, s.N, acc);
        Y.expect(std::string("linear ") + dtype_name(wt) + " n=" + std::to_string(s.n) +
                     " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N) +
                     (bias ? " +b" : "") + (acc ? " +=" : ""),
                 tol);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Weights, CudaLinear,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& p) {
                           return std::string(dtype_name(p.param));
                         });

// dx (+)= dy w, dw += dy^T x, db += column sums of dy: accumulation into non-zero buffers, dx
// written or accumulated, and null dx / dw / db.
TEST_F(CudaTest, LinearBackward) {
  for (const auto& s : kLinearShapes) {
    const auto x = randn(size_t(s.n) * s.K, 20 + s.n), w = randn(size_t(s.N) * s.K, 21),
               dy = randn(size_t(s.n) * s.N, 22);
    Pair X(x), W(w, {s.N, s.K}), DY(dy);
    for (int variant = 0; variant < 3; ++variant) {
      // 0: everything, dx accumulated; 1: dx written; 2: no dw / db (frozen weights).
      Pair DX(randn(size_t(s.n) * s.K, 23)), DW(randn(size_t(s.N) * s.K, 24), {s.N, s.K}),
          DB(randn(size_t(s.N), 25));
      const bool grads = variant != 2;
      cpu().linear_backward(DY.cp(), X.cp(), W.c, DX.cp(), grads ? &DW.c : nullptr,
                            grads ? &DB.c : nullptr, s.n, s.K, s.N, variant == 0);
      gpu().linear_backward(DY.gp(), X.gp(), W.g, DX.gp(), grads ? &DW.g : nullptr,
                            grads ? &DB.g : nullptr, s.n, s.K, s.N, variant == 0);
      const std::string tag = "linear backward n=" + std::to_string(s.n) + " K=" +
                              std::to_string(s.K) + " v" + std::to_string(variant);
      DX.expect(tag + " dx", kF32Tol);
      DW.expect(tag + " dw", kF32Tol);
      DB.expect(tag + " db", kF32Tol);
      if (!grads) {
        EXPECT_EQ(values(DW.g), randn(size_t(s.N) * s.K, 24)) << tag << ": dw touched";
      }
    }
    // dx null: only the parameter gradients.
    Pair DW = Pair::zeros(int64_t(s.N) * s.K), DB = Pair::zeros(s.N);
    cpu().linear_backward(DY.cp(), X.cp(), W.c, nullptr, &DW.c, &DB.c, s.n, s.K, s.N, true);
    gpu().linear_backward(DY.gp(), X.gp(), W.g, nullptr, &DW.g, &DB.g, s.n, s.K, s.N, true);
    DW.expect("linear backward dx=null dw", kF32Tol);
    DB.expect("linear backward dx=null db", kF32Tol);
  }
}

// ---- norms ----

TEST_F(CudaTest, LayerNormForwardBackward) {
  for (int E : {96, 100, 1000}) {
    const int n = 37;
    auto x = randn(size_t(n) * E, 30 + E, 2.0f);
    for (auto& v : x) v += 0.7f;  // a non-zero mean
    Pair X(x), Wt(randn(E, 31), {E}), Bt(randn(E, 32), {E}), DY(randn(size_t(n) * E, 33));
    for (bool bias : {true, false}) {
      Pair Y = Pair::zeros(int64_t(n) * E), M = Pair::zeros(n), R = Pair::zeros(n);
      const Tensor bc = bias ? Bt.c : Tensor(), bg = bias ? Bt.g : Tensor();
      cpu().layernorm_forward(X.cp(), Wt.c, bc, Y.cp(), M.cp(), R.cp(), n, E, 1e-5);
      gpu().layernorm_forward(X.gp(), Wt.g, bg, Y.gp(), M.gp(), R.gp(), n, E, 1e-5);
      const std::string tag = "layernorm E=" + std::to_string(E) + (bias ? " +b" : "");
      Y.expect(tag + " y", kF32Tol);
      M.expect(tag + " mean", kF32Tol);
      R.expect(tag + " rstd", kF32Tol);
      // Backward from the CPU's statistics on both sides, into non-zero accumulators.
      Pair Mc(values(M.c)), Rc(values(R.c));
      Pair DX(randn(size_t(n) * E, 34)), DW(randn(E, 35), {E}), DB(randn(E, 36), {E});
      cpu().layernorm_backward(DY.cp(), X.cp(), Wt.c, Mc.cp(), Rc.cp(), DX.cp(), DW.c,
                               bias ? &DB.c : nullptr, n, E);
      gpu().layernorm_backward(DY.gp(), X.gp(), Wt.g, Mc.gp(), Rc.gp(), DX.gp(), DW.g,
                               bias ? &DB.g : nullptr, n, E);
      DX.expect(tag + " backward dx", kF32Tol);
      DW.expect(tag + " backward dw", kF32Tol);
      DB.expect(tag + " backward db", kF32Tol);
    }
  }
}

TEST_F(CudaTest, RmsNormForwardBackward) {
  for (int E : {96, 100, 1000}) {
    const int n = 37;
    Pair X(randn(size_t(n) * E, 40 + E, 2.0f)), Wt(randn(E, 41), {E}),
        DY(randn(size_t(n) * E, 42));
    Pair Y = Pair::zeros(int64_t(n) * E), R = Pair::zeros(n);
    cpu().rmsnorm_forward(X.cp(), Wt.c, Y.cp(), R.cp(), n, E, 1e-6);
    gpu().rmsnorm_forward(X.gp(), Wt.g, Y.gp(), R.gp(), n, E, 1e-6);
    const std::string tag = "rmsnorm E=" + std::to_string(E);
    Y.expect(tag + " y", kF32Tol);
    R.expect(tag + " rstd", kF32Tol);
    Pair Rc(values(R.c));
    Pair DX(randn(size_t(n) * E, 43)), DW(randn(E, 44), {E});
    cpu().rmsnorm_backward(DY.cp(), X.cp(), Wt.c, Rc.cp(), DX.cp(), DW.c, n, E);
    gpu().rmsnorm_backward(DY.gp(), X.gp(), Wt.g, Rc.gp(), DX.gp(), DW.g, n, E);
    DX.expect(tag + " backward dx", kF32Tol);
    DW.expect(tag + " backward dw", kF32Tol);
  }
}

// ---- rotary ----

// Full and partial rotary (Llama: n_rot = head_dim; Pythia: a quarter; an odd pair count),
// positions out of order and repeated, forward and inverse; the inverse undoes the forward.
TEST_F(CudaTest, Rope) {
  struct Case {
    int head_dim, n_rot, n_heads;
  };
  for (const Case& c : {Case{64, 64, 5}, Case{64, 16, 5}, Case{128, 128, 3}, Case{80, 20, 7},
                        Case{100, 50, 2}}) {
    const int n = 37, n_pos = 300;
    ops::RopeTable<float> rt;
    rt.build(c.n_rot, n_pos, ops::rope_inv_freq(c.n_rot, 10000.0));
    auto pos = rand_ints(n, n_pos, 50 + c.n_rot);
    pos[0] = 0;
    pos[1] = n_pos - 1;
    pos[2] = pos[3];
    const auto x = randn(size_t(n) * c.n_heads * c.head_dim, 51);
    const std::string tag = "rope d=" + std::to_string(c.head_dim) + " n_rot=" +
                            std::to_string(c.n_rot);
    for (bool inverse : {false, true}) {
      Pair X(x);
      cpu().rope(X.cp(), n, c.n_heads, c.head_dim, pos.data(), rt, inverse);
      gpu().rope(X.gp(), n, c.n_heads, c.head_dim, pos.data(), rt, inverse);
      X.expect(tag + (inverse ? " inverse" : ""), kElemTol);
    }
    Tensor g = on(gpu_device(), x);
    gpu().rope(g.data_as<float>(), n, c.n_heads, c.head_dim, pos.data(), rt, false);
    gpu().rope(g.data_as<float>(), n, c.n_heads, c.head_dim, pos.data(), rt, true);
    expect_close(tag + " forward then inverse", values(g), x, kElemTol);
  }
}

// ---- activations ----

TEST_F(CudaTest, Gelu) {
  for (int64_t n : {int64_t{1}, int64_t{203}, int64_t{40001}}) {
    const auto x = randn(size_t(n), 60, 3.0f), dy = randn(size_t(n), 61);
    for (bool tanh_form : {false, true}) {
      const std::string tag = std::string(tanh_form ? "gelu tanh" : "gelu erf") + " n=" +
                              std::to_string(n);
      Pair X(x), Y = Pair::zeros(n);
      cpu().gelu_forward(X.cp(), Y.cp(), n, tanh_form);
      gpu().gelu_forward(X.gp(), Y.gp(), n, tanh_form);
      Y.expect(tag, kElemTol);
      Pair DY(dy), DX = Pair::zeros(n), Y2 = Pair::zeros(n);
      cpu().gelu_backward(X.cp(), DY.cp(), DX.cp(), Y2.cp(), n, tanh_form);
      gpu().gelu_backward(X.gp(), DY.gp(), DX.gp(), Y2.gp(), n, tanh_form);
      DX.expect(tag + " backward dx", kElemTol);
      Y2.expect(tag + " backward y", kElemTol);
      // y null, dx aliasing dy (both allowed by ops.h).
      Pair D(dy);
      cpu().gelu_backward(X.cp(), D.cp(), D.cp(), nullptr, n, tanh_form);
      gpu().gelu_backward(X.gp(), D.gp(), D.gp(), nullptr, n, tanh_form);
      D.expect(tag + " backward in place", kElemTol);
    }
  }
}

TEST_F(CudaTest, SwiGlu) {
  for (int64_t n : {int64_t{1}, int64_t{203}, int64_t{40001}}) {
    const std::string tag = "swiglu n=" + std::to_string(n);
    Pair G(randn(size_t(n), 70, 3.0f)), U(randn(size_t(n), 71, 2.0f)), DY(randn(size_t(n), 72));
    Pair Y = Pair::zeros(n);
    cpu().swiglu_forward(G.cp(), U.cp(), Y.cp(), n);
    gpu().swiglu_forward(G.gp(), U.gp(), Y.gp(), n);
    Y.expect(tag, kElemTol);
    Pair DG = Pair::zeros(n), DU = Pair::zeros(n), Y2 = Pair::zeros(n);
    cpu().swiglu_backward(G.cp(), U.cp(), DY.cp(), DG.cp(), DU.cp(), Y2.cp(), n);
    gpu().swiglu_backward(G.gp(), U.gp(), DY.gp(), DG.gp(), DU.gp(), Y2.gp(), n);
    DG.expect(tag + " backward dgate", kElemTol);
    DU.expect(tag + " backward dup", kElemTol);
    Y2.expect(tag + " backward y", kElemTol);
    // y null, dgate aliasing dy.
    Pair D(values(DY.c)), DU2 = Pair::zeros(n);
    cpu().swiglu_backward(G.cp(), U.cp(), D.cp(), D.cp(), DU2.cp(), nullptr, n);
    gpu().swiglu_backward(G.gp(), U.gp(), D.gp(), D.gp(), DU2.gp(), nullptr, n);
    D.expect(tag + " backward in place dgate", kElemTol);
    DU2.expect(tag + " backward in place dup", kElemTol);
  }
}

// ---- embedding, cross-entropy ----

// Token ids stay on the host (kernels/backend.h); repeated tokens make the backward pass add
// several rows into one.
TEST_F(CudaTest, Embedding) {
  const int V = 1037, E = 100, n = 45;
  auto tok = rand_ints(n, V, 80);
  for (int i = 0; i < n; i += 3) tok[size_t(i)] = 7;  // 15 repeats of one token
  tok[1] = 0;
  tok[2] = V - 1;
  Pair T(randn(size_t(V) * E, 81), {V, E}), X = Pair::zeros(int64_t(n) * E);
  cpu().embedding_forward(tok.data(), T.c, X.cp(), n, E);
  gpu().embedding_forward(tok.data(), T.g, X.gp(), n, E);
  X.expect_equal("embedding forward");
  Pair DX(randn(size_t(n) * E, 82)), DT(randn(size_t(V) * E, 83), {V, E});
  cpu().embedding_backward(tok.data(), DX.cp(), DT.c, n, E);
  gpu().embedding_backward(tok.data(), DX.gp(), DT.g, n, E);
  DT.expect("embedding backward (accumulated, repeated tokens)", 1e-6);
}

// The summed loss, each row's loss (row_loss on the device) and scale (softmax - onehot), with
// and without the gradient; vocabularies off any power of two.
TEST_F(CudaTest, CrossEntropy) {
  for (int V : {97, 1037, 50277}) {
    const int n = 37;
    const auto logits = randn(size_t(n) * V, 90 + V, 3.0f);
    const auto target = rand_ints(n, V, 91);
    for (bool grad : {false, true}) {
      const std::string tag = "cross-entropy V=" + std::to_string(V) + (grad ? " grad" : "");
      Pair L(logits), RL = Pair::zeros(n);
      const double lc = cpu().cross_entropy(L.cp(), target.data(), n, V, 0.25f, grad, RL.cp());
      const double lg = gpu().cross_entropy(L.gp(), target.data(), n, V, 0.25f, grad, RL.gp());
      EXPECT_NEAR(lg, lc, 1e-5 * std::fabs(lc)) << tag;
      RL.expect(tag + " row_loss", kF32Tol);
      // Without grad the logits are consumed (scratch): only the gradient is compared.
      if (grad) L.expect(tag + " dlogits", kF32Tol);
    }
  }
}

// ---- training attention ----

struct AttnCase {
  int batch, ctx, n_head, n_head_kv, head_dim;
};

std::string attn_name(const AttnCase& c) {
  const char* kind = c.n_head_kv == c.n_head ? "mha" : c.n_head_kv == 1 ? "mqa" : "gqa";
  return std::string(kind) + "_b" + std::to_string(c.batch) + "_ctx" + std::to_string(c.ctx) +
         "_h" + std::to_string(c.n_head) + "_kv" + std::to_string(c.n_head_kv) + "_d" +
         std::to_string(c.head_dim);
}

// gtest prints a case by its name (ctest listings, failure messages).
void PrintTo(const AttnCase& c, std::ostream* os) { *os << attn_name(c); }

const AttnCase kAttnCases[] = {
    {2, 77, 8, 8, 64},  {2, 77, 8, 2, 64},  {2, 77, 8, 1, 64},  {1, 200, 4, 4, 128},
    {3, 45, 4, 2, 128}, {2, 129, 6, 1, 128}, {1, 1, 4, 2, 64},   {4, 33, 2, 2, 64}};

class CudaAttention : public CudaParamTest<AttnCase> {};

// Causal attention forward (o and the log-normaliser lse) and backward (dq written, dk and dv
// accumulated), every query head of a group reading one KV head.
TEST_P(CudaAttention, ForwardBackward) {
  const AttnCase c = GetParam();
  const ops::AttnDims a{c.batch, c.ctx, c.n_head, c.n_head_kv, c.head_dim};
  const int64_t nq = a.n_rows() * c.n_head * c.head_dim, nk = a.n_rows() * c.n_head_kv * c.head_dim,
                nl = int64_t{c.batch} * c.n_head * c.ctx;
  Pair Q(randn(size_t(nq), 100, 1.5f)), K(randn(size_t(nk), 101, 1.5f)), V(randn(size_t(nk), 102)),
      DO(randn(size_t(nq), 103));
  Pair O = Pair::zeros(nq), LSE = Pair::zeros(nl);
  auto wc = cpu().new_workspace(), wg = gpu().new_workspace();
  cpu().attention_forward(Q.cp(), K.cp(), V.cp(), O.cp(), LSE.cp(), a, *wc);
  gpu().attention_forward(Q.gp(), K.gp(), V.gp(), O.gp(), LSE.gp(), a, *wg);
  const std::string tag = "attention " + attn_name(c);
  O.expect(tag + " o", kF32Tol);
  LSE.expect(tag + " lse", kF32Tol);
  // Backward from the CPU's o and lse on both sides.
  Pair Oc(values(O.c)), Lc(values(LSE.c));
  Pair DQ(randn(size_t(nq), 104)), DK(randn(size_t(nk), 105)), DV(randn(size_t(nk), 106));
  cpu().attention_backward(Q.cp(), K.cp(), V.cp(), Oc.cp(), Lc.cp(), DO.cp(), DQ.cp(), DK.cp(),
                           DV.cp(), a, *wc);
  gpu().attention_backward(Q.gp(), K.gp(), V.gp(), Oc.gp(), Lc.gp(), DO.gp(), DQ.gp(), DK.gp(),
                           DV.gp(), a, *wg);
  // Floor 1e-2: at ctx 1 dq is zero up to rounding (one key: dS = dP - D = 0), and a ratio of
  // two rounding residues means nothing.
  DQ.expect(tag + " dq", kF32Tol, 1e-2);
  DK.expect(tag + " dk (accumulated)", kF32Tol);
  DV.expect(tag + " dv (accumulated)", kF32Tol);
  // The workspace is reusable: a second pass gives the same output.
  Pair O2 = Pair::zeros(nq), L2 = Pair::zeros(nl);
  gpu().attention_forward(Q.gp(), K.gp(), V.gp(), O2.gp(), L2.gp(), a, *wg);
  EXPECT_EQ(values(O2.g), values(O.g)) << tag << ": not reproducible";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention, ::testing::ValuesIn(kAttnCases),
                         [](const ::testing::TestParamInfo<AttnCase>& p) {
                           return attn_name(p.param);
                         });

// ---- optimizer ----

TEST_F(CudaTest, AdamW) {
  for (int64_t n : {int64_t{5}, int64_t{100003}}) {
    for (bool zero_grad : {true, false}) {
      auto v0 = randn(size_t(n), 113, 0.1f);
      for (auto& x : v0) x = std::fabs(x);
      Pair P(randn(size_t(n), 110)), G(randn(size_t(n), 111)), M(randn(size_t(n), 112, 0.1f)),
          V(v0);
      const ops::AdamWStep h{0.9f, 0.95f, 1e-8f, 1e-3f, 0.01f, 1.0f / (1 - 0.9f),
                             1.0f / (1 - 0.95f), 0.5f};
      cpu().adamw_update(P.c, G.c, M.c, V.c, h, zero_grad);
      gpu().adamw_update(P.g, G.g, M.g, V.g, h, zero_grad);
      const std::string tag = "adamw n=" + std::to_string(n) + (zero_grad ? " zero_grad" : "");
      P.expect(tag + " p", 1e-6);
      M.expect(tag + " m", 1e-6);
      V.expect(tag + " v", 1e-6);
      G.expect_equal(tag + " g");
    }
  }
}

// Sums of squares in double in a fixed order: equal to the CPU's up to double rounding, and the
// same on every call.
TEST_F(CudaTest, SumSquares) {
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1000003}}) {
    Pair X(randn(size_t(n), 120 + uint32_t(n)));
    const double c = cpu().sum_squares(X.c), g = gpu().sum_squares(X.g);
    EXPECT_NEAR(g, c, 1e-9 * c) << "n=" << n;
    EXPECT_EQ(gpu().sum_squares(X.g), g) << "n=" << n << ": not reproducible";
  }
}

// ---- memory helpers ----

TEST_F(CudaTest, AddCopyZeroGatherToHost) {
  const int64_t n = 100003;
  Pair Y(randn(size_t(n), 130)), X(randn(size_t(n), 131));
  cpu().add(Y.cp(), X.cp(), n);
  gpu().add(Y.gp(), X.gp(), n);
  Y.expect_equal("add");
  Pair D = Pair::zeros(n);
  cpu().copy(D.cp(), X.cp(), n);
  gpu().copy(D.gp(), X.gp(), n);
  D.expect_equal("copy");
  cpu().zero(D.cp() + 7, n - 20);
  gpu().zero(D.gp() + 7, n - 20);
  D.expect_equal("zero (a middle range)");
  // Rows of E in any order, repeated; indices on the host.
  const int rows = 41, E = 100;
  Pair S(randn(size_t(rows) * E, 132));
  const std::vector<int32_t> idx = {40, 0, 3, 3, 17, 40, 1};
  Pair G = Pair::zeros(int64_t(idx.size()) * E);
  cpu().gather_rows(S.cp(), idx.data(), int(idx.size()), E, G.cp());
  gpu().gather_rows(S.gp(), idx.data(), int(idx.size()), E, G.gp());
  G.expect_equal("gather_rows");
  std::vector<float> host(size_t(n), -1.0f);
  gpu().to_host(X.gp(), host.data(), n);
  EXPECT_EQ(host, values(X.c)) << "to_host";
  // buffer(): zero-filled f32 on the device.
  Tensor b = gpu().buffer({3, 5});
  EXPECT_EQ(b.device(), gpu_device());
  EXPECT_EQ(b.dtype(), DType::kF32);
  EXPECT_EQ(values(b), std::vector<float>(15, 0.0f));
}

}  // namespace
}  // namespace mlkv::cuda_test
