// The kernel table of one build: every -inl.h kernel instantiated for the build's vector type.
// Included last by kernels_{scalar,avx2,avx512}.cpp, inside their namespace and target region.

Kernels make_table(Isa isa) {
  Kernels k{};
  k.isa = isa;
  k.gemv4[0] = &gemv4_fmt<float>;
  k.gemv4[1] = &gemv4_fmt<uint16_t>;
  k.gemv4[2] = &gemv4_fmt<Bf16>;
  k.gemv4[3] = &gemv4_q8;
  k.gemv_tail[0] = &gemv_tail_fmt<float>;
  k.gemv_tail[1] = &gemv_tail_fmt<uint16_t>;
  k.gemv_tail[2] = &gemv_tail_fmt<Bf16>;
  k.gemv_tail[3] = &gemv_tail_q8;
  k.gemv4_q8_int = &gemv4_q8_int;
  k.gemv_tail_q8_int = &gemv_tail_q8_int;
  k.quantize_q8 = &quantize_q8;
  k.gemv_panels[0] = &gemv_panels<float>;
  k.gemv_panels[1] = &gemv_panels<uint16_t>;
  k.gemv_panels[2] = &gemv_panels<Bf16>;
  k.attn_scores[0] = &attn_scores<RowF32>;
  k.attn_scores[1] = &attn_scores<RowF16>;
  k.attn_scores[2] = &attn_scores<RowBF16>;
  k.attn_scores[3] = &attn_scores_int<RowQ8>;
  k.attn_scores[4] = &attn_scores_int<RowQ4>;
  k.attn_values[0] = &attn_values<RowF32>;
  k.attn_values[1] = &attn_values<RowF16>;
  k.attn_values[2] = &attn_values<RowBF16>;
  k.attn_values[3] = &attn_values<RowQ8>;
  k.attn_values[4] = &attn_values<RowQ4>;
  k.rows_to_f32[0] = &rows_to_f32<RowF32>;
  k.rows_to_f32[1] = &rows_to_f32<RowF16>;
  k.rows_to_f32[2] = &rows_to_f32<RowBF16>;
  k.rows_to_f32[3] = &rows_to_f32<RowQ8>;
  k.rows_to_f32[4] = &rows_to_f32<RowQ4>;
  k.max_n = &max_n;
  k.exp_sub_sum = &exp_sub_sum;
  k.scale_n = &scale_n;
  k.add_n = &add_n;
  k.dot_n = &dot_n;
  k.gelu_fwd = &gelu_fwd;
  k.gelu_bwd = &gelu_bwd;
  k.swiglu_fwd = &swiglu_fwd;
  k.swiglu_bwd = &swiglu_bwd;
  k.layernorm_row = &layernorm_row;
  k.rmsnorm_row = &rmsnorm_row;
  k.norm_bwd_row = &norm_bwd_row;
  k.norm_bwd_cols = &norm_bwd_cols;
  k.colsum = &colsum;
  k.rope_row = &rope_row;
  k.adamw = &adamw;
  return k;
}
