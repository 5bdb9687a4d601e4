// AVX-512 path of planes (consecutive elements of one parameter set: a channel's map, or a
// layer-wise tensor as one plane): forward, input gradient and backward prepass, 16 elements per
// step with the set's table in registers (avx512_vectors.h). Each returns the number of leading
// elements it did; the generic loops (pwlu_loops.h) finish the rest. Included through avx512.h.
#pragma once

#include <cstdint>
#include <type_traits>

#include "avx512_vectors.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {
namespace avx512 {

// Planes end with a tail of len % 16 elements. float planes do it with masked loads and stores
// (AVX-512F; masked-out lanes are neither read nor written), so that short planes, such as the
// 49 elements of a 7 x 7 RoI map, spend no large share of their time in a scalar tail.
// bfloat16 planes leave the tail to the generic loop (masked 16-bit moves need AVX-512BW).
// The elements of a plane of len that the vector loop does:
template <typename scalar_t>
inline int64_t vector_end(int64_t len) {
  return std::is_same<scalar_t, float>::value ? len : len / 16 * 16;
}

// The mask of the block of 16 that starts `rest` elements before the end.
inline __mmask16 block_mask(int64_t rest) {
  return rest >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << rest) - 1u);
}

// Masked float loads and stores (full blocks pass an all-ones mask; bfloat16 never gets
// another).
__attribute__((target("avx512f"))) inline __m512 load(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
__attribute__((target("avx512f"))) inline __m512 load(const c10::BFloat16* p, __mmask16) {
  return load_bf16(p);
}
__attribute__((target("avx512f"))) inline void store(float* p, __m512 v, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, v);
}
__attribute__((target("avx512f"))) inline void store(c10::BFloat16* p, __m512 v, __mmask16) {
  store_bf16(p, v);
}

// Forward of a plane; returns the number of leading elements done (all of a float plane, a
// multiple of 16 of a bfloat16 one): the caller finishes the rest with the generic loop.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t forward_plane(const scalar_t* x, scalar_t* y,
                                                         int64_t len, float lb, float inv, int n,
                                                         const float* slopes,
                                                         const float* intercepts) {
  const Table s = load_table(slopes);
  const Table o = load_table(intercepts);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  const int64_t end = vector_end<scalar_t>(len);
  for (int64_t k = 0; k < end; k += 16) {
    const __mmask16 m = block_mask(end - k);
    store(y + k, forward16(load(x + k, m), s, o, vlb, vinv, vn), m);
  }
  return end;
}

// grad_x = g * S_j of a plane; returns the number of leading elements done.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t input_grad_plane(const scalar_t* g, const scalar_t* x,
                                                            scalar_t* gx, int64_t len, float lb,
                                                            float inv, int n,
                                                            const float* slopes) {
  const Table s = load_table(slopes);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  const int64_t end = vector_end<scalar_t>(len);
  for (int64_t k = 0; k < end; k += 16) {
    const __mmask16 m = block_mask(end - k);
    const __m512i j = entries(load(x + k, m), vlb, vinv, vn);
    store(gx + k, _mm512_mul_ps(load(g + k, m), lookup(s, j)), m);
  }
  return end;
}

// Prepass of a plane (see prepass_plane_impl in pwlu_loops.cpp): grad_x = g * S_j, and per
// element its histogram slot 2 j and addends g and g * (t - base_j). Returns the number of
// leading elements done.
template <typename scalar_t>
__attribute__((target("avx512f"))) int64_t prepass_plane(const scalar_t* g, const scalar_t* x,
                                                         scalar_t* gx, int64_t len, float lb,
                                                         float inv, int n, const float* slopes,
                                                         int32_t* slot, float* pairs) {
  const Table s = load_table(slopes);
  const __m512 vlb = _mm512_set1_ps(lb), vinv = _mm512_set1_ps(inv);
  const __m512 vn = _mm512_set1_ps(static_cast<float>(n));
  const __m512i vni = _mm512_set1_epi32(n);
  const int64_t end = vector_end<scalar_t>(len);
  for (int64_t k = 0; k < end; k += 16) {
    const __mmask16 m = block_mask(end - k);
    const __m512 gv = load(g + k, m);
    const __m512 t = coordinates(load(x + k, m), vlb, vinv);
    const __m512i j = entries_of(t, vn);
    store(gx + k, _mm512_mul_ps(gv, lookup(s, j)), m);
    _mm512_mask_storeu_epi32(slot + k, m, _mm512_add_epi32(j, j));
    store_addends(pairs + 2 * k, gv, t, _mm512_sub_ps(t, entry_bases(j, vni)), m);
  }
  return end;
}

}  // namespace avx512
}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
