// Element-wise kernels of pwlu and pwlu_backward: out = pwlu(x), or the input gradient alone
// (grad_out * S_j: phase I, frozen parameters), one table look-up and one multiply-add per element.
// elementwise_kernel walks planes with 16-byte vectors; elementwise_rows_kernel walks the rows of
// channels-last and 2-D inputs with the tile's tables in shared memory. Private to pwlu_kernel.cu.
#pragma once

#include <cstdint>

#include "../pwlu_element.h"
#include "fast_divmod.h"
#include "pwlu_tables.cuh"

namespace pwlu_mmdet {
namespace ops {

// Internal linkage, as for everything else of pwlu_kernel.cu, the one file that includes this.
namespace {

// Walks the sets of consecutive elements of a (outer, C, inner) tensor: one division pair for
// the first element, then a counter, so that a vector of elements costs one division, not one
// per element.
template <typename index_t>
struct SetCursor {
  index_t set;
  index_t position;  // within the current plane of inner elements

  __device__ __forceinline__ SetCursor(index_t i, const LayoutDivisors<index_t>& d) {
    const index_t plane = d.inner.div(i);
    position = i - plane * d.inner.divisor;
    set = d.channels.mod(plane);
  }
  __device__ __forceinline__ void advance(const LayoutDivisors<index_t>& d) {
    if (++position == d.inner.divisor) {
      position = 0;
      set = set + 1 == d.channels.divisor ? 0 : set + 1;
    }
  }
};

// The element-wise kernels' value of one element of a set with geometry geo and table
// `pieces` (entry j at pieces[j * kStride]): pwlu(x) (forward), or g * S_j (the input gradient
// alone: phase I, frozen parameters).
template <bool kInputGrad, int kStride = 1, typename acc_t>
__device__ __forceinline__ acc_t element_value(acc_t g, acc_t x, const SetGeometry<acc_t>& geo,
                                               const Piece<acc_t>* pieces, int n) {
  const int j = table_entry(interval_coordinate(x, geo.left_bound, geo.inv_width), n);
  const Piece<acc_t> p = pieces[j * kStride];
  return kInputGrad ? g * p.slope : apply_piece(x, p.slope, p.intercept);
}

template <bool kInputGrad, typename acc_t>
__device__ __forceinline__ acc_t set_element_value(acc_t g, acc_t x,
                                                   const DeviceTables<acc_t>& tab, int64_t s) {
  const int n = tab.num_intervals;
  return element_value<kInputGrad>(g, x, tab.geometry[s], tab.pieces + s * (n + 2), n);
}

// out = pwlu(x), or out = grad_out * S_j with kInputGrad, element-wise. out may be x (pwlu_):
// every element is read, then written, by one thread. Each thread handles kVec consecutive
// elements per step (16-byte accesses) when vectorised. With kUniformSet (inner a multiple of
// kVec, or a single set) the kVec elements of a vector share one set, whose geometry and table
// are then found once per vector.
template <typename scalar_t, typename acc_t, int kVec, typename index_t, bool kInputGrad,
          bool kUniformSet>
__global__ void elementwise_kernel(const scalar_t* grad_out, const scalar_t* x, scalar_t* out,
                                   index_t numel, LayoutDivisors<index_t> layout,
                                   DeviceTables<acc_t> tab) {
  const int n = tab.num_intervals;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x * kVec;
  for (index_t base = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
       base < numel; base += stride) {
    SetCursor<index_t> cursor(base, layout);
    if (kVec > 1 && base + kVec <= numel) {
      using V = Vec<scalar_t, kVec>;
      const V xv = *reinterpret_cast<const V*>(x + base);
      V gv;
      if (kInputGrad) gv = *reinterpret_cast<const V*>(grad_out + base);
      V result;
      if (kUniformSet) {
        const SetGeometry<acc_t> geo = tab.geometry[cursor.set];
        const Piece<acc_t>* pieces = tab.pieces + static_cast<int64_t>(cursor.set) * (n + 2);
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const acc_t g = kInputGrad ? static_cast<acc_t>(gv.val[v]) : acc_t(0);
          result.val[v] = static_cast<scalar_t>(
              element_value<kInputGrad>(g, static_cast<acc_t>(xv.val[v]), geo, pieces, n));
        }
      } else {
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const acc_t g = kInputGrad ? static_cast<acc_t>(gv.val[v]) : acc_t(0);
          result.val[v] = static_cast<scalar_t>(set_element_value<kInputGrad>(
              g, static_cast<acc_t>(xv.val[v]), tab, static_cast<int64_t>(cursor.set)));
          cursor.advance(layout);
        }
      }
      *reinterpret_cast<V*>(out + base) = result;
    } else {
      for (index_t i = base; i < numel && i < base + kVec; ++i) {
        const acc_t g = kInputGrad ? static_cast<acc_t>(grad_out[i]) : acc_t(0);
        out[i] = static_cast<scalar_t>(set_element_value<kInputGrad>(
            g, static_cast<acc_t>(x[i]), tab, static_cast<int64_t>(cursor.set)));
        cursor.advance(layout);
      }
    }
  }
}

// Rows of the element-wise kernels' channel tiles: each thread keeps this many rows in flight.
constexpr int kRowsInFlight = 4;

// The element-wise kernel for channels-last and 2-D inputs (inner == 1, element (r, c) at
// r * C + c), where consecutive elements belong to different sets. Block (g, b) with blockDim
// (32, R) covers rows [b * chunk, (b + 1) * chunk) of the kPack * 32 channels from
// first = kPack * 32 g; thread (tx, ty) takes channels first + kPack tx + p (p < kPack, read
// with one kPack-wide access) of every R-th row, so that a warp reads a row's consecutive
// channels. The group's tables are staged in shared memory entry-major (entry j of channel
// (tx, p) at (j kPack + p) 32 + tx): the lanes of a warp then look up distinct banks whatever
// their entries, where the per-set tables in global memory would put each lane's look-up on a
// cache line of its own.
template <typename scalar_t, typename acc_t, int kPack, typename index_t, bool kInputGrad>
__global__ void elementwise_rows_kernel(const scalar_t* grad_out, const scalar_t* x,
                                        scalar_t* out, index_t rows, index_t channels,
                                        index_t chunk, DeviceTables<acc_t> tab) {
  extern __shared__ unsigned char smem_raw[];
  auto* table = reinterpret_cast<Piece<acc_t>*>(smem_raw);
  constexpr int kLanes = kTileChannels * kPack;
  const int n = tab.num_intervals;
  const int entries = n + 2;
  const index_t first = static_cast<index_t>(blockIdx.x) * kLanes;
  const int group_channels = static_cast<int>(min(static_cast<index_t>(kLanes), channels - first));
  const int tid = threadIdx.y * kTileChannels + threadIdx.x;
  const Piece<acc_t>* group_pieces = tab.pieces + static_cast<int64_t>(first) * entries;
  for (int e = tid; e < group_channels * entries; e += blockDim.x * blockDim.y) {
    const int local = e / entries;
    const int j = e - local * entries;
    table[(j * kPack + local % kPack) * kTileChannels + local / kPack] = group_pieces[e];
  }
  __syncthreads();
  // The launcher takes kPack > 1 only where C is a multiple of kPack: a thread's channels are
  // all in range or all out.
  const index_t c0 = first + kPack * threadIdx.x;
  if (c0 >= channels) return;
  SetGeometry<acc_t> geo[kPack];
#pragma unroll
  for (int p = 0; p < kPack; ++p) geo[p] = tab.geometry[c0 + p];
  const Piece<acc_t>* lane_table = table + threadIdx.x;
  using V = Vec<scalar_t, kPack>;
  const index_t begin = static_cast<index_t>(blockIdx.y) * chunk;
  const index_t end = begin + chunk < rows ? begin + chunk : rows;
  const index_t row_step = blockDim.y;
  for (index_t r0 = begin + threadIdx.y; r0 < end; r0 += kRowsInFlight * row_step) {
    // Loads of kRowsInFlight rows before their stores: out may be x (pwlu_), which the compiler
    // cannot rule out, so it would not hoist a load above an earlier store by itself.
    V xv[kRowsInFlight], gv[kRowsInFlight];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      const index_t r = r0 + u * row_step;
      if (r < end) {
        xv[u] = *reinterpret_cast<const V*>(x + r * channels + c0);
        if (kInputGrad) gv[u] = *reinterpret_cast<const V*>(grad_out + r * channels + c0);
      }
    }
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      const index_t r = r0 + u * row_step;
      if (r < end) {
        V result;
#pragma unroll
        for (int p = 0; p < kPack; ++p) {
          const acc_t g = kInputGrad ? static_cast<acc_t>(gv[u].val[p]) : acc_t(0);
          result.val[p] = static_cast<scalar_t>(element_value<kInputGrad, kPack * kTileChannels>(
              g, static_cast<acc_t>(xv[u].val[p]), geo[p], lane_table + p * kTileChannels, n));
        }
        *reinterpret_cast<V*>(out + r * channels + c0) = result;
      }
    }
  }
}

}  // namespace

}  // namespace ops
}  // namespace pwlu_mmdet
